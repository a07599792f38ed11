"""The peer problems as frontrun programs: ``setup`` (fresh shared state), ``workers``
(one callable per thread, each taking the state) and ``invariant`` (checked by frontrun
after all workers finished).

frontrun explores Python bytecode: every attribute or list-item load and store of the
shared state object is a scheduling point, and its DPOR decides which are dependent.
These are the vcpureq programs of vcpureq.examples.classic and
vcpureq.scenarios.generic rewritten in that vocabulary, with three adaptations forced by
what frontrun can run (each is said again where it happens):

- Shared cells are *attributes of the state object* or *items of a list of ints held by
  it*.  frontrun 0.7.0 does not see accesses to attributes of objects held in a list
  (``s.cells[0].v``): a read/write race on such a cell is explored as one execution and
  reported as holding (checked in bench/peers.py's self-test).  lastzero's array is
  therefore written as attributes ``a0 .. aN`` (a generated class).
- vcpureq's ``wait_until(pred)`` blocks until another thread writes a cell ``pred``
  reads.  frontrun cannot run a spin loop (an unbounded execution: it times out and
  calls the search inconclusive) and its ``threading.Condition`` hung in every
  execution here, so a wait is ``threading.Event``-based: the waiter clears its event,
  evaluates ``pred``, and waits on the event if it is false; every write to a cell a
  waiter may be waiting on is followed by ``set()`` of that waiter's event.  The
  events are extra scheduling points that vcpureq does not have.
- Atomic read-modify-writes (``fetch_add``, ``set_bit``, ``clear_bit``, ``cmpxchg``)
  are made atomic with a ``threading.Lock`` (frontrun models locks), except where
  vcpureq's own program does the RMW as a load and a store.

The invariant is evaluated once at the end, so checks that vcpureq makes inside a
thread (Peterson's "inside was 0") are recorded in the state (``s.bad``) and the
invariant reads the record.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable
from importlib import util
from pathlib import Path
from typing import Any

Problem = tuple[Callable[[], Any], list[Callable[[Any], Any]], Callable[[Any], bool]]


# --------------------------------------------------------------------------- lost update


class Counter:
    def __init__(self) -> None:
        self.count = 0


def _increment(s: Counter) -> None:
    v = s.count  # count.load()
    s.count = v + 1  # count.store(v + 1)


def lost_update(n: int = 2) -> Problem:
    """vcpureq: lost_update (n = 2) / bench's lost_update(n): the count is n at the end."""
    return Counter, [_increment] * n, lambda s: s.count == n


# --------------------------------------------------------------------------- Peterson


class PetersonState:
    def __init__(self) -> None:
        self.flag0 = 0
        self.flag1 = 0
        self.turn = 0
        self.inside = 0
        self.bad = False
        self.wake0 = threading.Event()  # wait_until of p0 (set after writes p0 reads)
        self.wake1 = threading.Event()
        self.rmw = threading.Lock()  # inside.fetch_add is one atomic step


def _peterson_proc(me: int, broken: bool) -> Callable[[PetersonState], None]:
    # Written out per thread (attribute names are the cells: flag0, flag1).
    def p0(s: PetersonState) -> None:
        if broken:
            s.turn = 1
            s.wake1.set()
            s.flag0 = 1
            s.wake1.set()
        else:
            s.flag0 = 1
            s.wake1.set()
            s.turn = 1
            s.wake1.set()
        while True:  # wait_until(flag1 == 0 or turn == 0)
            s.wake0.clear()
            if s.flag1 == 0 or s.turn == 0:
                break
            s.wake0.wait()
        with s.rmw:
            n = s.inside
            s.inside = n + 1
        if n != 0:
            s.bad = True
        with s.rmw:
            s.inside -= 1
        s.flag0 = 0
        s.wake1.set()

    def p1(s: PetersonState) -> None:
        if broken:
            s.turn = 0
            s.wake0.set()
            s.flag1 = 1
            s.wake0.set()
        else:
            s.flag1 = 1
            s.wake0.set()
            s.turn = 0
            s.wake0.set()
        while True:  # wait_until(flag0 == 0 or turn == 1)
            s.wake1.clear()
            if s.flag0 == 0 or s.turn == 1:
                break
            s.wake1.wait()
        with s.rmw:
            n = s.inside
            s.inside = n + 1
        if n != 0:
            s.bad = True
        with s.rmw:
            s.inside -= 1
        s.flag1 = 0
        s.wake0.set()

    return p0 if me == 0 else p1


