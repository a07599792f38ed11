"""vcpureq.model.kernel: values and return semantics, and the ordering each name carries."""

from __future__ import annotations

from typing import Any

import pytest

from vcpureq.model import Atomic, explore
from vcpureq.model import kernel as k


def run_alone(program: Any) -> Any:
    """Explore a one-thread program and return its only outcome."""
    ex = explore(program)
    assert ex.complete and not ex.violations, ex.violations
    assert ex.executions == 1
    (outcome,) = ex.outcomes
    return outcome


def events_of(program: Any) -> list[tuple[str, Any]]:
    """(op, value) of every event of a one-thread program's only execution."""
    seen: list[list[tuple[str, Any]]] = []
    explore(program, on_execution=lambda _o, evs: seen.append([(e.op, e.value) for e in evs]))
    assert len(seen) == 1
    return seen[0]


# --- values -------------------------------------------------------------------------


def test_read_once_write_once() -> None:
    def program() -> tuple[int, int]:
        x = Atomic(3)
        before = k.READ_ONCE(x)
        k.WRITE_ONCE(x, 7)
        return before, k.READ_ONCE(x)

    assert run_alone(program) == (3, 7)


def test_release_acquire_and_store_mb() -> None:
    def program() -> tuple[int, int]:
        x, y = Atomic(0), Atomic(0)
        k.smp_store_release(x, 5)
        k.smp_store_mb(y, 6)
        return k.smp_load_acquire(x), k.READ_ONCE(y)

    assert run_alone(program) == (5, 6)


def test_set_clear_test_bit() -> None:
    def program() -> tuple[Any, ...]:
        word = Atomic(0b1000)
        k.set_bit(0, word)
        k.set_bit(0, word)  # idempotent
        k.set_bit(9, word)
        after_set = k.READ_ONCE(word)
        k.clear_bit(3, word)
        k.clear_bit(4, word)  # already clear
        return after_set, k.READ_ONCE(word), k.test_bit(9, word), k.test_bit(3, word)

    assert run_alone(program) == (0b10_0000_1001, 0b10_0000_0001, True, False)


def test_test_and_set_and_clear_bit_return_the_old_bit() -> None:
    def program() -> tuple[Any, ...]:
        word = Atomic(0)
        first = k.test_and_set_bit(2, word)
        second = k.test_and_set_bit(2, word)
        cleared = k.test_and_clear_bit(2, word)
        again = k.test_and_clear_bit(2, word)
        return first, second, cleared, again, k.READ_ONCE(word)

    assert run_alone(program) == (False, True, True, False, 0)


def test_cmpxchg_returns_the_value_found() -> None:
    def program() -> tuple[Any, ...]:
        mode = Atomic(1)
        hit = k.cmpxchg(mode, 1, 2)  # succeeds: returns old == expected
        after_hit = k.READ_ONCE(mode)
        miss = k.cmpxchg(mode, 1, 3)  # fails: returns the current value, stores nothing
        return hit, after_hit, miss, k.READ_ONCE(mode)

    assert run_alone(program) == (1, 2, 2, 2)


def test_xchg_atomic_or_andnot() -> None:
    def program() -> tuple[Any, ...]:
        x = Atomic(4)
        old = k.xchg(x, 9)
        flags = Atomic(0b0101)
        k.atomic_or(0b0010, flags)
        ored = k.READ_ONCE(flags)
        k.atomic_andnot(0b0100, flags)
        return old, k.READ_ONCE(x), ored, k.READ_ONCE(flags)

    assert run_alone(program) == (4, 9, 0b0111, 0b0011)


# --- events ---------------------------------------------------------------------------


def test_each_name_is_one_runtime_operation() -> None:
    def program() -> None:
        x = Atomic(0)
        k.set_bit(1, x)
        k.clear_bit(1, x)
        k.test_bit(1, x)
        k.test_and_set_bit(1, x)
        k.cmpxchg(x, 2, 0)
        k.xchg(x, 1)
        k.atomic_or(4, x)
        k.atomic_andnot(4, x)

    ops = [op for op, _ in events_of(program) if op != "finish"]
    assert ops == [
        "fetch_or", "fetch_and", "load", "fetch_or", "cas", "exchange", "fetch_or", "fetch_and",
    ]


