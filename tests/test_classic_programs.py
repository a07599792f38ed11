"""The programs of vcpureq.examples.classic: verdicts, outcomes and DPOR execution counts.

The number of executions of ``explore(p, strategy="dpor")`` must be the number of Mazurkiewicz
traces of ``p`` (source-DPOR with sleep sets explores exactly one complete execution per
trace; sleep-set-blocked runs are counted apart, in ``blocked``).  We derive those numbers
without DPOR, three ways:

1. :func:`naive_classes`: enumerate every interleaving (``strategy="naive"``), and key each
   execution by its per-thread event sequences plus, for every pair of dependent events of
   different threads, which came first (events named (thread, index in thread)).  The number
   of distinct keys is the number of traces.
2. :func:`lnf_traces`: a depth-first search of its own over the runtime that keeps only the
   interleavings in lexicographic normal form (Anisimov & Knuth: a word is in normal form iff
   no event could be moved, past independent events only, before an event of a
   higher-numbered thread); every trace has exactly one.  It scales further than (1), and
   the two are checked against each other on small programs.
3. Closed forms and published counts for the benchmarks of the literature (see the comments
   at ``PUBLISHED``).

Dependency, as in docs/model-api.md: two events are dependent when one writes a cell the other
reads or writes, or they are of the same thread; a join is ordered after every event of the
thread it joins.  A ``wait_until`` evaluation is a read event over the cells it loaded, true or
false: a spin-wait counts every false evaluation, so these programs have more traces than
their lock-free counterparts (and than the same benchmarks with mutexes as single events).
Both counters assume that a thread's events never depend on events its parent executed
before spawning it, which holds here: every program spawns all its threads before its main
thread's first visible event.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from vcpureq.examples import REGISTRY, make
from vcpureq.examples.classic import (
    filesystem,
    indexer,
    lastzero,
    lost_update,
    peterson,
    peterson_broken,
    philosophers,
    philosophers_ordered,
    readers,
    store_buffering,
)
from vcpureq.model import Atomic, Event, Exploration, check, explore, spawn
from vcpureq.model.runtime import Execution

Program = Callable[[], Any]

# --------------------------------------------------------------------------------------------
# Independent trace counting
# --------------------------------------------------------------------------------------------


def _names(events: list[Event]) -> list[tuple[int, int]]:
    seen: dict[int, int] = {}
    out = []
    for e in events:
        k = seen.get(e.thread, 0)
        seen[e.thread] = k + 1
        out.append((e.thread, k))
    return out


def trace_key(events: list[Event]) -> tuple[Any, ...]:
    """Identifies the Mazurkiewicz trace of one complete execution."""
    names = _names(events)
    per_thread: dict[int, list[tuple[Any, ...]]] = {}
    for e in events:
        per_thread.setdefault(e.thread, []).append((e.op, e.cell_names, repr(e.value)))
    order = frozenset(
        (names[i], names[j])
        for i, a in enumerate(events)
        for j in range(i + 1, len(events))
        if a.thread != events[j].thread and a.depends_on(events[j])
    )
    return tuple(sorted((t, tuple(s)) for t, s in per_thread.items())), order


def naive_classes(program: Program, **kw: Any) -> tuple[int, Exploration]:
    """(number of Mazurkiewicz traces, the naive exploration), from every interleaving."""
    outcome_of: dict[tuple[Any, ...], Any] = {}

    def on_execution(outcome: Any, events: list[Event]) -> None:
        key = trace_key(events)
        # Equivalent executions of a deterministic program end the same way.
        assert outcome_of.setdefault(key, outcome) == outcome
        outcome_of[key] = outcome

    r = explore(program, strategy="naive", stop_on_violation=False,
                on_execution=on_execution, **kw)
    assert r.complete
    return len(outcome_of), r


def _dependent(a: Event, b: Event, tid_of: dict[str, int]) -> bool:
    if a.thread == b.thread:
        return True
    if a.op == "join" and tid_of.get(a.value) == b.thread:
        return True
    if b.op == "join" and tid_of.get(b.value) == a.thread:
        return True
    return a.depends_on(b)


def _no_choice(tid: int, n: int) -> int:
    raise AssertionError("lnf_traces does not handle choose()")


def lnf_traces(program: Program, max_steps: int = 10_000) -> int:
    """The number of complete executions (ended, failed or stuck) in lexicographic normal
    form.  (An execution that fails stops there: for a program whose checks may fail before
    its end, this counts traces of the truncated executions.)

    Depth-first over thread choices, re-running the program from the start for each branch;
    a branch is cut as soon as its last event could be moved before an earlier event of a
    higher-numbered thread past independent events only."""
    stack: list[list[Any]] = []  # per depth: [enabled threads, index of the current one]
    count = 0
    while True:
        ex = Execution(program, _no_choice, tracing=True, max_steps=max_steps)
        depth = 0
        try:
            ex.start()
            normal = True
            while not ex.done:
                en = ex.enabled()
                if not en:
                    break  # stuck: a complete execution too
                if depth == len(stack):
                    stack.append([sorted(en), 0])
                alts, i = stack[depth]
                ex.step(alts[i])
                depth += 1
                events = ex.trace
                tid_of = {t.name: t.tid for t in ex.threads}
                a = events[-1]
                for b in reversed(events[:-1]):
                    if _dependent(a, b, tid_of):
                        break
                    if b.thread > a.thread:
                        normal = False
                        break
                if not normal:
                    break
            count += normal
        finally:
            ex.close()
        del stack[depth:]
        while stack and stack[-1][1] + 1 >= len(stack[-1][0]):
            stack.pop()
        if not stack:
            return count
        stack[-1][1] += 1


def dpor(program: Program, **kw: Any) -> Exploration:
    r = explore(program, strategy="dpor", stop_on_violation=False, **kw)
    assert r.complete
    return r


# --------------------------------------------------------------------------------------------
# Verdicts, outcomes, and execution counts
# --------------------------------------------------------------------------------------------

# name, program, verdict (None: verified, else the kind of the first violation), the outcomes
# of the executions without violation, DPOR executions (= Mazurkiewicz traces).  The counts
# of the small programs are checked against naive enumeration in test_small_programs_*, the
# 3-thread ones against lnf_traces in test_three_thread_programs_against_lnf, the benchmarks
# against closed forms and the literature in test_benchmarks_*.
CASES: list[tuple[str, Program, str | None, set[Any], int]] = [
    ("store-buffering", store_buffering, None, {(0, 1), (1, 0), (1, 1)}, 3),
    # 4 traces: the two loads commute, so of the 6 interleavings of L1 S1 || L2 S2 only
    # L1 S1 L2 S2, L2 S2 L1 S1, L1 L2 S1 S2 and L1 L2 S2 S1 are distinct; the last two lose
    # an increment.
    ("lost-update", lost_update, "assertion", {2}, 4),
    ("peterson", peterson, None, {1}, 12),
    ("philosophers(2)", philosophers(2), "deadlock", {2}, 23),
    ("philosophers(3)", philosophers(3), "deadlock", {3}, 397),
    ("philosophers-ordered(2)", philosophers_ordered(2), None, {2}, 10),
    ("philosophers-ordered(3)", philosophers_ordered(3), None, {3}, 415),
    *[(f"lastzero({n})", lastzero(n), None, set(range(n + 1)), (n + 3) * 2 ** (n - 2))
      for n in (2, 3, 4, 5, 6, 7, 8)],
    *[(f"readers({n})", readers(n), None, set(itertools.product((0, 42), repeat=n)), 2**n)
      for n in (1, 2, 3, 4, 5, 6)],
]


@pytest.mark.parametrize("name,program,verdict,outcomes,executions", CASES,
                         ids=[c[0] for c in CASES])
def test_verdict_outcomes_and_dpor_executions(name: str, program: Program, verdict: str | None,
                                              outcomes: set[Any], executions: int) -> None:
    first = explore(program)
    if verdict is None:
        assert first.ok, first.summary()
    else:
        assert first.violations and first.violations[0].kind == verdict, first.summary()
        assert not first.ok
    full = dpor(program)
    assert set(full.outcomes) == outcomes
    assert full.executions == executions, full.summary()
    assert {v.kind for v in full.violations} <= ({verdict} if verdict else set())


def test_peterson_broken_is_caught() -> None:
    r = explore(peterson_broken)
    assert [v.kind for v in r.violations] == ["assertion"]
    assert "mutual exclusion" in r.violations[0].message
    # The counterexample: both threads passed their wait before either entered.
    trace = r.violations[0].trace
    assert trace[-1].op == "fetch_add" and trace[-1].value == (1, 2)


def test_deadlock_message_names_every_blocked_philosopher() -> None:
    (v,) = explore(philosophers(3)).violations
    assert v.kind == "deadlock"
    for i in range(3):
        assert f"phil{i} blocked in wait_until" in v.message
    # Everyone holds its left fork and waits for its right one: each philosopher's last
    # event is a false evaluation of its wait on the fork its neighbour holds.
    last = {e.thread_name: e for e in v.trace}
    for i in range(3):
        e = last[f"phil{i}"]
        assert (e.op, e.value, e.cell_names) == ("wait", False, (f"fork{(i + 1) % 3}",))


# --------------------------------------------------------------------------------------------
# DPOR against the independent counts
# --------------------------------------------------------------------------------------------

SMALL: list[tuple[str, Program]] = [
    ("store-buffering", store_buffering),
    ("lost-update", lost_update),
    ("peterson", peterson),
    ("philosophers(2)", philosophers(2)),
    ("philosophers-ordered(2)", philosophers_ordered(2)),
    ("lastzero(2)", lastzero(2)),
    ("lastzero(3)", lastzero(3)),
    ("readers(2)", readers(2)),
    ("readers(4)", readers(4)),
    # Scaled-down benchmark parameters so that threads collide with few threads.
    ("indexer(2,size=4,messages=2)", indexer(2, size=4, messages=2)),
]


@pytest.mark.parametrize("name,program", SMALL, ids=[s[0] for s in SMALL])
def test_small_programs_dpor_equals_naive_classes(name: str, program: Program) -> None:
    classes, naive = naive_classes(program)
    d = dpor(program)
    assert d.executions == classes, (d.summary(), naive.summary())
    assert set(d.outcomes) == set(naive.outcomes)
    assert {(v.kind, v.message) for v in d.violations} == {
        (v.kind, v.message) for v in naive.violations}
    # The second counter agrees with the first.
    assert lnf_traces(program) == classes


def test_counters_count_the_hand_computed_examples() -> None:
    assert naive_classes(store_buffering)[0] == 3  # (0, 0) would be a cycle
    assert naive_classes(lost_update)[0] == 4
    assert naive_classes(readers(3))[0] == 8
    assert lnf_traces(readers(3)) == 8


THREE_THREADS: list[tuple[str, Program, int]] = [
    ("philosophers(3)", philosophers(3), 397),
    ("philosophers-ordered(3)", philosophers_ordered(3), 415),
    ("lastzero(4)", lastzero(4), 28),
    # Scaled-down benchmarks: 3 threads colliding in a table of 6 / on block 0.
    ("indexer(3,size=6,messages=2)", indexer(3, size=6, messages=2), 8),
    ("filesystem(2,inodes=2,blocks=2)", filesystem(2, inodes=2, blocks=2), 6),
]


@pytest.mark.parametrize("name,program,traces", THREE_THREADS, ids=[t[0] for t in THREE_THREADS])
def test_three_thread_programs_against_lnf(name: str, program: Program, traces: int) -> None:
    assert lnf_traces(program) == traces
    assert dpor(program).executions == traces


# --------------------------------------------------------------------------------------------
# The benchmarks of the literature
# --------------------------------------------------------------------------------------------

# Published trace counts.  For lastzero, readers and indexer every cell is written at most
# once (in indexer a cell gets one successful compare_exchange, the others fail: reads), so
# a trace is fixed by which write each read sees: the reads-from classes counted by
# optimal-DPOR-style tools coincide with Mazurkiewicz traces.  Source: the SWSC experiment
# of the Nidhugg repository (benchmarks/SWSC_experiment/summary.txt, Observers, SWSC and
# RCMC columns agree), which also matches the source-/optimal-DPOR numbers of Abdulla et al.
# (POPL'14 / JACM'17) where they overlap (lastzero(5) = 64, indexer(12) = 8,
# indexer(15) = 4096).
PUBLISHED = {
    "lastzero": {2: 5, 4: 28, 6: 144, 8: 704, 10: 3328, 12: 15360},
    "readers": {2: 4, 4: 16, 6: 64, 8: 256, 10: 1024},
    "indexer": {11: 1, 12: 8, 13: 64, 14: 512, 15: 4096, 16: 32768},
    # With mutexes as single events: the lock-acquisition orders.
    "filesystem": {12: 1, 14: 2, 16: 8, 18: 32},
}


def test_published_counts_follow_the_closed_forms() -> None:
    # lastzero(n): writer j's load of array[j-1] is before or after writer j-1's store
    # (2**(n-1) ways, j = 2..n); the reader stops at k = n or k = 0 whatever they are, and at
    # 0 < k < n only if writer k+1 read array[k] before writer k wrote it (else its load of
    # array[k] would follow that store): 2 * 2**(n-1) + (n-1) * 2**(n-2) = (n+3) * 2**(n-2).
    # readers(n): 2**n.  indexer(n): thread tid >= 11 inserts w = m*11 + tid, so its first
    # three values are thread tid-11's last three and hash to the same slots: three races
    # each, 8**(n - 11).  filesystem(n): threads 13 .. n-1 each race one of the threads
    # 0 .. n-14 for a block, 2**(n - 13).
    for n, count in PUBLISHED["lastzero"].items():
        assert count == (n + 3) * 2 ** (n - 2)
    for n, count in PUBLISHED["readers"].items():
        assert count == 2**n
    for n, count in PUBLISHED["indexer"].items():
        assert count == 8 ** (n - 11)
    for n, count in PUBLISHED["filesystem"].items():
        assert count == 2 ** max(0, n - 13)


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_benchmarks_lastzero_published(n: int) -> None:
    assert dpor(lastzero(n)).executions == PUBLISHED["lastzero"][n]


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_benchmarks_readers_published(n: int) -> None:
    r = dpor(readers(n))
    assert r.executions == PUBLISHED["readers"][n]
    assert len(r.outcomes) == 2**n  # every subset of readers can see the store


@pytest.mark.parametrize("n", [11, 12, 13])
def test_benchmarks_indexer_published(n: int) -> None:
    r = dpor(indexer(n))
    assert r.ok
    assert r.executions == PUBLISHED["indexer"][n]
    assert len(r.outcomes) == PUBLISHED["indexer"][n]  # each trace fills the table its way
    # every value got a slot of its own
    for table in r.outcomes:
        slots = [h for per_thread in table for h in per_thread]
        assert len(slots) == len(set(slots)) == 4 * n


@pytest.mark.parametrize("n", [12, 13, 14, 15, 16])
def test_benchmarks_filesystem(n: int) -> None:
    # Locks are spin locks here (compare_exchange, then wait_until(free) on failure), so a
    # contended lock has more than the 2 traces of a mutex.  Per contended block (one pair of
    # threads, the other blocks untouched): the winner W takes the lock, the loser L's first
    # compare_exchange comes after W's unlock (1), or fails and L's wait sees it free (2), or
    # the wait first sees it taken and again after the unlock (3): 3 traces per winner, 6 in
    # all, checked by lnf_traces on filesystem(2, inodes=2, blocks=2) above.  Pairs are
    # independent, so 6**(n - 13) traces; the outcomes are still the 2**(n - 13) published
    # lock-acquisition orders.
    pairs = max(0, n - 13)
    r = dpor(filesystem(n))
    assert r.ok
    assert r.executions == 6**pairs
    assert len(r.outcomes) == 2**pairs
    if n in PUBLISHED["filesystem"]:
        assert len(r.outcomes) == PUBLISHED["filesystem"][n]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_builds_every_program() -> None:
    for name, (factory, description) in REGISTRY.items():
        program = factory()
        assert callable(program) and description
        assert make(name) is not None
    assert make("lastzero", 3).__name__ == "lastzero(3)"
    with pytest.raises(KeyError, match="available: .*lastzero"):
        make("no-such-program")


# --------------------------------------------------------------------------------------------
# Executions that end in a violation
# --------------------------------------------------------------------------------------------


def _check_after_race() -> str:
    """b's load races with a's store; the execution where b loads after it fails."""
    x = Atomic(0, "x")

    def a() -> None:
        x.store(1)

    def b() -> str:
        check(x.load() == 0, "b saw the store")
        return "b first"

    ta = spawn(a, name="a")
    tb = spawn(b, name="b")
    ta.join()
    return tb.join()


# Regression: with stop_on_violation=False, DPOR must analyse the races of the event after
# which a check fails, so that the other order of that race is explored too.


def test_dpor_explores_past_a_failing_event_minimal() -> None:
    classes, naive = naive_classes(_check_after_race)
    # Naively, the failing order comes in two truncated shapes: with main's `join a`
    # before b's failing load or without it.  DPOR stops at the failure, so it runs that
    # order once, and the passing order once.
    assert (classes, dict(naive.outcomes)) == (3, {"b first": 1})
    d = dpor(_check_after_race)
    assert dict(d.outcomes) == {"b first": 1}
    assert d.executions == 2
    assert [v.message for v in d.violations] == ["b saw the store"]


def test_dpor_executions_of_peterson_broken() -> None:
    classes, _ = naive_classes(peterson_broken)
    assert classes == 18
    assert dpor(peterson_broken).executions == classes
