"""The weak memory models of `vcpureq.model.explore` against a naive reference.

tests/weak_reference.py interprets straight-line data programs under "sc", "tso" and "pso"
by enumerating every state of an operational machine (threads, store buffers, flushes as
separate steps). Part (a) checks that reference on hand-derived cases; part (b) generates
programs with hypothesis and checks that the explorer finds exactly the reference's
outcome set, completely and without violations, with DPOR and (on a sample) naive search;
part (c) checks that DPOR never explores two equivalent executions.

Under "pso" a relaxed/acquire read-modify-write must also wait for the stores of older wmb
epochs (``test_pso_wmb_orders_a_later_relaxed_rmw``; the explorer once let it overtake
them). ``EXPLORER_PSO_RMW_SKIPS_WMB = True`` would tolerate exactly that weaker behaviour
in the property tests (the reference computes it with ``rmw_waits_for_older_epochs=False``);
it is False: the explorer must match the reference exactly.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from weak_reference import (
    FENCE_KINDS,
    MODELS,
    ORDERS,
    RMW_KINDS,
    format_program,
    outcomes,
    to_vcpureq_program,
)

from vcpureq.model import Event, Exploration, explore

EXPLORER_PSO_RMW_SKIPS_WMB = False

R, A, L, F = "relaxed", "acquire", "release", "full"
X, Y, Z = 0, 1, 2


def results(prog: Any, model: str, ncells: int | None = None) -> set[Any]:
    """Just the per-thread results of the reference's outcomes."""
    return {res for res, _ in outcomes(prog, model, ncells)}


def finals(prog: Any, model: str, ncells: int | None = None) -> set[Any]:
    return {fin for _, fin in outcomes(prog, model, ncells)}


# --------------------------------------------------------------------------------------------
# (a) The reference on hand-derived cases
# --------------------------------------------------------------------------------------------

SB = ((("store", X, 1, R), ("load", Y, R)), (("store", Y, 1, R), ("load", X, R)))
MP = ((("store", X, 1, R), ("store", Y, 1, R)), (("load", Y, R), ("load", X, R)))


def test_reference_store_buffering() -> None:
    # SC forbids both loads reading 0; a store buffer allows it (x86-TSO, CACM 2010 §2).
    sc = {((0,), (1,)), ((1,), (0,)), ((1,), (1,))}
    assert results(SB, "sc") == sc
    assert results(SB, "tso") == sc | {((0,), (0,))}
    assert results(SB, "pso") == sc | {((0,), (0,))}
    assert finals(SB, "tso") == {(1, 1)}  # exit drains every buffer


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("barrier", [
    ("fence", "mb"),
    ("rmw", "fadd", Z, 0, F),  # a fully ordered RMW (on another cell) drains
])
def test_reference_store_buffering_with_drains(model: str, barrier: Any) -> None:
    prog = (
        (("store", X, 1, R), barrier, ("load", Y, R)),
        (("store", Y, 1, R), barrier, ("load", X, R)),
    )
    got = {(res[0][-1], res[1][-1]) for res, _ in outcomes(prog, model)}
    assert got == {(0, 1), (1, 0), (1, 1)}


def test_reference_full_store_is_seq_cst() -> None:
    prog = ((("store", X, 1, F), ("load", Y, R)), (("store", Y, 1, F), ("load", X, R)))
    for model in MODELS:
        assert ((0,), (0,)) not in results(prog, model)


@pytest.mark.parametrize("barrier", ["wmb", "rmb", "mb__before_atomic", "mb__after_atomic"])
def test_reference_weaker_fences_do_not_drain_under_tso(barrier: str) -> None:
    prog = (
        (("store", X, 1, R), ("fence", barrier), ("load", Y, R)),
        (("store", Y, 1, R), ("fence", barrier), ("load", X, R)),
    )
    assert ((0,), (0,)) in results(prog, "tso")
    # Under PSO the *_atomic fences drain, wmb and rmb still do not.
    assert (((0,), (0,)) in results(prog, "pso")) == (barrier in ("wmb", "rmb"))


