"""What an exploration reports: events, violations and the exploration summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

VIOLATION_KINDS = (
    "assertion",
    "exception",
    "hang",
    "deadlock",
    "step-limit",
    "nondeterminism",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One visible operation of one thread, as executed.

    ``reads`` and ``writes`` are the ids of the cells the event read and wrote: two events
    are *dependent* when one writes a cell the other reads or writes.  A failed
    ``compare_exchange`` only reads; a fence touches no cell under sequential consistency.
    """

    step: int
    thread: int
    thread_name: str
    op: str
    cell_names: tuple[str, ...]
    reads: frozenset[int]
    writes: frozenset[int]
    value: Any
    source: str | None = None

    def describe(self) -> str:
        cells = ",".join(self.cell_names)
        where = f"  ({self.source})" if self.source else ""
        if self.op in ("load", "wait"):
            what = f"{self.op} {cells} -> {self.value!r}"
        elif self.op in ("store", "flush"):
            what = f"{self.op} {cells} := {self.value!r}"
        elif self.op in ("fence", "join"):
            what = f"{self.op} {self.value}" if self.value is not None else self.op
            if cells:
                what += f" {cells}"
        else:
            old, new = self.value
            what = f"{self.op} {cells}: {old!r} -> {new!r}"
        return f"{self.step:4d}  {self.thread_name:<12} {what}{where}"

    def depends_on(self, other: Event) -> bool:
        return bool(
            self.writes & (other.reads | other.writes) or other.writes & self.reads
        )


@dataclass
class Violation:
    """A property broken by one execution, with what it takes to see it again."""

    kind: str
    message: str
    schedule: str
    trace: list[Event] = field(default_factory=list)
    outcome: Any = None

    def format(self) -> str:
        lines = [f"{self.kind}: {self.message}", f"schedule: {self.schedule}", "trace:"]
        lines += ["  " + e.describe() for e in self.trace]
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message} [schedule {self.schedule}]"


@dataclass
class Exploration:
    """The result of :func:`vcpureq.model.explore`."""

    memory_model: str
    strategy: str
    executions: int = 0
    blocked: int = 0
    complete: bool = False
    outcomes: Counter[Any] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    elapsed: float = 0.0
    events: int = 0
    max_depth: int = 0
    preemption_bound: int | None = None
    stopped_because: str | None = None
    #: executions (dpor) whose daemon threads were still running after the step budget
    #: of the extension past main's end: exhaustive only up to that bound
    extension_cuts: int = 0

    @property
    def ok(self) -> bool:
        return self.complete and not self.violations

    def summary(self) -> str:
        verdict = (
            "verified"
            if self.ok
            else f"{len(self.violations)} violation(s)"
            if self.violations
            else f"incomplete ({self.stopped_because})"
        )
        cut = (f"; {self.extension_cuts} with a daemon cut after main's end"
               if self.extension_cuts else "")
        return (
            f"{verdict}: {self.executions} executions ({self.blocked} blocked{cut}), "
            f"{self.events} events, {self.elapsed:.2f} s [{self.strategy}, {self.memory_model}]"
        )
