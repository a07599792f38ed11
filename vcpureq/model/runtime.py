"""The model world's runtime: threads as greenlets, Atomics, fences, waits and choices.

Every visible operation (an Atomic access, a fence, a wait, a join) suspends the calling
thread's greenlet and hands the operation to the scheduler as a *pending operation*.  The
scheduler (an :class:`Execution` driven by a strategy in :mod:`vcpureq.model.explorer`)
decides which thread's pending operation runs next, performs it on the model memory and
resumes that thread with the result.  Local Python code between two visible operations
runs without interruption, which is sound because plain Python state is private to its
thread: only Atomics are shared.

``spawn``, ``choose`` and ``check`` are local steps: they never give another thread the
chance to run, ``choose`` only asks the strategy which value to return.

Like Loom's runtime, this is a thin façade: the same protocol code runs in the real world
against real primitives; only these functions know they are being explored.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import greenlet

from . import real
from .events import Event

ORDERS = ("relaxed", "acquire", "release", "full")
FENCES = ("mb", "wmb", "rmb", "mb__before_atomic", "mb__after_atomic")

# Operation codes of pending operations (tuples: (code, cell, arg1, arg2, order)).
LOAD, STORE, XCHG, CAS, FADD, FOR, FAND, FENCE, WAIT, JOIN, FLUSH = range(11)
OP_NAMES = (
    "load", "store", "exchange", "cas", "fetch_add", "fetch_or", "fetch_and",
    "fence", "wait", "join", "flush",
)
_RMW = frozenset((XCHG, CAS, FADD, FOR, FAND))

# (cells read, cells written, actors joined, events joined): see Execution.step.
StepResult = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]

_MODEL_DIR = os.path.dirname(os.path.abspath(__file__))
_current: Execution | None = None


class ModelUsageError(RuntimeError):
    """A model primitive used outside an exploration or in a way the model forbids."""


class _Stop(BaseException):
    """Ends an execution early (a violation was found); never seen by user code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


class _LocalLoop(Exception):
    """Raised into a thread that ran too long without a visible operation."""


def rmw(mem: list[Any], code: int, cell: int, a: Any, b: Any
        ) -> tuple[Any, tuple[Any, Any], tuple[int, ...]]:
    """Perform a read-modify-write on ``mem``: (old value, (old, new), cells written).
    A failed compare_exchange writes nothing (it is a read)."""
    old = mem[cell]
    if code == XCHG:
        new = a
    elif code == CAS:
        if old != a:
            return old, (old, old), ()
        new = b
    elif code == FADD:
        new = old + a
    elif code == FOR:
        new = old | a
    else:
        new = old & a
    mem[cell] = new
    return old, (old, new), (cell,)


def _execution() -> Execution:
    ex = _current
    if ex is None:
        raise ModelUsageError(
            "vcpureq.model primitives can only be used inside a program run by explore() "
            "or inside vcpureq.model.real_world()"
        )
    return ex


def _real_world() -> real.RealWorld | None:
    """The active real world, when no model execution is running."""
    return real.current() if _current is None else None


