"""Weak memory: x86-TSO and SPARC PSO as store buffers whose flushes are schedulable events.

x86-TSO (Owens, Sarkar, Sewell, "A better x86 memory model: x86-TSO", TPHOLs 2009):
one FIFO store buffer per thread.  A load reads the thread's newest buffered store to that
cell, else memory.  A *flush* moves the oldest buffered store to memory; each thread's
buffer has a flush actor that the explorer schedules like a thread.  ``fence("mb")``,
every read-modify-write (x86's locked instructions) and every "full" store (a seq_cst
store, compiled to xchg) wait until the buffer is empty; ``wmb``, ``rmb``, acquire and
release add nothing to TSO's own order, and on x86 ``smp_mb__before/after_atomic`` are
compiler barriers only (the atomic beside them is locked already).

SPARC PSO (SPARC Architecture Manual v8, appendix K): one FIFO buffer per thread *and
cell*, so stores to different cells may become visible out of order.  ``wmb`` (and a
release store, before its own store) orders every earlier store before every later one:
buffered stores carry the thread's *epoch*, bumped by each wmb, and a store may only be
flushed when no store of an older epoch is still buffered.  A relaxed read-modify-write
(the kernel's set_bit, clear_bit, atomic_or) waits for its own cell's buffer and for the
stores of older wmb epochs (its write is a later store: smp_wmb(); set_bit() in
kvm_make_request), not for the rest; a fully ordered one (cmpxchg, xchg, test_and_set_bit,
value-returning atomics), ``mb`` and ``smp_mb__before/after_atomic`` drain everything.

Neither model reorders loads with loads or loads with later stores (ARM and POWER do):
under these models a protocol can only be shown wrong for store->load and (PSO)
store->store reordering.

For DPOR (see :mod:`.dpor`): a buffered store touches no shared cell; its flush writes the
cell and the pseudo-cell ``B(t, c)`` ("t's buffer for c"), which a load that was served from
the buffer reads.  A flush happens after its store; a drain (fence, RMW, full store) happens
after the flushes it waited for; under PSO a flush happens after the flushes of older
epochs.  These edges are passed to DPOR as clock joins, not as data conflicts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .runtime import (
    _RMW,
    FENCE,
    FLUSH,
    JOIN,
    LOAD,
    STORE,
    WAIT,
    Execution,
    StepResult,
    Thread,
    _Stop,
    rmw,
)

_FLUSH_OP = (FLUSH, None, None, None, None)
# An entry of a store buffer: (cell, value, index of the store event, epoch).
Entry = tuple[int, Any, int, int]
_ALL = -1  # "drain every buffer of the thread"


class FlushActor(Thread):
    """The schedulable side of one store buffer: each step flushes its oldest store."""

    __slots__ = ("owner", "key", "entries")

    def __init__(self, ex: Execution, tid: int, name: str, owner: int, key: Any) -> None:
        super().__init__(ex, tid, name, daemon=True)
        self.owner = owner
        self.key = key
        self.entries: deque[Entry] = deque()


class BufferedExecution(Execution):
    """An execution under "tso" or "pso"."""

    def __init__(self, program: Callable[[], Any], choice: Callable[[int, int], int],
                 on_spawn: Callable[[int, int], None] | None = None,
                 tracing: bool = False, max_steps: int = 10_000,
                 memory_model: str = "tso") -> None:
        super().__init__(program, choice, on_spawn, tracing, max_steps)
        self.memory_model = memory_model
        self.pso = memory_model == "pso"
        self.actors: dict[Any, FlushActor] = {}  # buffer key -> its flush actor
        self.actors_of: dict[int, list[FlushActor]] = {}  # thread -> its flush actors
        self.buffered: dict[int, int] = {}  # thread -> number of buffered stores
        self.epoch: dict[int, int] = {}
        self.flushes_by_epoch: dict[int, dict[int, list[int]]] = {}
        self.bcells: dict[tuple[int, int], int] = {}

    # ---- buffers
    def _bcell(self, tid: int, cell: int) -> int:
        """The pseudo-cell B(tid, cell): negative ids never clash with real cells."""
        b = self.bcells.get((tid, cell))
        if b is None:
            b = self.bcells[(tid, cell)] = -1 - len(self.bcells)
        return b

    def _newest(self, tid: int, cell: int) -> Entry | None:
        if self.buffered.get(tid, 0) == 0:
            return None
        if self.pso:
            actor = self.actors.get((tid, cell))
            return actor.entries[-1] if actor is not None and actor.entries else None
        actor = self.actors.get(tid)
        if actor is not None:
            for entry in reversed(actor.entries):
                if entry[0] == cell:
                    return entry
        return None

    def _view(self, tid: int, cell: int) -> tuple[Any, int]:
        """What ``tid`` reads in ``cell``: (value, cell id for the footprint)."""
        entry = self._newest(tid, cell)
        if entry is not None:
            return entry[1], self._bcell(tid, cell)
        return self.mem[cell], cell

    def _buffer(self, tid: int, cell: int, value: Any, event: int) -> None:
        key: Any = (tid, cell) if self.pso else tid
        actor = self.actors.get(key)
        if actor is None:
            owner = self.threads[tid]
            aid = len(self.threads)
            name = f"{owner.name}.sb[{self.cell_names[cell]}]" if self.pso else f"{owner.name}.sb"
            actor = FlushActor(self, aid, name, tid, key)
            self.threads.append(actor)
            self.actors[key] = actor
            self.actors_of.setdefault(tid, []).append(actor)
            if self.on_spawn is not None:
                self.on_spawn(tid, aid)
        actor.entries.append((cell, value, event, self.epoch.get(tid, 0)))
        actor.pending = _FLUSH_OP
        self.buffered[tid] = self.buffered.get(tid, 0) + 1

    def _drain_need(self, t: Thread) -> int | None:
        """None, _ALL, or the cell whose buffer t's pending operation must wait for."""
        op = t.pending
        if op is None:
            return None
        code = op[0]
        if code == FENCE:
            kind = op[2]
            if kind in ("mb", "exit", "spawn"):
                return _ALL
            if kind in ("mb__before_atomic", "mb__after_atomic") and self.pso:
                return _ALL
            return None
        if code == STORE:
            return _ALL if op[4] == "full" else None
        if code in _RMW:
            if not self.pso or op[4] in ("full", "release"):
                return _ALL
            return op[1]
        return None

    def _drained(self, tid: int, need: int) -> bool:
        if self.buffered.get(tid, 0) == 0:
            return True
        if need == _ALL:
            return False
        actor = self.actors.get((tid, need))
        if actor is not None and actor.entries:
            return False
        # A relaxed RMW writes memory at once, so it must also wait for every store that
        # an earlier wmb ordered before it (smp_wmb(); set_bit() in kvm_make_request).
        epoch = self.epoch.get(tid, 0)
        return not any(a.entries and a.entries[0][3] < epoch for a in self.actors_of[tid])

    def _flushable(self, actor: FlushActor) -> bool:
        if not actor.entries:
            return False
        if not self.pso:
            return True
        epoch = actor.entries[0][3]
        for other in self.actors_of[actor.owner]:
            if other.entries and other.entries[0][3] < epoch:
                return False
        return True

    # ---- scheduling interface
    def enabled(self) -> list[int]:
        out = []
        for t in self.threads:
            if not t.runnable or t.pending is None:
                continue
            if isinstance(t, FlushActor):
                if self._flushable(t):
                    out.append(t.tid)
                continue
            need = self._drain_need(t)
            if need is None or self._drained(t.tid, need):
                out.append(t.tid)
        return out

    def footprint(self, tid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        t = self.threads[tid]
        if isinstance(t, FlushActor):
            cell = t.entries[0][0]
            return (), (self._bcell(t.owner, cell), cell)
        op = t.pending
        assert op is not None
        code = op[0]
        if code == LOAD:
            return (self._view(tid, op[1])[1],), ()
        if code == STORE:
            return ((), (op[1],)) if op[4] == "full" else ((), ())
        if code == WAIT:
            self.running = tid
            cells = self._peek(op[2])[0]
            return tuple(self._view(tid, c)[1] for c in cells), ()
        return super().footprint(tid)

    def peek_load(self, cell: int) -> Any:
        return self._view(self.running, cell)[0]

    def signature(self, tid: int) -> tuple[Any, ...]:
        t = self.threads[tid]
        if isinstance(t, FlushActor):
            return FLUSH, t.key
        return super().signature(tid)

    def describe_pending(self, tid: int) -> str:
        t = self.threads[tid]
        if isinstance(t, FlushActor):
            return f"flush {self.cell_names[t.entries[0][0]]}" if t.entries else "nothing"
        return super().describe_pending(tid)

    # ---- hooks: thread creation and exit are full barriers
    def _before_spawn(self) -> None:
        if self.buffered.get(self.running, 0):
            self.sched.switch((FENCE, None, "spawn", None, None))

    def _thread_exit(self, t: Thread) -> None:
        if self.buffered.get(t.tid, 0):
            self.sched.switch((FENCE, None, "exit", None, None))

    # ---- one step
    def _joins_for(self, tid: int, need: int | None) -> tuple[int, ...]:
        if need is None:
            return ()
        if need == _ALL:
            return tuple(a.tid for a in self.actors_of.get(tid, ()))
        actor = self.actors.get((tid, need))
        return (actor.tid,) if actor is not None else ()

    def _step(self, tid: int) -> StepResult:
        t = self.threads[tid]
        self.steps += 1
        event = self.steps - 1
        if isinstance(t, FlushActor):
            return self._flush(t, event)
        op = t.pending
        assert op is not None and t.runnable
        code, cell, a, b, order = op
        mem = self.mem
        reads: tuple[int, ...] = ()
        writes: tuple[int, ...] = ()
        need = self._drain_need(t)
        joined = self._joins_for(tid, need)
        after: tuple[int, ...] = ()
        if self.pso and need is not None and need != _ALL:
            after = self._older_epoch_flushes(tid, self.epoch.get(tid, 0))
        result: Any = None
        value: Any = None
        if code == LOAD:
            result, fp = self._view(tid, cell)
            value = result
            reads = (fp,)
        elif code == STORE:
            value = a
            if order == "full":
                mem[cell] = a
                writes = (cell,)
            else:
                if order == "release" and self.pso:
                    self.epoch[tid] = self.epoch.get(tid, 0) + 1
                self._buffer(tid, cell, a, event)
                self._record(t, code, reads, writes, value, cell)
                return self._finish_step(t, code, reads, writes, value, result, joined, (),
                                         record=False)
        elif code == WAIT:
            self.running = tid
            cells, ok = self._peek(a)
            reads = tuple(self._view(tid, c)[1] for c in cells)
            value = ok
            if not ok:
                # Sleep until one of the cells is written in memory (a flush, including
                # this thread's own, is such a write).
                self._block(t, cells)
                self._record(t, code, reads, writes, value)
                return reads, writes, joined, ()
        elif code == FENCE:
            value = a
            if a == "wmb" and self.pso:
                self.epoch[tid] = self.epoch.get(tid, 0) + 1
        elif code == JOIN:
            joined = (a.tid,)
            value = a.name
        else:
            result, value, writes = rmw(mem, code, cell, a, b)
            reads = (cell,)
        if writes:
            self._wake(cell)
        return self._finish_step(t, code, reads, writes, value, result, joined, after)

    def _older_epoch_flushes(self, tid: int, epoch: int) -> tuple[int, ...]:
        """The flush events of ``tid``'s newest epoch older than ``epoch``: each of them
        happens after every flush of the epochs before it, so they stand for all."""
        by_epoch = self.flushes_by_epoch.get(tid)
        if not by_epoch:
            return ()
        older = [e for e in by_epoch if e < epoch]
        return tuple(by_epoch[max(older)]) if older else ()

    def _flush(self, actor: FlushActor, event: int) -> StepResult:
        cell, value, store_event, epoch = actor.entries.popleft()
        owner = actor.owner
        self.buffered[owner] -= 1
        if not actor.entries:
            actor.pending = None
        self.mem[cell] = value
        after = [store_event]
        if self.pso:
            after += self._older_epoch_flushes(owner, epoch)
            self.flushes_by_epoch.setdefault(owner, {}).setdefault(epoch, []).append(event)
        self._wake(cell)
        writes = (self._bcell(owner, cell), cell)
        self._record(actor, FLUSH, (), writes, value, cell)
        if self.steps >= self.max_steps:
            raise _Stop("step-limit", f"the execution reached {self.max_steps} steps")
        return (), writes, (), tuple(after)

    def cell_name(self, cell: int) -> str:
        if cell >= 0:
            return self.cell_names[cell]
        for (tid, c), b in self.bcells.items():
            if b == cell:
                return f"{self.cell_names[c]}@{self.threads[tid].name}.sb"
        return "?"


__all__ = ["BufferedExecution", "FlushActor"]
