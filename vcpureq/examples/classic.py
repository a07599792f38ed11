"""Classic concurrency programs and DPOR benchmarks, written with :mod:`vcpureq.model`.

Each program is a zero-argument callable for :func:`vcpureq.model.explore`; parameterised ones
are built by a factory (``lastzero(5)`` returns a program).  :data:`REGISTRY` maps a name to
``(factory, description)``: ``factory(*sizes)`` returns the program (every factory argument
has a default, so ``factory()`` works too); :func:`make` is the short form.

Puzzles (sequential consistency):

- ``store-buffering``: Dekker's test; the outcome (0, 0) is impossible under SC (and
  possible under "tso" and "pso", the accesses being relaxed).
- ``lost-update``: two threads increment a counter with a load and a store; the check that
  the count is 2 fails (the bug the explorer must find).
- ``peterson`` / ``peterson-broken``: Peterson's mutual exclusion for two threads, the busy
  wait written with ``wait_until``; the broken one writes ``turn`` before its flag.
- ``philosophers`` / ``philosophers-ordered``: N dining philosophers, forks as Atomics taken
  with ``wait_until(fork free)`` + ``compare_exchange``; left-then-right deadlocks, taking
  the lower-numbered fork first does not.

Benchmarks from the DPOR literature, after their published definitions:

- ``indexer(N)`` and ``filesystem(N)``: Flanagan & Godefroid, "Dynamic partial-order
  reduction for model checking software", POPL 2005 (as in SV-COMP's ``indexer.c`` and
  Nidhugg's ``benchmarks/``, which keep the published constants).
- ``lastzero(N)``: Abdulla, Aronis, Jonsson, Sagonas, "Optimal dynamic partial order
  reduction", POPL 2014, Fig. 4.
- ``readers(N)``: one writer and N readers of one cell, the scalability benchmark of the
  same line of work (GenMC's ``tests/correct/readers``, Nidhugg's SWSC experiments).

Locks (``filesystem``) have no primitive in the model: they are spin locks made of a
``compare_exchange`` and, when it fails, a ``wait_until`` for the lock word to be 0.  A mutex
in Nidhugg or Concuerror is one event per acquisition, so these programs have more
Mazurkiewicz traces than the published counts, which count lock-acquisition orders; the
number of distinct *outcomes* still equals those counts (see tests/test_classic_programs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vcpureq.model import Atomic, check, spawn, wait_until

Program = Callable[[], Any]


def _named(program: Program, name: str) -> Program:
    program.__name__ = program.__qualname__ = name
    return program


# --------------------------------------------------------------------------- puzzles


def store_buffering() -> tuple[int, int]:
    """x = 1; r1 = y  ||  y = 1; r2 = x.  Under SC at least one load sees the other store.

    The accesses are relaxed (plain ``WRITE_ONCE``/``READ_ONCE``), so under a weak memory
    model with store buffers ("tso", "pso") the check fails: that is what ``fence("mb")``
    between the store and the load is for."""
    x = Atomic(0, "x")
    y = Atomic(0, "y")

    def left() -> int:
        x.store(1, order="relaxed")
        return y.load(order="relaxed")

    def right() -> int:
        y.store(1, order="relaxed")
        return x.load(order="relaxed")

    a = spawn(left, name="left")
    b = spawn(right, name="right")
    r1, r2 = a.join(), b.join()
    check((r1, r2) != (0, 0), "store buffering: both loads read 0, impossible under SC")
    return r1, r2


def lost_update() -> int:
    """Two threads do ``count = count + 1`` as a load and a store: an increment is lost."""
    count = Atomic(0, "count")

    def increment() -> None:
        v = count.load()
        count.store(v + 1)

    threads = [spawn(increment, name=f"inc{i}") for i in range(2)]
    for t in threads:
        t.join()
    final = count.load()
    check(final == 2, f"lost update: the count is {final} after two increments")
    return final


def _peterson(broken: bool) -> Program:
    def program() -> int:
        flag = [Atomic(0, "flag0"), Atomic(0, "flag1")]
        turn = Atomic(0, "turn")
        inside = Atomic(0, "inside")

        def proc(me: int) -> int:
            other = 1 - me
            if broken:  # the classic mistake: give way before raising the flag
                turn.store(other)
                flag[me].store(1)
            else:
                flag[me].store(1)
                turn.store(other)
            wait_until(lambda: flag[other].load() == 0 or turn.load() == me)
            # critical section
            n = inside.fetch_add(1)
            check(n == 0, f"mutual exclusion: p{me} entered the critical section "
                          f"while p{other} was in it")
            inside.fetch_add(-1)
            flag[me].store(0)
            return me

        threads = [spawn(proc, i, name=f"p{i}") for i in range(2)]
        return sum(t.join() for t in threads)

    return _named(program, "peterson-broken" if broken else "peterson")


peterson = _peterson(False)
peterson_broken = _peterson(True)


def philosophers(n: int = 3, ordered: bool = False) -> Program:
    """``n`` philosophers, ``n`` forks.  Philosopher i takes fork i then fork i+1 (mod n),
    each with ``wait_until(fork free)`` then ``compare_exchange``, retrying if another got it
    in between; ``ordered`` takes the lower-numbered fork first, which cannot deadlock."""
    if n < 2:
        raise ValueError("philosophers needs n >= 2")

    def program() -> int:
        forks = [Atomic(0, f"fork{i}") for i in range(n)]

        def take(fork: Atomic, me: int) -> None:
            while True:
                wait_until(lambda: fork.load() == 0)
                if fork.compare_exchange(0, me + 1) == 0:
                    return

        def philosopher(i: int) -> int:
            a, b = i, (i + 1) % n
            if ordered and b < a:
                a, b = b, a
            take(forks[a], i)
            take(forks[b], i)
            # eat
            forks[b].store(0)
            forks[a].store(0)
            return 1

        threads = [spawn(philosopher, i, name=f"phil{i}") for i in range(n)]
        return sum(t.join() for t in threads)

    return _named(program, f"philosophers{'-ordered' if ordered else ''}({n})")


def philosophers_ordered(n: int = 3) -> Program:
    return philosophers(n, ordered=True)


# --------------------------------------------------------------------------- benchmarks


def indexer(n: int = 12, size: int = 128, messages: int = 4) -> Program:
    """Flanagan & Godefroid's indexer: ``n`` threads insert ``messages`` values each into a
    hash table of ``size`` cells with compare-and-swap and linear probing.  Thread ``tid``'s
    m-th value is ``w = m*11 + tid``, hashed to ``(w*7) % size``.  With the published
    parameters (size 128, 4 messages) threads collide only from n = 12 on."""

    def program() -> tuple[tuple[int, ...], ...]:
        table = [Atomic(0, f"table{h}") for h in range(size)]

        def worker(tid: int) -> tuple[int, ...]:
            slots = []
            for m in range(1, messages + 1):
                w = m * 11 + tid
                h = (w * 7) % size
                while table[h].compare_exchange(0, w) != 0:
                    h = (h + 1) % size
                slots.append(h)
            return tuple(slots)

        threads = [spawn(worker, tid, name=f"t{tid}") for tid in range(n)]
        return tuple(t.join() for t in threads)

    return _named(program, f"indexer({n})")


def _lock(lock: Atomic) -> None:
    """Spin lock: test-and-set with compare_exchange; on failure sleep until it is free."""
    while lock.compare_exchange(0, 1) != 0:
        wait_until(lambda: lock.load() == 0)


def _unlock(lock: Atomic) -> None:
    lock.store(0)


def filesystem(n: int = 14, inodes: int = 32, blocks: int = 26) -> Program:
    """Flanagan & Godefroid's file system: thread ``tid`` locks inode ``i = tid % inodes``;
    if the inode has no block it searches, from block ``(2*i) % blocks``, for a free one,
    each under its block lock, and records it in the inode.  With the published parameters
    (32 inodes, 26 blocks) threads compete for a block only from n = 14 on.  The outcome is
    each thread's inode value (block + 1)."""
    if n > blocks:
        raise ValueError("filesystem: more threads than blocks, the search would not end")

    def program() -> tuple[int, ...]:
        locki = [Atomic(0, f"locki{i}") for i in range(inodes)]
        inode = [Atomic(0, f"inode{i}") for i in range(inodes)]
        lockb = [Atomic(0, f"lockb{b}") for b in range(blocks)]
        busy = [Atomic(0, f"busy{b}") for b in range(blocks)]

        def worker(tid: int) -> int:
            i = tid % inodes
            _lock(locki[i])
            got = inode[i].load()
            if got == 0:
                b = (i * 2) % blocks
                while True:
                    _lock(lockb[b])
                    if not busy[b].load():
                        busy[b].store(1)
                        inode[i].store(b + 1)
                        _unlock(lockb[b])
                        got = b + 1
                        break
                    _unlock(lockb[b])
                    b = (b + 1) % blocks
            _unlock(locki[i])
            return got

        threads = [spawn(worker, tid, name=f"t{tid}") for tid in range(n)]
        return tuple(t.join() for t in threads)

    return _named(program, f"filesystem({n})")


