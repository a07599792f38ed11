"""The real world: the same primitives over OS threads, for protocol code run on /dev/kvm.

Inside ``with real_world():`` (and in every thread started from it), ``Atomic``,
``spawn``, ``fence``, ``wait_until``, ``choose`` and ``check`` act on real threads:

- an ``Atomic`` is a Python object; loads and stores are single bytecode operations,
  which CPython executes atomically and in program order, and read-modify-writes hold the
  cell's lock.  Every order is therefore at least as strong as the kernel asks.
- ``fence`` is a no-op: CPython's interpreter lock orders every access already.
- ``wait_until`` polls, sleeping as briefly as the OS allows between evaluations (which
  hands the interpreter lock to the thread it waits for), then backing off up to 1 ms,
  and raises :class:`WaitTimeout` after the world's ``timeout``: nothing waits forever.
  A thread that waits gets a timer slack of 1 ns (``prctl``), for those short sleeps.
- ``spawn`` starts a ``threading.Thread``; ``join`` has the same bound and re-raises the
  thread's exception in the joiner.
- ``choose`` raises: the real world has no nondeterministic choice to explore.
- ``check`` raises :class:`CheckFailed`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class WaitTimeout(TimeoutError):
    """A real-world wait that did not finish within its bound."""


class CheckFailed(AssertionError):
    """A ``check`` that failed in the real world."""


class RealWorld:
    def __init__(self, timeout: float, spin: int) -> None:
        self.timeout = timeout
        self.spin = spin


_world: RealWorld | None = None
_lock = threading.Lock()
LOCK = threading.Lock()  # held by real read-modify-writes and stores


def current() -> RealWorld | None:
    return _world


@contextmanager
def real_world(timeout: float = 10.0, spin: int = 200) -> Iterator[RealWorld]:
    """Run the model primitives on real threads inside this block.

    ``timeout`` bounds every ``wait_until`` and ``join``; ``spin`` is how many evaluations
    a wait makes with the shortest sleep between them before it backs off."""
    global _world
    with _lock:
        if _world is not None:
            raise RuntimeError("real_world() is already active")
        _world = RealWorld(timeout, spin)
    try:
        yield _world
    finally:
        with _lock:
            _world = None


def _describe(predicate: Callable[[], Any]) -> str:
    code = getattr(predicate, "__code__", None)
    if code is None:
        return repr(predicate)
    return f"{code.co_name} at {code.co_filename}:{code.co_firstlineno}"


def real_wait_until(world: RealWorld, predicate: Callable[[], Any],
                    timeout: float | None = None) -> None:
    """Poll ``predicate`` until it holds; WaitTimeout after ``timeout`` (default: the
    world's). The waiter must give up the interpreter lock between polls, and for long
    enough that the thread it waits for (say a vCPU thread just back from KVM_RUN) gets
    it: ``time.sleep(0)`` or ``os.sched_yield()`` hand it back too soon (that thread is
    still waking up on its CPU, then finds the lock taken again and sleeps up to the
    switch interval, 5 ms), a busy loop never gives it up. So the first ``world.spin``
    polls are separated by the shortest real sleep (1 us asked for; with this thread's
    timer slack set to 1 ns it lasts about as long as the timer programming costs), then
    the sleeps double up to 1 ms."""
    if predicate():
        return
    limit = world.timeout if timeout is None else timeout
    deadline = time.monotonic() + limit
    _precise_sleeps()
    for _ in range(world.spin):
        time.sleep(_SPIN_SLEEP)
        if predicate():
            return
        if time.monotonic() > deadline:
            break
    delay = 20e-6
    while not predicate():
        if time.monotonic() > deadline:
            raise WaitTimeout(
                f"wait_until({_describe(predicate)}) did not hold within {limit:g} s"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1e-3)


_SPIN_SLEEP = 1e-6
_PR_SET_TIMERSLACK = 29
_thread_state = threading.local()


def _precise_sleeps() -> None:
    """Once per thread: timer slack 1 ns (prctl PR_SET_TIMERSLACK; Linux), so that a 1 us
    sleep is not stretched to the default 50 us slack. Best effort."""
    if getattr(_thread_state, "slack_set", False):
        return
    _thread_state.slack_set = True
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class RealThread:
    """A model ``Thread`` on a real OS thread."""

    def __init__(self, world: RealWorld, fn: Callable[..., Any], args: tuple,
                 name: str | None, daemon: bool) -> None:
        self.world = world
        self.name = name or getattr(fn, "__name__", "thread")
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._body, args=(fn, args),
                                        name=self.name, daemon=True)
        self.daemon = daemon
        self._thread.start()

    @property
    def tid(self) -> int:
        return self._thread.ident or 0

    def _body(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self.result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the joiner
            self.error = e

    def join(self, timeout: float | None = None) -> Any:
        limit = self.world.timeout if timeout is None else timeout
        self._thread.join(limit)
        if self._thread.is_alive():
            raise WaitTimeout(f"thread {self.name} did not finish within {limit:g} s")
        if self.error is not None:
            raise RuntimeError(f"thread {self.name} raised {self.error!r}") from self.error
        return self.result

    def is_alive(self) -> bool:
        return self._thread.is_alive()