def test_reference_message_passing() -> None:
    sc = {((), (0, 0)), ((), (0, 1)), ((), (1, 1))}
    assert results(MP, "sc") == sc
    assert results(MP, "tso") == sc  # one FIFO buffer: stores reach memory in order
    assert results(MP, "pso") == sc | {((), (1, 0))}  # per-cell buffers: y before x
    wmb = ((("store", X, 1, R), ("fence", "wmb"), ("store", Y, 1, R)), MP[1])
    assert results(wmb, "pso") == sc
    release = ((("store", X, 1, R), ("store", Y, 1, L)), MP[1])
    assert results(release, "pso") == sc


def test_reference_own_store_is_forwarded() -> None:
    prog = ((("store", X, 1, R), ("load", X, R)), (("load", X, R),))
    for model in MODELS:
        assert {res[0] for res in results(prog, model)} == {(1,)}
    # the same cell twice: the newest buffered store wins, and coherence keeps them in order
    prog2 = ((("store", X, 1, R), ("store", X, 2, R), ("load", X, R)),
             (("load", X, R), ("load", X, R)))
    for model in MODELS:
        got = results(prog2, model)
        assert {res[0] for res in got} == {(2,)}
        assert {res[1] for res in got} == {(a, b) for a in (0, 1, 2) for b in (0, 1, 2) if a <= b}
        assert finals(prog2, model) == {(2,)}


def test_reference_relaxed_rmw_under_pso_waits_for_its_cell_only() -> None:
    # t1: x=1; y=1 (both buffered); fetch_or(y) relaxed waits for y's buffer only, so the
    # reader can see y's RMW result (3) before x=1.
    prog = (
        (("store", X, 1, R), ("store", Y, 1, R), ("rmw", "for", Y, 2, R)),
        (("load", Y, R), ("load", X, R)),
    )
    assert ((1,), (3, 0)) in results(prog, "pso")
    assert ((1,), (3, 0)) not in results(prog, "tso")  # TSO: every RMW drains
    full = ((prog[0][0], prog[0][1], ("rmw", "for", Y, 2, F)), prog[1])
    assert ((1,), (3, 0)) not in results(full, "pso")


def test_reference_wmb_orders_a_later_rmw_under_pso() -> None:
    # smp_wmb(); set_bit(): the RMW's write is a store after the barrier (SPARC v8 App. K:
    # STBAR orders stores and atomic load-stores), so it cannot overtake x=1.
    prog = (
        (("store", X, 1, R), ("fence", "wmb"), ("rmw", "for", Y, 1, R)),
        (("load", Y, R), ("load", X, R)),
    )
    assert ((0,), (1, 0)) not in results(prog, "pso")
    weaker = outcomes(prog, "pso", rmw_waits_for_older_epochs=False)
    assert (((0,), (1, 0)), (1, 1)) in weaker


def test_reference_2_2w() -> None:
    prog = ((("store", X, 1, R), ("store", Y, 2, R)), (("store", Y, 1, R), ("store", X, 2, R)))
    sc = {(1, 2), (2, 1), (2, 2)}
    assert finals(prog, "sc") == sc
    assert finals(prog, "tso") == sc
    assert finals(prog, "pso") == sc | {(1, 1)}


def test_reference_cas() -> None:
    prog = ((("cas", X, 0, 1, R),), (("cas", X, 0, 2, R),))
    for model in MODELS:
        # the first succeeds and the second fails, reading the first one's value
        assert outcomes(prog, model) == {(((0,), (1,)), (1,)), (((2,), (0,)), (2,))}