def user_source(frame: Any) -> str | None:
    """file:line of the innermost frame outside vcpureq.model."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if os.path.dirname(os.path.abspath(filename)) != _MODEL_DIR:
            return f"{os.path.relpath(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


# --------------------------------------------------------------------------- threads


class Thread:
    """A model thread.  ``join()`` blocks until it finished and returns its value."""

    __slots__ = (
        "tid", "name", "daemon", "glet", "pending", "runnable", "finished",
        "result", "watch", "ex",
    )

    def __init__(self, ex: Execution, tid: int, name: str, daemon: bool) -> None:
        self.ex = ex
        self.tid = tid
        self.name = name
        self.daemon = daemon
        self.glet: greenlet.greenlet | None = None
        self.pending: tuple | None = None
        self.runnable = True
        self.finished = False
        self.result: Any = None
        self.watch: tuple[int, ...] = ()

    def join(self) -> Any:
        ex = _execution()
        if ex.threads[ex.running] is self:
            raise ModelUsageError(f"thread {self.name} joins itself")
        ex.sched.switch((JOIN, None, self, None, None))
        return self.result

    def __repr__(self) -> str:
        return f"<Thread {self.tid} {self.name}>"


def spawn(fn: Callable[..., Any], *args: Any, name: str | None = None,
          daemon: bool = False) -> Thread:
    """Start ``fn(*args)`` in a new model thread (a local step: no scheduling point)."""
    world = _real_world()
    if world is not None:
        return real.RealThread(world, fn, args, name, daemon)  # type: ignore[return-value]
    return _execution().spawn(fn, args, name, daemon)


# --------------------------------------------------------------------------- atomics


class Atomic:
    """A shared memory cell.  Every method is one visible event.

    Read-modify-write methods return the old value.  ``order`` is one of "relaxed",
    "acquire", "release", "full"; it matters under weak memory models only.
    """

    __slots__ = ("id", "name", "ex", "value")

    def __init__(self, value: Any = 0, name: str | None = None) -> None:
        if _real_world() is not None:
            # The real world: the value lives here; RMWs and stores hold real.LOCK.
            self.ex: Execution | None = None
            self.id = -1
            self.name = name or "atomic"
            self.value = value
            return
        ex = _execution()
        self.ex = ex
        self.id = len(ex.mem)
        self.name = name or f"cell{self.id}"
        ex.mem.append(value)
        ex.cell_names.append(self.name)

    def _op(self, code: int, a: Any, b: Any, order: str) -> Any:
        ex = self.ex
        if ex is None:
            return self._real_op(code, a, b)
        if ex.peek is not None:
            if code != LOAD:
                raise ModelUsageError(
                    f"wait_until predicates may only load; {OP_NAMES[code]} on {self.name}"
                )
            ex.peek.append(self.id)
            return ex.peek_load(self.id)
        return ex.sched.switch((code, self.id, a, b, order))

    def _real_op(self, code: int, a: Any, b: Any) -> Any:
        if code == LOAD:
            return self.value
        with real.LOCK:
            if code == STORE:
                self.value = a
                return None
            box = [self.value]
            old, _value, _writes = rmw(box, code, 0, a, b)
            self.value = box[0]
            return old

    def load(self, order: str = "full") -> Any:
        if self.ex is None:
            return self.value
        return self._op(LOAD, None, None, order)

    def store(self, value: Any, order: str = "full") -> None:
        self._op(STORE, value, None, order)

    def exchange(self, value: Any, order: str = "full") -> Any:
        return self._op(XCHG, value, None, order)

    def compare_exchange(self, expected: Any, new: Any, order: str = "full") -> Any:
        return self._op(CAS, expected, new, order)

    def fetch_add(self, delta: int, order: str = "full") -> Any:
        return self._op(FADD, delta, None, order)

    def fetch_or(self, bits: int, order: str = "full") -> Any:
        return self._op(FOR, bits, None, order)

    def fetch_and(self, bits: int, order: str = "full") -> Any:
        return self._op(FAND, bits, None, order)

    def __repr__(self) -> str:
        return f"<Atomic {self.name}>"


def fence(kind: str = "mb") -> None:
    """A memory barrier: one of "mb", "wmb", "rmb", "mb__before_atomic", "mb__after_atomic"."""
    if kind not in FENCES:
        raise ModelUsageError(f"unknown fence {kind!r}; expected one of {', '.join(FENCES)}")
    if _real_world() is not None:
        return  # CPython's interpreter lock orders every access already
    _execution().sched.switch((FENCE, None, kind, None, None))


def wait_until(predicate: Callable[[], Any]) -> None:
    """Block until ``predicate()`` holds.  Each evaluation is one read event over the cells
    it loads; after a false one the thread sleeps until another thread writes one of them.
    In the real world it polls, and raises real.WaitTimeout after the world's bound."""
    world = _real_world()
    if world is not None:
        real.real_wait_until(world, predicate)
        return
    _execution().sched.switch((WAIT, None, predicate, None, None))


def choose(n: int) -> int:
    """A nondeterministic choice in ``range(n)``: the explorer tries every value."""
    if n < 1:
        raise ModelUsageError(f"choose({n}): need at least one alternative")
    if n == 1:
        return 0
    if _real_world() is not None:
        raise ModelUsageError(f"choose({n}) has no meaning in the real world")
    ex = _execution()
    return ex.choice(ex.running, n)


def current_step() -> int | None:
    """The trace step (``Event.step``) of the running thread's last visible operation,
    for messages that cite the counterexample's trace; None outside a model execution.
    Plain bookkeeping: no scheduling point, the explored space is unchanged."""
    ex = _current
    if ex is None:
        return None
    return int(ex.steps) - 1


def check(condition: Any, message: str = "check failed") -> None:
    """A property: if ``condition`` is false the execution is an "assertion" violation."""
    if not condition:
        if _real_world() is not None:
            raise real.CheckFailed(message)
        raise _Stop("assertion", message)


# --------------------------------------------------------------------------- execution


