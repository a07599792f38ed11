"""s390x: the SIE control block, sie64a and kvm-s390's own request protocol.

Read beside the kernel (function names are the kernel's, without ``kvm_``/``kvm_s390_``
where the kernel uses them for the common API):

- ``arch/s390/include/asm/kvm_host.h``: ``struct kvm_s390_sie_block`` (``cpuflags`` with
  ``CPUSTAT_STOP_INT``/``CPUSTAT_STOPPED``/``CPUSTAT_IBS``; ``prog0c`` with
  ``PROG_IN_SIE``; ``prog20`` with ``PROG_BLOCK_SIE`` and ``PROG_REQUEST``).
- ``arch/s390/kernel/entry.S`` (``sie64a``/``__sie64a``): ``oi __SIE_PROG0C+3,1`` ("we
  are going into SIE now"), ``tm __SIE_PROG20+3,3`` ("last exit...") and ``jnz
  .Lsie_skip``, the ``sie`` instruction, ``ni __SIE_PROG0C+3,0xfe`` ("no longer in
  SIE"). An interrupt that arrives between the ``oi`` and the end of SIE leaves SIE
  (or skips it) through the same path that clears ``PROG_IN_SIE`` (``SIEEXIT``; in
  2017 kernels ``.Lcleanup_sie``), so ``PROG_IN_SIE`` is never set while the vCPU
  thread is off its CPU.
- ``arch/s390/kvm/kvm-s390.c``: ``__vcpu_run`` (interrupts are enabled before
  ``sie64a``: SIE runs with host interrupts *and preemption* enabled; since "KVM: s390:
  Enable and disable interrupts in entry code" (December 2025) ``sie64a`` enables them
  itself, after ``__TI_sie`` is set, so that an interrupt from there on makes it skip
  SIE -- the kernel's own protocol does not depend on either), ``vcpu_pre_run``
  (``kvm_s390_deliver_pending_interrupts`` first, whose ``__reset_intercept_indicators``
  in ``interrupt.c`` clears ``CPUSTAT_STOP_INT``; then ``kvm_s390_handle_requests``),
  ``kvm_s390_handle_requests`` (clear ``PROG_REQUEST`` first, with
  ``kvm_s390_vcpu_request_handled``, then the requests, ``goto retry`` after each;
  ``REFRESH_GUEST_PREFIX``, formerly ``MMU_RELOAD``, re-arms the prefix protection with
  ``gmap_mprotect_notify`` and re-makes the request if that fails), ``exit_sie``
  (``CPUSTAT_STOP_INT``, ``kvm_s390_vsie_kick``, spin while ``PROG_IN_SIE``),
  ``kvm_s390_vcpu_request`` / ``kvm_s390_sync_request`` (make the request, then
  ``PROG_REQUEST`` + ``exit_sie``), ``kvm_s390_vcpu_block``/``unblock``
  (``PROG_BLOCK_SIE``), ``kvm_gmap_notifier`` (sync ``REFRESH_GUEST_PREFIX`` on every
  vCPU whose two prefix pages intersect the range), ``__enable_ibs_on_vcpu``,
  ``__disable_ibs_on_vcpu``/``_all_vcpus``, ``kvm_s390_vcpu_start``/``stop`` (under
  ``start_stop_lock``), ``kvm_arch_vcpu_should_kick`` (``BUG()``: common code refers to
  it but must never call it).
- ``arch/s390/kvm/kvm-s390.h``: ``kvm_s390_set_prefix`` (new prefix, then *local*
  ``TLB_FLUSH`` and ``REFRESH_GUEST_PREFIX`` requests: it runs on the vCPU itself, after
  a SET PREFIX intercept, so no kick).

Memory model: s390 is TSO-like. ``arch/s390/include/asm/barrier.h`` makes ``smp_rmb``
and ``smp_wmb`` compiler barriers and only ``smp_mb`` a real serialization (``bcr
14,0``): z/Architecture keeps a CPU's stores in order and its fetches in order (the
"conceptual sequence"), but a fetch may be satisfied before an earlier store of the same
CPU is seen by others. So the default model is ``"tso"``. It matters: the ``oi PROG0C``
store of ``sie64a`` can still be in the store buffer when the ``tm PROG20`` load runs;
what closes that store-buffering window is that the SIE instruction serializes and then
tests ``CPUSTAT_STOP_INT`` (the requester set it before polling ``PROG_IN_SIE``), see
:attr:`S390xArch.sie_serializes`. vcpureq's TSO treats
every read-modify-write as draining the store buffer (x86 LOCK); s390's interlocked
updates (``atomic_or``/``atomic_andnot`` are LAO/LAN) are taken to order alike.

Modelled hardware and environment (not kernel code), each marked where it is used:

- SIE runs the guest until ``CPUSTAT_STOP_INT`` is set or a host interrupt (IPI, host
  timer) arrives on its CPU; a STOP_INT or interrupt already pending at SIE entry makes
  SIE exit before the first guest instruction. A guest instruction that intercepts
  (SET PREFIX, SIGP STOP on itself) can be scripted per vCPU (``guest_program``).
- ``sie_running`` (per vCPU) is the hardware truth "the guest runs", for properties
  only.
- Host timer ticks (:attr:`S390xArch.host_tick`): ``exit_sie`` polls a *level*
  (``PROG_IN_SIE``); a vCPU that left SIE, handled the request and re-entered between
  two polls keeps the poller spinning until the vCPU leaves SIE again for an unrelated
  reason -- in a real host the timer interrupt (SIE runs with interrupts on), after
  which a cpu_relax() loop eventually observes an out-of-SIE window. The model gives
  the poller that fairness in one step: the spin also ends once the vCPU consumed the
  poller's ``CPUSTAT_STOP_INT`` (only ``vcpu_pre_run`` clears it, between two SIE
  entries, so the vCPU was out of SIE after the poller set it). Variant
  ``s390x-no-host-tick`` shows the spin without it.
- Preemption (:attr:`S390xArch.models_preemption`): see :meth:`S390xArch.preempt_point`.

Not modelled: vSIE (``kvm_s390_vsie_kick`` is a no-op here: no nested guest runs), the
interrupt delivery of ``kvm_s390_deliver_pending_interrupts`` beyond clearing the
intercept indicators, ``ihcpu`` beyond "flush at the next SIE entry", ucontrol VMs,
protected virtualization, the wait state (an s390 vCPU here never sleeps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vcpureq.arch.base import Arch, Host, HostCpu
from vcpureq.common import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    check_request,
    clear_request,
    make_all_cpus_request,
    make_request,
    request_pending,
    set_request,
    set_sync_request,
    set_sync_request_many,
    vcpu_exiting_guest_mode,
    vcpu_kick,
)
from vcpureq.model import Atomic, choose, fence, spawn, wait_until
from vcpureq.model.kernel import (
    READ_ONCE,
    WRITE_ONCE,
    atomic_andnot,
    atomic_or,
    cmpxchg,
    smp_mb,
    smp_store_mb,
    smp_store_release,
    smp_wmb,
)
from vcpureq.requests import (
    DISABLE_IBS,
    ENABLE_IBS,
    ICPT_OPEREXC,
    REFRESH_GUEST_PREFIX,
    START_MIGRATION,
    STOP_MIGRATION,
    TLB_FLUSH,
    VSIE_RESTART,
    Request,
)

if TYPE_CHECKING:
    from vcpureq.common import Kvm, KvmVcpu

__all__ = [
    "CPUSTAT_STOPPED",
    "CPUSTAT_STOP_INT",
    "CPUSTAT_IBS",
    "PROG_IN_SIE",
    "PROG_BLOCK_SIE",
    "PROG_REQUEST",
    "KernelBug",
    "SieBlock",
    "Gmap",
    "PAGE_INVALID",
    "PAGE_MAPPED",
    "PAGE_PROTECTED",
    "SIE_OUT",
    "SIE_ENTERED",
    "SIE_GUEST",
    "S390VcpuArch",
    "S390xArch",
    "EXIT_SKIPPED",
    "EXIT_BLOCKED",
    "EXIT_STOP_INTERCEPT",
    "EXIT_INTERRUPT",
    "EXIT_INSTRUCTION",
]

# --- arch/s390/include/asm/kvm_host.h ------------------------------------------------
CPUSTAT_STOPPED = 0x80000000
CPUSTAT_STOP_INT = 0x04000000
CPUSTAT_IBS = 0x00000040
PROG_IN_SIE = 1 << 0  # in prog0c
PROG_BLOCK_SIE = 1 << 0  # in prog20
PROG_REQUEST = 1 << 1  # in prog20

# How an attempt to run the guest ended (the model's exit reasons).
EXIT_SKIPPED = "skipped"  # sie64a saw PROG_REQUEST and skipped SIE
EXIT_BLOCKED = "blocked"  # sie64a saw PROG_BLOCK_SIE (without PROG_REQUEST)
EXIT_STOP_INTERCEPT = "stop-intercept"  # SIE left because CPUSTAT_STOP_INT was set
EXIT_INTERRUPT = "interrupt"  # SIE left because a host interrupt arrived (IPI, timer)
EXIT_INSTRUCTION = "instruction"  # a scripted guest instruction intercepted

# S390VcpuArch.sie_running (observation)
SIE_OUT = 0
SIE_ENTERED = 1
SIE_GUEST = 2

# Gmap page states: invalid, mapped (writable), mapped + protected + notifier armed.
PAGE_INVALID = 0
PAGE_MAPPED = 1
PAGE_PROTECTED = 2

_ERR_AGAIN = -11  # -EAGAIN from gmap_mprotect_notify


class KernelBug(RuntimeError):
    """The kernel's BUG(): code that must never run did."""