def test_barriers_are_fences_of_their_kind() -> None:
    def program() -> None:
        x = Atomic(0)
        k.smp_mb()
        k.smp_wmb()
        k.smp_rmb()
        k.smp_mb__before_atomic()
        k.smp_mb__after_atomic()
        k.smp_store_mb(x, 1)

    evs = [(op, v) for op, v in events_of(program) if op != "finish"]
    assert evs == [
        ("fence", "mb"),
        ("fence", "wmb"),
        ("fence", "rmb"),
        ("fence", "mb__before_atomic"),
        ("fence", "mb__after_atomic"),
        ("store", 1),  # smp_store_mb: the store, then the full barrier
        ("fence", "mb"),
    ]


# --- orderings (memory-barriers.txt, atomic_t.txt, atomic_bitops.txt) -------------------


class Recorder:
    """Stands in for an Atomic and records (method, order) of each call."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.calls: list[tuple[str, str]] = []

    def _rec(self, name: str, order: str) -> int:
        self.calls.append((name, order))
        return self.value

    def load(self, order: str = "full") -> int:
        return self._rec("load", order)

    def store(self, value: int, order: str = "full") -> None:
        self._rec("store", order)

    def exchange(self, value: int, order: str = "full") -> int:
        return self._rec("exchange", order)

    def compare_exchange(self, expected: int, new: int, order: str = "full") -> int:
        return self._rec("compare_exchange", order)

    def fetch_or(self, bits: int, order: str = "full") -> int:
        return self._rec("fetch_or", order)

    def fetch_and(self, bits: int, order: str = "full") -> int:
        return self._rec("fetch_and", order)


ORDERINGS = [
    ("READ_ONCE", lambda x: k.READ_ONCE(x), [("load", "relaxed")]),
    ("WRITE_ONCE", lambda x: k.WRITE_ONCE(x, 1), [("store", "relaxed")]),
    ("smp_load_acquire", lambda x: k.smp_load_acquire(x), [("load", "acquire")]),
    ("smp_store_release", lambda x: k.smp_store_release(x, 1), [("store", "release")]),
    ("smp_store_mb", lambda x: k.smp_store_mb(x, 1), [("store", "relaxed"), ("fence", "mb")]),
    ("set_bit", lambda x: k.set_bit(0, x), [("fetch_or", "relaxed")]),
    ("clear_bit", lambda x: k.clear_bit(0, x), [("fetch_and", "relaxed")]),
    ("test_bit", lambda x: k.test_bit(0, x), [("load", "relaxed")]),
    ("test_and_set_bit", lambda x: k.test_and_set_bit(0, x), [("fetch_or", "full")]),
    ("test_and_clear_bit", lambda x: k.test_and_clear_bit(0, x), [("fetch_and", "full")]),
    ("cmpxchg", lambda x: k.cmpxchg(x, 0, 1), [("compare_exchange", "full")]),
    ("xchg", lambda x: k.xchg(x, 1), [("exchange", "full")]),
    ("atomic_or", lambda x: k.atomic_or(1, x), [("fetch_or", "relaxed")]),
    ("atomic_andnot", lambda x: k.atomic_andnot(1, x), [("fetch_and", "relaxed")]),
]


@pytest.mark.parametrize(
    ("name", "call", "expected"), ORDERINGS, ids=[name for name, _, _ in ORDERINGS]
)
def test_ordering(name: str, call: Any, expected: list[tuple[str, str]],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    x = Recorder()
    monkeypatch.setattr(k, "fence", lambda kind: x.calls.append(("fence", kind)))
    call(x)
    assert x.calls == expected


def test_every_name_is_covered() -> None:
    barriers = {"smp_mb", "smp_wmb", "smp_rmb", "smp_mb__before_atomic", "smp_mb__after_atomic"}
    assert {name for name, _, _ in ORDERINGS} | barriers == set(k.__all__)