def lastzero(n: int = 5) -> Program:
    """Abdulla et al.'s lastzero: ``array[0..n]`` all 0; the reader scans from ``array[n]``
    down for the last zero, writer j (1..n) does ``array[j] = array[j-1] + 1``.  The outcome
    is the index the reader stops at."""

    def program() -> int:
        array = [Atomic(0, f"array{i}") for i in range(n + 1)]

        def reader() -> int:
            i = n
            while array[i].load() != 0:
                i -= 1
            return i

        def writer(j: int) -> None:
            array[j].store(array[j - 1].load() + 1)

        r = spawn(reader, name="reader")
        writers = [spawn(writer, j, name=f"writer{j}") for j in range(1, n + 1)]
        found = r.join()
        for w in writers:
            w.join()
        return found

    return _named(program, f"lastzero({n})")


def readers(n: int = 3) -> Program:
    """One writer stores to ``x``, ``n`` readers load it: 2**n traces, one per subset of
    readers that see the store.  The outcome is the tuple of values the readers saw."""

    def program() -> tuple[int, ...]:
        x = Atomic(0, "x")

        def writer() -> None:
            x.store(42)

        def reader() -> int:
            return x.load()

        w = spawn(writer, name="writer")
        rs = [spawn(reader, name=f"reader{i}") for i in range(1, n + 1)]
        w.join()
        return tuple(r.join() for r in rs)

    return _named(program, f"readers({n})")


