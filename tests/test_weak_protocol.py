"""The request protocol under weak memory (issue 3, section 4).

The generic architecture keeps every property under TSO and PSO; dropping the full
barrier after ``mode = IN_GUEST_MODE`` loses a request under TSO although SC cannot show
it; dropping ``smp_wmb`` in ``make_request`` lets the handler read a stale payload under
PSO although TSO cannot show it.  Every counterexample replays exactly.
"""

from __future__ import annotations

import pytest

from vcpureq.model import explore, replay_execution
from vcpureq.scenarios import SCENARIOS


def _explore(protocol: str, scenario: str, model: str):  # type: ignore[no-untyped-def]
    program = SCENARIOS[scenario].program(protocol)
    return program, explore(program, memory_model=model)


@pytest.mark.parametrize("model", ["tso", "pso"])
@pytest.mark.parametrize("scenario", ["async-request", "sync-request", "payload"])
def test_generic_keeps_every_property_under_weak_memory(model: str, scenario: str) -> None:
    _, r = _explore("generic", scenario, model)
    assert r.complete and not r.violations, r.violations
    assert r.executions > 1
    assert r.memory_model == model


def test_missing_mb_after_mode_is_invisible_under_sc() -> None:
    _, r = _explore("generic-no-mb-after-mode", "async-request", "sc")
    assert r.ok


def test_missing_mb_after_mode_loses_a_request_under_tso() -> None:
    program, r = _explore("generic-no-mb-after-mode", "async-request", "tso")
    (v,) = r.violations
    assert "the request is lost" in v.message
    # The counterexample needs the store buffer: the vCPU's IN_GUEST_MODE is flushed
    # only after the requester read the mode.
    ops = [(e.op, e.cell_names) for e in v.trace]
    cas = ops.index(("cas", ("vcpu0.mode",)))
    flush = ops.index(("flush", ("vcpu0.mode",)))
    assert cas < flush
    trace, _ex, end = replay_execution(program, v.schedule)
    assert end == (v.kind, v.message)
    assert trace == v.trace


def test_missing_wmb_in_make_request_is_invisible_under_tso() -> None:
    _, r = _explore("generic-no-wmb-in-make-request", "payload", "tso")
    assert r.ok


def test_missing_wmb_in_make_request_gives_a_stale_payload_under_pso() -> None:
    program, r = _explore("generic-no-wmb-in-make-request", "payload", "pso")
    (v,) = r.violations
    assert "stale data" in v.message
    trace, _ex, end = replay_execution(program, v.schedule)
    assert end == (v.kind, v.message)
    assert trace == v.trace


def test_correct_make_request_keeps_the_payload_under_pso() -> None:
    _, r = _explore("generic", "payload", "pso")
    assert r.ok
