"""The Linux kernel's barrier and atomic vocabulary, over the model runtime.

Protocol code is written with the kernel's own names (``READ_ONCE``, ``smp_mb``,
``set_bit``, ``cmpxchg``, ...) so that it reads like the C it mirrors. Each name here
is one runtime operation on an :class:`~vcpureq.model.Atomic` (or one
:func:`~vcpureq.model.fence`) carrying the ordering the kernel documents for it:

- ``Documentation/memory-barriers.txt``: READ_ONCE/WRITE_ONCE only stop the compiler
  (no CPU ordering); smp_mb/smp_wmb/smp_rmb are the general/write/read barriers;
  smp_load_acquire/smp_store_release are ACQUIRE/RELEASE operations; smp_store_mb()
  is an assignment followed by a full barrier; smp_mb__before_atomic() and
  smp_mb__after_atomic() strengthen an unordered atomic RMW.
- ``Documentation/atomic_t.txt`` and ``Documentation/atomic_bitops.txt`` ("ORDERING"):
  non-RMW operations are unordered; RMW operations without a return value
  (set_bit, clear_bit, atomic_or, atomic_andnot) are unordered; RMW operations with a
  return value (test_and_set_bit, test_and_clear_bit, xchg, cmpxchg) are fully ordered,
  like an smp_mb() before and after; conditional RMWs: a *failed* cmpxchg is unordered
  (atomic_t.txt), whereas test_and_{set,clear}_bit() are fully ordered even when the
  bit was already in the requested state (atomic_bitops.txt since 2022).

Orders are the runtime's ``"relaxed"``, ``"acquire"``, ``"release"``, ``"full"``; fence
kinds are ``"mb"``, ``"wmb"``, ``"rmb"``, ``"mb__before_atomic"``,
``"mb__after_atomic"``. Under the sequentially consistent model every order behaves
alike; the orders matter to the weak memory models.

Bit numbers and masks follow the kernel's argument order: ``set_bit(nr, addr)``,
``atomic_or(i, v)``, ``cmpxchg(ptr, old, new)``, ``xchg(ptr, new)``.
"""

from __future__ import annotations

from typing import Any

from vcpureq.model import Atomic, fence

__all__ = [
    "READ_ONCE",
    "WRITE_ONCE",
    "smp_mb",
    "smp_wmb",
    "smp_rmb",
    "smp_store_release",
    "smp_load_acquire",
    "smp_store_mb",
    "smp_mb__before_atomic",
    "smp_mb__after_atomic",
    "set_bit",
    "clear_bit",
    "test_bit",
    "test_and_set_bit",
    "test_and_clear_bit",
    "cmpxchg",
    "xchg",
    "atomic_or",
    "atomic_andnot",
]


# --- plain accesses (memory-barriers.txt, "COMPILER BARRIER") -------------------------


def READ_ONCE(x: Atomic) -> Any:
    """Load ``x`` once. Unordered (relaxed): READ_ONCE only constrains the compiler."""
    return x.load(order="relaxed")


def WRITE_ONCE(x: Atomic, value: Any) -> None:
    """Store ``value`` to ``x`` once. Unordered (relaxed)."""
    x.store(value, order="relaxed")


# --- barriers (memory-barriers.txt, "CPU MEMORY BARRIERS") ----------------------------


def smp_mb() -> None:
    """General barrier: orders all earlier loads and stores before all later ones."""
    fence("mb")


def smp_wmb() -> None:
    """Write barrier: orders earlier stores before later stores only."""
    fence("wmb")


def smp_rmb() -> None:
    """Read barrier: orders earlier loads before later loads only."""
    fence("rmb")


def smp_mb__before_atomic() -> None:
    """Full barrier before an unordered atomic RMW (set_bit, a possibly failing cmpxchg).

    atomic_t.txt: the helper barriers for RMW ops that do not imply a barrier.
    """
    fence("mb__before_atomic")


def smp_mb__after_atomic() -> None:
    """Full barrier after an unordered atomic RMW (clear_bit in kvm_check_request)."""
    fence("mb__after_atomic")


# --- one-sided accesses (memory-barriers.txt, "ACQUIRE/RELEASE operations") ------------


def smp_store_release(x: Atomic, value: Any) -> None:
    """RELEASE store: every earlier access is ordered before the store."""
    x.store(value, order="release")


def smp_load_acquire(x: Atomic) -> Any:
    """ACQUIRE load: the load is ordered before every later access."""
    return x.load(order="acquire")


def smp_store_mb(x: Atomic, value: Any) -> None:
    """Store ``value`` to ``x``, then a full barrier.

    memory-barriers.txt: "smp_store_mb(var, value) ... assigns the value to the variable
    and then inserts a full memory barrier after it". Modelled as WRITE_ONCE + smp_mb
    (some architectures implement it with xchg; the ordering is the same).
    """
    WRITE_ONCE(x, value)
    smp_mb()


# --- bit operations (atomic_bitops.txt) ------------------------------------------------


def set_bit(nr: int, addr: Atomic) -> None:
    """Atomically set bit ``nr``. RMW without a return value: unordered (relaxed)."""
    addr.fetch_or(1 << nr, order="relaxed")


def clear_bit(nr: int, addr: Atomic) -> None:
    """Atomically clear bit ``nr``. RMW without a return value: unordered (relaxed)."""
    addr.fetch_and(~(1 << nr), order="relaxed")


def test_bit(nr: int, addr: Atomic) -> bool:
    """Return whether bit ``nr`` is set. A non-RMW read: unordered (relaxed)."""
    return bool((addr.load(order="relaxed") >> nr) & 1)


def test_and_set_bit(nr: int, addr: Atomic) -> bool:
    """Set bit ``nr`` and return its old value. Fully ordered, even if it was set."""
    old = addr.fetch_or(1 << nr, order="full")
    return bool((old >> nr) & 1)


def test_and_clear_bit(nr: int, addr: Atomic) -> bool:
    """Clear bit ``nr`` and return its old value. Fully ordered, even if it was clear."""
    old = addr.fetch_and(~(1 << nr), order="full")
    return bool((old >> nr) & 1)


# --- exchanges and atomic_t bitwise ops (atomic_t.txt) ---------------------------------


def cmpxchg(ptr: Atomic, old: Any, new: Any) -> Any:
    """If ``ptr`` holds ``old``, store ``new``; return the value found.

    Fully ordered when it succeeds; atomic_t.txt: "RMW operations that are conditional
    are unordered on FAILURE" (see also tools/memory-model litmus tests
    cmpxchg-fail-unordered-*). That is why kvm_vcpu_exiting_guest_mode() puts an
    smp_mb__before_atomic() in front of its cmpxchg. The runtime's ``order="full"``
    is the success ordering; a failed compare_exchange is a plain read.
    """
    return ptr.compare_exchange(old, new, order="full")


def xchg(ptr: Atomic, new: Any) -> Any:
    """Store ``new`` and return the old value. Fully ordered."""
    return ptr.exchange(new, order="full")


def atomic_or(i: int, v: Atomic) -> None:
    """``v |= i`` atomically. RMW without a return value: unordered (relaxed)."""
    v.fetch_or(i, order="relaxed")


def atomic_andnot(i: int, v: Atomic) -> None:
    """``v &= ~i`` atomically. RMW without a return value: unordered (relaxed)."""
    v.fetch_and(~i, order="relaxed")
