"""How fast does the explorer go?  DPOR over the named programs of vcpureq.examples.

    .venv/bin/python bench/explore.py              # the table
    .venv/bin/python bench/explore.py --json       # the same figures as JSON
    .venv/bin/python bench/explore.py --profile    # + where the time goes (cProfile)
    .venv/bin/python bench/explore.py --quick      # smaller sizes only

For each program and size: a complete exploration with strategy "dpor" (stop_on_violation
False, so programs with bugs are explored to the end too), repeated until it has taken at
least ``--min-time`` seconds; the rates are totals over the repetitions.  See bench/README.md
for what each column means.  The goal checked at the end: >= 50,000 visible events per
second on one core for a 3-thread program.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from vcpureq.examples import REGISTRY, make
from vcpureq.model import Event, explore

# (name, sizes): every program of the registry, at a few sizes.
SUITE: list[tuple[str, tuple[int, ...]]] = [
    ("store-buffering", ()),
    ("lost-update", ()),
    ("peterson", ()),
    ("peterson-broken", ()),
    ("philosophers", (3,)),
    ("philosophers-ordered", (3,)),
    ("philosophers-ordered", (4,)),
    ("lastzero", (5,)),
    ("lastzero", (8,)),
    ("lastzero", (10,)),
    ("readers", (4,)),
    ("readers", (8,)),
    ("indexer", (12,)),
    ("indexer", (13,)),
    ("indexer", (14,)),
    ("filesystem", (14,)),
    ("filesystem", (16,)),
]
QUICK = {("lastzero", (10,)), ("indexer", (14,)), ("philosophers-ordered", (4,)),
         ("lastzero", (8,))}

# The program the goal is measured on: 3 threads (plus main, which only spawns and joins).
GOAL_PROGRAM = ("philosophers-ordered", (3,))
GOAL_EVENTS_PER_S = 50_000
PROFILE_PROGRAM = ("philosophers-ordered", (3,))


@dataclass
class Row:
    program: str
    threads: int
    verdict: str
    executions: int
    blocked: int
    events: int
    seconds: float
    runs: int
    executions_per_s: float
    events_per_s: float
    events_per_execution: float


def label(name: str, sizes: tuple[int, ...]) -> str:
    return f"{name}({', '.join(map(str, sizes))})" if sizes else name


def thread_count(program: Any) -> int:
    """Threads other than main that do a visible event, from one execution."""
    seen: set[int] = set()

    def on_execution(outcome: Any, events: list[Event]) -> None:
        seen.update(e.thread for e in events)

    explore(program, max_executions=1, on_execution=on_execution, progress=False)
    return len(seen - {0})


def measure(name: str, sizes: tuple[int, ...], min_time: float) -> Row:
    program = make(name, *sizes)
    runs = 0
    total_s = 0.0
    total_events = 0
    total_execs = 0
    while True:
        r = explore(program, strategy="dpor", stop_on_violation=False, progress=False)
        runs += 1
        total_s += r.elapsed
        total_events += r.events
        total_execs += r.executions + r.blocked
        if total_s >= min_time:
            break
    kinds = sorted({v.kind for v in r.violations})
    verdict = "verified" if r.ok else ",".join(kinds) if kinds else "incomplete"
    return Row(
        program=label(name, sizes),
        threads=thread_count(program),
        verdict=verdict,
        executions=r.executions,
        blocked=r.blocked,
        events=r.events,
        seconds=r.elapsed,
        runs=runs,
        executions_per_s=total_execs / total_s if total_s else 0.0,
        events_per_s=total_events / total_s if total_s else 0.0,
        events_per_execution=r.events / max(1, r.executions + r.blocked),
    )


def profile(name: str, sizes: tuple[int, ...], top: int = 10) -> dict[str, Any]:
    """cProfile one exploration; the ``top`` functions by own time (tottime)."""
    program = make(name, *sizes)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    r = explore(program, strategy="dpor", stop_on_violation=False, progress=False)
    prof.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof)
    entries = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{os.path.relpath(filename)}:{line}" if line else filename
        entries.append({"function": f"{func} ({where})", "calls": ncalls,
                        "tottime": tottime, "cumtime": cumtime})
    entries.sort(key=lambda e: e["tottime"], reverse=True)
    total = sum(e["tottime"] for e in entries)
    for e in entries:
        e["share"] = e["tottime"] / total if total else 0.0
    return {"program": label(name, sizes), "executions": r.executions, "events": r.events,
            "seconds_profiled": wall, "top": entries[:top]}


def sample(name: str, sizes: tuple[int, ...], seconds: float = 2.0,
           top: int = 10) -> dict[str, Any]:
    """A statistical profile: where the CPU is when SIGPROF fires, repeating the
    exploration for ``seconds``.  Unlike cProfile's, this attribution is not confused by
    greenlet switches (cProfile sees a switch as a call that returns in another greenlet).
    "Self" includes the C functions (greenlet.switch, list methods, ...) a function calls."""
    import signal
    from collections import Counter

    program = make(name, *sizes)
    counts: Counter[tuple[str, int, str]] = Counter()

    def on_sigprof(signum: int, frame: Any) -> None:
        code = frame.f_code
        counts[(os.path.relpath(code.co_filename), code.co_firstlineno, code.co_name)] += 1

    old = signal.signal(signal.SIGPROF, on_sigprof)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    start = time.perf_counter()
    runs = 0
    try:
        while time.perf_counter() - start < seconds:
            explore(program, strategy="dpor", stop_on_violation=False, progress=False)
            runs += 1
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, old)
    total = sum(counts.values())
    rows = [{"function": f"{func} ({path}:{line})", "samples": n,
             "share": n / total if total else 0.0}
            for (path, line, func), n in counts.most_common(top)]
    return {"program": label(name, sizes), "runs": runs, "samples": total, "top": rows}


def environment() -> dict[str, Any]:
    import greenlet

    return {"python": platform.python_version(), "implementation":
            platform.python_implementation(), "greenlet": greenlet.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--profile", action="store_true",
                    help=f"also profile {label(*PROFILE_PROGRAM)}: the top 10 functions by "
                         "own time, from cProfile (tottime) and from SIGPROF sampling")
    ap.add_argument("--quick", action="store_true", help="skip the largest sizes")
    ap.add_argument("--min-time", type=float, default=0.5, metavar="S",
                    help="repeat each exploration until it took S seconds (default 0.5)")
    ap.add_argument("--only", metavar="NAME", action="append",
                    help=f"only these programs (of: {', '.join(REGISTRY)})")
    args = ap.parse_args(argv)

    suite = [(n, s) for n, s in SUITE
             if (not args.quick or (n, s) not in QUICK) and (not args.only or n in args.only)]
    if GOAL_PROGRAM not in suite:
        suite.append(GOAL_PROGRAM)
    rows = [measure(n, s, args.min_time) for n, s in suite]
    goal_row = next(r for r in rows if r.program == label(*GOAL_PROGRAM))
    goal = {"program": goal_row.program, "threads": goal_row.threads,
            "events_per_s": goal_row.events_per_s, "target": GOAL_EVENTS_PER_S,
            "met": goal_row.events_per_s >= GOAL_EVENTS_PER_S}
    prof = profile(*PROFILE_PROGRAM) if args.profile else None
    sampled = sample(*PROFILE_PROGRAM) if args.profile else None

    if args.json:
        out: dict[str, Any] = {"environment": environment(), "strategy": "dpor",
                               "rows": [asdict(r) for r in rows], "goal": goal}
        if prof is not None:
            out["profile"] = prof
            out["sampled_profile"] = sampled
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0

    from rich.console import Console
    from rich.table import Table

    # Piped output gets rich's default 80 columns, too narrow for these tables.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    table = Table(title="DPOR (source sets + sleep sets), sequential consistency, one core",
                  caption=f"rates over >= {args.min_time:g} s of repeated runs")
    for col, just in [("program", "left"), ("threads", "right"), ("verdict", "left"),
                      ("executions", "right"), ("blocked", "right"),
                      ("visible events", "right"), ("ev/exec", "right"),
                      ("seconds", "right"), ("executions/s", "right"),
                      ("visible events/s", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.program, str(r.threads), r.verdict, f"{r.executions:,}",
                      f"{r.blocked:,}", f"{r.events:,}", f"{r.events_per_execution:.1f}",
                      f"{r.seconds:.3f}", f"{r.executions_per_s:,.0f}",
                      f"{r.events_per_s:,.0f}")
    console.print(table)
    env = environment()
    console.print(f"Python {env['python']} ({env['implementation']}), greenlet "
                  f"{env['greenlet']}, {env['machine']}")
    mark = "[green]met[/green]" if goal["met"] else "[red]NOT met[/red]"
    console.print(f"Goal: >= {GOAL_EVENTS_PER_S:,} visible events/s on a 3-thread program: "
                  f"{goal['program']} ({goal['threads']} threads) runs "
                  f"{goal['events_per_s']:,.0f} events/s: {mark}")
    if prof is not None:
        pt = Table(title=f"cProfile of {prof['program']}: {prof['executions']:,} executions, "
                         f"{prof['events']:,} events, {prof['seconds_profiled']:.2f} s "
                         "under the profiler; top 10 by own time")
        for col in ("function", "calls", "tottime s", "share", "cumtime s"):
            pt.add_column(col, justify="left" if col == "function" else "right")
        for e in prof["top"]:
            pt.add_row(e["function"], f"{e['calls']:,}", f"{e['tottime']:.3f}",
                       f"{e['share']:.0%}", f"{e['cumtime']:.3f}")
        console.print(pt)
        console.print("(cumtime, and the split of time between the scheduler and the "
                      "threads, are unreliable under greenlets: see bench/README.md)")
    if sampled is not None:
        st = Table(title=f"Sampled (SIGPROF) profile of {sampled['program']}: "
                         f"{sampled['samples']:,} samples over {sampled['runs']} runs; "
                         "top 10 by self time")
        for col in ("function", "samples", "share"):
            st.add_column(col, justify="left" if col == "function" else "right")
        for e in sampled["top"]:
            st.add_row(e["function"], f"{e['samples']:,}", f"{e['share']:.0%}")
        console.print(st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
