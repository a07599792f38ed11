"""Violations replay exactly; each kind of violation is reported as documented.

Every violation the explorer finds in the named programs of vcpureq.examples replays from its
schedule token to the same trace and the same (kind, message).  Then one small program per
violation kind ("exception", "step-limit", "hang", "deadlock", "nondeterminism"), the cases
that must not be violations (a daemon thread left blocked), ``choose``, the memory models,
the "bounded" strategy's preemption bound, and malformed schedule tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from vcpureq.examples import REGISTRY
from vcpureq.examples.classic import lost_update, philosophers, store_buffering
from vcpureq.model import (
    MEMORY_MODELS,
    Atomic,
    Event,
    Exploration,
    ReplayError,
    ScheduleError,
    choose,
    explore,
    replay,
    replay_execution,
    spawn,
    wait_until,
)
from vcpureq.model.explorer import PLANNED_MODELS
from vcpureq.model.schedule import decode

Program = Callable[[], Any]

# --------------------------------------------------------------------------------------------
# Every violation of the named programs replays
# --------------------------------------------------------------------------------------------

# Sizes small enough for a full exploration (stop_on_violation=False) to be quick.
SIZES: dict[str, tuple[int, ...]] = {
    "philosophers": (3,),
    "philosophers-ordered": (3,),
    "indexer": (12,),
    "filesystem": (14,),
    "lastzero": (4,),
    "readers": (3,),
}


def _named_programs() -> list[tuple[str, Program]]:
    return [(name, factory(*SIZES.get(name, ()))) for name, (factory, _) in REGISTRY.items()]


def test_every_violation_of_the_named_programs_replays() -> None:
    found: dict[str, set[str]] = {}
    for name, program in _named_programs():
        r = explore(program, stop_on_violation=False)
        assert r.complete, name
        for v in r.violations:
            found.setdefault(name, set()).add(v.kind)
            trace, _ex, end = replay_execution(program, v.schedule)
            assert end == (v.kind, v.message), (name, v.schedule)
            assert trace == v.trace, (name, v.schedule)
            assert replay(program, v.schedule) == v.trace
            assert replay(program, v.schedule, memory_model="sc") == v.trace
    assert found == {
        "lost-update": {"assertion"},
        "peterson-broken": {"assertion"},
        "philosophers": {"deadlock"},
    }


def test_replay_of_a_schedule_without_violation() -> None:
    # main spawns left (1) and right (2), then joins: both stores, then both loads.
    trace, ex, end = replay_execution(store_buffering, "sc:1.2.1.2.0*2")
    assert end is None
    assert ex.outcome == (1, 1)
    assert [(e.thread_name, e.op, e.value) for e in trace] == [
        ("left", "store", 1), ("right", "store", 1), ("left", "load", 1),
        ("right", "load", 1), ("main", "join", "left"), ("main", "join", "right"),
    ]
    assert [e.step for e in trace] == list(range(6))


# --------------------------------------------------------------------------------------------
# Malformed schedule tokens
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token,message", [
    ("garbage", "no memory model prefix"),
    (":1.2", "no memory model prefix"),
    ("sc:0.x", "cannot read item 'x'"),
    ("sc:1*", "cannot read item '1\\*'"),
    ("sc:7", "thread 7 cannot run at step 0 \\(runnable: \\[1, 2\\]\\)"),
    ("sc:", "ends before the execution does"),
    ("sc:1", "ends before the execution does"),
    ("sc:c1", "decision 0: expected a thread, the token has c1"),
])
def test_malformed_or_wrong_token(token: str, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        replay_execution(lost_update, token)


def test_schedule_error_from_the_decoder() -> None:
    with pytest.raises(ScheduleError, match="cannot read item 'x'"):
        decode("sc:0.x")
    with pytest.raises(ScheduleError, match="no memory model prefix"):
        decode("0.1")
    assert decode("sc:0*3.1.c2") == ("sc", [("t", 0)] * 3 + [("t", 1), ("c", 2)])


def test_replay_under_another_memory_model_is_refused() -> None:
    (v,) = explore(lost_update).violations
    other = next((m for m in MEMORY_MODELS if m != "sc"), "tso")
    with pytest.raises(ReplayError, match="recorded under 'sc'"):
        replay(lost_update, v.schedule, memory_model=other)


# --------------------------------------------------------------------------------------------
# One program per violation kind
# --------------------------------------------------------------------------------------------

_runs = itertools.count()


def nondeterministic() -> int:
    """Which cell main loads first depends on a counter kept across runs."""
    a, b, y = Atomic(0, "a"), Atomic(0, "b"), Atomic(0, "y")
    first = a if next(_runs) % 2 == 0 else b
    t = spawn(lambda: y.store(1), name="writer")
    first.load()
    v = y.load()  # races with the writer: DPOR re-runs main's first load in the next run
    t.join()
    return v


def _check_nondeterminism_violation(r: Exploration) -> None:
    (v,) = r.violations
    assert v.kind == "nondeterminism"
    assert "not deterministic" in v.message
    assert "load a" in v.message or "load b" in v.message


def test_nondeterminism_is_reported() -> None:
    # A nondeterminism violation is not replayed for a trace (it would not replay).
    _check_nondeterminism_violation(explore(nondeterministic))


@pytest.mark.parametrize("strategy", ["naive", "bounded"])
def test_nondeterminism_is_detected_by_every_exhaustive_strategy(strategy: str) -> None:
    r = explore(nondeterministic, strategy=strategy)
    assert [v.kind for v in r.violations] == ["nondeterminism"]


_stamps = itertools.count()


def nondeterministic_value() -> int:
    """The same operations in every run, but the value stored comes from a counter kept
    across runs (as a clock or a random number would): caught where a later run picks
    another thread at a node recorded earlier."""
    x = Atomic(0, "x")
    stamp = next(_stamps)
    spawn(lambda: x.store(stamp), name="stamper", daemon=True)
    return x.load()


@pytest.mark.parametrize("strategy", ["dpor", "naive"])
def test_a_value_computed_from_outside_is_nondeterminism(strategy: str) -> None:
    (v,) = explore(nondeterministic_value, strategy=strategy).violations
    assert v.kind == "nondeterminism"
    assert "stamper" in v.message and "store x (" in v.message


def plain_objects() -> int:
    """Storing fresh objects (whose equality is identity) is not nondeterminism."""
    x = Atomic(None, "x")
    spawn(lambda: x.store(object()), name="writer")
    return 0 if x.load() is None else 1


def test_fresh_objects_are_not_taken_for_nondeterminism() -> None:
    r = explore(plain_objects)
    assert not r.violations and set(r.outcomes) == {0, 1}


def explode() -> None:
    x = Atomic(0, "x")

    def worker() -> None:
        x.store(1)
        raise ValueError("boom")

    spawn(worker, name="worker").join()


def test_exception_in_a_thread() -> None:
    (v,) = explore(explode).violations
    assert v.kind == "exception"
    assert v.message.startswith("thread worker raised ValueError: boom")
    assert "Traceback (most recent call last)" in v.message
    assert "test_replay.py" in v.message and "in worker" in v.message
    assert v.trace[-1].op == "store"
    assert replay_execution(explode, v.schedule)[2] == (v.kind, v.message)


def spin_without_wait() -> None:
    x = Atomic(0, "x")
    while x.load() == 0:  # nobody ever writes x: use wait_until for this
        pass


def test_step_limit_of_a_spin_loop() -> None:
    (v,) = explore(spin_without_wait, max_steps=50).violations
    assert v.kind == "step-limit"
    assert "reached 50 steps" in v.message
    assert v.schedule == "sc:0*50" and len(v.trace) == 50
    trace, _, end = replay_execution(spin_without_wait, v.schedule, max_steps=50)
    assert (trace, end) == (v.trace, (v.kind, v.message))


def test_step_limit_smaller_than_the_program() -> None:
    r = explore(lost_update, max_steps=3)
    assert [v.kind for v in r.violations] == ["step-limit"]
    assert len(r.violations[0].trace) == 3


def _waiter(x: Atomic) -> None:
    wait_until(lambda: x.load() == 1)


def hang_unjoined() -> int:
    x = Atomic(0, "x")
    spawn(_waiter, x, name="waiter")
    return 1


def hang_joined() -> int:
    x = Atomic(0, "x")
    spawn(_waiter, x, name="waiter").join()
    return 1


def daemon_blocked() -> int:
    x = Atomic(0, "x")
    spawn(_waiter, x, name="vcpu", daemon=True)
    return 7


def test_hang_of_one_thread() -> None:
    (v,) = explore(hang_unjoined).violations
    assert v.kind == "hang"
    assert v.message.startswith("nothing can run: waiter blocked in wait_until at ")
    assert "test_replay.py" in v.message


def test_hang_of_a_thread_main_joins() -> None:
    (v,) = explore(hang_joined).violations
    assert v.kind == "hang"
    assert "main blocked in join waiter" in v.message
    assert "waiter blocked in wait_until" in v.message


def test_deadlock_of_several_threads() -> None:
    (v,) = explore(philosophers(2)).violations
    assert v.kind == "deadlock"
    assert "phil0 blocked in wait_until" in v.message
    assert "phil1 blocked in wait_until" in v.message


def test_daemon_thread_blocked_at_the_end_is_fine() -> None:
    r = explore(daemon_blocked)
    assert r.ok and r.executions == 1 and dict(r.outcomes) == {7: 1}


# --------------------------------------------------------------------------------------------
# choose, memory models, strategies
# --------------------------------------------------------------------------------------------


def chooser() -> tuple[int, int]:
    x = Atomic(0, "x")
    v = choose(3)
    t = spawn(lambda: x.store(v + 1), name="t")
    t.join()
    return v, x.load()


@pytest.mark.parametrize("strategy", ["dpor", "naive", "bounded"])
def test_choose_tries_every_value(strategy: str) -> None:
    r = explore(chooser, strategy=strategy)
    assert r.ok
    assert dict(r.outcomes) == {(0, 1): 1, (1, 2): 1, (2, 3): 1}


def test_choose_schedule_replays() -> None:
    trace, ex, end = replay_execution(chooser, "sc:c2.1.0*2")
    assert end is None and ex.outcome == (2, 3)
    assert [e.value for e in trace] == [3, "t", 3]
    with pytest.raises(ReplayError, match=r"choose\(3\) cannot return 7"):
        replay_execution(chooser, "sc:c7.1.0*2")


@pytest.mark.parametrize("token", ["sc:1.0*2", "sc:"])
def test_choose_against_a_thread_decision_is_a_replay_error(token: str) -> None:
    with pytest.raises(ReplayError, match="expected a choice|ends before"):
        replay_execution(chooser, token)


def test_unimplemented_memory_models_name_the_available_ones() -> None:
    for model in PLANNED_MODELS:
        with pytest.raises(NotImplementedError) as info:
            explore(store_buffering, memory_model=model)
        assert model in str(info.value)
        for available in MEMORY_MODELS:
            assert repr(available) in str(info.value) or available in str(info.value)
    with pytest.raises(ValueError, match="unknown memory model 'sparc-rmo'; available: sc"):
        explore(store_buffering, memory_model="sparc-rmo")


@pytest.mark.skipif("tso" not in MEMORY_MODELS, reason="x86-TSO not implemented")
def test_store_buffering_breaks_under_tso() -> None:
    r = explore(store_buffering, memory_model="tso")
    (v,) = r.violations
    assert v.kind == "assertion" and v.schedule.startswith("tso:")
    trace, _, end = replay_execution(store_buffering, v.schedule)
    assert (trace, end) == (v.trace, (v.kind, v.message))


def preemptions(trace: list[Event]) -> int:
    """Context switches away from a thread that could still run.  Valid for programs whose
    only blocking operation is join (the thread joining can run once the joined one has no
    events left)."""
    count = 0
    for k in range(1, len(trace)):
        prev = trace[k - 1].thread
        if trace[k].thread == prev:
            continue
        rest = [e for e in trace[k:] if e.thread == prev]
        if not rest:
            continue  # prev had finished
        nxt = rest[0]
        if nxt.op == "join" and any(e.thread_name == nxt.value for e in trace[k:]):
            continue  # prev was waiting for a thread that had not finished
        count += 1
    return count


def test_bounded_finds_the_lost_update_with_one_preemption() -> None:
    r = explore(lost_update, strategy="bounded", preemption_bound=1)
    assert r.preemption_bound == 1
    (v,) = r.violations
    assert v.kind == "assertion"
    assert preemptions(v.trace) == 1
    assert preemptions(replay(lost_update, v.schedule)) == 1


def test_bounded_without_preemption_misses_it_and_says_so() -> None:
    r = explore(lost_update, strategy="bounded", preemption_bound=0)
    assert r.preemption_bound == 0
    assert not r.violations and not r.complete and not r.ok
    assert r.stopped_because == "preemption bound 0"
    # With no preemption each increment runs alone: only the two serial orders.
    assert dict(r.outcomes) == {2: r.executions}


def test_preemption_counter_on_hand_made_traces() -> None:
    # inc0 load, inc1 load (preempts inc0), inc1 store, inc0 store, main: 2 joins and a load
    assert preemptions(replay(lost_update, "sc:1.2*2.1.0*3")) == 1
    assert preemptions(replay(lost_update, "sc:1*2.2*2.0*3")) == 0
    assert preemptions(replay(lost_update, "sc:1.2.1.2.0*3")) == 2