class SieBlock:
    """struct kvm_s390_sie_block: the fields the request protocol uses.

    ``prefix`` holds the guest page index of the prefix area (the kernel keeps the
    address; in the model guest memory is a few pages, see :class:`Gmap`). ``ihcpu`` is
    vCPU-private (set to 0xffff to make the next SIE entry flush the guest TLB).
    """

    def __init__(self, vcpu_id: int, cpuflags: int, prefix: int) -> None:
        self.cpuflags = Atomic(cpuflags, name=f"vcpu{vcpu_id}.cpuflags")
        self.prog0c = Atomic(0, name=f"vcpu{vcpu_id}.prog0c")
        self.prog20 = Atomic(0, name=f"vcpu{vcpu_id}.prog20")
        self.prefix = Atomic(prefix, name=f"vcpu{vcpu_id}.prefix")
        self.ihcpu = 0


class Gmap:
    """The guest address space (struct gmap), reduced to what the prefix protocol needs.

    ``pages[p]`` is ``PAGE_PROTECTED`` while guest page ``p`` is mapped, writable and
    its invalidation notifier is armed (the notification bit that
    ``gmap_mprotect_notify`` sets), ``PAGE_MAPPED`` if mapped without the notifier,
    ``PAGE_INVALID`` once memory management invalidated it. :meth:`ptl` is the
    page-table lock of a page: the unmapper holds it while ``ptep_notify`` calls the
    notifier and while it invalidates the PTE; ``gmap_mprotect_notify`` takes it too
    (kvm_s390_handle_requests: "gmap_mprotect_notify will wait on the ptl lock. This
    ensures that the ipte instruction for this request has already finished"). One lock
    for every page (the pages share a page table: one 1 MB segment), or with
    ``split_ptl`` one per page (split PTE locks, pages in different segments).
    """

    def __init__(self, nr_pages: int, states: Mapping[int, int] | None = None,
                 split_ptl: bool = False) -> None:
        shared = Atomic(0, name="gmap.ptl")
        self.ptls = [Atomic(0, name=f"gmap.ptl{p}") if split_ptl else shared
                     for p in range(nr_pages)]
        states = states or {}
        self.pages = [Atomic(states.get(p, PAGE_PROTECTED), name=f"page{p}")
                      for p in range(nr_pages)]

    def ptl(self, page: int) -> Atomic:
        """The page-table lock of guest page ``page`` (pte_lockptr)."""
        return self.ptls[page]


def spin_lock(lock: Atomic) -> None:
    """spin_lock: cmpxchg 0 -> 1, spinning (waiting) while it is held."""
    while cmpxchg(lock, 0, 1) != 0:
        wait_until(lambda: READ_ONCE(lock) == 0)


