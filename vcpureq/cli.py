"""The ``vcpureq`` command: check protocols, list the catalogue, replay counterexamples."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from .catalogue import CASE_SETS, Case, LoadError, builtin_cases, load_object, user_cases
from .checking import Verdict, run_cases
from .model import MEMORY_MODELS, STRATEGIES, ReplayError, ScheduleError, replay_execution

# Wide enough for the verdict table when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vcpureq")
def main() -> None:
    """vcpureq: the KVM vCPU request protocol, model-checked, measured and run."""


def _select(protocols: tuple[str, ...], scenarios: tuple[str, ...],
            vcpus: int | None, which: str = "default") -> tuple[list[Case], set[int]]:
    """Cases to run, and the indexes of those that come from a user's file."""
    builtin = builtin_cases(vcpus=vcpus, which=which)
    cases: list[Case] = []
    user: set[int] = set()
    if not protocols:
        cases = list(builtin)
    for p in protocols:
        if ":" in p:
            for c in user_cases(p, vcpus=vcpus):
                user.add(len(cases))
                cases.append(c)
            continue
        chosen = [c for c in builtin if c.protocol == p]
        if not chosen:
            known = sorted({c.protocol for c in builtin})
            raise click.UsageError(
                f"unknown protocol {p!r}; built-in: {', '.join(known)} "
                "(or FILE.py:NAME for your own)"
            )
        cases += chosen
    if scenarios:
        keep = [i for i, c in enumerate(cases) if c.scenario in scenarios]
        if not keep:
            known = sorted({c.scenario for c in cases})
            raise click.UsageError(
                f"no scenario named {', '.join(scenarios)} for these protocols; "
                f"available: {', '.join(known)}"
            )
        user = {keep.index(i) for i in user if i in keep}
        cases = [cases[i] for i in keep]
    return cases, user


@main.command()
@click.option("--protocol", "protocols", multiple=True, metavar="NAME|FILE.py:NAME",
              help="A built-in protocol (see `vcpureq list`) or your own. Repeatable.")
@click.option("--scenario", "scenarios", multiple=True, help="Only these scenarios.")
@click.option("--memory-model", type=click.Choice(["default", *MEMORY_MODELS, "tso", "pso"]),
              default="default", show_default=True,
              help="Memory model (default: each architecture's own).")
@click.option("--vcpus", type=click.IntRange(1, 64), default=None,
              help="Number of vCPUs (default: each scenario's own, usually 2).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dpor", show_default=True)
@click.option("--time-limit", type=float, default=None, help="Seconds per case.")
@click.option("--set", "which", type=click.Choice(CASE_SETS), default="default",
              show_default=True,
              help="Built-in cases: the default catalogue (a few minutes), the big "
              "configurations (minutes each), or all.")
@click.option("-j", "--jobs", type=click.IntRange(0, 256), default=1, show_default=True,
              help="Cases run at once, in forked processes (0: one per CPU). Seconds per "
              "case are measured under that load.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write every counterexample as text and HTML into this directory.")
