"""The KVM_RUN loop shared by the vcpu->mode architectures (x86, arm64, ppc64) on the
simulated host of :mod:`vcpureq.hw`.

:class:`RunLoopArch` is the part the three architectures have in common; each one writes
its own entry (``vcpu_enter_guest``: x86 ``vcpu_enter_guest``, arm64 one round of
``kvm_arch_vcpu_ioctl_run``, powerpc ``kvmppc_prepare_to_enter`` + entry) beside the
kernel function it models. Common here:

- the vCPU thread (``vcpu_run``): every round starts at a **preemption point**
  (IRQs and preemption on: a pending IPI may be taken, and the thread may be preempted
  and migrate if the scenario's :class:`~vcpureq.hw.sched.MigrationPlan` allows it, with
  ``vcpu_put``/``vcpu_load`` as kvm_sched_out/kvm_sched_in call them), then any host
  work queued for the vCPU (an exit to handle, e.g. an x86 page fault with a lockless
  shadow-page-table walk), then either **halting** (a halted vCPU blocks in
  kvm_vcpu_block until it is runnable: x86 ``vcpu_block``, arm64 ``kvm_vcpu_wfi``, ppc
  book3s PR ``kvm_vcpu_halt`` for H_CEDE) or one entry attempt;
- the **request block** (``handle_requests``): every pending request is consumed with
  check_request, then handled by the architecture (``handle_request``);
- **guest mode** (``guest_run``) lasts until an IPI reaches the vCPU's CPU or, within
  the budget a scenario allows (``natural_exits``: ``{vcpu index: exits}``, opt-in), the
  guest exits on its own (one ``choose(2)`` per entry while budget is left);
- a guest **interrupt** line per vCPU (``VcpuState.irq``: x86 the local APIC's IRR,
  arm64 the vGIC's ap_list, powerpc ``pending_exceptions``): an injector queues it and
  notifies the vCPU the architecture's way (``deliver_interrupt``); the vCPU moves it
  into the guest's state on its way in (``inject_pending_irq``).

``vcpu.cpu`` is the CPU the vCPU is loaded on (common code reads it to aim IPIs);
``VcpuState.task.cpu`` is the CPU its thread runs on (hardware truth).

The end of the file is a proposed fix (not kernel code) for the kernel finding on
kvm_make_request_and_kick: :func:`make_request_and_kick_wait_exiting`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from vcpureq.arch.base import Arch
from vcpureq.arch.generic import EXIT_ABORTED, EXIT_IRQ, EXIT_VM_DEAD
from vcpureq.common import (
    OUTSIDE_GUEST_MODE,
    make_request,
    make_request_and_kick,
    vcpu_block,
    vcpu_exiting_guest_mode,
    vcpu_kick,
    vcpu_wake_up,
)
from vcpureq.hw import Host, HostCpu, MigrationPlan, Task
from vcpureq.model import Atomic, choose
from vcpureq.model.kernel import READ_ONCE, xchg
from vcpureq.requests import TLB_FLUSH, Request

if TYPE_CHECKING:
    from vcpureq.common import KvmVcpu

__all__ = [
    "RunLoopArch",
    "KickWaitExiting",
    "make_request_and_kick_wait_exiting",
    "VcpuState",
    "EXIT_ABORTED",
    "EXIT_IRQ",
    "EXIT_NATURAL",
    "EXIT_VM_DEAD",
]

#: the guest left on its own (HLT, MMIO, timer, ...), not because of an IPI
EXIT_NATURAL = "natural"

HostWork = Callable[["KvmVcpu"], None]


class VcpuState:
    """struct kvm_vcpu_arch, the fields the run loops share (architectures add theirs).

    ``irq`` is shared; the rest is private to the vCPU thread (``halted`` and ``work``
    are set up by the scenario before the thread starts).
    """

    def __init__(self, vcpu: KvmVcpu, task: Task) -> None:
        self.task = task
        #: a guest interrupt is queued (x86 IRR, arm64 vGIC ap_list, ppc
        #: pending_exceptions): set by injectors, taken by the vCPU on its way in
        self.irq = Atomic(0, name=f"vcpu{vcpu.vcpu_id}.irq")
        self.injected = 0  # interrupts given to the guest
        self.halted = False  # mp_state HALTED (the guest executed HLT / WFI)
        self.asleep = False  # halted and already asleep in kvm_vcpu_block at the start
        self.work: list[HostWork] = []  # host-side exit handling still to do
        self.natural_exits_left = 0  # natural exits the guest may still take

    def __repr__(self) -> str:
        return f"<VcpuState halted={self.halted} task={self.task}>"


class RunLoopArch(Arch):
    """The KVM_RUN loop of the vcpu->mode architectures on the simulated host."""

    name = "run-loop"
    features: frozenset[str] = frozenset({"block", "interrupts", "migration"})
    #: which vCPU threads may migrate (a scenario sets it on its instance)
    migration: MigrationPlan = MigrationPlan()
    #: natural exits each vCPU's guest may take, ``{vcpu index: exits}`` (a scenario
    #: sets it on its instance; default none: the guest leaves only for an IPI)
    natural_exits: Mapping[int, int] = {}
    #: take a pending IPI at the preemption point at the top of every round (the CPU
    #: runs with IRQs on there). Off by default: the IPI is then taken at the next
    #: local_irq_enable (after the next entry attempt; a guest entry with an IPI
    #: pending exits at once), so an acknowledgement can come later than on hardware,
    #: never earlier; on, the explorer also sees the earlier acknowledgements, for
    #: about a third more executions.
    irq_window_at_resched = False
    #: the WAIT request a synchronous kick uses in the kick-wait scenarios
    wait_kick_request: Request = TLB_FLUSH

    # --- construction ----------------------------------------------------------------

    def create_host(self, nr_vcpus: int) -> Host:
        return Host(nr_vcpus, migration=self.migration)

    def vcpu_create(self, vcpu: KvmVcpu) -> Any:
        return self.init_vcpu_state(
            VcpuState(vcpu, vcpu.kvm.host.sched.task_of(vcpu.vcpu_idx)), vcpu)

    def init_vcpu_state(self, st: VcpuState, vcpu: KvmVcpu) -> VcpuState:
        """Per-run settings every architecture's kvm_arch_vcpu_create applies."""
        st.natural_exits_left = self.natural_exits.get(vcpu.vcpu_idx, 0)
        return st

    # --- the vCPU thread ---------------------------------------------------------------

    def vcpu_run(self, vcpu: KvmVcpu, entries: int | None = None) -> None:
        """The vCPU thread (KVM_RUN): round after round until the guest runs for good.

        ``entries`` bounds the rounds; after them the thread's CPU idles with IRQs on.
        """
        st: VcpuState = vcpu.arch
        rounds = 0
        while entries is None or rounds < entries:
            rounds += 1
            self.preemption_point(vcpu)
            while st.work:
                st.work.pop(0)(vcpu)
            if st.halted:
                self.vcpu_halt(vcpu)
                continue
            if self.vcpu_enter_guest(vcpu) == EXIT_VM_DEAD:
                break
        st.task.cpu.idle()

    def preemption_point(self, vcpu: KvmVcpu) -> None:
        """The top of a round: IRQs and preemption are enabled (x86 vcpu_run's
        kvm_xfer_to_guest_mode_handle_work, arm64 cond_resched, ppc need_resched)."""
        task: Task = vcpu.arch.task
        if self.irq_window_at_resched:
            task.cpu.irq_window()
        vcpu.kvm.host.sched.cond_resched(
            task, lambda: self.vcpu_put(vcpu), lambda cpu: self.vcpu_load(vcpu, cpu)
        )

    def vcpu_halt(self, vcpu: KvmVcpu) -> None:
        """kvm_vcpu_halt -> kvm_vcpu_block until the vCPU is runnable, then RUNNABLE.
        (Halt polling is not modelled; a wake by KVM_REQ_UNBLOCK alone also ends the
        halt here.)"""
        st: VcpuState = vcpu.arch
        vcpu_block(vcpu, asleep=st.asleep)
        st.asleep = False
        st.halted = False

    def vcpu_enter_guest(self, vcpu: KvmVcpu) -> str:
        """One entry attempt; returns EXIT_ABORTED, EXIT_IRQ or EXIT_VM_DEAD."""
        raise NotImplementedError

    def cpu_of(self, vcpu: KvmVcpu) -> HostCpu:
        """The CPU the vCPU thread runs on (only the thread itself may ask)."""
        cpu: HostCpu = vcpu.arch.task.cpu
        return cpu

    def guest_run(self, vcpu: KvmVcpu, cpu: HostCpu) -> str:
        """The last check passed, IRQs are off: run the guest until an IPI arrives (or,
        within the natural-exit budget, until the guest exits on its own). Returns
        EXIT_IRQ or EXIT_NATURAL; the caller's exit path then enables IRQs."""
        st: VcpuState = vcpu.arch
        if vcpu.kvm.on_guest_entry is not None:
            vcpu.kvm.on_guest_entry(vcpu)
        vcpu.stat.guest_entries += 1
        natural = st.natural_exits_left > 0 and choose(2) == 1
        if natural:
            st.natural_exits_left -= 1
        if cpu.run_guest(natural_exit=natural):
            vcpu.stat.irq_exits += 1
            vcpu.stat.last_exit = EXIT_IRQ
            return EXIT_IRQ
        vcpu.stat.last_exit = EXIT_NATURAL
        return EXIT_NATURAL

    def entry_aborted(self, vcpu: KvmVcpu) -> str:
        vcpu.stat.entry_aborts += 1
        vcpu.stat.last_exit = EXIT_ABORTED
        return EXIT_ABORTED

    # --- requests: Arch.handle_requests, with each architecture's handle_request ------

    # --- interrupts --------------------------------------------------------------------

    def deliver_interrupt(self, vcpu: KvmVcpu) -> None:
        """Queue a guest interrupt for ``vcpu`` and notify it (an injector's call)."""
        raise NotImplementedError

    def inject_pending_irq(self, vcpu: KvmVcpu) -> None:
        """Move a queued interrupt into the guest's state (the vCPU, on its way in)."""
        st: VcpuState = vcpu.arch
        if READ_ONCE(st.irq):
            if xchg(st.irq, 0):
                st.injected += 1

    def irq_pending(self, vcpu: KvmVcpu) -> bool:
        """Is a guest interrupt queued and not yet given to the guest? (loads only)"""
        return bool(READ_ONCE(vcpu.arch.irq))

    # --- the seed's callbacks and helpers for scenarios --------------------------------

    def make_request_and_kick(self, req: Request, vcpu: KvmVcpu) -> None:
        """A synchronous single-vCPU kick (kvm_make_request_and_kick, 2025)."""
        make_request_and_kick(req, vcpu)