def test_reference_sc_agrees_with_the_sc_bruteforce() -> None:
    """tests/bruteforce.py is another independent SC reference: same outcomes."""
    bruteforce = pytest.importorskip("bruteforce")
    names = {"xchg": "exchange", "fadd": "fetch_add", "for": "fetch_or", "fand": "fetch_and"}

    def convert(op: Any) -> Any:
        if op[0] == "load":
            return ("load", op[1])
        if op[0] == "store":
            return ("store", op[1], op[2])
        if op[0] == "rmw":
            return (names[op[1]], op[2], op[3])
        if op[0] == "cas":
            return ("cas", op[1], op[2], op[3])
        return op

    progs = [SB, MP,
             ((("rmw", "fadd", X, 1, R), ("cas", Y, 0, 2, F)),
              (("cas", X, 1, 5, A), ("rmw", "xchg", Y, 3, L), ("load", X, R)),
              (("fence", "mb"), ("rmw", "fand", X, 4, R)))]
    for prog in progs:
        other = bruteforce.outcome_set(tuple(tuple(convert(op) for op in t) for t in prog))
        theirs = {(tuple(tuple(v for v in r if v is not None) for r in res), tuple(fin))
                  for res, fin, blocked in other if not blocked}
        assert outcomes(prog, "sc") == theirs


# --------------------------------------------------------------------------------------------
# (b) The explorer against the reference
# --------------------------------------------------------------------------------------------


def buffered_stores(prog: Any) -> int:
    return sum(1 for t in prog for op in t if op[0] == "store" and op[3] != F)


@st.composite
def programs(draw: Any, max_threads: int = 3, max_ops: int = 4,
             max_buffered: int | None = None) -> tuple[int, Any]:
    ncells = draw(st.integers(2, 3))
    cell = st.integers(0, ncells - 1)
    order = st.sampled_from(ORDERS)
    load = st.tuples(st.just("load"), cell, order)
    store = st.tuples(st.just("store"), cell, st.integers(1, 2), order)
    rmw = st.tuples(st.just("rmw"), st.sampled_from(RMW_KINDS), cell, st.integers(1, 2), order)
    cas = st.tuples(st.just("cas"), cell, st.integers(0, 1), st.integers(1, 2), order)
    fence = st.tuples(st.just("fence"), st.sampled_from(FENCE_KINDS))
    op = st.one_of(store, load, store, load, rmw, cas, fence)
    thread = st.lists(op, min_size=1, max_size=max_ops).map(tuple)
    progs = st.lists(thread, min_size=2, max_size=max_threads).map(tuple)
    if max_buffered is not None:
        progs = progs.filter(lambda p: buffered_stores(p) <= max_buffered)
    return ncells, draw(progs)


@st.composite
def writer_reader_programs(draw: Any) -> tuple[int, Any]:
    """Message-passing shapes, where store->store order is what is observed: one or two
    writers (stores, RMWs and fences only) and a reader loading every cell."""
    ncells = draw(st.integers(2, 3))
    cell = st.integers(0, ncells - 1)
    order = st.sampled_from(ORDERS)
    store = st.tuples(st.just("store"), cell, st.integers(1, 2), order)
    rmw = st.tuples(st.just("rmw"), st.sampled_from(RMW_KINDS), cell, st.integers(1, 2), order)
    cas = st.tuples(st.just("cas"), cell, st.just(0), st.integers(1, 2), order)
    fence = st.tuples(st.just("fence"), st.sampled_from(FENCE_KINDS))
    writer = st.lists(st.one_of(store, store, rmw, cas, fence), min_size=2, max_size=4).map(tuple)
    writers = draw(st.lists(writer, min_size=1, max_size=2))
    cells = draw(st.permutations(range(ncells)))
    loads = tuple(("load", c, draw(order)) for c in cells)
    return ncells, (*writers, loads)


def _known_pso_rmw_discrepancy(prog: Any, model: str, ncells: int, got: set[Any]) -> bool:
    """The explorer's outcomes are those of the weaker PSO rule (RMWs ignore wmb epochs)."""
    return (EXPLORER_PSO_RMW_SKIPS_WMB and model == "pso"
            and got == outcomes(prog, model, ncells, rmw_waits_for_older_epochs=False))


def check_against_reference(ncells: int, prog: Any, model: str,
                            strategy: str = "dpor") -> Exploration:
    note(f"{model} {strategy}: {format_program(prog)}")
    expected = outcomes(prog, model, ncells)
    ex = explore(to_vcpureq_program(prog, ncells), memory_model=model, strategy=strategy)
    assert ex.complete and not ex.violations, [v.format() for v in ex.violations]
    got = set(ex.outcomes)
    if got != expected and _known_pso_rmw_discrepancy(prog, model, ncells, got):
        return ex
    assert got == expected, (
        f"{model}/{strategy} {format_program(prog)}: missing {sorted(expected - got)}, "
        f"extra {sorted(got - expected)}"
    )
    return ex


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=programs())
def test_dpor_matches_reference(model: str, case: tuple[int, Any]) -> None:
    ncells, prog = case
    check_against_reference(ncells, prog, model, "dpor")