#: operand types whose equality is structural: compared by the nondeterminism check
_PLAIN = frozenset({int, bool, str})


class Execution:
    """One run of a program under one schedule (sequentially consistent memory).

    A strategy drives it: :meth:`start`, then repeatedly pick one of :meth:`enabled` and
    :meth:`step` it, until ``done``.  ``choice(tid, n)`` is supplied by the strategy and
    answers ``choose``.  ``on_spawn(parent, child)`` lets DPOR give the child its parent's
    clock.  :meth:`close` frees every suspended greenlet (see ARCHITECTURE.md).
    """

    memory_model = "sc"

    def __init__(
        self,
        program: Callable[[], Any],
        choice: Callable[[int, int], int],
        on_spawn: Callable[[int, int], None] | None = None,
        tracing: bool = False,
        max_steps: int = 10_000,
    ) -> None:
        self.program = program
        self.choice = choice
        self.on_spawn = on_spawn
        self.tracing = tracing
        self.max_steps = max_steps
        self.mem: list[Any] = []
        self.cell_names: list[str] = []
        self.threads: list[Thread] = []
        self.watchers: dict[int, list[Thread]] = {}
        self.peek: list[int] | None = None
        self.running = 0
        self.steps = 0
        self.live = 0  # non-daemon threads not finished
        self.done = False
        self.failure: _Stop | None = None
        self.outcome: Any = None
        self.trace: list[Event] = []
        self.sched = greenlet.getcurrent()

    # ---- threads
    def spawn(self, fn: Callable[..., Any], args: tuple, name: str | None,
              daemon: bool) -> Thread:
        if self.threads:
            self._before_spawn()
        tid = len(self.threads)
        t = Thread(self, tid, name or f"t{tid}", daemon)
        self.threads.append(t)
        if not daemon:
            self.live += 1

        def body(*_: Any) -> None:
            try:
                t.result = fn(*args)
                self._thread_exit(t)
            except _Stop:
                raise
            except greenlet.GreenletExit:
                raise
            except _LocalLoop as e:
                raise _Stop("step-limit", f"thread {t.name}: {e}") from None
            except BaseException as e:
                tb = "".join(traceback.format_exception(e))
                raise _Stop(
                    "exception", f"thread {t.name} raised {type(e).__name__}: {e}\n{tb}"
                ) from None

        t.glet = greenlet.greenlet(body, parent=self.sched)
        if self.on_spawn is not None and tid > 0:
            self.on_spawn(self.running, tid)
        if tid > 0:
            self._new.append(t)
        return t

    def start(self) -> None:
        global _current
        self._new: list[Thread] = []
        _current = self
        try:
            main = self.spawn(self._main, (), "main", False)
            self._new.clear()
            self._advance(main, None)
            self._prime()
        finally:
            _current = None

    def _before_spawn(self) -> None:
        """Hook: creating a thread is a full barrier (pthread_create) under weak models."""

    def _thread_exit(self, t: Thread) -> None:
        """Hook: a thread's end is a full barrier (pthread_exit / join) under weak models."""

    def _main(self) -> Any:
        self.outcome = self.program()
        return self.outcome

    def _advance(self, t: Thread, value: Any) -> None:
        """Run ``t`` from its last visible operation to its next one."""
        self.running = t.tid
        assert t.glet is not None
        try:
            op = t.glet.switch(value)
        except _Stop as stop:
            self._fail(stop)
            return
        if t.glet.dead:
            t.finished = True
            t.pending = None
            t.runnable = False
            if not t.daemon:
                self.live -= 1
                if self.live == 0:
                    self.done = True
            return
        t.pending = op
        if op[0] == JOIN:
            t.runnable = op[2].finished

    def _prime(self) -> None:
        while self._new and not self.done:
            t = self._new.pop(0)
            self._advance(t, None)
            if t.finished:
                self._wake_joiners()

    def _fail(self, stop: _Stop) -> None:
        if self.failure is None:
            self.failure = stop
        self.done = True

    def _wake_joiners(self) -> None:
        for t in self.threads:
            if t.pending is not None and t.pending[0] == JOIN and t.pending[2].finished:
                t.runnable = True

    # ---- scheduling interface
    def enabled(self) -> list[int]:
        return [t.tid for t in self.threads if t.runnable and t.pending is not None]

    def blocked_threads(self) -> list[Thread]:
        return [t for t in self.threads if not t.finished and not t.daemon]

    def signature(self, tid: int) -> tuple[Any, ...]:
        """What thread ``tid`` is about to do: (operation code, cell id or detail), and
        the values it would write or compare when they are plain (ints, strings, None),
        so that a program computing them from anything but what it read (the clock,
        random numbers, state kept across runs) is caught as nondeterministic."""
        op = self.threads[tid].pending
        assert op is not None
        code = op[0]
        if code == JOIN:
            return code, op[2].tid
        if code == FENCE:
            return code, op[2]
        a, b = op[2], op[3]
        if (a is None or type(a) in _PLAIN or isinstance(a, int)) and (
                b is None or type(b) in _PLAIN or isinstance(b, int)):
            return code, op[1], a, b
        return code, op[1]

    def footprint(self, tid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Cells the pending operation of ``tid`` would read and write (conservative)."""
        op = self.threads[tid].pending
        assert op is not None
        code = op[0]
        if code == LOAD:
            return (op[1],), ()
        if code == STORE:
            return (), (op[1],)
        if code == CAS and self.mem[op[1]] != op[2]:
            return (op[1],), ()  # it would fail: a read
        if code in _RMW:
            return (op[1],), (op[1],)
        if code == WAIT:
            return self._peek(op[2])[0], ()
        return (), ()

    def _peek(self, predicate: Callable[[], Any]) -> tuple[tuple[int, ...], bool]:
        global _current
        self.peek = []
        prev, _current = _current, self
        try:
            value = bool(predicate())
        except _Stop:
            raise
        except BaseException as e:
            raise _Stop(
                "exception",
                f"wait_until predicate of thread {self.threads[self.running].name} "
                f"raised {type(e).__name__}: {e}",
            ) from None
        finally:
            cells = tuple(dict.fromkeys(self.peek))
            self.peek = None
            _current = prev
        return cells, value

    def step(self, tid: int) -> StepResult:
        """Perform actor ``tid``'s pending operation and run it to its next one.

        Returns (cells read, cells written, actors whose clocks this event joins, earlier
        events (by index) it is ordered after).  The last two are the happens-before edges
        that are not data conflicts: a join after a thread's end, a flush after its store,
        a fence after the flushes it waited for."""
        global _current
        _current = self
        try:
            return self._step(tid)
        except _Stop as stop:
            self._fail(stop)
            return (), (), (), ()
        finally:
            _current = None

    def peek_load(self, cell: int) -> Any:
        """The value a wait_until predicate of the running thread sees in ``cell``."""
        return self.mem[cell]

    def _step(self, tid: int) -> StepResult:
        t = self.threads[tid]
        op = t.pending
        assert op is not None and t.runnable
        self.steps += 1
        code, cell, a, b, _order = op
        mem = self.mem
        reads: tuple[int, ...] = ()
        writes: tuple[int, ...] = ()
        joined: tuple[int, ...] = ()
        result: Any = None
        value: Any = None
        if code == LOAD:
            result = value = mem[cell]
            reads = (cell,)
        elif code == STORE:
            mem[cell] = value = a
            writes = (cell,)
        elif code == WAIT:
            self.running = tid
            reads, ok = self._peek(a)
            value = ok
            if not ok:
                # A false evaluation: sleep until one of the cells read is written (if it
                # reads nothing, nothing can ever make it true).
                self._block(t, reads)
                self._record(t, code, reads, writes, value)
                return reads, writes, joined, ()
        elif code == FENCE:
            value = a
        elif code == JOIN:
            joined = (a.tid,)
            value = a.name
        else:
            result, value, writes = rmw(mem, code, cell, a, b)
            reads = (cell,)
        if writes:
            self._wake(writes[0])
        return self._finish_step(t, code, reads, writes, value, result, joined, ())

    def _finish_step(self, t: Thread, code: int, reads: tuple[int, ...],
                     writes: tuple[int, ...], value: Any, result: Any,
                     joined: tuple[int, ...], after: tuple[int, ...],
                     record: bool = True) -> StepResult:
        if record:
            self._record(t, code, reads, writes, value)
        if self.steps >= self.max_steps:
            raise _Stop(
                "step-limit",
                f"the execution reached {self.max_steps} steps (max_steps): a livelock, "
                "a spin loop without wait_until, or a bound too small for the program",
            )
        self._advance(t, result)
        if t.finished:
            self._wake_joiners()
        if self._new:
            self._prime()
        return reads, writes, joined, after

    def _wake(self, cell: int) -> None:
        """``cell`` was written in memory: threads whose false wait read it may run."""
        w = self.watchers.pop(cell, None)
        if not w:
            return
        for waiter in w:
            if not waiter.runnable:
                waiter.runnable = True
                for c in waiter.watch:
                    if c != cell:
                        lst = self.watchers.get(c)
                        if lst and waiter in lst:
                            lst.remove(waiter)
                waiter.watch = ()

    def _block(self, t: Thread, watch: tuple[int, ...]) -> None:
        """A false wait evaluation: ``t`` sleeps until one of ``watch`` is written."""
        t.runnable = False
        t.watch = watch
        for c in watch:
            self.watchers.setdefault(c, []).append(t)

    def cell_name(self, cell: int) -> str:
        return self.cell_names[cell]

    def _record(self, t: Thread, code: int, reads: tuple[int, ...],
                writes: tuple[int, ...], value: Any, cell: int | None = None) -> None:
        if not self.tracing:
            return
        if cell is not None:
            names: tuple[str, ...] = (self.cell_names[cell],)
        else:
            names = tuple(self.cell_name(c) for c in dict.fromkeys(reads + writes))
        source = user_source(t.glet.gr_frame) if t.glet is not None else None
        self.trace.append(
            Event(len(self.trace), t.tid, t.name, OP_NAMES[code], names,
                  frozenset(reads), frozenset(writes), value, source)
        )

    def pending_source(self, tid: int) -> str | None:
        t = self.threads[tid]
        return user_source(t.glet.gr_frame) if t.glet is not None else None

    def describe_pending(self, tid: int) -> str:
        op = self.threads[tid].pending
        if op is None:
            return "nothing"
        code = op[0]
        if code == JOIN:
            return f"join {op[2].name}"
        if code == FENCE:
            return f"fence {op[2]}"
        if code == WAIT:
            return "wait_until"
        return self.describe_signature(self.signature(tid))

    def describe_signature(self, sig: tuple[Any, ...]) -> str:
        """A :meth:`signature` in words: "store x (1)", "compare_exchange m (0, 1)"."""
        code = sig[0]
        if code in (JOIN, FENCE) or len(sig) < 2 or not isinstance(sig[1], int) \
                or not 0 <= sig[1] < len(self.cell_names):
            return str(sig)
        name = OP_NAMES[code] if 0 <= code < len(OP_NAMES) else str(code)
        text = f"{name} {self.cell_names[sig[1]]}"
        if len(sig) == 4:
            values = [repr(v) for v in sig[2:] if v is not None]
            if values:
                text += f" ({', '.join(values)})"
        return text

    def stuck_report(self) -> tuple[str, str] | None:
        """At the end: a (kind, message) if a non-daemon thread can never finish."""
        stuck = self.blocked_threads()
        if not stuck:
            return None
        parts = []
        roots = 0  # blocked threads that are not merely joining another blocked thread
        for t in stuck:
            where = self.pending_source(t.tid)
            if t.pending is None or t.pending[0] != JOIN:
                roots += 1
            parts.append(
                f"{t.name} blocked in {self.describe_pending(t.tid)}"
                + (f" at {where}" if where else "")
            )
        kind = "deadlock" if roots > 1 else "hang"
        return kind, "nothing can run: " + "; ".join(parts)

    def close(self) -> None:
        """Throw GreenletExit into every suspended greenlet and drop the tables."""
        global _current
        _current = self
        try:
            for t in self.threads:
                g = t.glet
                if g is not None and g and not g.dead:
                    try:
                        g.throw(greenlet.GreenletExit)
                    except BaseException:  # noqa: BLE001 - a thread misbehaving on exit
                        pass
                t.glet = None
                t.pending = None
        finally:
            _current = None
        self.threads = []
        self.watchers = {}


def install_loop_watchdog(seconds: float) -> Callable[[], None]:
    """Raise :class:`_LocalLoop` into a thread that runs ``seconds`` without a visible
    operation (a loop that never touches an Atomic).  Returns the uninstaller."""
    import signal
    import threading

    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return lambda: None
    state: dict[str, Any] = {"steps": -1, "ex": None}

    def tick(signum: int, frame: Any) -> None:
        ex = _current
        if ex is None:
            state["ex"] = None
            return
        if (state["ex"] is ex and state["steps"] == ex.steps
                and greenlet.getcurrent() is not ex.sched):
            raise _LocalLoop(
                f"ran for more than {seconds:g} s without a visible operation "
                "(a loop that never touches an Atomic, or a blocking call)"
            )
        state["ex"], state["steps"] = ex, ex.steps

    old = signal.signal(signal.SIGALRM, tick)
    signal.setitimer(signal.ITIMER_REAL, seconds, seconds)

    def uninstall() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)

    return uninstall
