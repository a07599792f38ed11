"""DPOR with daemon threads: an execution stops when the last non-daemon thread ends, so a
daemon that is still enabled then has a pending operation that never ran.  Source-DPOR
must treat it as next[E](p) and race it against the execution, or the orders where the
daemon runs earlier are never tried (found in session 7: ``dpor`` gave {0} where
``naive`` gave {0, 1} for the first program below).

Every test compares the outcome sets of ``dpor`` with ``naive`` (every interleaving), under
SC, TSO and PSO, and the last one also with ``wait_until`` (outcomes and violation kinds:
a wait that can stay false for ever is a hang in both)."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vcpureq.model import Atomic, spawn, wait_until
from vcpureq.model.explorer import explore

#: Generated programs whose naive space is larger than this are not compared (a few of
#: the PSO ones have millions of interleavings): hypothesis draws another.
NAIVE_LIMIT = 20_000


def outcomes(program: Any, strategy: str, model: str = "sc", *,
             generated: bool = False) -> set[Any]:
    """The outcome set; for a ``generated`` program, one whose naive space is over
    NAIVE_LIMIT is rejected (hypothesis draws another)."""
    limit = NAIVE_LIMIT if generated and strategy == "naive" else None
    r = explore(program, strategy=strategy, memory_model=model, max_executions=limit)
    assert not r.violations, r.violations[0]
    if generated:
        assume(r.complete)
    assert r.complete
    return set(r.outcomes)


def daemon_store_before_main_load() -> int:
    x = Atomic(0, name="x")
    spawn(lambda: x.store(1), daemon=True)
    return x.load()


def daemon_flag_then_data() -> tuple[int, int]:
    data = Atomic(0, name="data")
    flag = Atomic(0, name="flag")

    def writer() -> None:
        data.store(1)
        flag.store(1)

    spawn(writer, daemon=True)
    return flag.load(), data.load()


def daemon_waits_then_writes() -> int:
    go = Atomic(0, name="go")
    out = Atomic(0, name="out")

    def helper() -> None:
        wait_until(lambda: go.load() == 1)
        out.store(7)

    spawn(helper, daemon=True)
    go.store(1)
    return out.load()


def test_daemon_store_is_tried_before_the_main_load() -> None:
    assert outcomes(daemon_store_before_main_load, "dpor") == {0, 1}
    assert outcomes(daemon_store_before_main_load, "naive") == {0, 1}


def test_daemon_message_passing() -> None:
    want = {(0, 0), (0, 1), (1, 1)}
    assert outcomes(daemon_flag_then_data, "naive") == want
    assert outcomes(daemon_flag_then_data, "dpor") == want


def test_daemon_enabled_by_main() -> None:
    assert outcomes(daemon_waits_then_writes, "dpor") == {0, 7}


Op = tuple[str, int, int]
NCELLS = 2


def run_ops(cells: list[Atomic], ops: list[Op]) -> tuple[int, ...]:
    """One thread's generated operations; returns what it read."""
    seen = []
    for kind, c, v in ops:
        if kind == "load":
            seen.append(cells[c].load())
        elif kind == "store":
            cells[c].store(v)
        elif kind == "add":
            seen.append(cells[c].fetch_add(v))
        else:
            cell = cells[c]
            wait_until(lambda cell=cell, v=v: cell.load() >= v)
    return tuple(seen)


def generated(data: st.DataObject, *, max_threads: int, max_value: int, waits: bool,
              max_main: int) -> tuple[Any, str]:
    """A program of up to ``max_threads`` spawned threads (each daemon or not) and main,
    over two cells, and the memory model to run it under."""
    op: st.SearchStrategy[Op] = st.tuples(
        st.sampled_from(["load", "store", "add"]), st.integers(0, NCELLS - 1),
        st.integers(1, max_value))
    if waits:
        op = st.one_of(op, st.tuples(st.just("wait"), st.integers(0, NCELLS - 1),
                                     st.integers(1, max_value)))
    nthreads = data.draw(st.integers(1, max_threads), label="threads")
    bodies = [data.draw(st.lists(op, min_size=1, max_size=3), label=f"t{i}")
              for i in range(nthreads)]
    daemons = [data.draw(st.booleans(), label=f"daemon{i}") for i in range(nthreads)]
    main_ops = data.draw(st.lists(op, min_size=1, max_size=max_main), label="main")
    model = data.draw(st.sampled_from(["sc", "tso", "pso"]), label="model")

    def program() -> tuple[Any, ...]:
        cells = [Atomic(0, name=f"c{i}") for i in range(NCELLS)]
        for body, daemon in zip(bodies, daemons, strict=True):
            spawn(run_ops, cells, body, daemon=daemon)
        return run_ops(cells, main_ops)

    return program, model


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.data())
def test_dpor_matches_naive_with_daemons(data: st.DataObject) -> None:
    program, model = generated(data, max_threads=3, max_value=3, waits=False, max_main=3)
    assert (outcomes(program, "dpor", model, generated=True)
            == outcomes(program, "naive", model, generated=True))

def daemon_chooses_after_main_ends() -> int:
    x = Atomic(0, name="x")

    def helper() -> None:
        from vcpureq.model import choose
        x.store(1 + choose(2))
        x.store(5)

    spawn(helper, daemon=True)
    return x.load()


def test_daemon_choose_in_the_extension_makes_no_decision() -> None:
    # The extension after main's end must not add decisions to the tree: the outcomes
    # are every value x can hold when main loads it, each once per trace.
    assert outcomes(daemon_chooses_after_main_ends, "naive") == {0, 1, 2, 5}
    assert outcomes(daemon_chooses_after_main_ends, "dpor") == {0, 1, 2, 5}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.data())
def test_dpor_matches_naive_with_waits_under_every_model(data: st.DataObject) -> None:
    """Programs whose threads may wait for a cell to reach a value: the same outcomes and
    the same kinds of violation (hang/deadlock) under dpor as under naive."""
    program, model = generated(data, max_threads=2, max_value=2, waits=True, max_main=2)

    def everything(strategy: str) -> tuple[set[Any], set[str]]:
        r = explore(program, strategy=strategy, memory_model=model, stop_on_violation=False,
                    max_executions=NAIVE_LIMIT if strategy == "naive" else None)
        assume(r.complete)
        return set(r.outcomes), {v.kind for v in r.violations}

    assert everything("dpor") == everything("naive")

def spinning_daemon() -> int:
    x = Atomic(0, name="x")
    ticks = Atomic(0, name="ticks")  # the spinner's own cell: no race with main

    def spinner() -> None:
        while True:
            ticks.fetch_add(1)

    spawn(spinner, daemon=True)
    x.store(1)
    return x.load()


def test_a_daemon_that_never_blocks_is_cut_and_reported() -> None:
    # (A spinner that races with main is a step-limit violation instead: DPOR tries it
    # before main, and an unfair schedule lets it spin for ever.)
    r = explore(spinning_daemon)
    assert r.complete and not r.violations
    assert r.extension_cuts == r.executions == 1
    assert "cut after main's end" in r.summary()


def test_daemons_that_block_are_never_cut() -> None:
    r = explore(daemon_waits_then_writes)
    assert r.complete and r.extension_cuts == 0