@pytest.mark.parametrize("model", ["tso", "pso"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=writer_reader_programs())
def test_dpor_matches_reference_on_message_passing_shapes(
        model: str, case: tuple[int, Any]) -> None:
    ncells, prog = case
    check_against_reference(ncells, prog, model, "dpor")


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Naive search is exponential: every flush is one more event to interleave. Two threads
# with at most three buffered stores stay under a few seconds each.
@given(case=programs(max_threads=2, max_ops=3, max_buffered=3))
def test_naive_matches_reference_and_dpor(model: str, case: tuple[int, Any]) -> None:
    ncells, prog = case
    naive = check_against_reference(ncells, prog, model, "naive")
    dpor = explore(to_vcpureq_program(prog, ncells), memory_model=model, strategy="dpor")
    assert set(naive.outcomes) == set(dpor.outcomes)
    # naive runs every interleaving, DPOR one per equivalence class
    assert dpor.executions <= naive.executions


# --------------------------------------------------------------------------------------------
# (c) DPOR explores each Mazurkiewicz trace once
# --------------------------------------------------------------------------------------------


def trace_key(events: list[Event]) -> Any:
    """Per-thread event sequences plus the order of every dependent cross-thread pair.

    Threads are named, not numbered: a flush actor's id depends on when it was created,
    its name (``t1.sb``, ``t1.sb[x]``) does not."""
    seen: Counter[str] = Counter()
    ids = []
    for e in events:
        ids.append((e.thread_name, seen[e.thread_name]))
        seen[e.thread_name] += 1
    per_thread = tuple(sorted(
        (ids[i], e.op, e.cell_names, repr(e.value)) for i, e in enumerate(events)
    ))
    races = frozenset(
        (ids[i], ids[j])
        for i, a in enumerate(events)
        for j in range(i + 1, len(events))
        if a.thread_name != events[j].thread_name and a.depends_on(events[j])
    )
    return per_thread, races


@pytest.mark.parametrize("model", ["tso", "pso"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=programs(max_threads=3, max_ops=3))
def test_dpor_explores_each_trace_once(model: str, case: tuple[int, Any]) -> None:
    ncells, prog = case
    note(f"{model}: {format_program(prog)}")
    keys: list[Any] = []
    ex = explore(to_vcpureq_program(prog, ncells), memory_model=model,
                 on_execution=lambda outcome, events: keys.append(trace_key(events)))
    assert ex.ok
    dup = [k for k, n in Counter(keys).items() if n > 1]
    assert not dup, f"{len(dup)} trace(s) explored more than once"


# --------------------------------------------------------------------------------------------
# A once-known discrepancy, minimal (hypothesis rarely generates it: about 1 in 1000)
# --------------------------------------------------------------------------------------------

WMB_THEN_RELAXED_RMW = (
    (("store", X, 1, R), ("fence", "wmb"), ("rmw", "for", Y, 1, R)),
    (("load", Y, R), ("load", X, R)),
)


def test_pso_wmb_orders_a_later_relaxed_rmw() -> None:
    # Regression: a relaxed RMW under PSO must wait for stores of older wmb epochs.
    # x=1; smp_wmb(); set_bit(0, y)  ||  r0 = y; r1 = x
    # Reference: (r0, r1) = (1, 0) is impossible (the RMW's write is after the wmb).
    # The explorer used to find t1: [store x, fence wmb, fetch_or y 0->1],
    # t2: [load y -> 1, load x -> 0], then t1.sb[x]: flush x.
    prog = WMB_THEN_RELAXED_RMW
    expected = outcomes(prog, "pso")
    ex = explore(to_vcpureq_program(prog), memory_model="pso")
    assert set(ex.outcomes) == expected
