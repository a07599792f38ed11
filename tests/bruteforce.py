"""A brute-force reference for `vcpureq.model`, independent of it.

Programs are plain data: a program is a tuple of threads, a thread a tuple of operations over
cells 0..k-1 (all starting at 0):

    ("load", cell)                  returns the value
    ("store", cell, value)          returns None
    ("exchange", cell, value)       returns the old value
    ("cas", cell, expected, new)    returns the old value; writes only if old == expected
    ("fetch_add", cell, d)          returns the old value
    ("fetch_or", cell, bits)        returns the old value
    ("fetch_and", cell, bits)       returns the old value
    ("fence", kind)                 returns None; touches no cell
    ("wait", cell, value)           wait_until(cell == value); returns None

`Program` is a tuple subclass with a readable, evaluable repr in a small text syntax
(`Program("x=1; load(y) | y=1; load(x)")`), so hypothesis prints shrunk counterexamples in a
form one can paste back into a test.

Semantics (sequential consistency, the contract of docs/model-api.md): every operation is one
event, executed atomically. A `wait` evaluation is one read event of its cell: if the
predicate holds the thread proceeds past the wait, otherwise the thread is disabled until
another thread *writes* that cell (any store, exchange, fetch_* or successful cas, even one
that leaves the value unchanged; a failed cas is a read), after which it evaluates again. An
execution ends when no thread is enabled; the threads that have not finished then are
blocked.

The outcome of an execution is `(results, finals, blocked)`: per-thread tuples of the values
the thread's operations returned (in order, for the operations it completed), the final cell
values, and the frozenset of blocked thread indices.

Nothing here imports vcpureq except `to_vcpureq_program`, which does so lazily.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

Op = tuple[Any, ...]
Thread = tuple[Op, ...]
Outcome = tuple[tuple[tuple[Any, ...], ...], tuple[int, ...], frozenset[int]]

FENCE_KINDS = ("mb", "wmb", "rmb", "mb__before_atomic", "mb__after_atomic")
RMW_KINDS = ("exchange", "cas", "fetch_add", "fetch_or", "fetch_and")
OP_ARITY = {
    "load": 1,
    "store": 2,
    "exchange": 2,
    "cas": 3,
    "fetch_add": 2,
    "fetch_or": 2,
    "fetch_and": 2,
    "fence": 1,
    "wait": 2,
}
_CELL_LETTERS = "xyz"


# --------------------------------------------------------------------------------------------
# The data language and its text form
# --------------------------------------------------------------------------------------------


def cell_name(cell: int) -> str:
    return _CELL_LETTERS[cell] if cell < len(_CELL_LETTERS) else f"c{cell}"


def _parse_cell(text: str) -> int:
    text = text.strip()
    if len(text) == 1 and text in _CELL_LETTERS:
        return _CELL_LETTERS.index(text)
    m = re.fullmatch(r"c(\d+)", text)
    if not m:
        raise ValueError(f"bad cell name {text!r}")
    return int(m.group(1))


_SHORT = {"exchange": "xchg", "fetch_add": "add", "fetch_or": "or", "fetch_and": "and"}
_LONG = {v: k for k, v in _SHORT.items()}


def format_op(op: Op) -> str:
    kind = op[0]
    if kind == "fence":
        return f"fence({op[1]})"
    c = cell_name(op[1])
    if kind == "load":
        return f"load({c})"
    if kind == "store":
        return f"{c}={op[2]}"
    if kind == "wait":
        return f"wait({c}=={op[2]})"
    args = ",".join(str(a) for a in op[2:])
    return f"{_SHORT.get(kind, kind)}({c},{args})"


def parse_op(text: str) -> Op:
    text = text.replace(" ", "")
    if m := re.fullmatch(r"(\w+)=(-?\d+)", text):
        return ("store", _parse_cell(m.group(1)), int(m.group(2)))
    if m := re.fullmatch(r"wait\((\w+)==(-?\d+)\)", text):
        return ("wait", _parse_cell(m.group(1)), int(m.group(2)))
    if m := re.fullmatch(r"fence\((\w+)\)", text):
        return ("fence", m.group(1))
    if m := re.fullmatch(r"(\w+)\((\w+)((?:,-?\d+)*)\)", text):
        kind = _LONG.get(m.group(1), m.group(1))
        args = tuple(int(a) for a in m.group(3).split(",")[1:])
        return (kind, _parse_cell(m.group(2)), *args)
    raise ValueError(f"cannot parse operation {text!r}")


def _check_op(op: Op) -> Op:
    op = tuple(op)
    if not op or op[0] not in OP_ARITY or len(op) != 1 + OP_ARITY[op[0]]:
        raise ValueError(f"bad operation {op!r}")
    if op[0] == "fence":
        if op[1] not in FENCE_KINDS:
            raise ValueError(f"bad fence kind in {op!r}")
    elif not all(isinstance(a, int) for a in op[1:]) or op[1] < 0:
        raise ValueError(f"bad operands in {op!r}")
    return op


class Program(tuple):
    """A tuple of threads (tuples of ops) with a readable repr.

    `Program("x=1; load(y) | y=1; load(x)")` parses the text form; `Program(threads)` takes the
    plain data. Threads are separated by `|`, operations by `;`. Cells are x, y, z, c3, c4...
    Op syntax: load(x), x=1, xchg(x,1), cas(x,0,1), add(x,1), or(x,1), and(x,1), fence(mb),
    wait(x==1).
    """

    def __new__(cls, threads: str | Iterable[Iterable[Op]]) -> Program:
        if isinstance(threads, str):
            parsed = tuple(
                tuple(parse_op(o) for o in t.split(";") if o.strip()) for t in threads.split("|")
            )
        else:
            parsed = tuple(tuple(_check_op(o) for o in t) for t in threads)
        parsed = tuple(tuple(_check_op(o) for o in t) for t in parsed)
        return super().__new__(cls, parsed)

    @property
    def num_cells(self) -> int:
        cells = [op[1] for t in self for op in t if op[0] != "fence"]
        return max(cells) + 1 if cells else 0

    def text(self) -> str:
        return " | ".join("; ".join(format_op(o) for o in t) for t in self)

    def __repr__(self) -> str:
        return f"Program({self.text()!r})"

    __str__ = __repr__

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis / IPython pretty printer
        p.text(repr(self))


def format_program(prog: Iterable[Iterable[Op]]) -> str:
    """A multi-line listing, one thread per line."""
    return "\n".join(
        f"T{i}: " + "; ".join(format_op(o) for o in t) for i, t in enumerate(Program(prog))
    )


def interleaving_count_bound(prog: Iterable[Iterable[Op]]) -> int:
    """Interleavings of the threads' operations (exact for programs without waits)."""
    lengths = [len(t) for t in Program(prog)]
    return math.factorial(sum(lengths)) // math.prod(math.factorial(n) for n in lengths)