# --------------------------------------------------------------------------- registry


def _fixed(program: Program) -> Callable[[], Program]:
    def factory() -> Program:
        return program

    factory.__name__ = program.__name__
    factory.__doc__ = program.__doc__
    return factory


REGISTRY: dict[str, tuple[Callable[..., Program], str]] = {
    "store-buffering": (
        _fixed(store_buffering),
        "x=1; r1=y || y=1; r2=x: outcome (0,0) impossible under SC (verified)",
    ),
    "lost-update": (
        _fixed(lost_update),
        "2 threads increment with load+store; check count == 2 fails (assertion)",
    ),
    "peterson": (_fixed(peterson), "Peterson's lock, 2 threads, wait_until spin (verified)"),
    "peterson-broken": (
        _fixed(peterson_broken),
        "Peterson with turn written before the flag: mutual exclusion fails (assertion)",
    ),
    "philosophers": (
        philosophers,
        "philosophers(N): left fork then right, wait_until + compare_exchange (deadlock)",
    ),
    "philosophers-ordered": (
        philosophers_ordered,
        "philosophers-ordered(N): lower-numbered fork first (verified, no deadlock)",
    ),
    "indexer": (
        indexer,
        "indexer(N): Flanagan & Godefroid POPL'05 hash table with CAS; collisions from N=12",
    ),
    "filesystem": (
        filesystem,
        "filesystem(N): Flanagan & Godefroid POPL'05 inode/block allocation with spin locks",
    ),
    "lastzero": (
        lastzero,
        "lastzero(N): Abdulla et al. POPL'14, reader scans array[N..0] for a zero, N writers",
    ),
    "readers": (readers, "readers(N): one writer and N readers of one cell, 2**N traces"),
}


def make(name: str, *sizes: int) -> Program:
    """The program ``name`` of :data:`REGISTRY` built with ``sizes`` (e.g. ``make("lastzero",
    5)``)."""
    try:
        factory, _ = REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no example program {name!r}; available: {', '.join(sorted(REGISTRY))}"
        ) from None
    return factory(*sizes)


__all__ = [
    "REGISTRY",
    "filesystem",
    "indexer",
    "lastzero",
    "lost_update",
    "make",
    "peterson",
    "peterson_broken",
    "philosophers",
    "philosophers_ordered",
    "readers",
    "store_buffering",
]
