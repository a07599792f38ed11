"""Run catalogue cases and turn explorations into verdicts."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from collections.abc import Callable, Sequence
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


# ---------------------------------------------------------------------------- in parallel
# Cases hold closures (programs built by the scenarios), which do not pickle: worker
# processes are forked from the parent and find the case list here, by index; only the
# Exploration (plain data) comes back.
_FORKED_CASES: list[tuple[Case, dict[str, Any]]] = []


def _run_forked(index: int) -> tuple[int, Exploration | str]:
    case, kwargs = _FORKED_CASES[index]
    try:
        exploration = run_case(case, **kwargs).exploration
        pickle.dumps(exploration)  # outcomes of a user's program may not pickle
        return index, exploration
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which reruns the case
        return index, f"{type(e).__name__}: {e}"


def run_cases(cases: Sequence[tuple[Case, dict[str, Any]]], jobs: int = 1,
              on_verdict: Callable[[int, Verdict], Any] | None = None) -> list[Verdict]:
    """Run ``(case, run_case keyword arguments)`` pairs, one after the other or in
    ``jobs`` forked processes (Linux); returns the verdicts in the order of ``cases``.
    ``on_verdict(index, verdict)`` is called as each finishes. A case whose result cannot
    come back (an exception, an outcome that does not pickle) is run again here, so its
    error is the usual one."""
    if jobs <= 1 or len(cases) <= 1 or "fork" not in mp.get_all_start_methods():
        out = []
        for i, (case, kwargs) in enumerate(cases):
            v = run_case(case, **kwargs)
            out.append(v)
            if on_verdict is not None:
                on_verdict(i, v)
        return out
    _FORKED_CASES[:] = list(cases)
    results: dict[int, Verdict] = {}
    try:
        with mp.get_context("fork").Pool(min(jobs, len(cases))) as pool:
            for index, got in pool.imap_unordered(_run_forked, range(len(cases))):
                case, kwargs = cases[index]
                if isinstance(got, str):
                    v = run_case(case, **kwargs)
                else:
                    v = Verdict(case, got, user=kwargs.get("user", False))
                results[index] = v
                if on_verdict is not None:
                    on_verdict(index, v)
    finally:
        _FORKED_CASES.clear()
    return [results[i] for i in range(len(cases))]