# --------------------------------------------------------------------------------------------
# The naive interpreter
# --------------------------------------------------------------------------------------------


class Event(NamedTuple):
    thread: int  # data-thread index
    index: int  # index of the event among its thread's events
    op: str  # the operation kind ("wait" for every wait evaluation)
    cell: int | None  # the cell touched (None for a fence)
    writes: bool  # False for loads, waits, fences and failed cas
    value: Any  # value read (load/wait), written (store), (old, new) (RMW), old (failed cas)


class Interleaving(NamedTuple):
    schedule: tuple[int, ...]  # thread of each event
    events: tuple[Event, ...]
    outcome: Outcome


class _State(NamedTuple):
    pcs: tuple[int, ...]
    mem: tuple[int, ...]
    results: tuple[tuple[Any, ...], ...]
    waiting: tuple[int | None, ...]  # cell a disabled thread waits for a write to
    nevents: tuple[int, ...]


def _rmw(kind: str, old: int, arg: int) -> int:
    if kind == "exchange":
        return arg
    if kind == "fetch_add":
        return old + arg
    if kind == "fetch_or":
        return old | arg
    if kind == "fetch_and":
        return old & arg
    raise AssertionError(kind)


def _step(prog: Program, s: _State, t: int) -> tuple[_State, Event]:
    op = prog[t][s.pcs[t]]
    kind = op[0]
    mem = s.mem
    advance, writes, ret = True, False, None
    cell: int | None = None
    value: Any = None
    waiting = list(s.waiting)
    if kind == "fence":
        value = op[1]
    else:
        cell = op[1]
        old = mem[cell]
        if kind == "load":
            ret = value = old
        elif kind == "wait":
            value = old
            if old != op[2]:
                advance = False
                waiting[t] = cell
        elif kind == "store":
            writes, value = True, op[2]
        elif kind == "cas":
            ret = old
            if old == op[2]:
                writes, value = True, (old, op[3])
            else:
                value = old
        else:
            ret = old
            writes, value = True, (old, _rmw(kind, old, op[2]))
        if writes:
            new = value[1] if isinstance(value, tuple) else value
            mem = mem[:cell] + (new,) + mem[cell + 1 :]
            for u in range(len(prog)):
                if u != t and waiting[u] == cell:
                    waiting[u] = None
    pcs, results = s.pcs, s.results
    if advance:
        pcs = pcs[:t] + (pcs[t] + 1,) + pcs[t + 1 :]
        results = results[:t] + (results[t] + (ret,),) + results[t + 1 :]
    nevents = s.nevents[:t] + (s.nevents[t] + 1,) + s.nevents[t + 1 :]
    event = Event(t, s.nevents[t], kind, cell, writes, value)
    return _State(pcs, mem, results, tuple(waiting), nevents), event


