"""Classic litmus tests under "sc", "tso" and "pso", with exact expected outcome sets.

Each test is written as a vcpureq program in the kernel's vocabulary
(:mod:`vcpureq.model.kernel`: READ_ONCE/WRITE_ONCE are relaxed accesses, the barrier under
test is the only ordering), and, where expressible, also as a data program for the
independent operational reference tests/weak_reference.py. The expected sets are derived
in the comments from the models' definitions:

- SC: every interleaving of the threads' accesses, each access atomic on memory.
- x86-TSO (Owens, Sarkar, Sewell, "A better x86 memory model: x86-TSO", TPHOLs 2009;
  Sewell, Sarkar, Owens, Zappa Nardelli, Myreen, "x86-TSO: a rigorous and usable
  programmer's model for x86 multiprocessors", CACM 53(7), 2010): one FIFO store buffer per
  CPU; loads read their own CPU's newest buffered store, else memory; MFENCE and LOCKed
  instructions drain the buffer. So the only reordering is a store with a later load
  (CACM §3: "loads may be reordered with older stores"; "stores are not reordered with
  other stores"; "stores are transitively visible"; IRIW is forbidden).
- SPARC PSO (The SPARC Architecture Manual v8, appendix K): as TSO, but stores to
  *different* locations may reach memory out of order unless separated by STBAR (smp_wmb);
  stores and atomic load-stores separated by an STBAR reach memory in program order.
  Memory is still a single shared copy (multi-copy atomic) and loads are never reordered.
- The Linux kernel's litmus tests (tools/memory-model/litmus-tests/, README): names such
  as SB+poonceonces ("po" = plain program order, "once" = READ_ONCE/WRITE_ONCE) and
  SB+fencembonceonces (older kernels: SB+mbonceonces) are quoted below with the LKMM's
  verdict, which can be weaker than TSO/PSO (the LKMM also covers ARM and POWER).

Outcomes list the registers in thread order (P0's first), then final values where the
shape is about them (2+2W, R, S); all cells start at 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from types import SimpleNamespace
from typing import Any

import pytest
from weak_reference import MODELS, outcomes

from vcpureq.model import Atomic, explore, spawn
from vcpureq.model.kernel import (
    READ_ONCE,
    WRITE_ONCE,
    clear_bit,
    set_bit,
    smp_load_acquire,
    smp_mb,
    smp_mb__after_atomic,
    smp_rmb,
    smp_store_release,
    smp_wmb,
)
from vcpureq.model.kernel import test_bit as kernel_test_bit  # not collected as a test

R, A, L, F = "relaxed", "acquire", "release", "full"
X, Y = 0, 1


@dataclass
class Litmus:
    name: str
    threads: tuple[Callable[[SimpleNamespace], tuple[Any, ...]], ...]
    expected: dict[str, set[tuple[Any, ...]]]
    cells: tuple[str, ...] = ("x", "y")
    finals: tuple[str, ...] = ()
    # The same test as a weak_reference data program (cells in the order of `cells`), and
    # how to map a reference outcome (results, finals) to this test's outcome form.
    data: tuple[Any, ...] | None = None
    project: Callable[[Any], tuple[Any, ...]] | None = None
    xfail: dict[str, str] = field(default_factory=dict)

    def program(self) -> Callable[[], tuple[Any, ...]]:
        def program() -> tuple[Any, ...]:
            c = SimpleNamespace(**{name: Atomic(0, name=name) for name in self.cells})
            ts = [spawn(body, c, name=f"P{i}") for i, body in enumerate(self.threads)]
            regs = tuple(r for t in ts for r in t.join())
            return regs + tuple(getattr(c, name).load() for name in self.finals)
        return program

    def reference(self, model: str) -> set[tuple[Any, ...]]:
        assert self.data is not None
        project = self.project or self._default_projection
        return {project(o) for o in outcomes(self.data, model, len(self.cells))}

    def _default_projection(self, outcome: Any) -> tuple[Any, ...]:
        results, mem = outcome
        return tuple(r for rs in results for r in rs) + tuple(
            mem[self.cells.index(name)] for name in self.finals)


def same_everywhere(s: set[tuple[Any, ...]]) -> dict[str, set[tuple[Any, ...]]]:
    return {m: set(s) for m in MODELS}


def bits(n: int) -> set[tuple[int, ...]]:
    return set(product((0, 1), repeat=n))


CASES: list[Litmus] = []


def litmus(case: Litmus) -> Litmus:
    CASES.append(case)
    return case


# ---------------------------------------------------------------------------------- SB
# P0: x = 1; r0 = y        P1: y = 1; r1 = x
# SC: some store comes first in the interleaving, and the other thread's load follows it,
# so (0, 0) is impossible: {(0,1), (1,0), (1,1)}.
# TSO: both stores can sit in their buffers while both loads read memory: (0, 0) too
# (x86-TSO's defining example, CACM §2; Intel SDM example 8-3). PSO is TSO plus
# store->store reordering, so the same set. LKMM SB+poonceonces: Sometimes.

SB_SC = {(0, 1), (1, 0), (1, 1)}
SB_ALL = SB_SC | {(0, 0)}


def _sb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    return (READ_ONCE(c.y),)


def _sb_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.y, 1)
    return (READ_ONCE(c.x),)


litmus(Litmus(
    "SB+poonceonces", (_sb_p0, _sb_p1),
    {"sc": SB_SC, "tso": SB_ALL, "pso": SB_ALL},
    data=((("store", X, 1, R), ("load", Y, R)), (("store", Y, 1, R), ("load", X, R))),
))


# SB+fencembonceonces: smp_mb() (MFENCE / drain) between store and load on both sides.
# Each load runs only after its own store reached memory, so whichever store reached memory
# first is seen by the other thread's later load: (0, 0) is forbidden everywhere.
# LKMM: Never.
def _sb_mb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    smp_mb()
    return (READ_ONCE(c.y),)


def _sb_mb_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.y, 1)
    smp_mb()
    return (READ_ONCE(c.x),)


litmus(Litmus(
    "SB+fencembonceonces", (_sb_mb_p0, _sb_mb_p1), same_everywhere(SB_SC),
    data=((("store", X, 1, R), ("fence", "mb"), ("load", Y, R)),
          (("store", Y, 1, R), ("fence", "mb"), ("load", X, R))),
))

# SB with the barrier on one side only: P0 drains before loading y, but P1's y=1 can still
# sit in P1's buffer while P1 reads x=0 (before P0 even starts) and P0 reads y=0 after its
# drain. So (0, 0) is allowed under TSO and PSO: a barrier must be paired.
litmus(Litmus(
    "SB+fencembonceonce+poonceonce", (_sb_mb_p0, _sb_p1),
    {"sc": SB_SC, "tso": SB_ALL, "pso": SB_ALL},
    data=((("store", X, 1, R), ("fence", "mb"), ("load", Y, R)),
          (("store", Y, 1, R), ("load", X, R))),
))


# SB with the runtime's default stores (order "full": a seq_cst store, x86 xchg): the store
# drains and writes memory directly, so this is SB+fencembonceonces again.
def _sb_full_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    c.x.store(1)
    return (READ_ONCE(c.y),)


def _sb_full_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    c.y.store(1)
    return (READ_ONCE(c.x),)


litmus(Litmus(
    "SB+seqcststores", (_sb_full_p0, _sb_full_p1), same_everywhere(SB_SC),
    data=((("store", X, 1, F), ("load", Y, R)), (("store", Y, 1, F), ("load", X, R))),
))

# ---------------------------------------------------------------------------------- MP
# P0: x = 1; y = 1         P1: r0 = y; r1 = x
# SC: r0 = 1 means y=1 came before the load of y, x=1 before y=1 and the load of x after
# the load of y: r1 = 1. So (1, 0) is impossible: {(0,0), (0,1), (1,1)}.
# TSO: P0's FIFO buffer delivers x before y and P1's loads are not reordered: same as SC
# (CACM §3, "stores are not reordered with other stores"; Intel SDM example 8-1).
# PSO: x and y sit in different buffers; y can reach memory first: (1, 0) is allowed.
# LKMM MP+poonceonces: Sometimes.

MP_SC = {(0, 0), (0, 1), (1, 1)}
MP_DATA_READER = (("load", Y, R), ("load", X, R))


def _mp_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    WRITE_ONCE(c.y, 1)
    return ()


def _mp_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = READ_ONCE(c.y)
    r1 = READ_ONCE(c.x)
    return r0, r1


litmus(Litmus(
    "MP+poonceonces", (_mp_p0, _mp_p1),
    {"sc": MP_SC, "tso": MP_SC, "pso": MP_SC | {(1, 0)}},
    data=((("store", X, 1, R), ("store", Y, 1, R)), MP_DATA_READER),
))


# MP+fencewmbonceonce+fencermbonceonce (older: MP+wmbonceonce+rmbonceonce): smp_wmb()
# makes y=1 wait for x=1 under PSO (STBAR); loads are in order anyway. SC set everywhere.
# LKMM: Never.
def _mp_wmb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    smp_wmb()
    WRITE_ONCE(c.y, 1)
    return ()


def _mp_rmb_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = READ_ONCE(c.y)
    smp_rmb()
    r1 = READ_ONCE(c.x)
    return r0, r1


litmus(Litmus(
    "MP+fencewmbonceonce+fencermbonceonce", (_mp_wmb_p0, _mp_rmb_p1), same_everywhere(MP_SC),
    data=((("store", X, 1, R), ("fence", "wmb"), ("store", Y, 1, R)),
          (("load", Y, R), ("fence", "rmb"), ("load", X, R))),
))

# MP with smp_wmb() only: forbidden here too, because neither TSO nor PSO reorders loads.
# (The LKMM says Sometimes -- ARM and POWER reorder the reader's loads -- which these
# models cannot show; see docs/memory-models.md.)
litmus(Litmus(
    "MP+fencewmbonceonce+poonceonces", (_mp_wmb_p0, _mp_p1), same_everywhere(MP_SC),
    data=((("store", X, 1, R), ("fence", "wmb"), ("store", Y, 1, R)), MP_DATA_READER),
))

# MP with smp_rmb() only: the reader's barrier cannot stop PSO's writer-side reordering.
litmus(Litmus(
    "MP+poonceonce+fencermbonceonce", (_mp_p0, _mp_rmb_p1),
    {"sc": MP_SC, "tso": MP_SC, "pso": MP_SC | {(1, 0)}},
    data=((("store", X, 1, R), ("store", Y, 1, R)),
          (("load", Y, R), ("fence", "rmb"), ("load", X, R))),
))


# MP+pooncerelease+poacquireonce: smp_store_release(y) orders x=1 before it (under PSO a
# release store is an STBAR followed by the store). SC set everywhere. LKMM: Never.
def _mp_rel_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    smp_store_release(c.y, 1)
    return ()


def _mp_acq_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = smp_load_acquire(c.y)
    r1 = READ_ONCE(c.x)
    return r0, r1


litmus(Litmus(
    "MP+pooncerelease+poacquireonce", (_mp_rel_p0, _mp_acq_p1), same_everywhere(MP_SC),
    data=((("store", X, 1, R), ("store", Y, 1, L)),
          (("load", Y, A), ("load", X, R))),
))

# ---------------------------------------------------------------------------------- LB
# P0: r0 = x; y = 1        P1: r1 = y; x = 1
# (1, 1) needs each load to read the other thread's later store: a load reordered after
# its thread's later store. No store buffer does that (a store cannot become visible
# before the thread executed it, and loads execute in order; CACM §3, "stores are not
# reordered with older loads", Intel SDM example 8-2). {(0,0), (0,1), (1,0)} in all three.
# LKMM LB+poonceonces: Sometimes (not on TSO/PSO hardware, but allowed by the LKMM).


def _lb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = READ_ONCE(c.x)
    WRITE_ONCE(c.y, 1)
    return (r0,)


def _lb_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r1 = READ_ONCE(c.y)
    WRITE_ONCE(c.x, 1)
    return (r1,)


litmus(Litmus(
    "LB+poonceonces", (_lb_p0, _lb_p1), same_everywhere({(0, 0), (0, 1), (1, 0)}),
    data=((("load", X, R), ("store", Y, 1, R)), (("load", Y, R), ("store", X, 1, R))),
))

# ---------------------------------------------------------------------------------- 2+2W
# P0: x = 1; y = 2         P1: y = 1; x = 2          outcome: (final x, final y)
# Final (1, 1) needs x=2 before x=1 and y=2 before y=1 in memory; with each thread's
# stores in program order that is the cycle x=2 < x=1 < y=2 < y=1 < x=2. SC and TSO (FIFO
# buffers keep each thread's stores in order): {(1,2), (2,1), (2,2)}. PSO: y=2 may reach
# memory before x=1 (and x=2 before y=1): (1, 1) too. LKMM 2+2W+poonceonces: Sometimes;
# with smp_wmb() on both sides (2+2W+fencewmbonceonces): Never, the SC set under PSO.

W22_SC = {(1, 2), (2, 1), (2, 2)}


def _w22_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    WRITE_ONCE(c.y, 2)
    return ()


def _w22_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.y, 1)
    WRITE_ONCE(c.x, 2)
    return ()


def _w22_wmb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    smp_wmb()
    WRITE_ONCE(c.y, 2)
    return ()


def _w22_wmb_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.y, 1)
    smp_wmb()
    WRITE_ONCE(c.x, 2)
    return ()


litmus(Litmus(
    "2+2W+poonceonces", (_w22_p0, _w22_p1),
    {"sc": W22_SC, "tso": W22_SC, "pso": W22_SC | {(1, 1)}}, finals=("x", "y"),
    data=((("store", X, 1, R), ("store", Y, 2, R)), (("store", Y, 1, R), ("store", X, 2, R))),
))
litmus(Litmus(
    "2+2W+fencewmbonceonces", (_w22_wmb_p0, _w22_wmb_p1), same_everywhere(W22_SC),
    finals=("x", "y"),
    data=((("store", X, 1, R), ("fence", "wmb"), ("store", Y, 2, R)),
          (("store", Y, 1, R), ("fence", "wmb"), ("store", X, 2, R))),
))

# ---------------------------------------------------------------------------------- R
# P0: x = 1; y = 1         P1: y = 2; r0 = x          outcome: (r0, final y)
# SC: final y = 2 means y=1 < y=2, so x=1 < y=1 < y=2 < (load x): r0 = 1. The other
# outcomes: (1, 1), (0, 1) (P1 entirely first) and (1, 2). So (0, 2) is forbidden.
# TSO and PSO: P1's y=2 waits in its buffer while P1 reads x=0; P0's stores then reach
# memory and y=2 last: (0, 2) allowed (it is SB with a write in place of a read).
# LKMM R+poonceonces: Sometimes; R+fencembonceonces: Never.
# With smp_mb() on P1 only: under TSO y=2 is in memory before P1 loads x; for final y=2,
# y=1 (and before it, FIFO, x=1) reached memory earlier, so r0 = 1: forbidden. Under PSO
# P0's y=1 may overtake x=1: y=1, y=2 (drained), r0 = x = 0, then x=1: still allowed.

R_SC = {(1, 1), (0, 1), (1, 2)}
R_ALL = R_SC | {(0, 2)}


def _r_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    WRITE_ONCE(c.y, 1)
    return ()


def _r_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.y, 2)
    return (READ_ONCE(c.x),)


def _r_mb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    smp_mb()
    WRITE_ONCE(c.y, 1)
    return ()


def _r_mb_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.y, 2)
    smp_mb()
    return (READ_ONCE(c.x),)


R_DATA_P0 = (("store", X, 1, R), ("store", Y, 1, R))
R_DATA_P1 = (("store", Y, 2, R), ("load", X, R))
R_DATA_P1_MB = (("store", Y, 2, R), ("fence", "mb"), ("load", X, R))

litmus(Litmus(
    "R+poonceonces", (_r_p0, _r_p1), {"sc": R_SC, "tso": R_ALL, "pso": R_ALL},
    finals=("y",), data=(R_DATA_P0, R_DATA_P1),
))
litmus(Litmus(
    "R+poonceonce+fencembonceonce", (_r_p0, _r_mb_p1), {"sc": R_SC, "tso": R_SC, "pso": R_ALL},
    finals=("y",), data=(R_DATA_P0, R_DATA_P1_MB),
))
litmus(Litmus(
    "R+fencembonceonces", (_r_mb_p0, _r_mb_p1), same_everywhere(R_SC), finals=("y",),
    data=((("store", X, 1, R), ("fence", "mb"), ("store", Y, 1, R)), R_DATA_P1_MB),
))

# ---------------------------------------------------------------------------------- S
# P0: x = 2; y = 1         P1: r0 = y; x = 1          outcome: (r0, final x)
# SC: r0 = 1 means x=2 < y=1 < (load y) < x=1, so final x = 1: (1, 2) is forbidden.
# The others: (0, 2) (P1 first), (0, 1) (x=2, load y, x=1, y=1), (1, 1).
# TSO: P0's stores reach memory in order and P1's store follows its load: as SC.
# PSO: y=1 can reach memory before x=2; P1 reads it and its x=1 lands before P0's x=2.
# LKMM S+poonceonces: Sometimes; S+fencewmbonceonce+poacquireonce: Never.

S_SC = {(0, 1), (0, 2), (1, 1)}


def _s_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 2)
    WRITE_ONCE(c.y, 1)
    return ()


def _s_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = READ_ONCE(c.y)
    WRITE_ONCE(c.x, 1)
    return (r0,)


def _s_wmb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 2)
    smp_wmb()
    WRITE_ONCE(c.y, 1)
    return ()


def _s_acq_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = smp_load_acquire(c.y)
    WRITE_ONCE(c.x, 1)
    return (r0,)


litmus(Litmus(
    "S+poonceonces", (_s_p0, _s_p1), {"sc": S_SC, "tso": S_SC, "pso": S_SC | {(1, 2)}},
    finals=("x",),
    data=((("store", X, 2, R), ("store", Y, 1, R)), (("load", Y, R), ("store", X, 1, R))),
))
litmus(Litmus(
    "S+fencewmbonceonce+poacquireonce", (_s_wmb_p0, _s_acq_p1), same_everywhere(S_SC),
    finals=("x",),
    data=((("store", X, 2, R), ("fence", "wmb"), ("store", Y, 1, R)),
          (("load", Y, A), ("store", X, 1, R))),
))

# ---------------------------------------------------------------------------------- WRC
# P0: x = 1      P1: r0 = x; y = 1      P2: r1 = y; r2 = x     outcome: (r0, r1, r2)
# Forbidden: (1, 1, 0). P1 read x=1 from memory (it is not P1's own store), so x=1 was in
# memory before P1's y=1 was even executed; P2 saw y=1 in memory, then read x from the one
# shared memory: 1. That is TSO's and PSO's multi-copy atomicity (CACM §3, "stores are
# transitively visible", Intel SDM example 8-5). Every other combination is reachable in
# SC already (e.g. (1, 0, 0): P0, P1's load, P2, P1's store). LKMM WRC+poonceonces+Once:
# Sometimes.


def _wrc_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.x, 1)
    return ()


def _wrc_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    r0 = READ_ONCE(c.x)
    WRITE_ONCE(c.y, 1)
    return (r0,)


def _wrc_p2(c: SimpleNamespace) -> tuple[Any, ...]:
    r1 = READ_ONCE(c.y)
    r2 = READ_ONCE(c.x)
    return r1, r2


litmus(Litmus(
    "WRC+poonceonces+Once", (_wrc_p0, _wrc_p1, _wrc_p2), same_everywhere(bits(3) - {(1, 1, 0)}),
    data=((("store", X, 1, R),), (("load", X, R), ("store", Y, 1, R)),
          (("load", Y, R), ("load", X, R))),
))

# ---------------------------------------------------------------------------------- IRIW
# P0: x = 1   P1: y = 1   P2: r0 = x; r1 = y   P3: r2 = y; r3 = x    outcome: (r0..r3)
# Forbidden: (1, 0, 1, 0), the two readers disagreeing on the order of the two writes.
# Under TSO/PSO each write reaches the single memory at one instant and the readers' loads
# are in order, so both see the same order (CACM §3: IRIW is forbidden on x86). All other
# 15 combinations are SC interleavings. LKMM IRIW+poonceonces+OnceOnce: Sometimes (POWER).


def _iriw_w(cell: str) -> Callable[[SimpleNamespace], tuple[Any, ...]]:
    def writer(c: SimpleNamespace) -> tuple[Any, ...]:
        WRITE_ONCE(getattr(c, cell), 1)
        return ()
    return writer


def _iriw_r(first: str, second: str) -> Callable[[SimpleNamespace], tuple[Any, ...]]:
    def reader(c: SimpleNamespace) -> tuple[Any, ...]:
        a = READ_ONCE(getattr(c, first))
        b = READ_ONCE(getattr(c, second))
        return a, b
    return reader


litmus(Litmus(
    "IRIW+poonceonces+OnceOnce",
    (_iriw_w("x"), _iriw_w("y"), _iriw_r("x", "y"), _iriw_r("y", "x")),
    same_everywhere(bits(4) - {(1, 0, 1, 0)}),
    data=((("store", X, 1, R),), (("store", Y, 1, R),),
          (("load", X, R), ("load", Y, R)), (("load", Y, R), ("load", X, R))),
))

# ---------------------------------------------------------- KVM requests: message and flag
# include/linux/kvm_host.h:
#   kvm_make_request(req, vcpu):  smp_wmb(); set_bit(req, &vcpu->requests);
#   kvm_check_request(req, vcpu): if (test_bit(req, ...)) { clear_bit(req, ...);
#                                       smp_mb__after_atomic(); return true; }
# P0: WRITE_ONCE(payload, 1); kvm_make_request     P1: if kvm_check_request: r = payload
# outcome: (request seen, r) with r = None when the request was not seen.
# Forbidden: (True, 0). The payload store precedes the smp_wmb, set_bit's write follows
# it: STBAR orders stores *and atomic load-stores* (SPARC v8 appendix K), the LKMM's wmb
# orders the write of a later RMW too. TSO: set_bit is a LOCKed RMW, which drains P0's
# buffer. The reader's loads are in order in all three models. So {(False, None),
# (True, 1)} everywhere.
# Without the smp_wmb, PSO lets set_bit's write (a relaxed RMW, which waits only for
# its own cell's buffer) reach memory while payload=1 is still buffered: (True, 0).

REQ_OK = {(False, None), (True, 1)}


def _make_request_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.payload, 1)
    smp_wmb()
    set_bit(0, c.requests)
    return ()


def _make_request_no_wmb_p0(c: SimpleNamespace) -> tuple[Any, ...]:
    WRITE_ONCE(c.payload, 1)
    set_bit(0, c.requests)
    return ()


def _check_request_p1(c: SimpleNamespace) -> tuple[Any, ...]:
    if kernel_test_bit(0, c.requests):
        clear_bit(0, c.requests)
        smp_mb__after_atomic()
        return True, READ_ONCE(c.payload)
    return False, None


PAYLOAD, REQUESTS = 0, 1
# The reader as a straight-line data program: the clear_bit, fence and payload load run
# unconditionally and are ignored when the bit was clear (they cannot change whether it
# was seen nor what a reader that saw it reads).
CHECK_REQUEST_DATA = (("load", REQUESTS, R), ("rmw", "fand", REQUESTS, ~1, R),
                      ("fence", "mb__after_atomic"), ("load", PAYLOAD, R))


def _request_projection(outcome: Any) -> tuple[Any, ...]:
    (_, (bit, _old, payload)), _mem = outcome
    return (True, payload) if bit & 1 else (False, None)


litmus(Litmus(
    "kvm_make_request+kvm_check_request", (_make_request_p0, _check_request_p1),
    same_everywhere(REQ_OK), cells=("payload", "requests"),
    data=((("store", PAYLOAD, 1, R), ("fence", "wmb"), ("rmw", "for", REQUESTS, 1, R)),
          CHECK_REQUEST_DATA),
    project=_request_projection,
))
litmus(Litmus(
    "kvm_make_request-without-smp_wmb", (_make_request_no_wmb_p0, _check_request_p1),
    {"sc": REQ_OK, "tso": REQ_OK, "pso": REQ_OK | {(True, 0)}}, cells=("payload", "requests"),
    data=((("store", PAYLOAD, 1, R), ("rmw", "for", REQUESTS, 1, R)), CHECK_REQUEST_DATA),
    project=_request_projection,
))


# ------------------------------------------------------------------------------ the tests


def _params() -> list[Any]:
    out = []
    for case in CASES:
        for model in MODELS:
            marks = []
            if model in case.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[model]))
            out.append(pytest.param(case, model, marks=marks, id=f"{case.name}-{model}"))
    return out


@pytest.mark.parametrize(("case", "model"), _params())
def test_litmus_explorer(case: Litmus, model: str) -> None:
    ex = explore(case.program(), memory_model=model)
    assert ex.ok, ex.summary()
    assert set(ex.outcomes) == case.expected[model]


@pytest.mark.parametrize(("case", "model"), [
    pytest.param(c, m, id=f"{c.name}-{m}") for c in CASES if c.data is not None for m in MODELS
])
def test_litmus_reference(case: Litmus, model: str) -> None:
    """The independent operational reference derives the same sets."""
    assert case.reference(model) == case.expected[model]


def test_expected_sets_are_monotone() -> None:
    """SC <= TSO <= PSO for every test: each model only adds behaviours."""
    for case in CASES:
        e = case.expected
        assert e["sc"] <= e["tso"] <= e["pso"], case.name


def test_relaxed_model_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        explore(CASES[0].program(), memory_model="relaxed")


@pytest.mark.parametrize(("model", "actors"), [
    ("tso", {"P0.sb", "P1.sb"}),
    ("pso", {"P0.sb[x]", "P1.sb[y]"}),
])
def test_flushes_appear_in_traces(model: str, actors: set[str]) -> None:
    """In SB's (0, 0) execution, both loads precede both flushes, which are events of
    the flush actors named after their thread (and cell, under PSO)."""
    sb = CASES[0]
    seen: list[list[Any]] = []

    def record(outcome: Any, events: list[Any]) -> None:
        if outcome == (0, 0):
            seen.append(events)

    ex = explore(sb.program(), memory_model=model, on_execution=record)
    assert ex.ok and seen
    for events in seen:
        flushes = [e for e in events if e.op == "flush"]
        assert {e.thread_name for e in flushes} == actors
        loads = [e.step for e in events if e.op == "load" and e.thread_name in ("P0", "P1")]
        assert max(loads) < min(e.step for e in flushes)