def spin_unlock(lock: Atomic) -> None:
    smp_store_release(lock, 0)


class S390VcpuArch:
    """struct kvm_vcpu_arch for s390, plus the model's hardware/observation state."""

    def __init__(self, vcpu: KvmVcpu, cpu: HostCpu, cpuflags: int, prefix: int,
                 in_sie: bool = False) -> None:
        i = vcpu.vcpu_id
        self.sie_block = SieBlock(i, cpuflags, prefix)
        self.cpu = cpu  # the host CPU the vCPU thread runs on now
        #: the thread starts inside SIE, the guest running (prog0c has PROG_IN_SIE)
        self.in_sie_at_start = in_sie
        if in_sie:
            self.sie_block.prog0c = Atomic(PROG_IN_SIE, name=f"vcpu{i}.prog0c")
        #: hardware truth, for properties only: SIE_OUT, SIE_ENTERED (SIE entered, the
        #: entry observers run), SIE_GUEST (the guest runs until STOP_INT/interrupt)
        self.sie_running = Atomic(SIE_GUEST if in_sie else SIE_OUT,
                                  name=f"vcpu{i}.sie_running")
        #: observation: the thread left __vcpu_run for good (stopped vCPU)
        self.parked = Atomic(0, name=f"vcpu{i}.parked")
        self.tlb_stale = False  # the guest TLB may hold entries of an old prefix
        self.cmma = True  # ECB2_CMMA (START_MIGRATION clears it)
        self.ictl_operexc = False
        #: scripted guest instructions that intercept, one per SIE entry, in order:
        #: ("spx", page) -- SET PREFIX; ("sigp-stop",) -- SIGP STOP on itself
        self.guest_program: list[tuple[Any, ...]] = []
        self.preemptions = 0  # how often the thread may still be preempted (a budget)
        self.spare_cpu: HostCpu | None = None


