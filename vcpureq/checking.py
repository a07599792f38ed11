"""Run catalogue cases and turn explorations into verdicts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .catalogue import COUNTEREXAMPLE, VERIFIED, Case
from .model import Exploration, Violation, explore


@dataclass
class Verdict:
    case: Case
    exploration: Exploration
    user: bool = False

    @property
    def verdict(self) -> str:
        if self.exploration.violations:
            return COUNTEREXAMPLE
        if self.exploration.complete:
            return VERIFIED
        return "incomplete"

    @property
    def violation(self) -> Violation | None:
        v = self.exploration.violations
        return v[0] if v else None

    @property
    def property_broken(self) -> str:
        v = self.violation
        if v is None:
            return ""
        return v.kind if v.kind != "assertion" else v.message.split(":")[0]

    @property
    def expected(self) -> bool:
        if self.user:
            return self.verdict == VERIFIED
        if self.verdict != self.case.expect:
            return False
        if self.case.expect == COUNTEREXAMPLE and self.case.expect_property:
            v = self.violation
            return v is not None and self.case.expect_property in f"{v.kind}: {v.message}"
        return True

    def as_dict(self) -> dict[str, Any]:
        e = self.exploration
        v = self.violation
        return {
            "protocol": self.case.protocol,
            "scenario": self.case.scenario,
            "memory_model": e.memory_model,
            "vcpus": self.case.vcpus,
            "verdict": self.verdict,
            "expected_verdict": "verified" if self.user else self.case.expect,
            "as_expected": self.expected,
            "executions": e.executions,
            "blocked": e.blocked,
            "events": e.events,
            "seconds": round(e.elapsed, 3),
            "complete": e.complete,
            "extension_cuts": e.extension_cuts,
            "violation": None if v is None else {
                "kind": v.kind,
                "message": v.message,
                "schedule": v.schedule,
                "trace": [ev.describe() for ev in v.trace],
            },
            "description": self.case.description,
        }


def run_case(case: Case, *, memory_model: str | None = None, strategy: str = "dpor",
             time_limit: float | None = None, progress: Any = None,
             user: bool = False) -> Verdict:
    exploration = explore(
        case.program,
        memory_model=memory_model or case.memory_model,
        strategy=strategy,
        max_steps=case.max_steps,
        time_limit=time_limit,
        progress=progress,
        label=case.name,
    )
    return Verdict(case, exploration, user=user)


def run_cases(cases: Iterable[Case], *, on_verdict: Callable[[Verdict], Any] | None = None,
              **kwargs: Any) -> list[Verdict]:
    out = []
    for case in cases:
        v = run_case(case, **kwargs)
        out.append(v)
        if on_verdict is not None:
            on_verdict(v)
    return out
