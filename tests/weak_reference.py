"""A naive operational reference for the weak memory models of `vcpureq.model`.

Independent of vcpureq (only `to_vcpureq_program` imports it, lazily). It interprets
straight-line *data* programs under three memory models:

- ``"sc"``: every operation is one atomic step on memory.
- ``"tso"``: x86-TSO (Owens, Sarkar, Sewell, TPHOLs 2009; Sewell et al., CACM 2010):
  one FIFO store buffer per thread.
- ``"pso"``: SPARC PSO (SPARC Architecture Manual v8, appendix K): one FIFO buffer per
  thread *and cell*, plus store-barrier epochs.

The data language: a program is a tuple of threads, a thread a tuple of operations over
cells ``0..k-1`` (all initially 0):

    ("load", cell, order)                    returns the value read
    ("store", cell, value, order)            returns nothing
    ("rmw", kind, cell, arg, order)          kind in xchg/fadd/for/fand; returns the old value
    ("cas", cell, expected, new, order)      returns the old value; writes iff old == expected
    ("fence", kind)                          mb/wmb/rmb/mb__before_atomic/mb__after_atomic

Orders are "relaxed", "acquire", "release", "full".

Semantics under tso/pso (the contract in vcpureq/model/memory.py, restated):

- A store of order relaxed/acquire/release is *buffered*: appended to the thread's buffer
  (TSO) or to the thread's buffer for that cell (PSO). A "full" store (seq_cst) first waits
  until all of the thread's buffers are empty, then writes memory directly.
- A *flush* is a separate step, possible at any time: it moves the oldest entry of one
  buffer to memory. Under PSO an entry may be flushed only when no entry of an older
  *epoch* of the same thread is still buffered.
- A load (any order) returns the thread's newest buffered store to the cell, else memory.
- Read-modify-writes read and write memory directly. Under TSO they first wait until the
  thread's buffer is empty. Under PSO a "full" or "release" RMW waits until every buffer of
  the thread is empty; a "relaxed" or "acquire" RMW waits until its own cell's buffer is
  empty -- and, with ``rmw_waits_for_older_epochs=True`` (the default, see below), until no
  store of an epoch older than the thread's current one is buffered.
- ``fence("mb")`` waits until the thread's buffers are empty. ``fence("wmb")`` does nothing
  under TSO and starts a new epoch under PSO. ``fence("rmb")`` does nothing.
  ``mb__before_atomic``/``mb__after_atomic`` do nothing under TSO and drain under PSO.
- A "release" store under PSO starts a new epoch, then is buffered (wmb + buffered store).
- A thread's exit drains its buffers, so an execution is complete when every thread ran
  all its operations and every buffer is empty; the final memory is then read by main.

The epoch rule "stores after a wmb cannot become visible before stores before it" covers
read-modify-writes too: SPARC v8 (appendix K) treats an atomic load-store as both a load
and a store and STBAR orders it after earlier stores; the LKMM's smp_wmb() orders earlier
writes before later ones, including the write of a later set_bit() (which is exactly what
kvm_make_request() relies on). ``rmw_waits_for_older_epochs=False`` gives the weaker
rule ("a relaxed RMW waits only for its own cell's buffer") for comparison.

The outcome of a complete execution is ``(results, finals)``: per-thread tuples of the
values returned by the thread's loads, RMWs and CASes (stores and fences return nothing),
and the final values of the cells. :func:`outcomes` returns the set of all reachable
outcomes; a memoised depth-first search over states (pcs, results, buffers, epochs, memory)
keeps it fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Op = tuple[Any, ...]
Thread = tuple[Op, ...]
Prog = tuple[Thread, ...]
Outcome = tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]

MODELS = ("sc", "tso", "pso")
ORDERS = ("relaxed", "acquire", "release", "full")
FENCE_KINDS = ("mb", "wmb", "rmb", "mb__before_atomic", "mb__after_atomic")
RMW_KINDS = ("xchg", "fadd", "for", "fand")
CELL_NAMES = "xyz"

_RMW_METHOD = {"xchg": "exchange", "fadd": "fetch_add", "for": "fetch_or", "fand": "fetch_and"}


def cell_name(cell: int) -> str:
    return CELL_NAMES[cell] if cell < len(CELL_NAMES) else f"c{cell}"


def num_cells(prog: Prog) -> int:
    """1 + the highest cell index the program mentions (at least 1)."""
    n = 0
    for thread in prog:
        for op in thread:
            if op[0] in ("load", "store", "cas"):
                n = max(n, op[1] + 1)
            elif op[0] == "rmw":
                n = max(n, op[2] + 1)
    return max(n, 1)


def validate(prog: Prog) -> None:
    for thread in prog:
        for op in thread:
            kind = op[0]
            if kind == "load":
                ok = len(op) == 3 and op[2] in ORDERS
            elif kind == "store":
                ok = len(op) == 4 and op[3] in ORDERS
            elif kind == "rmw":
                ok = len(op) == 5 and op[1] in RMW_KINDS and op[4] in ORDERS
            elif kind == "cas":
                ok = len(op) == 5 and op[4] in ORDERS
            elif kind == "fence":
                ok = len(op) == 2 and op[1] in FENCE_KINDS
            else:
                ok = False
            if not ok:
                raise ValueError(f"bad operation {op!r}")


def format_op(op: Op) -> str:
    kind = op[0]
    if kind == "load":
        return f"load({cell_name(op[1])},{op[2]})"
    if kind == "store":
        return f"{cell_name(op[1])}={op[2]}@{op[3]}"
    if kind == "rmw":
        return f"{op[1]}({cell_name(op[2])},{op[3]},{op[4]})"
    if kind == "cas":
        return f"cas({cell_name(op[1])},{op[2]},{op[3]},{op[4]})"
    return f"fence({op[1]})"


def format_program(prog: Prog) -> str:
    """A one-line human form: ``x=1@relaxed; load(y,full) | ...``."""
    return " | ".join("; ".join(format_op(op) for op in t) or "skip" for t in prog)


def _apply_rmw(kind: str, old: int, arg: int) -> int:
    if kind == "xchg":
        return arg
    if kind == "fadd":
        return old + arg
    if kind == "for":
        return old | arg
    return old & arg


# --------------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------------
#
# State: (pcs, results, bufs, epochs, mem), all tuples.
#   TSO: bufs[t] is a tuple of (cell, value) entries, oldest first.
#   PSO: bufs[t][c] is a tuple of (value, epoch) entries, oldest first.
#   SC:  bufs is () and never used.


def outcomes(prog: Prog, model: str, ncells: int | None = None, *,
             rmw_waits_for_older_epochs: bool = True) -> frozenset[Outcome]:
    """Every outcome of a complete execution of ``prog`` under ``model``."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    validate(prog)
    n = num_cells(prog) if ncells is None else ncells
    nthreads = len(prog)
    tso = model == "tso"
    pso = model == "pso"
    memo: dict[Any, frozenset[Outcome]] = {}

    def buffered_value(bufs: Any, t: int, cell: int) -> int | None:
        if tso:
            for c, v in reversed(bufs[t]):
                if c == cell:
                    return v
            return None
        if pso:
            entries = bufs[t][cell]
            return entries[-1][0] if entries else None
        return None

    def empty(bufs: Any, t: int) -> bool:
        if tso:
            return not bufs[t]
        if pso:
            return not any(bufs[t])
        return True

    def older_epoch_buffered(bufs: Any, t: int, epoch: int) -> bool:
        return any(entries and entries[0][1] < epoch for entries in bufs[t])

    def may_run(op: Op, bufs: Any, epochs: tuple[int, ...], t: int) -> bool:
        """Whether the op's drain condition holds (sc: always)."""
        if not (tso or pso):
            return True
        kind = op[0]
        if kind == "load":
            return True
        if kind == "store":
            return op[3] != "full" or empty(bufs, t)
        if kind == "fence":
            f = op[1]
            if f == "mb":
                return empty(bufs, t)
            if f in ("mb__before_atomic", "mb__after_atomic") and pso:
                return empty(bufs, t)
            return True
        # rmw / cas
        order = op[4]
        cell = op[2] if kind == "rmw" else op[1]
        if tso or order in ("full", "release"):
            return empty(bufs, t)
        if bufs[t][cell]:
            return False
        if rmw_waits_for_older_epochs and older_epoch_buffered(bufs, t, epochs[t]):
            return False
        return True

    def set_at(tup: tuple, i: int, value: Any) -> tuple:
        return tup[:i] + (value,) + tup[i + 1:]

    def run_op(state: Any, t: int) -> Any:
        pcs, results, bufs, epochs, mem = state
        op = prog[t][pcs[t]]
        kind = op[0]
        pcs = set_at(pcs, t, pcs[t] + 1)
        if kind == "load":
            cell = op[1]
            v = buffered_value(bufs, t, cell)
            if v is None:
                v = mem[cell]
            results = set_at(results, t, results[t] + (v,))
        elif kind == "store":
            _, cell, value, order = op
            if not (tso or pso) or order == "full":
                mem = set_at(mem, cell, value)
            elif tso:
                bufs = set_at(bufs, t, bufs[t] + ((cell, value),))
            else:
                if order == "release":
                    epochs = set_at(epochs, t, epochs[t] + 1)
                mine = bufs[t]
                mine = set_at(mine, cell, mine[cell] + ((value, epochs[t]),))
                bufs = set_at(bufs, t, mine)
        elif kind == "fence":
            if pso and op[1] == "wmb":
                epochs = set_at(epochs, t, epochs[t] + 1)
        elif kind == "rmw":
            _, rk, cell, arg, _order = op
            old = mem[cell]
            mem = set_at(mem, cell, _apply_rmw(rk, old, arg))
            results = set_at(results, t, results[t] + (old,))
        else:  # cas
            _, cell, expected, new, _order = op
            old = mem[cell]
            if old == expected:
                mem = set_at(mem, cell, new)
            results = set_at(results, t, results[t] + (old,))
        return pcs, results, bufs, epochs, mem

    def flushes(state: Any) -> list[Any]:
        pcs, results, bufs, epochs, mem = state
        out = []
        for t in range(nthreads):
            if tso:
                if bufs[t]:
                    (cell, value), rest = bufs[t][0], bufs[t][1:]
                    out.append((pcs, results, set_at(bufs, t, rest), epochs,
                                set_at(mem, cell, value)))
            elif pso:
                mine = bufs[t]
                heads = [entries[0][1] for entries in mine if entries]
                if not heads:
                    continue
                oldest = min(heads)
                for cell, entries in enumerate(mine):
                    if entries and entries[0][1] == oldest:
                        value = entries[0][0]
                        out.append((pcs, results, set_at(bufs, t, set_at(mine, cell, entries[1:])),
                                    epochs, set_at(mem, cell, value)))
        return out

    def explore(state: Any) -> frozenset[Outcome]:
        got = memo.get(state)
        if got is not None:
            return got
        pcs, results, bufs, epochs, mem = state
        found: set[Outcome] = set()
        successors = flushes(state)
        for t in range(nthreads):
            if pcs[t] < len(prog[t]) and may_run(prog[t][pcs[t]], bufs, epochs, t):
                successors.append(run_op(state, t))
        if not successors:
            # Nothing can move: under these rules that means every thread finished and
            # every buffer is empty (a drain can always wait for flushes).
            assert all(pcs[t] == len(prog[t]) for t in range(nthreads)), state
            found.add((results, mem))
        for nxt in successors:
            found |= explore(nxt)
        result = frozenset(found)
        memo[state] = result
        return result

    if tso:
        bufs0: Any = tuple(() for _ in range(nthreads))
    elif pso:
        bufs0 = tuple(tuple(() for _ in range(n)) for _ in range(nthreads))
    else:
        bufs0 = ()
    start = (
        tuple(0 for _ in range(nthreads)),
        tuple(() for _ in range(nthreads)),
        bufs0,
        tuple(0 for _ in range(nthreads)),
        tuple(0 for _ in range(n)),
    )
    return explore(start)


