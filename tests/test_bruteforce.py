"""`vcpureq.model.explore` against brute force.

Part (a) checks the brute-force reference (tests/bruteforce.py) on hand-computed programs and
on itself (two independent ways of counting Mazurkiewicz traces). Part (b) generates small
straight-line programs with hypothesis and checks that every strategy of the explorer agrees
with naive enumeration of all interleavings: same outcome set, and for DPOR exactly one
complete execution per Mazurkiewicz trace (the very same set of traces).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from bruteforce import (
    FENCE_KINDS,
    Program,
    count_interleavings,
    enumerate_interleavings,
    explorer_observation,
    format_program,
    interleaving_count_bound,
    is_lex_normal,
    lex_normal_count,
    mazurkiewicz_classes,
    outcome_set,
    outcomes,
    to_vcpureq_program,
    trace_key,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

# --------------------------------------------------------------------------------------------
# (a) The reference itself, on hand-computed cases
# --------------------------------------------------------------------------------------------

NO = frozenset()


def loads_of(prog: str) -> set[tuple[Any, ...]]:
    """The set of (results, finals) of non-blocked outcomes, for terse expectations."""
    return {(o[0], o[1]) for o in outcome_set(Program(prog)) if not o[2]}


# program text, interleavings, Mazurkiewicz traces
HAND_COUNTS = [
    ("x=1 | x=2", 2, 2),  # write-write race: two orders
    ("x=1 | y=1", 2, 1),  # disjoint cells: one trace
    ("load(x) | load(x); load(y)", 3, 1),  # loads only
    ("x=1; load(y) | y=1; load(x)", 6, 3),  # store buffering: (0,0) order impossible
    ("x=1; y=1 | load(y); load(x)", 6, 3),  # message passing
    ("fence(mb) | fence(wmb); fence(rmb)", 3, 1),  # fences touch nothing
    ("x=1; fence(mb); load(y) | y=1; fence(mb); load(x)", 20, 3),
    ("cas(x,0,1) | cas(x,0,2)", 2, 2),  # one succeeds, the other fails
    ("cas(x,1,2) | cas(x,1,3)", 2, 1),  # both fail: two reads
    ("cas(x,1,2) | load(x)", 2, 1),  # failed cas is a read
    ("add(x,1) | add(x,1) | add(x,1)", 6, 6),
    ("load(x) | load(x) | x=1", 6, 4),  # each load before or after the store
    ("x=1 | load(x); y=1 | load(y); load(x)", 30, 7),
    # waits: a false evaluation is a read event and disables the thread until a write
    ("x=1 | wait(x==1)", 2, 2),  # wait before the store (2 evaluations) or after (1)
    ("wait(x==0) | x=1", 2, 2),  # wait passes before the store, or blocks for ever after it
    ("wait(x==1) | load(x)", 2, 1),  # never satisfied; both reads
    ("x=0 | wait(x==1)", 2, 2),  # same-value store still wakes the waiter (then false again)
    ("cas(x,1,2) | wait(x==1)", 2, 1),  # a failed cas does not wake it
    ("x=1; x=2 | wait(x==2)", 4, 4),  # wait evaluated before x=1, between, or after x=2
]


@pytest.mark.parametrize(("text", "interleavings", "traces"), HAND_COUNTS)
def test_reference_counts(text: str, interleavings: int, traces: int) -> None:
    prog = Program(text)
    assert count_interleavings(prog) == interleavings
    assert mazurkiewicz_classes(prog) == traces
    assert lex_normal_count(prog) == traces


def test_reference_store_buffering_outcomes() -> None:
    # T0: x=1; r0=y | T1: y=1; r1=x. Under SC r0 == r1 == 0 is impossible.
    assert loads_of("x=1; load(y) | y=1; load(x)") == {
        (((None, 0), (None, 1)), (1, 1)),
        (((None, 1), (None, 0)), (1, 1)),
        (((None, 1), (None, 1)), (1, 1)),
    }


def test_reference_message_passing_outcomes() -> None:
    # Seeing the flag y=1 implies seeing the data x=1.
    got = {res[1] for res, _ in loads_of("x=1; y=1 | load(y); load(x)")}
    assert got == {(0, 0), (0, 1), (1, 1)}


def test_reference_rmw_values() -> None:
    assert loads_of("xchg(x,2) | add(x,1)") == {
        (((0,), (2,)), (3,)),
        (((1,), (0,)), (2,)),
    }
    assert loads_of("or(x,1); and(x,2); load(x)") == {(((0, 1, 0),), (0,))}
    assert loads_of("x=2; or(x,1); and(x,1); load(x)") == {(((None, 2, 3, 1),), (1,))}
    assert loads_of("cas(x,0,1); cas(x,0,2); cas(x,1,2); load(x)") == {(((0, 1, 1, 2),), (2,))}


def test_reference_atomic_increments() -> None:
    # fetch_add never loses an update; every permutation of the old values appears once.
    outs = outcomes("add(x,1) | add(x,1) | add(x,1)")
    assert {o[1] for o in outs} == {(3,)}
    assert len(outs) == 6 and set(outs.values()) == {1}


def test_reference_waits() -> None:
    outs = outcome_set("wait(x==0) | x=1")
    assert outs == {
        (((None,), (None,)), (1,), NO),
        (((), (None,)), (1,), frozenset({0})),
    }
    assert outcome_set("wait(x==1) | load(x)") == {(((), (0,)), (0,), frozenset({0}))}
    # wait(x==2) between the two stores: evaluated once or twice more, never blocked
    assert all(not o[2] for o in outcome_set("x=1; x=2 | wait(x==2)"))
    evs = {len(il.events) for il in enumerate_interleavings("x=1; x=2 | wait(x==2)")}
    assert evs == {3, 4, 5}
    # mutual waiting: each thread waits for the other's store, which comes after its wait
    assert outcome_set("wait(y==1); x=1 | wait(x==1); y=1") == {
        (((), ()), (0, 0), frozenset({0, 1}))
    }


def test_reference_text_form() -> None:
    text = (
        "load(x); x=1; xchg(y,2); cas(z,0,1) | add(x,1); or(y,2); and(z,1) | fence(mb); wait(c3==2)"
    )
    prog = Program(text)
    assert prog == (
        (("load", 0), ("store", 0, 1), ("exchange", 1, 2), ("cas", 2, 0, 1)),
        (("fetch_add", 0, 1), ("fetch_or", 1, 2), ("fetch_and", 2, 1)),
        (("fence", "mb"), ("wait", 3, 2)),
    )
    assert prog.text() == text
    assert repr(prog) == f"Program({text!r})"
    assert prog.num_cells == 4
    assert format_program(prog).splitlines()[2] == "T2: fence(mb); wait(c3==2)"
    with pytest.raises(ValueError):
        Program([[("fence", "nope")]])
    with pytest.raises(ValueError):
        Program([[("store", 0)]])


# --------------------------------------------------------------------------------------------
# Program generation
# --------------------------------------------------------------------------------------------

VALUES = st.integers(0, 2)
RMWS = ["exchange", "fetch_add", "fetch_or", "fetch_and"]


def ops(ncells: int, waits: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    cell = st.integers(0, ncells - 1)
    choices = [
        st.tuples(st.just("load"), cell),
        st.tuples(st.just("store"), cell, VALUES),
        st.tuples(st.sampled_from(RMWS), cell, VALUES),
        st.tuples(st.just("cas"), cell, VALUES, VALUES),
        st.tuples(st.just("fence"), st.sampled_from(FENCE_KINDS)),
    ]
    if waits:
        choices.append(st.tuples(st.just("wait"), cell, VALUES))
    return st.one_of(choices)


@st.composite
def programs(
    draw: st.DrawFn,
    *,
    min_threads: int = 2,
    max_threads: int = 3,
    min_ops: int = 1,
    max_ops: int = 4,
    waits: bool = False,
    require_wait: bool = False,
    budget: int = 2000,
) -> Program:
    """min_threads..max_threads threads of min_ops..max_ops ops over 2-3 cells, with at most
    `budget` interleavings (ignoring wait re-evaluations): the longest thread is cut until the
    program fits. With `require_wait`, one op becomes a wait if none was drawn."""
    ncells = draw(st.integers(2, 3), label="cells")
    nthreads = draw(st.integers(min_threads, max_threads), label="threads")
    threads = [
        draw(st.lists(ops(ncells, waits), min_size=min_ops, max_size=max_ops))
        for _ in range(nthreads)
    ]
    while interleaving_count_bound(threads) > budget:
        longest = max(threads, key=len)
        longest.pop()
    if require_wait and not any(op[0] == "wait" for t in threads for op in t):
        t = draw(st.sampled_from(threads), label="wait thread")
        i = draw(st.integers(0, len(t) - 1), label="wait position")
        t[i] = draw(st.tuples(st.just("wait"), st.integers(0, ncells - 1), VALUES), label="wait")
    return Program(threads)


def has_wait(prog: Program) -> bool:
    return any(op[0] == "wait" for t in prog for op in t)


SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@settings(SETTINGS, max_examples=150)
@given(programs(waits=True, budget=400))
def test_reference_trace_counting_is_consistent(prog: Program) -> None:
    """Two independent counts of traces agree, and a trace determines its outcome."""
    note(format_program(prog))
    by_key: dict[Any, Any] = {}
    normal = 0
    interleavings = list(enumerate_interleavings(prog))
    for il in interleavings:
        key = trace_key(il.events)
        assert by_key.setdefault(key, il.outcome) == il.outcome
        normal += is_lex_normal(il.events)
    assert normal == len(by_key) >= 1
    assert len(by_key) <= len(interleavings)
    if not has_wait(prog):
        assert len(interleavings) == interleaving_count_bound(prog)
        assert all(not il.outcome[2] for il in interleavings)


@settings(SETTINGS, max_examples=50)
@given(programs(waits=True))
def test_reference_text_round_trip(prog: Program) -> None:
    assert Program(prog.text()) == prog
    assert eval(repr(prog), {"Program": Program}) == prog


# --------------------------------------------------------------------------------------------
# (b) The explorer against brute force
# --------------------------------------------------------------------------------------------


def explore(prog: Program, **kwargs: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """Explore `prog`; also return (trace key, outcome) of every execution, from its events
    (see `explorer_observation`; hanging executions included, with their blocked threads)."""
    from vcpureq.model import explore as _explore

    seen: list[tuple[Any, Any]] = []

    def on_execution(outcome: Any, events: list[Any]) -> None:
        seen.append(explorer_observation(prog, outcome, events))

    ex = _explore(to_vcpureq_program(prog), on_execution=on_execution, **kwargs)
    return ex, seen


def log(message: str) -> None:
    """`note` inside a hypothesis test, nothing elsewhere."""
    try:
        note(message)
    except InvalidArgument:
        pass


def check_dpor(prog: Program) -> Any:
    """DPOR explores exactly one execution per Mazurkiewicz trace, with the right outcome.

    An execution where a thread stays blocked is a hang/deadlock violation whose outcome is
    never returned (`explore` reports one violation per kind and place, not per execution),
    so `outcomes` holds the outcomes of the other executions; every execution, hanging or
    not, is checked through its events.
    """
    log(format_program(prog))
    expected = {trace_key(il.events): il.outcome for il in enumerate_interleavings(prog)}
    finished = {o for o in expected.values() if not o[2]}
    hangs = len(finished) < len(set(expected.values()))
    ex, seen = explore(prog, strategy="dpor", stop_on_violation=False)
    log(f"explore: {ex.summary()}; outcomes={dict(ex.outcomes)}")
    log(f"explore: violations={[str(v) for v in ex.violations]}")
    log(f"brute force: {len(expected)} traces; outcomes={set(expected.values())}")
    assert ex.complete
    assert set(ex.outcomes) == finished
    assert {v.kind for v in ex.violations} <= {"hang", "deadlock"}
    assert bool(ex.violations) == hangs
    assert ex.executions == len(seen) == len(expected)
    keys = [k for k, _ in seen]
    assert len(set(keys)) == len(keys), "a trace was explored twice"
    assert dict(seen) == expected
    return ex


@settings(SETTINGS, max_examples=300)
@given(programs())
def test_dpor_against_brute_force(prog: Program) -> None:
    check_dpor(prog)


@settings(SETTINGS, max_examples=150)
@given(programs(waits=True, require_wait=True))
def test_dpor_against_brute_force_with_waits(prog: Program) -> None:
    assert has_wait(prog)
    check_dpor(prog)


@settings(SETTINGS, max_examples=50)
@given(programs(min_threads=3, min_ops=3, waits=True, budget=12_000))
def test_dpor_against_brute_force_larger(prog: Program) -> None:
    """Three threads of three or four ops: thousands of interleavings each."""
    check_dpor(prog)


@settings(SETTINGS, max_examples=30)
@given(programs(waits=True, budget=30))
def test_naive_runs_every_interleaving(prog: Program) -> None:
    """Every interleaving of the visible events, main's joins included (a join is an event,
    enabled once its thread finished); hanging executions are counted but return nothing."""
    note(format_program(prog))
    ex, seen = explore(prog, strategy="naive", stop_on_violation=False)
    expected = outcomes(prog, with_joins=True)
    assert ex.complete
    assert ex.executions == len(seen) == expected.total()
    assert ex.outcomes == Counter({o: n for o, n in expected.items() if not o[2]})
    assert Counter(o for _, o in seen) == expected


@settings(SETTINGS, max_examples=40)
@given(programs(waits=True, budget=200))
def test_bounded_and_random_against_brute_force(prog: Program) -> None:
    note(format_program(prog))
    traces = {trace_key(il.events): il.outcome for il in enumerate_interleavings(prog)}
    finished = {o for o in traces.values() if not o[2]}
    # no bound: raised until no schedule was cut, so exhaustive
    ex, seen = explore(prog, strategy="bounded", stop_on_violation=False)
    assert ex.complete
    assert set(ex.outcomes) == finished
    assert {k for k, _ in seen} == set(traces)
    ex0, seen0 = explore(prog, strategy="bounded", preemption_bound=0, stop_on_violation=False)
    assert ex0.executions >= 1
    assert set(ex0.outcomes) <= finished
    assert all(traces[k] == o for k, o in seen0)
    exr, seenr = explore(prog, strategy="random", seed=7, max_executions=30,
                         stop_on_violation=False)
    assert exr.executions == 30
    assert set(exr.outcomes) <= finished
    assert all(traces[k] == o for k, o in seenr)


@pytest.mark.parametrize(("text", "interleavings", "traces"), HAND_COUNTS)
def test_hand_programs(text: str, interleavings: int, traces: int) -> None:
    prog = Program(text)
    assert check_dpor(prog).executions == traces
    naive, seen = explore(prog, strategy="naive", stop_on_violation=False)
    assert naive.executions == count_interleavings(prog, with_joins=True) >= interleavings
    assert {k for k, _ in seen} == {trace_key(il.events) for il in enumerate_interleavings(prog)}


def test_naive_counts_joins_as_events() -> None:
    # T0: x=1 | T1: wait(x==1): two data interleavings; main's "join T0" can come before or
    # after T1's final (true) wait evaluation in each.
    prog = Program("x=1 | wait(x==1)")
    assert count_interleavings(prog) == 2
    assert count_interleavings(prog, with_joins=True) == 4
    ex, _ = explore(prog, strategy="naive")
    assert ex.executions == 4


def test_random_finds_every_store_buffering_outcome() -> None:
    prog = Program("x=1; load(y) | y=1; load(x)")
    ex, _ = explore(prog, strategy="random", seed=1, max_executions=200)
    assert ex.executions == 200
    assert set(ex.outcomes) == outcome_set(prog)


def test_bounded_zero_preemptions_is_a_strict_subset_for_store_buffering() -> None:
    # Without preemption each thread runs to completion: r0, r1 can't both be 1.
    prog = Program("x=1; load(y) | y=1; load(x)")
    ex, _ = explore(prog, strategy="bounded", preemption_bound=0)
    both = (((None, 1), (None, 1)), (1, 1), frozenset())
    assert set(ex.outcomes) < outcome_set(prog) and both not in ex.outcomes


def test_failed_cas_is_a_read_for_sleep_sets() -> None:
    # T0: load(x) | T1: cas(x,1,0); x=0. The cas always fails, so it is a read, independent of
    # the load: 2 traces (the load before or after the store). Exploring T1 first with T0
    # asleep must keep T0 asleep across the cas; otherwise "cas, load, store" repeats the
    # trace of "load, cas, store".
    prog = Program("load(x) | cas(x,1,0); x=0")
    assert count_interleavings(prog) == 3
    assert mazurkiewicz_classes(prog) == 2
    check_dpor(prog)
    # the same with the store in a third thread: 4 traces
    check_dpor(Program("load(x) | x=0 | cas(x,1,0)"))


def test_counter_shape() -> None:
    prog = Program("add(x,1) | add(x,1)")
    ex, _ = explore(prog, strategy="dpor")
    assert isinstance(ex.outcomes, Counter)
    assert sum(ex.outcomes.values()) == ex.executions == 2