# === a proposed fix for kvm_make_request_and_kick (not kernel code) =====================


def make_request_and_kick_wait_exiting(req: Request, vcpu: KvmVcpu) -> None:
    """kvm_make_request_and_kick that also waits for a vCPU another kicker already moved
    to EXITING_GUEST_MODE (a proposed fix, not kernel code).

    __kvm_vcpu_kick(vcpu, wait=true) acts on ``wait`` only when its own
    kvm_arch_vcpu_should_kick cmpxchg saw IN_GUEST_MODE; after a concurrent
    kvm_vcpu_kick it sees EXITING_GUEST_MODE, sends nothing and returns while the vCPU
    may still run the guest. This version decides as kvm_request_needs_ipi does for
    WAIT broadcasts: IPI (a call-function IPI, waited for) unless the mode was
    OUTSIDE_GUEST_MODE. A plain request keeps kvm_vcpu_kick.
    """
    make_request(req, vcpu)
    if not req.wait:
        vcpu_kick(vcpu)
        return
    if vcpu_wake_up(vcpu):
        return
    if vcpu_exiting_guest_mode(vcpu) != OUTSIDE_GUEST_MODE:
        cpu = int(READ_ONCE(vcpu.cpu))
        host = vcpu.kvm.host
        if 0 <= cpu < host.nr_cpu_ids:
            host.smp_call_function_single(cpu, wait=True)


class KickWaitExiting:
    """Mixin: the architecture's synchronous kick is the proposed fix
    (:func:`make_request_and_kick_wait_exiting`)."""

    def make_request_and_kick(self, req: Request, vcpu: KvmVcpu) -> None:
        make_request_and_kick_wait_exiting(req, vcpu)