# --------------------------------------------------------------------------------------------
# The same program for vcpureq
# --------------------------------------------------------------------------------------------


def run_thread(cells: list[Any], ops: Thread) -> tuple[int, ...]:
    """Execute ``ops`` on vcpureq Atomics ``cells``; the values loads and RMWs returned."""
    from vcpureq.model import fence

    out: list[int] = []
    for op in ops:
        kind = op[0]
        if kind == "load":
            out.append(cells[op[1]].load(order=op[2]))
        elif kind == "store":
            cells[op[1]].store(op[2], order=op[3])
        elif kind == "rmw":
            _, rk, cell, arg, order = op
            out.append(getattr(cells[cell], _RMW_METHOD[rk])(arg, order=order))
        elif kind == "cas":
            _, cell, expected, new, order = op
            out.append(cells[cell].compare_exchange(expected, new, order=order))
        else:
            fence(op[1])
    return tuple(out)


def to_vcpureq_program(prog: Prog, ncells: int | None = None) -> Callable[[], Outcome]:
    """A vcpureq program: main spawns ``t1..tn`` (one per data thread), joins them all and
    returns ``(per-thread results, final cell values)`` -- the reference's outcome form."""
    from vcpureq.model import Atomic, spawn

    validate(prog)
    n = num_cells(prog) if ncells is None else ncells

    def program() -> Outcome:
        cells = [Atomic(0, name=cell_name(c)) for c in range(n)]
        threads = [spawn(run_thread, cells, ops, name=f"t{i + 1}")
                   for i, ops in enumerate(prog)]
        results = tuple(t.join() for t in threads)
        finals = tuple(c.load() for c in cells)
        return results, finals

    return program


__all__ = [
    "CELL_NAMES",
    "FENCE_KINDS",
    "MODELS",
    "ORDERS",
    "RMW_KINDS",
    "cell_name",
    "format_program",
    "num_cells",
    "outcomes",
    "run_thread",
    "to_vcpureq_program",
    "validate",
]