def check(protocols: tuple[str, ...], scenarios: tuple[str, ...], memory_model: str,
          vcpus: int | None, strategy: str, time_limit: float | None, which: str,
          jobs: int, as_json: bool, report_dir: str | None) -> None:
    """Model-check protocols against scenarios (default: the whole built-in catalogue).

    Exit status 1 when a verdict is not the expected one (a built-in variant that should be
    verified shows a counterexample, a known bug is not found) or your own protocol has a
    violation."""
    from .report import counterexample_text, verdict_table, what_broke, write_reports

    try:
        cases, user = _select(protocols, scenarios, vcpus, which)
    except LoadError as e:
        raise click.UsageError(str(e)) from None
    model = None if memory_model == "default" else memory_model
    if jobs == 0:
        jobs = os.cpu_count() or 1
    # (a live progress line only when one case runs at a time)
    progress = False if as_json or jobs > 1 else None
    work = [(case, {"memory_model": model, "strategy": strategy, "time_limit": time_limit,
                    "progress": progress, "user": i in user})
            for i, case in enumerate(cases)]

    def done(_index: int, v: Verdict) -> None:
        if not as_json:
            mark = "[green]✓[/]" if v.expected else "[bold red]✗[/]"
            err.print(f"{mark} " + escape(
                f"{v.case.name} [{v.exploration.memory_model}]: {v.verdict} "
                f"({v.exploration.executions:,} executions, {v.exploration.elapsed:.2f} s"
                + (f"; {v.exploration.extension_cuts:,} with a daemon cut after main's end:"
                   " exhaustive up to that bound" if v.exploration.extension_cuts else "")
                + ")"),
                highlight=False)

    try:
        verdicts = run_cases(work, jobs, on_verdict=done)
    except NotImplementedError as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        click.echo(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        console.print(verdict_table(verdicts))
        broke = what_broke(verdicts)
        if broke:
            console.print("[bold]what broke[/] (replay with `vcpureq replay`, or --report DIR)")
            for line in broke:
                console.print("  " + escape(line), highlight=False)
        for v in verdicts:
            if v.violation is not None and not v.expected:
                console.print(escape(counterexample_text(v)), highlight=False)
    if report_dir:
        paths = write_reports(verdicts, report_dir)
        if not as_json:
            err.print(f"wrote {len(paths)} files to {report_dir}")
    unexpected = [v for v in verdicts if not v.expected]
    if unexpected and not as_json:
        err.print(f"[bold red]{len(unexpected)} unexpected verdict(s)[/]: "
                  + ", ".join(v.case.name for v in unexpected))
    sys.exit(1 if unexpected else 0)


@main.command(name="list")
def list_() -> None:
    """List the built-in protocols, scenarios and example programs."""
    from rich.table import Table

    table = Table(title="built-in cases", header_style="bold")
    for col in ("protocol", "scenario", "model", "expect", "description"):
        table.add_column(col)
    for c in builtin_cases():
        expect = c.expect + (f" ({c.expect_property})" if c.expect_property else "")
        table.add_row(c.protocol, c.scenario, c.memory_model, expect, c.description)
    console.print(table)
    try:
        from .examples import classic
    except ImportError:
        return
    ex = Table(title="example programs (vcpureq replay vcpureq.examples.classic:NAME ...)",
               header_style="bold")
    ex.add_column("name")
    ex.add_column("description")
    for name, (_factory, doc) in classic.REGISTRY.items():
        ex.add_row(name, doc)
    console.print(ex)


def _program_for(target: str, vcpus: int | None) -> Any:
    scenario = target.partition(":")[2].partition("/")[2]
    if ":" in target and scenario:
        # FILE.py:NAME/SCENARIO: a scenario of a user's protocol, as `check` ran it
        file_spec = target[: len(target) - len(scenario) - 1]
        try:
            found = user_cases(file_spec, vcpus=vcpus)
        except LoadError as e:
            raise click.UsageError(str(e)) from None
        for c in found:
            if c.scenario == scenario:
                return c.program
        raise click.UsageError(
            f"{file_spec} has no scenario {scenario!r}; it has: "
            + ", ".join(sorted({c.scenario for c in found})))
    if ":" in target:
        obj = load_object(target)
        if isinstance(obj, Case):
            return obj.program
        if not callable(obj):
            raise click.UsageError(f"{target}: not a program (a zero-argument callable)")
        return obj
    for c in builtin_cases(vcpus=vcpus, which="all"):
        if c.name == target:
            return c.program
    raise click.UsageError(
        f"unknown target {target!r}: use PROTOCOL/SCENARIO (see `vcpureq list`), "
        "FILE.py:NAME (a program) or FILE.py:NAME/SCENARIO (your protocol's scenario)"
    )


@main.command()
@click.argument("target")
@click.argument("schedule")
@click.option("--vcpus", type=click.IntRange(1, 64), default=None)
def replay(target: str, schedule: str, vcpus: int | None) -> None:
    """Re-run TARGET (PROTOCOL/SCENARIO, FILE.py:NAME or FILE.py:NAME/SCENARIO) under
    SCHEDULE and print the trace."""
    try:
        program = _program_for(target, vcpus)
        trace, _ex, end = replay_execution(program, schedule)
    except (LoadError, ReplayError, ScheduleError, NotImplementedError) as e:
        raise click.UsageError(str(e)) from None
    for ev in trace:
        console.print(escape(ev.describe()), highlight=False)
    if end is None:
        console.print("[green]the execution ends without a violation[/]")
        sys.exit(0)
    kind, message = end
    console.print(f"[bold red]{kind}[/]: " + escape(message), highlight=False)
    sys.exit(1)


@main.group()
def kvm() -> None:
    """Real vCPUs on /dev/kvm."""


@kvm.command(name="info")
@click.option("--device", default="/dev/kvm", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def kvm_info(device: str, as_json: bool) -> None:
    """Is /dev/kvm usable, and with which capabilities?  Exit 1 when it is not."""
    from rich.table import Table

    from .kvm import info

    data = info(device)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    elif not data["available"]:
        err.print(f"[bold red]{device} is not usable[/]: " + escape(str(data["reason"])))
    else:
        console.print(f"{device}: API version {data['api_version']}, "
                      f"backend {', '.join(data['backends']) or 'unknown'}, "
                      f"vcpu mmap size {data['vcpu_mmap_size']}", highlight=False)
        table = Table(header_style="bold")
        table.add_column("capability")
        table.add_column("value", justify="right")
        table.add_column("required", justify="center")
        for cap, value in data["capabilities"].items():
            table.add_row(cap, str(value), "yes" if cap in data["required"] else "")
        console.print(table)
    sys.exit(0 if data["available"] else 1)


@kvm.command(name="run")
@click.option("--vcpus", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--seconds", type=float, default=5.0, show_default=True)
@click.option("--guest", type=click.Choice(["counter", "spinner", "halt", "critical-page",
                                            "triple-fault", "invalid-instruction"]),
              default="spinner", show_default=True)
@click.option("--variant", type=click.Choice(["kvm-user", "kvm-user-sigmask",
                                              "kvm-user-empty-handler"]),
              default="kvm-user", show_default=True,
              help="How the kick closes the window before KVM_RUN (see docs/kvm.md).")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Driver on one CPU, vCPU threads on the others.")
@click.option("--json", "as_json", is_flag=True, help="Print the totals as JSON at the end.")
def kvm_run(vcpus: int, seconds: float, guest: str, variant: str, pin: bool,
            as_json: bool) -> None:
    """Run a VM of the kvm_user architecture on /dev/kvm and show, live, per vCPU: KVM_RUN
    entries, exits, kicks, requests handled, and the latency of the requests made to it
    while it runs (a sync PING round-robin, a register read every 50 ms)."""
    from .kvm import probe
    from .kvm.live import run_live, summary

    reason = probe()
    if reason is not None:
        err.print("[bold red]/dev/kvm is not usable[/]: " + escape(reason))
        sys.exit(1)
    vmm, stats = run_live(vcpus, seconds, guest, variant=variant,
                          console=err if as_json else console, pin=pin)
    if as_json:
        click.echo(json.dumps(summary(vmm, stats), indent=2))


@kvm.command(name="bench")
@click.option("--quick", is_flag=True, help="Fewer samples, VMs of up to 8 vCPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def kvm_bench(quick: bool, as_json: bool) -> None:
    """Measure requests on real vCPUs (bench/kvm.py): sync request vs the C kick floor,
    async kick and sync request latency, exits per second, pause-all for 1..16 vCPUs."""
    import importlib.util
    from pathlib import Path

    from .kvm import probe

    path = Path(__file__).resolve().parents[1] / "bench" / "kvm.py"
    if not path.is_file():
        raise click.UsageError(f"{path} not found (run from a checkout of the repository)")
    reason = probe()
    if reason is not None:
        err.print("[bold red]/dev/kvm is not usable[/]: " + escape(reason))
        sys.exit(1)
    spec = importlib.util.spec_from_file_location("vcpureq_bench_kvm", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.run(quick, None if as_json else
                        (lambda msg: err.print(f"... {msg}", highlight=False)))
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        bench.report(results, console)


if __name__ == "__main__":  # pragma: no cover
    main()