def peterson(broken: int = 0) -> Problem:
    """vcpureq: peterson / peterson_broken: nobody finds the critical section occupied."""
    return (PetersonState, [_peterson_proc(0, bool(broken)), _peterson_proc(1, bool(broken))],
            lambda s: not s.bad)


# --------------------------------------------------------------------------- lastzero


def _load_generated(name: str, source: str) -> Any:
    """Import generated source from a real file (frontrun traces code by its file)."""
    d = Path(tempfile.gettempdir()) / "vcpureq-bench-frontrun"
    d.mkdir(exist_ok=True)
    path = d / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    spec = util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def lastzero(n: int = 5) -> Problem:
    """vcpureq: lastzero(n).  The reader scans a{n} .. a0 for the last zero; writer j
    does a{j} = a{j-1} + 1 as a load and a store.  Cells are attributes a0 .. a{n} of a
    generated class (see the module docstring: list-held objects are invisible to
    frontrun; a list of ints works but explores far more executions, 1,558 instead of 38
    at n = 3)."""
    lines = ["class LastZero:", "    def __init__(self):"]
    lines += [f"        self.a{i} = 0" for i in range(n + 1)]
    lines += ["        self.found = None", "", "", "def reader(s):"]
    for i in range(n, 0, -1):  # while array[i].load() != 0: i -= 1
        lines += [f"    if s.a{i} == 0:", f"        s.found = {i}", "        return"]
    lines += ["    if s.a0 == 0:", "        s.found = 0", "        return", "", ""]
    for j in range(1, n + 1):
        lines += [f"def writer{j}(s):", f"    v = s.a{j - 1}", f"    s.a{j} = v + 1", "", ""]
    lines += [f"WORKERS = [reader, {', '.join(f'writer{j}' for j in range(1, n + 1))}]"]
    module = _load_generated(f"lastzero_{n}", "\n".join(lines) + "\n")
    return module.LastZero, list(module.WORKERS), lambda s: s.found is not None


# --------------------------------------------------------------------------- readers


class ReadersState:
    def __init__(self, n: int) -> None:
        self.x = 0
        self.seen: list[int | None] = [None] * n


def readers(n: int = 4) -> Problem:
    """vcpureq: readers(n): one writer stores 42 to x, n readers load it."""

    def writer(s: ReadersState) -> None:
        s.x = 42

    def reader(i: int) -> Callable[[ReadersState], None]:
        def read(s: ReadersState) -> None:
            v = s.x
            s.seen[i] = v

        return read

    return (lambda: ReadersState(n), [writer] + [reader(i) for i in range(n)],
            lambda s: all(v is not None for v in s.seen))


# --------------------------------------------------------------------------- protocol

OUTSIDE, IN_GUEST, EXITING = 0, 1, 2


class GenericState:
    def __init__(self, nv: int) -> None:
        self.requests = [0] * nv
        self.mode = [OUTSIDE] * nv
        self.ipi_sent = [0] * nv
        self.ipi_acked = [0] * nv
        self.guest_running = [0] * nv
        self.lost = False
        # set_bit, clear_bit, cmpxchg and fetch_add are atomic; so is main's evaluation of
        # wait_until(handled or stuck), so every write to a cell it reads holds the lock
        # too (without it, torn reads of requests/guest_running/ipi_sent/ipi_acked make
        # the predicate true in no single state, and frontrun reports a lost request that
        # vcpureq's atomic evaluation rules out).
        self.rmw = threading.Lock()
        self.wake_vcpu = [threading.Event() for _ in range(nv)]  # guest wait: IPI / stop
        self.wake_main = threading.Event()  # main's wait_until(handled or stuck)
        self.requester_done = [threading.Event() for _ in range(nv)]  # join
        self.stop = [False] * nv  # main is done: the vCPU thread may end