class S390xArch(Arch):
    """s390x as in the kernel: SIE, PROG_REQUEST/STOP_INT/PROG_IN_SIE sync requests.

    The requesters' entry points (what s390 code calls) are methods here so that the
    variants can change them: :meth:`sync_request` (kvm_s390_sync_request),
    :meth:`sync_request_broadcast` (kvm_s390_sync_request_broadcast),
    :meth:`gmap_notifier` (kvm_gmap_notifier), :meth:`async_request` (common code's
    kvm_make_request + kvm_vcpu_kick, which s390 does not build: BUG),
    :meth:`enable_ibs_on_vcpu`, :meth:`disable_ibs_on_vcpu`,
    :meth:`disable_ibs_on_all_vcpus`, :meth:`vcpu_start`, :meth:`vcpu_stop`,
    :meth:`vcpu_block`, :meth:`vcpu_unblock`, :meth:`set_prefix`.
    """

    name = "s390x"
    request_arch = "s390x"
    memory_model = "tso"
    #: the guest pages of the VM (each vCPU i starts with prefix page i; scenarios may
    #: ask for more, e.g. a SET PREFIX target)
    nr_pages: int | None = None
    #: the SIE instruction serializes before it tests CPUSTAT_STOP_INT (see module doc)
    sie_serializes = True
    #: host timer interrupts eventually make SIE exit (fairness for exit_sie's poll)
    host_tick = True
    #: IPIs can reach the vCPU's CPU (variants that kick with IPIs)
    uses_ipis = False
    #: the vCPU thread may be preempted (and migrated) between its last request check
    #: and SIE entry; see preempt_point
    models_preemption = False
    #: times gmap_mprotect_notify may fail (-EAGAIN) in one run
    mprotect_failures = 0
    #: scenario set-up: initial cpuflags per vCPU index (e.g. CPUSTAT_STOPPED)
    initial_flags: Mapping[int, int] = {}
    #: scenario set-up: the scripted intercepting guest instructions per vCPU index
    guest_programs: Mapping[int, Sequence[tuple[Any, ...]]] = {}
    #: scenario set-up: vCPU indexes whose thread starts inside SIE with the guest
    #: running (a VM that already runs), instead of at the top of its run loop
    vcpus_in_sie: frozenset[int] = frozenset()
    #: scenario set-up: initial state per guest page (Gmap.pages; default protected)
    initial_pages: Mapping[int, int] = {}
    #: scenario set-up: one page-table lock per page (see Gmap) instead of one for all
    split_ptl = False

    # --- construction (kvm_arch_init_vm / kvm_arch_vcpu_create) --------------------------

    def create_host(self, nr_vcpus: int) -> Host:
        """One host CPU per vCPU (plus one spare per vCPU to migrate to, if preemption is
        modelled); also the per-VM state: the gmap and start_stop_lock."""
        self.gmap = Gmap(self.nr_pages or nr_vcpus, self.initial_pages, self.split_ptl)
        self.start_stop_lock = Atomic(0, name="kvm.start_stop_lock")
        self.failures_left = self.mprotect_failures
        return Host(2 * nr_vcpus if self.models_preemption else nr_vcpus)

    def vcpu_create(self, vcpu: KvmVcpu) -> S390VcpuArch:
        host = vcpu.kvm.host
        i = vcpu.vcpu_idx
        a = S390VcpuArch(vcpu, host.cpus[i], cpuflags=self.initial_flags.get(i, 0), prefix=i,
                         in_sie=i in self.vcpus_in_sie)
        a.guest_program = list(self.guest_programs.get(i, ()))
        if a.in_sie_at_start:
            self.started_in_sie(vcpu)
        if self.models_preemption:
            a.spare_cpu = host.cpus[len(host.cpus) // 2 + i]
            # one preemption, for the vCPUs that start at the top of their run loop
            # (those in SIE are the background of a scenario; a budget keeps it small)
            a.preemptions = 0 if a.in_sie_at_start else 1
        return a

    def started_in_sie(self, vcpu: KvmVcpu) -> None:
        """Initial state of a vCPU that starts inside SIE (before any thread runs).
        Nothing more on s390."""

    # --- hooks of the seed's unified interface ------------------------------------------

    def should_kick(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_should_kick: BUG() -- s390 does not track vcpu->mode."""
        raise KernelBug("kvm_arch_vcpu_should_kick called on s390 (BUG())")

    def pre_announce(self, vcpu: KvmVcpu, req: Request) -> None:
        """Seed callback 1: PROG_REQUEST keeps sie64a from entering SIE."""
        atomic_or(PROG_REQUEST, vcpu.arch.sie_block.prog20)

    def kick(self, vcpu: KvmVcpu) -> None:
        """Seed callback 2: CPUSTAT_STOP_INT (SIE leaves at once) and the vSIE kick."""
        atomic_or(CPUSTAT_STOP_INT, vcpu.arch.sie_block.cpuflags)  # kvm_s390_set_cpuflags
        self.vsie_kick(vcpu)

    def in_guest(self, vcpu: KvmVcpu) -> bool:
        """Seed callback 3: PROG_IN_SIE."""
        return bool(READ_ONCE(vcpu.arch.sie_block.prog0c) & PROG_IN_SIE)

    def request_handled(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vcpu_request_handled: clear PROG_REQUEST."""
        atomic_andnot(PROG_REQUEST, vcpu.arch.sie_block.prog20)

    def vsie_kick(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vsie_kick: kick a nested guest out of vSIE. No vSIE runs here."""

    # --- kvm-s390.c: sync requests, block, exit_sie ---------------------------------------

    def exit_sie(self, vcpu: KvmVcpu) -> None:
        """exit_sie: STOP_INT, vSIE kick, then spin while PROG_IN_SIE."""
        self.kick(vcpu)
        self.spin_while_in_sie(vcpu)

    def spin_while_in_sie(self, vcpu: KvmVcpu) -> None:
        """``while (prog0c & PROG_IN_SIE) cpu_relax();``

        With :attr:`host_tick` the spin also ends once the vCPU consumed our
        CPUSTAT_STOP_INT: only its vcpu_pre_run clears it, between two SIE entries, so
        the vCPU was out of SIE after we set it -- a window that a spinning poller
        observes, given that host timer interrupts keep opening such windows (see the
        module doc) -- and is about to handle our request (PROG_REQUEST keeps it out
        of SIE until it does).
        """
        sie = vcpu.arch.sie_block
        if not self.host_tick:
            wait_until(lambda: not READ_ONCE(sie.prog0c) & PROG_IN_SIE)
            return

        def left_sie() -> bool:
            return (not READ_ONCE(sie.prog0c) & PROG_IN_SIE
                    or not READ_ONCE(sie.cpuflags) & CPUSTAT_STOP_INT)

        wait_until(left_sie)

    def vcpu_request(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vcpu_request: PROG_REQUEST, then exit_sie."""
        atomic_or(PROG_REQUEST, vcpu.arch.sie_block.prog20)
        self.exit_sie(vcpu)

    def sync_request(self, req: Request, vcpu: KvmVcpu) -> None:
        """kvm_s390_sync_request: make the request, then kvm_s390_vcpu_request."""
        make_request(req, vcpu)
        self.vcpu_request(vcpu)

    def sync_request_broadcast(self, kvm: Kvm, req: Request) -> None:
        """kvm_s390_sync_request_broadcast: kvm_s390_sync_request on each vCPU in turn."""
        for vcpu in kvm.vcpus:
            self.sync_request(req, vcpu)

    def async_request(self, req: Request, vcpu: KvmVcpu) -> None:
        """Common code's kvm_make_request + kvm_vcpu_kick. Not built on s390: its
        kvm_arch_vcpu_should_kick is BUG()."""
        make_request(req, vcpu)
        vcpu_kick(vcpu)

    def vcpu_block(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vcpu_block: PROG_BLOCK_SIE, then exit_sie."""
        atomic_or(PROG_BLOCK_SIE, vcpu.arch.sie_block.prog20)
        self.exit_sie(vcpu)

    def vcpu_unblock(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vcpu_unblock: clear PROG_BLOCK_SIE."""
        atomic_andnot(PROG_BLOCK_SIE, vcpu.arch.sie_block.prog20)

    def gmap_notifier(self, kvm: Kvm, page: int) -> None:
        """kvm_gmap_notifier: sync REFRESH_GUEST_PREFIX on every vCPU whose prefix
        pages intersect the range (here: whose prefix is ``page``)."""
        for vcpu in self.prefix_users(kvm, page):
            self.sync_request(REFRESH_GUEST_PREFIX, vcpu)

    @staticmethod
    def prefix_users(kvm: Kvm, page: int) -> list[KvmVcpu]:
        """kvm_for_each_vcpu ... if the prefix (kvm_s390_get_prefix) matches."""
        return [v for v in kvm.vcpus if READ_ONCE(v.arch.sie_block.prefix) == page]

    # --- IBS and start/stop (kvm-s390.c) ----------------------------------------------------

    def ibs_enabled(self, vcpu: KvmVcpu) -> bool:
        return bool(READ_ONCE(vcpu.arch.sie_block.cpuflags) & CPUSTAT_IBS)

    def disable_ibs_on_vcpu(self, vcpu: KvmVcpu) -> None:
        """__disable_ibs_on_vcpu: drop a pending ENABLE_IBS, sync DISABLE_IBS."""
        check_request(ENABLE_IBS, vcpu)
        self.sync_request(DISABLE_IBS, vcpu)

    def disable_ibs_on_all_vcpus(self, kvm: Kvm) -> None:
        """__disable_ibs_on_all_vcpus."""
        for vcpu in kvm.vcpus:
            self.disable_ibs_on_vcpu(vcpu)

    def enable_ibs_on_vcpu(self, vcpu: KvmVcpu) -> None:
        """__enable_ibs_on_vcpu (sclp.has_ibs): drop a pending DISABLE_IBS, sync
        ENABLE_IBS."""
        check_request(DISABLE_IBS, vcpu)
        self.sync_request(ENABLE_IBS, vcpu)

    @staticmethod
    def is_vcpu_stopped(vcpu: KvmVcpu) -> bool:
        return bool(READ_ONCE(vcpu.arch.sie_block.cpuflags) & CPUSTAT_STOPPED)

    def vcpu_start(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vcpu_start: the only started vCPU gets IBS, a second one turns it
        off everywhere; then leave STOPPED and flush the TLB (local request)."""
        if not self.is_vcpu_stopped(vcpu):
            return
        spin_lock(self.start_stop_lock)
        started = sum(not self.is_vcpu_stopped(v) for v in vcpu.kvm.vcpus)
        if started == 0:
            self.enable_ibs_on_vcpu(vcpu)
        elif started == 1:
            self.disable_ibs_on_all_vcpus(vcpu.kvm)
        atomic_andnot(CPUSTAT_STOPPED, vcpu.arch.sie_block.cpuflags)
        make_request(TLB_FLUSH, vcpu)  # another vCPU may have used IBS meanwhile
        spin_unlock(self.start_stop_lock)

    def vcpu_stop(self, vcpu: KvmVcpu) -> None:
        """kvm_s390_vcpu_stop: STOPPED, IBS off here; a last started vCPU gets IBS."""
        if self.is_vcpu_stopped(vcpu):
            return
        spin_lock(self.start_stop_lock)
        atomic_or(CPUSTAT_STOPPED, vcpu.arch.sie_block.cpuflags)
        self.disable_ibs_on_vcpu(vcpu)
        started = [v for v in vcpu.kvm.vcpus if not self.is_vcpu_stopped(v)]
        if len(started) == 1:
            self.enable_ibs_on_vcpu(started[0])
        spin_unlock(self.start_stop_lock)

    # --- kvm-s390.h: set_prefix -----------------------------------------------------------

    def set_prefix(self, vcpu: KvmVcpu, page: int) -> None:
        """kvm_s390_set_prefix: new prefix, then local TLB_FLUSH + REFRESH_GUEST_PREFIX
        requests (no kick: it runs on the vCPU itself, outside SIE)."""
        WRITE_ONCE(vcpu.arch.sie_block.prefix, page)
        vcpu.arch.tlb_stale = True  # the guest TLB may still map the old prefix
        make_request(TLB_FLUSH, vcpu)
        make_request(REFRESH_GUEST_PREFIX, vcpu)

    def gmap_mprotect_notify(self, vcpu: KvmVcpu) -> int:
        """kvm_s390_mprotect_notify_prefix (2025; before: gmap_mprotect_notify(prefix,
        2 pages, PROT_WRITE)): fault the prefix in, writable, and arm its notifier,
        under the page-table lock. 0 or -EAGAIN."""
        page = READ_ONCE(vcpu.arch.sie_block.prefix)  # kvm_s390_get_prefix
        ptl = self.gmap.ptl(page)
        spin_lock(ptl)
        if self.failures_left > 0 and choose(2):
            self.failures_left -= 1
            spin_unlock(ptl)
            return _ERR_AGAIN
        self.gmap.pages[page].store(PAGE_PROTECTED)  # faulted in, protected, armed
        spin_unlock(ptl)
        return 0

    # --- the vCPU thread: kvm_arch_vcpu_ioctl_run -> __vcpu_run --------------------------------

    def vcpu_run(self, vcpu: KvmVcpu, entries: int | None = None) -> None:
        """The inner loop of __vcpu_run: vcpu_pre_run, sie64a, vcpu_post_run.

        A failed request handler (rc) ends KVM_RUN; userspace calls it again, modelled
        as the next round. A vCPU that stopped itself returns to userspace, which does
        not run a stopped vCPU: the thread parks. ``entries`` bounds the rounds.
        """
        a: S390VcpuArch = vcpu.arch
        rounds = 0
        resume = a.in_sie_at_start
        while entries is None or rounds < entries:
            rounds += 1
            if not resume:
                self.inner_loop_top(vcpu)
                if self.vcpu_pre_run(vcpu):
                    continue
                if not self.before_sie(vcpu):
                    continue
            exit_reason = self.sie64a(vcpu, resume=resume)
            resume = False
            self.after_sie(vcpu)
            if exit_reason == EXIT_INSTRUCTION and self.vcpu_post_run(vcpu):
                break
            if exit_reason == EXIT_BLOCKED:
                self.wait_while_blocked(vcpu)
        a.parked.store(1)  # observation
        a.cpu.idle()

    def inner_loop_top(self, vcpu: KvmVcpu) -> None:
        """Top of an inner-loop round. Nothing on s390 (vcpu->mode is not used)."""

    def vcpu_pre_run(self, vcpu: KvmVcpu) -> int:
        """vcpu_pre_run: deliver interrupts (which clears STOP_INT), handle requests."""
        # kvm_s390_deliver_pending_interrupts -> __reset_intercept_indicators clears
        # STOP_INT with an atomic_andnot. Modelled as "if set, clear": the same values,
        # and the full ordering of the RMW is supplied by the atomic_andnot of
        # PROG_REQUEST that follows before any load (a no-op RMW would only add
        # conflicts with every reader of cpuflags).
        cpuflags = vcpu.arch.sie_block.cpuflags
        if READ_ONCE(cpuflags) & CPUSTAT_STOP_INT:
            atomic_andnot(CPUSTAT_STOP_INT, cpuflags)
        return self.handle_requests(vcpu)

    def handle_requests(self, vcpu: KvmVcpu) -> int:  # type: ignore[override]
        """kvm_s390_handle_requests: clear PROG_REQUEST, then handle requests, retry.

        Returns 0, or the error of a failed prefix re-arm (the request is made again).
        Each pass tests only the requests that were pending when it read
        vcpu->requests (the kernel tests each one with kvm_check_request): a request made
        after that read is handled one pass, or one sie64a, later -- its maker set
        PROG_REQUEST after the request, so sie64a comes back here first.
        """
        kvm = vcpu.kvm
        a: S390VcpuArch = vcpu.arch
        while True:  # retry:
            self.request_handled(vcpu)
            pending = READ_ONCE(vcpu.requests)  # kvm_request_pending
            if not pending:
                return 0
            if kvm.on_requests_seen is not None:
                kvm.on_requests_seen(vcpu, pending)
            handled = None
            for req in (REFRESH_GUEST_PREFIX, TLB_FLUSH, ENABLE_IBS, DISABLE_IBS,
                        ICPT_OPEREXC, START_MIGRATION, STOP_MIGRATION):
                if pending & (1 << req.number) and check_request(req, vcpu):
                    handled = req
                    break
            if handled is None:
                if pending & (1 << VSIE_RESTART.number):
                    clear_request(VSIE_RESTART, vcpu)  # nothing to do, just clear it
                return 0
            vcpu.stat.requests_handled += 1
            if kvm.on_request is not None:
                kvm.on_request(vcpu, handled)
            if handled is REFRESH_GUEST_PREFIX:
                rc = self.gmap_mprotect_notify(vcpu)
                if rc:
                    make_request(REFRESH_GUEST_PREFIX, vcpu)
                    return rc
            elif handled is TLB_FLUSH:
                a.sie_block.ihcpu = 0xFFFF  # the next SIE entry flushes the guest TLB
            elif handled is ENABLE_IBS:
                if not self.ibs_enabled(vcpu):
                    atomic_or(CPUSTAT_IBS, a.sie_block.cpuflags)
            elif handled is DISABLE_IBS:
                if self.ibs_enabled(vcpu):
                    atomic_andnot(CPUSTAT_IBS, a.sie_block.cpuflags)
            elif handled is ICPT_OPEREXC:
                a.ictl_operexc = True
            elif handled is START_MIGRATION:
                a.cmma = False
            elif handled is STOP_MIGRATION:
                a.cmma = True

    def before_sie(self, vcpu: KvmVcpu) -> bool:
        """Between vcpu_pre_run and sie64a, interrupts and preemption enabled.

        A pending host interrupt is taken here (it only leaves SIE if it arrives
        inside sie64a); the thread may be preempted here. Returns whether to go on to
        sie64a (variants with a last check say no).
        """
        if self.models_preemption:
            self.preempt_point(vcpu)
        if self.uses_ipis:
            vcpu.arch.cpu.local_irq_enable()  # interrupts are on: a pending IPI is taken
        return True

    def after_sie(self, vcpu: KvmVcpu) -> None:
        """After sie64a: nothing (interrupts stayed enabled)."""

    def preempt_point(self, vcpu: KvmVcpu) -> None:
        """The vCPU thread may be preempted here and resume on another host CPU.

        With interrupts and preemption enabled, ``need_resched`` on the way to
        ``sie64a`` (or an interrupt's return path) can schedule: schedule() is a full
        barrier; while the thread is off its CPU, another task runs there with
        interrupts on and takes the IPIs sent to that CPU; the vCPU thread comes back
        on a spare CPU and kvm_sched_in -> kvm_arch_vcpu_load updates vcpu->cpu. Once
        per vCPU per run (a budget keeps the space small); being preempted without
        migrating is covered by the interrupt window that follows.
        """
        a: S390VcpuArch = vcpu.arch
        if a.preemptions <= 0 or a.spare_cpu is None or not choose(2):
            return
        a.preemptions -= 1
        smp_mb()  # schedule()
        old = a.cpu
        spawn(old.idle, name=f"cpu{old.cpu_id}.other", daemon=True)
        a.cpu = a.spare_cpu
        WRITE_ONCE(vcpu.cpu, a.cpu.cpu_id)  # kvm_arch_vcpu_load: vcpu->cpu = cpu

    def sie64a(self, vcpu: KvmVcpu, resume: bool = False) -> str:
        """entry.S sie64a: PROG_IN_SIE; skip SIE if PROG_REQUEST|PROG_BLOCK_SIE; SIE;
        clear PROG_IN_SIE. ``resume``: the thread starts here, inside SIE."""
        a: S390VcpuArch = vcpu.arch
        sie = a.sie_block
        if resume:
            exit_reason = self.run_guest(vcpu)
            WRITE_ONCE(sie.prog0c, 0)  # ni: "no longer in SIE"
            return exit_reason
        WRITE_ONCE(sie.prog0c, PROG_IN_SIE)  # oi: "we are going into SIE now"
        prog20 = READ_ONCE(sie.prog20)
        if prog20 & (PROG_REQUEST | PROG_BLOCK_SIE):  # tm: "last exit..."
            exit_reason = EXIT_SKIPPED if prog20 & PROG_REQUEST else EXIT_BLOCKED
            vcpu.stat.entry_aborts += 1
            vcpu.stat.last_exit = "aborted"
        else:
            exit_reason = self.sie(vcpu)
        WRITE_ONCE(sie.prog0c, 0)  # ni: "no longer in SIE" (also done by SIEEXIT)
        return exit_reason

    def _interrupt_pending(self, vcpu: KvmVcpu) -> bool:
        return self.uses_ipis and vcpu.arch.cpu.ipi_pending()

    def sie(self, vcpu: KvmVcpu) -> str:
        """The SIE instruction (hardware): run the guest until STOP_INT or an interrupt.

        SIE serializes; a STOP_INT or interrupt already pending at entry, or a
        scripted intercepting instruction, ends it before the guest runs freely.
        """
        a: S390VcpuArch = vcpu.arch
        sie = a.sie_block
        kvm = vcpu.kvm
        if self.sie_serializes:
            fence("mb")
        if READ_ONCE(sie.cpuflags) & CPUSTAT_STOP_INT:
            vcpu.stat.last_exit = "aborted"
            return EXIT_STOP_INTERCEPT
        if self._interrupt_pending(vcpu):
            self._take_interrupt(vcpu)
            vcpu.stat.last_exit = "aborted"
            return EXIT_INTERRUPT
        if sie.ihcpu == 0xFFFF:  # the guest TLB is flushed on this entry
            a.tlb_stale = False
            sie.ihcpu = a.cpu.cpu_id
        a.sie_running.store(SIE_ENTERED)  # observation
        vcpu.stat.guest_entries += 1
        if kvm.on_guest_entry is not None:
            kvm.on_guest_entry(vcpu)
        if a.guest_program:
            a.sie_running.store(SIE_OUT)  # observation
            vcpu.stat.last_exit = "intercept"
            return EXIT_INSTRUCTION
        a.sie_running.store(SIE_GUEST)  # observation: runs until STOP_INT/interrupt
        return self.run_guest(vcpu)

    def run_guest(self, vcpu: KvmVcpu) -> str:
        """Inside SIE: the guest runs until CPUSTAT_STOP_INT or a host interrupt."""
        a: S390VcpuArch = vcpu.arch
        sie = a.sie_block
        wait_until(lambda: READ_ONCE(sie.cpuflags) & CPUSTAT_STOP_INT
                   or self._interrupt_pending(vcpu))
        exit_reason = EXIT_STOP_INTERCEPT
        if self._interrupt_pending(vcpu):
            exit_reason = EXIT_INTERRUPT
        vcpu.stat.irq_exits += 1
        a.sie_running.store(SIE_OUT)  # observation
        vcpu.stat.last_exit = "irq"
        if exit_reason == EXIT_INTERRUPT:
            self._take_interrupt(vcpu)
        return exit_reason

    def _take_interrupt(self, vcpu: KvmVcpu) -> None:
        """The host interrupt that ended SIE is handled (SIEEXIT, then the handler)."""
        a: S390VcpuArch = vcpu.arch
        if self.uses_ipis and not a.cpu.irqs_disabled:
            a.cpu.local_irq_enable()

    def vcpu_post_run(self, vcpu: KvmVcpu) -> bool:
        """vcpu_post_run for a scripted intercept: SET PREFIX (handle_set_prefix ->
        kvm_s390_set_prefix) or SIGP STOP on itself (kvm_s390_vcpu_stop). Returns True
        if the vCPU stopped."""
        insn = vcpu.arch.guest_program.pop(0)
        if insn[0] == "spx":
            self.set_prefix(vcpu, insn[1])
            return False
        if insn[0] == "sigp-stop":
            self.vcpu_stop(vcpu)
            return True
        raise ValueError(f"unknown scripted guest instruction {insn!r}")

    def wait_while_blocked(self, vcpu: KvmVcpu) -> None:
        """sie64a skipped SIE. If only PROG_BLOCK_SIE is set the kernel keeps looping
        (pre_run, sie64a skip, ...) until it is cleared or a request comes: modelled
        as a wait on the cells that loop reads."""
        a: S390VcpuArch = vcpu.arch

        def unblocked_or_request() -> bool:
            prog20 = READ_ONCE(a.sie_block.prog20)
            return not prog20 & PROG_BLOCK_SIE or bool(prog20 & PROG_REQUEST) \
                or bool(READ_ONCE(vcpu.requests))

        wait_until(unblocked_or_request)


# === The seed's proposals and historical variants ========================================
# (kept here so that every s390 protocol reads against the same run loop)


class S390xUnified(S390xArch):
    """Seed proposal 1: s390 code calls the unified interface of vcpureq.common.

    ``set_sync_request`` / ``set_sync_request_many`` (kick all, then wait for all) with
    the three callbacks (pre_announce = PROG_REQUEST, kick = STOP_INT + vSIE kick,
    in_guest = PROG_IN_SIE) and ``request_handled`` = clear PROG_REQUEST;
    ``set_request`` where no sync is needed (ENABLE_IBS, common code's kicks). The
    common wait ends when the vCPU is out of SIE *or* consumed the request, so it
    needs no host timer tick.
    """

    name = "s390x-unified"
    host_tick = False

    def sync_request(self, req: Request, vcpu: KvmVcpu) -> None:
        set_sync_request(req, vcpu)

    def sync_request_broadcast(self, kvm: Kvm, req: Request) -> None:
        set_sync_request_many(req, kvm.vcpus)

    def gmap_notifier(self, kvm: Kvm, page: int) -> None:
        users = self.prefix_users(kvm, page)
        if users:
            set_sync_request_many(REFRESH_GUEST_PREFIX, users)

    def async_request(self, req: Request, vcpu: KvmVcpu) -> None:
        set_request(req, vcpu)

    def disable_ibs_on_all_vcpus(self, kvm: Kvm) -> None:
        for vcpu in kvm.vcpus:
            check_request(ENABLE_IBS, vcpu)
        set_sync_request_many(DISABLE_IBS, kvm.vcpus)

    def enable_ibs_on_vcpu(self, vcpu: KvmVcpu) -> None:
        check_request(DISABLE_IBS, vcpu)
        set_request(ENABLE_IBS, vcpu)  # "doesn't strictly need" a sync


class S390xCommonKick(S390xArch):
    """Seed proposal 2: common kvm_vcpu_kick / kvm_vcpu_wake_up on s390, with
    ``vcpu->mode = IN_GUEST_MODE`` for the whole inner loop; s390's own sync requests
    stay where they are needed (prefix, IBS, s390 broadcasts).

    The mode is published at the top of every inner-loop round with a full barrier
    (smp_store_mb, so the request check that follows pairs with the kicker's cmpxchg
    as in vcpu-requests.rst), and kvm_arch_vcpu_should_kick is the common cmpxchg.
    Interrupts and preemption stay enabled up to SIE entry, as in __vcpu_run: an IPI
    that lands between the request check and sie64a is taken there and does not keep
    the vCPU out of SIE. (The literal reading -- publish IN_GUEST_MODE once, before
    the loop -- is weaker still: after the first kick the mode stays EXITING_GUEST_MODE
    and no later kick sends an IPI.)
    """

    name = "s390x-common-kick"
    uses_ipis = True
    models_preemption = True

    def should_kick(self, vcpu: KvmVcpu) -> bool:
        return vcpu_exiting_guest_mode(vcpu) == IN_GUEST_MODE

    def inner_loop_top(self, vcpu: KvmVcpu) -> None:
        smp_store_mb(vcpu.mode, IN_GUEST_MODE)

    def started_in_sie(self, vcpu: KvmVcpu) -> None:
        vcpu.mode = Atomic(IN_GUEST_MODE, name=f"vcpu{vcpu.vcpu_id}.mode")


class S390xCommonKickIrqOff(S390xCommonKick):
    """Proposal 2 plus a last check with interrupts off, entered into SIE -- but still
    ``vcpu->mode = IN_GUEST_MODE`` for the whole inner loop.

    After the requests, disable interrupts (which also disables preemption), test
    ``mode == EXITING_GUEST_MODE || kvm_request_pending()`` and go round again if
    either holds; otherwise sie64a with interrupts still off, SIE entry enabling them
    (an IPI pending at entry leaves SIE at once: the shape of the 2025 change that
    moved s390's interrupt enabling into the SIE entry code); enable them after SIE.
    The mode's full barrier is at the top of the round, *before* the point where the
    thread can be preempted and migrated: nothing in the protocol orders the new
    ``vcpu->cpu`` (written by kvm_sched_in -> kvm_arch_vcpu_load) before the last
    check's load of the requests, so under TSO a kicker can see IN_GUEST_MODE and the
    old CPU. (On a real s390 a preemption in that window comes from an interrupt, whose
    return, LPSWE, serializes and would drain the store: the variant is then correct
    by an ordering of the scheduler's return path that KVM does not own or document.
    The model does not assume it; SC, which has no such window, verifies the variant.)
    """

    name = "s390x-common-kick-irqoff"
    check_models = ("sc", "tso")
    buggy_under = ("tso", "pso")

    def before_sie(self, vcpu: KvmVcpu) -> bool:
        if self.models_preemption:
            self.preempt_point(vcpu)
        cpu = vcpu.arch.cpu
        cpu.local_irq_disable()
        if READ_ONCE(vcpu.mode) == EXITING_GUEST_MODE or request_pending(vcpu):
            cpu.local_irq_enable()
            return False
        return True

    def after_sie(self, vcpu: KvmVcpu) -> None:
        vcpu.arch.cpu.local_irq_enable()


class S390xGuestModeAtEntry(S390xCommonKick):
    """What makes common kicks correct on s390: vcpu->mode around SIE entry only.

    vcpu-requests.rst's entry moved into __vcpu_run: interrupts off (so no preemption,
    no migration), ``smp_store_mb(mode, IN_GUEST_MODE)``, then the last check of
    ``mode == EXITING_GUEST_MODE || kvm_request_pending()``, sie64a with SIE entry
    enabling interrupts, and after SIE ``mode = OUTSIDE_GUEST_MODE``, smp_wmb,
    interrupts on. IN_GUEST_MODE no longer covers the whole inner loop, so a kicker
    that sees it also sees the vCPU's current ``vcpu->cpu``.
    """

    name = "s390x-guest-mode-at-entry"

    def inner_loop_top(self, vcpu: KvmVcpu) -> None:
        pass

    def before_sie(self, vcpu: KvmVcpu) -> bool:
        if self.models_preemption:
            self.preempt_point(vcpu)
        cpu = vcpu.arch.cpu
        cpu.local_irq_disable()
        smp_store_mb(vcpu.mode, IN_GUEST_MODE)
        if READ_ONCE(vcpu.mode) == EXITING_GUEST_MODE or request_pending(vcpu):
            WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
            smp_wmb()
            cpu.local_irq_enable()
            return False
        return True

    def after_sie(self, vcpu: KvmVcpu) -> None:
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        smp_wmb()
        vcpu.arch.cpu.local_irq_enable()


class S390xMakeAllCpusRequest(S390xArch):
    """s390 sync broadcasts through common kvm_make_all_cpus_request.

    On s390 vcpu->mode stays OUTSIDE_GUEST_MODE, so kvm_request_needs_ipi is false for
    every vCPU: no IPI, no wait, and the call returns while guests run with the
    request pending. (Why s390 has kvm_s390_sync_request_broadcast.)
    """

    name = "s390x-make-all-cpus-request"

    def sync_request_broadcast(self, kvm: Kvm, req: Request) -> None:
        make_all_cpus_request(kvm, req)


class S390xRequestAfterBlock(S390xArch):
    """Historical (PROTOCOL.md section 9, "s390 2015"): the request is set after the
    vCPU was kicked out of SIE with PROG_REQUEST (kvm_s390_vcpu_request first,
    kvm_make_request second). The vCPU can clear PROG_REQUEST, find no request and
    enter SIE before the request is set; nothing kicks it again."""

    name = "s390x-request-after-block"

    def sync_request(self, req: Request, vcpu: KvmVcpu) -> None:
        self.vcpu_request(vcpu)
        make_request(req, vcpu)


class S390xAsyncPrefix(S390xArch):
    """The gmap notifier with a plain, IPI-style kick: make REFRESH_GUEST_PREFIX and
    send the vCPU's CPU an interrupt, without waiting. The interrupt makes SIE exit,
    but only eventually: the notifier returns, and memory management unmaps the page
    while the guest may still run on it ("a plain kick would be too late")."""

    name = "s390x-async-prefix"
    uses_ipis = True

    def gmap_notifier(self, kvm: Kvm, page: int) -> None:
        for vcpu in self.prefix_users(kvm, page):
            make_request(REFRESH_GUEST_PREFIX, vcpu)
            kvm.host.smp_send_reschedule(READ_ONCE(vcpu.cpu))


class S390xNoHostTick(S390xArch):
    """The kernel's exit_sie without host timer interrupts (e.g. an isolated nohz_full
    CPU, a guest that never intercepts): the poll of PROG_IN_SIE can miss the short
    out-of-SIE window, and then spins until an unrelated SIE exit that may not come."""

    name = "s390x-no-host-tick"
    host_tick = False


class S390xSieNotSerializing(S390xArch):
    """Hypothetical: SIE does not serialize before it tests STOP_INT. Under TSO the
    ``oi PROG0C`` store of sie64a may still sit in the store buffer when the requester
    polls PROG_IN_SIE, and the ``tm PROG20`` load and SIE's STOP_INT test may read the
    values from before the request: the guest runs after the sync request returned.
    Shows which ordering the s390 protocol relies on; not a claim about hardware."""

    name = "s390x-sie-not-serializing"
    sie_serializes = False
    buggy_under = ("tso", "pso")
    check_models = ("sc", "tso")


S390X_ARCHES: Sequence[type[S390xArch]] = (
    S390xArch,
    S390xUnified,
    S390xCommonKick,
    S390xCommonKickIrqOff,
    S390xGuestModeAtEntry,
    S390xMakeAllCpusRequest,
    S390xRequestAfterBlock,
    S390xAsyncPrefix,
    S390xNoHostTick,
    S390xSieNotSerializing,
)
