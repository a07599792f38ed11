"""Terminal output: the verdict table and counterexample traces (rich)."""

from __future__ import annotations

from rich.table import Table

from ..checking import Verdict


def verdict_table(verdicts: list[Verdict]) -> Table:
    table = Table(title="vcpureq check", header_style="bold")
    for col, just in (("protocol", "left"), ("scenario", "left"), ("model", "left"),
                      ("verdict", "left"), ("executions", "right"), ("seconds", "right"),
                      ("expected", "center")):
        table.add_column(col, justify=just,  # type: ignore[arg-type]
                         no_wrap=col not in ("protocol", "scenario"))
    for v in verdicts:
        verdict = v.verdict
        if v.violation is not None:
            verdict = f"counterexample ({v.violation.kind})"
        style = "green" if verdict == "verified" else "yellow" if v.violation else "red"
        table.add_row(
            v.case.protocol, v.case.scenario, v.exploration.memory_model,
            f"[{style}]{verdict}[/]", f"{v.exploration.executions:,}",
            f"{v.exploration.elapsed:.2f}",
            "[green]yes[/]" if v.expected else "[bold red]NO[/]",
        )
    return table


def what_broke(verdicts: list[Verdict], width: int = 160) -> list[str]:
    """One line per counterexample: which case, and what broke in words."""
    lines = []
    for v in verdicts:
        if v.violation is None:
            continue
        message = " ".join(v.violation.message.split())
        if len(message) > width:
            message = message[: width - 1] + "…"
        lines.append(f"{v.case.name} [{v.exploration.memory_model}]: {message}")
    return lines


def counterexample_text(v: Verdict) -> str:
    viol = v.violation
    if viol is None:
        return f"{v.case.name}: no counterexample\n"
    lines = [
        f"protocol:     {v.case.protocol}",
        f"scenario:     {v.case.scenario}",
        f"memory model: {v.exploration.memory_model}",
        f"property:     {viol.kind}",
        f"what broke:   {viol.message}",
        f"schedule:     {viol.schedule}",
        "",
    ]
    if v.case.explain is not None:
        lines += ["in words:", *("  " + line for line in v.case.explain(viol).splitlines()),
                  ""]
    lines += ["trace (step, thread, operation, source):"]
    lines += ["  " + e.describe() for e in viol.trace]
    return "\n".join(lines) + "\n"