def generic_request(nv: int = 1, broken: int = 0) -> Problem:
    """vcpureq: async_request(arch, nr_vcpus=nv, targets=[(i, TLB_FLUSH) for i < nv]),
    arch "generic" or (broken) "generic-check-before-mode".  Same steps as
    bench/peers/spin/generic_request.pml, plus what frontrun needs: a main worker (the
    vcpureq main thread), Events for the waits, and a stop flag that main sets when it is
    done so that the vCPU threads end (vcpureq abandons its daemon vCPU threads; frontrun
    waits for every worker)."""

    def vcpu(me: int) -> Callable[[GenericState], None]:
        def run(s: GenericState) -> None:
            acked = 0  # HostCpu._acked
            while True:
                if s.stop[me]:
                    return
                if s.requests[me] != 0:  # handle_requests: READ_ONCE(requests)
                    if s.requests[me] & 1:  # check_request: test_bit
                        with s.rmw:  # clear_bit
                            s.requests[me] = s.requests[me] & ~1
                        s.wake_main.set()
                if broken:  # generic-check-before-mode: the request check first
                    enter = s.requests[me] == 0  # kvm_request_pending
                    if enter:
                        s.mode[me] = IN_GUEST  # smp_wmb; WRITE_ONCE(mode, IN_GUEST)
                    outside = enter  # the abort path leaves mode alone
                else:
                    s.mode[me] = IN_GUEST  # smp_store_mb(mode, IN_GUEST)
                    enter = not (s.mode[me] == EXITING or s.requests[me] != 0)
                    outside = True
                if enter:  # run_guest
                    with s.rmw:
                        s.guest_running[me] = 1
                    s.wake_main.set()
                    while True:  # wait_until(an IPI arrived) -- or main said stop
                        s.wake_vcpu[me].clear()
                        if s.ipi_sent[me] > acked or s.stop[me]:
                            break
                        s.wake_vcpu[me].wait()
                    if s.stop[me]:
                        return
                    with s.rmw:
                        s.guest_running[me] = 0
                    s.wake_main.set()
                if outside:
                    s.mode[me] = OUTSIDE  # WRITE_ONCE(mode, OUTSIDE); smp_wmb
                sent = s.ipi_sent[me]  # local_irq_enable: take pending IPIs
                if sent > acked:
                    acked = sent
                    with s.rmw:
                        s.ipi_acked[me] = sent
                    s.wake_main.set()

        return run

    def requester(me: int) -> Callable[[GenericState], None]:
        def run(s: GenericState) -> None:
            with s.rmw:  # smp_wmb; set_bit
                s.requests[me] = s.requests[me] | 1
            s.wake_main.set()
            with s.rmw:  # cmpxchg(mode, IN_GUEST, EXITING)
                old = s.mode[me]
                if old == IN_GUEST:
                    s.mode[me] = EXITING
            if old == IN_GUEST:
                with s.rmw:  # smp_send_reschedule: ipi_sent.fetch_add(1)
                    s.ipi_sent[me] = s.ipi_sent[me] + 1
                s.wake_vcpu[me].set()
                s.wake_main.set()
            s.requester_done[me].set()

        return run

    def main(s: GenericState) -> None:
        for i in range(nv):  # join the requesters
            s.requester_done[i].wait()
        for i in range(nv):
            while True:  # wait_until(handled or stuck)
                s.wake_main.clear()
                with s.rmw:  # one atomic evaluation, as vcpureq's wait_until
                    ready = s.requests[i] == 0 or (
                        s.guest_running[i] and not s.ipi_sent[i] > s.ipi_acked[i]
                    )
                if ready:
                    break
                s.wake_main.wait()
            if s.requests[i] != 0:  # check(pending == 0)
                s.lost = True
        for i in range(nv):
            s.stop[i] = True
            s.wake_vcpu[i].set()

    workers = [vcpu(i) for i in range(nv)] + [requester(i) for i in range(nv)] + [main]
    return lambda: GenericState(nv), workers, lambda s: not s.lost


# --------------------------------------------------------------------------- self-test


class _Cell:
    def __init__(self) -> None:
        self.v = 0


class _Holder:
    def __init__(self) -> None:
        self.cells = [_Cell()]
        self.seen = 0


def list_held_object_race() -> Problem:
    """A race frontrun should find: the reader sees 1 iff it runs after the writer.
    frontrun 0.7.0 explores one execution and reports the invariant as holding."""

    def reader(s: _Holder) -> None:
        s.seen = s.cells[0].v

    def writer(s: _Holder) -> None:
        s.cells[0].v = 1

    return _Holder, [reader, writer], lambda s: s.seen != 1


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "lost-update": lost_update,
    "peterson": peterson,
    "lastzero": lastzero,
    "readers": readers,
    "generic-request": generic_request,
    "selftest-list-held-object": list_held_object_race,
}

__all__ = ["PROBLEMS", "Problem"]