def enumerate_interleavings(
    prog: Iterable[Iterable[Op]], *, with_joins: bool = False
) -> Iterator[Interleaving]:
    """Every maximal interleaving of the program under SC, by exhaustive search.

    With `with_joins`, a main thread (index len(prog)) joins the data threads in order, each
    join one event ("join", value = the joined thread) enabled once that thread finished, as
    in `to_vcpureq_program` (whose final loads come after every join, so they never add an
    interleaving). The blocked set of an outcome only ever names data threads.
    """
    prog = Program(prog)
    n = len(prog)
    init = _State((0,) * n, (0,) * prog.num_cells, ((),) * n, (None,) * n, (0,) * n)

    def rec(s: _State, joined: int, schedule: tuple[int, ...], events: tuple[Event, ...]):
        enabled = [t for t in range(n) if s.pcs[t] < len(prog[t]) and s.waiting[t] is None]
        if with_joins and joined < n and s.pcs[joined] == len(prog[joined]):
            join = Event(n, joined, "join", None, False, joined)
            yield from rec(s, joined + 1, schedule + (n,), events + (join,))
        elif not enabled:
            blocked = frozenset(t for t in range(n) if s.pcs[t] < len(prog[t]))
            yield Interleaving(schedule, events, (s.results, s.mem, blocked))
            return
        for t in enabled:
            s2, ev = _step(prog, s, t)
            yield from rec(s2, joined, schedule + (t,), events + (ev,))

    yield from rec(init, 0, (), ())


def outcomes(prog: Iterable[Iterable[Op]], *, with_joins: bool = False) -> Counter[Outcome]:
    """Outcome -> number of interleavings producing it."""
    return Counter(il.outcome for il in enumerate_interleavings(prog, with_joins=with_joins))


def outcome_set(prog: Iterable[Iterable[Op]], *, include_blocked: bool = True) -> set[Outcome]:
    return {o for o in outcomes(prog) if include_blocked or not o[2]}


def count_interleavings(prog: Iterable[Iterable[Op]], *, with_joins: bool = False) -> int:
    return sum(1 for _ in enumerate_interleavings(prog, with_joins=with_joins))


# --------------------------------------------------------------------------------------------
# Mazurkiewicz traces
# --------------------------------------------------------------------------------------------


def dependent(a: Event, b: Event) -> bool:
    """Same thread, or same cell and at least one of them writes it."""
    if a.thread == b.thread:
        return True
    return a.cell is not None and a.cell == b.cell and (a.writes or b.writes)


TraceKey = tuple[tuple[tuple[int, int], ...], frozenset[tuple[tuple[int, int], tuple[int, int]]]]


def trace_key(events: Iterable[Event]) -> TraceKey:
    """Canonical key of the Mazurkiewicz trace of an interleaving.

    The number of events of each thread, and for every pair of dependent events of different
    threads (named (thread, index)) which one comes first. Only events on the same cell can be
    dependent across threads, so pairs are formed per cell.
    """
    counts: Counter[int] = Counter()
    per_cell: dict[int, list[Event]] = {}
    pairs = set()
    for e in events:
        counts[e.thread] += 1
        if e.cell is None:
            continue
        earlier = per_cell.setdefault(e.cell, [])
        for a in earlier:
            if a.thread != e.thread and dependent(a, e):
                pairs.add(((a.thread, a.index), (e.thread, e.index)))
        earlier.append(e)
    return tuple(sorted(counts.items())), frozenset(pairs)


def trace_keys(prog: Iterable[Iterable[Op]]) -> set[TraceKey]:
    return {trace_key(il.events) for il in enumerate_interleavings(prog)}


def mazurkiewicz_classes(prog: Iterable[Iterable[Op]]) -> int:
    """Number of Mazurkiewicz traces (equivalence classes of maximal interleavings)."""
    return len(trace_keys(prog))


def is_lex_normal(events: tuple[Event, ...]) -> bool:
    """Whether an interleaving is the lexicographically least (by thread index) of its class.

    Anisimov-Knuth: it is iff no event `b` can be moved left past an independent stretch that
    starts with an event of a higher thread than `b`'s.
    """
    for j, b in enumerate(events):
        for i in range(j - 1, -1, -1):
            a = events[i]
            if dependent(a, b):
                break
            if a.thread > b.thread:
                return False
    return True


def lex_normal_count(prog: Iterable[Iterable[Op]]) -> int:
    """Mazurkiewicz traces counted a second, independent way: lexicographic normal forms."""
    return sum(1 for il in enumerate_interleavings(prog) if is_lex_normal(il.events))


# --------------------------------------------------------------------------------------------
# The same program for vcpureq.model.explore
# --------------------------------------------------------------------------------------------


def thread_name(i: int) -> str:
    return f"T{i}"


def to_vcpureq_program(prog: Iterable[Iterable[Op]]) -> Callable[[], Outcome]:
    """A zero-argument program for `vcpureq.model.explore` returning the same outcome shape.

    Main creates the Atomics, spawns data thread i as "T{i}", joins them all, then loads the
    final values (events after every join, so they add no trace). Outcomes of executions that
    hang never reach `return`, so the blocked component is always empty here.
    """
    from vcpureq.model import Atomic, fence, spawn, wait_until

    prog = Program(prog)

    def run(cells: list[Any], ops: Thread) -> tuple[Any, ...]:
        out: list[Any] = []
        for op in ops:
            kind = op[0]
            if kind == "fence":
                fence(op[1])
                out.append(None)
                continue
            c = cells[op[1]]
            if kind == "load":
                out.append(c.load())
            elif kind == "store":
                c.store(op[2])
                out.append(None)
            elif kind == "exchange":
                out.append(c.exchange(op[2]))
            elif kind == "cas":
                out.append(c.compare_exchange(op[2], op[3]))
            elif kind == "fetch_add":
                out.append(c.fetch_add(op[2]))
            elif kind == "fetch_or":
                out.append(c.fetch_or(op[2]))
            elif kind == "fetch_and":
                out.append(c.fetch_and(op[2]))
            elif kind == "wait":
                wait_until(lambda c=c, v=op[2]: c.load() == v)
                out.append(None)
            else:
                raise AssertionError(op)
        return tuple(out)

    def program() -> Outcome:
        cells = [Atomic(0, name=cell_name(i)) for i in range(prog.num_cells)]
        threads = [spawn(run, cells, ops, name=thread_name(i)) for i, ops in enumerate(prog)]
        results = tuple(th.join() for th in threads)
        finals = tuple(c.load() for c in cells)
        return results, finals, frozenset()

    program.__name__ = program.__qualname__ = f"bruteforce[{prog.text()}]"
    return program


def explorer_observation(
    prog: Iterable[Iterable[Op]], outcome: Any, events: Iterable[Any]
) -> tuple[TraceKey, Outcome]:
    """What one vcpureq execution (the arguments of `on_execution`) shows, in this module's
    terms: the `trace_key` of its data-thread events and the full outcome rebuilt from them.

    Keeps the events of the data threads (by name "T{i}"; main's joins and final loads are
    dropped) and takes dependence from each event's `reads`/`writes` cell sets. The outcome
    is rebuilt from the event values (so it exists for hanging executions too, whose program
    never returns): a thread is blocked iff its last event is a false wait evaluation. When
    the program did return (`outcome` is not None) the two must agree.
    """
    prog = Program(prog)
    nthreads = len(prog)
    names = {thread_name(i): i for i in range(nthreads)}
    counts: Counter[int] = Counter()
    seen: list[tuple[int, int, frozenset[Any], frozenset[Any]]] = []
    pairs = set()
    results: list[list[Any]] = [[] for _ in range(nthreads)]
    last_op: list[tuple[str, Any] | None] = [None] * nthreads
    finals: dict[int, Any] = {}
    for e in events:
        t = names.get(e.thread_name)
        if t is None or e.op == "finish":
            continue
        idx = counts[t]
        counts[t] += 1
        r, w = frozenset(e.reads), frozenset(e.writes)
        for u, j, r2, w2 in seen:
            if u != t and (w & (r2 | w2) or w2 & (r | w)):
                pairs.add(((u, j), (t, idx)))
        seen.append((t, idx, r, w))
        last_op[t] = (e.op, e.value)
        if e.op == "load":
            results[t].append(e.value)
        elif e.op in ("store", "fence") or (e.op == "wait" and e.value):
            results[t].append(None)
        elif e.op in RMW_KINDS:
            results[t].append(e.value[0])
        elif e.op != "wait":
            raise AssertionError(f"unexpected event {e!r}")
        if w:
            (cell,) = e.cell_names
            finals[_parse_cell(cell)] = e.value if e.op == "store" else e.value[1]
    blocked = frozenset(t for t, lo in enumerate(last_op) if lo == ("wait", False))
    observed = (
        tuple(tuple(r) for r in results),
        tuple(finals.get(c, 0) for c in range(prog.num_cells)),
        blocked,
    )
    if outcome is not None and outcome != observed:
        raise AssertionError(f"events show outcome {observed}, the program returned {outcome}")
    return (tuple(sorted(counts.items())), frozenset(pairs)), observed
