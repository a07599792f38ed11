"""ppc64: kvmppc_prepare_to_enter, book3s HV's fast kick, and the historical bug.

Read beside arch/powerpc/kvm/powerpc.c (``kvmppc_prepare_to_enter``,
``kvm_arch_vcpu_should_kick``, ``kvm_arch_vcpu_runnable``), arch/powerpc/kvm/book3s_hv.c
(``kvmppc_fast_vcpu_kick_hv``, ``kvmppc_ipi_thread``, ``kvmhv_run_single_vcpu``),
arch/powerpc/kvm/book3s_pr.c (``kvmppc_core_vcpu_load_pr``/``_put_pr``) and
arch/powerpc/kvm/book3s.c (``kvmppc_core_queue_external``, ``kvm_vcpu_ioctl_interrupt``).

The model is a composite of the two book3s flavours, each part where the kernel has it:

- entry: ``kvmppc_prepare_to_enter`` (powerpc.c, used by book3s PR and booke): with IRQs
  hard-disabled, loop { ``vcpu->mode = IN_GUEST_MODE``; ``smp_mb()`` ("Reading
  vcpu->requests must happen after setting vcpu->mode, so we don't miss a request
  because the requester sees OUTSIDE_GUEST_MODE and assumes we'll be checking requests
  before next entering the guest (and thus doesn't IPI)"); if a request is pending:
  enable IRQs, ``kvmppc_core_check_requests``, disable IRQs, start over -- *the mode
  stays IN_GUEST_MODE meanwhile*; ``kvmppc_core_prepare_to_enter`` (deliver pending
  exceptions) }, then enter. After the exit, ``kvmppc_handle_exit_pr`` handles it with
  IRQs enabled and, for RESUME_GUEST, calls ``kvmppc_prepare_to_enter`` again: book3s PR
  does *not* write OUTSIDE_GUEST_MODE between exits (only ``kvmppc_vcpu_run_pr``'s
  ``out:`` does, when KVM_RUN returns to userspace), so the mode stays IN_GUEST_MODE (or
  EXITING_GUEST_MODE after a kick) through exit handling and halts (H_CEDE ->
  kvm_vcpu_halt). Mode-based senders therefore IPI a vCPU that is handling an exit or
  halted; its CPU takes the IPI with IRQs on. The model's vCPU threads never return to
  userspace, so their mode leaves OUTSIDE_GUEST_MODE at the first entry for good (except
  when the VM dies).
- ``kvm_arch_vcpu_should_kick`` returns 1: ``kvm_vcpu_kick`` IPIs ``vcpu->cpu`` whatever
  the mode (so a kick alone cannot be lost; only the mode-based broadcast
  ``kvm_make_all_cpus_request`` relies on the mode).
- the kick of the seed's unified interface (callback 2) is book3s HV's
  ``kvmppc_fast_vcpu_kick_hv``: ``rcuwait_wake_up`` (barrier, wake a sleeper), then if
  the vCPU runs on a hardware thread (``vcpu->arch.thread_cpu >= 0``) a doorbell to it
  (``kvmppc_ipi_thread``: ``smp_mb(); msgsnd``), else the reschedule IPI to
  ``vcpu->cpu``. ``thread_cpu`` is set before the barrier that precedes the last check
  and reset after the exit (as kvmhv_run_single_vcpu does: "Orders set cpu/thread_cpu
  vs testing for pending interrupts and doorbells below").
- ``vcpu->cpu``: set by vcpu_load, -1 after vcpu_put (book3s PR).

Memory model: the default is ``"pso"``, not ``"tso"``: POWER keeps neither store->store
nor store->load order without lwsync/sync, so PSO (which adds store->store reordering
to TSO's store->load) is the closer of the two. Both under-approximate POWER (load
reordering, non-multi-copy-atomic stores): a counterexample is real, a verification is
a proof only for the behaviours PSO has.

Variants (PROTOCOL.md section 9), each with the counterexample it must show
(``vcpureq.scenarios.KNOWN_BUGS``):

- ``ppc64-mode-after-check``: the mode set with only smp_wmb after the request check.
- ``ppc64-no-mb-after-mode``: ``vcpu->mode = IN_GUEST_MODE`` without the smp_mb before
  the request check (the missing-barrier bug of every ``vcpu->mode`` architecture).
"""

from __future__ import annotations

from typing import Any

from vcpureq.arch.kvm_run import EXIT_VM_DEAD, RunLoopArch, VcpuState
from vcpureq.common import (
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    KvmVcpu,
    request_pending,
    vcpu_kick,
    vcpu_wake_up,
)
from vcpureq.hw import HostCpu
from vcpureq.model import Atomic
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE, set_bit, smp_mb, smp_wmb

__all__ = [
    "Ppc64Arch",
    "Ppc64VcpuState",
    "Ppc64ModeAfterCheck",
    "Ppc64NoMbAfterMode",
    "PPC64_ARCHES",
]


class Ppc64VcpuState(VcpuState):
    """struct kvm_vcpu_arch: ``irq`` is pending_exceptions, ``thread_cpu`` the hardware
    thread the vCPU runs the guest on (-1: none)."""

    def __init__(self, vcpu: KvmVcpu, task: Any) -> None:
        super().__init__(vcpu, task)
        self.thread_cpu = Atomic(-1, name=f"vcpu{vcpu.vcpu_id}.thread_cpu")


class Ppc64Arch(RunLoopArch):
    """ppc64 (book3s): kvmppc_prepare_to_enter, should_kick always true, HV fast kick."""

    name = "ppc64"
    request_arch = None
    memory_model = "pso"

    def vcpu_create(self, vcpu: KvmVcpu) -> Any:
        return self.init_vcpu_state(
            Ppc64VcpuState(vcpu, vcpu.kvm.host.sched.task_of(vcpu.vcpu_idx)), vcpu)

    # --- hooks -------------------------------------------------------------------------

    def should_kick(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_should_kick (powerpc.c): ``return 1``."""
        return True

    def kick(self, vcpu: KvmVcpu) -> None:
        """kvmppc_fast_vcpu_kick_hv: wake a sleeper; then a doorbell to the vCPU's
        hardware thread if it has one, else the reschedule IPI to vcpu->cpu."""
        vcpu_wake_up(vcpu)  # rcuwait_wake_up (its smp_mb orders the work before the loads)
        thread_cpu = int(READ_ONCE(vcpu.arch.thread_cpu))
        host = vcpu.kvm.host
        if thread_cpu >= 0 and self.ipi_thread(vcpu, thread_cpu):
            return
        cpu = int(READ_ONCE(vcpu.cpu))  # "CPU points to the first thread of the core"
        if 0 <= cpu < host.nr_cpu_ids:
            host.smp_send_reschedule(cpu)

    def ipi_thread(self, vcpu: KvmVcpu, cpu: int) -> bool:
        """kvmppc_ipi_thread on POWER9 (msgsnd can reach any CPU): smp_mb(); msgsnd."""
        smp_mb()
        vcpu.kvm.host.send_doorbell(cpu)
        return True

    def vcpu_load(self, vcpu: KvmVcpu, cpu: HostCpu) -> None:
        """kvmppc_core_vcpu_load_pr: ``vcpu->cpu = smp_processor_id()``."""
        WRITE_ONCE(vcpu.cpu, cpu.cpu_id)

    def vcpu_put(self, vcpu: KvmVcpu) -> None:
        """kvmppc_core_vcpu_put_pr: ``vcpu->cpu = -1``."""
        WRITE_ONCE(vcpu.cpu, -1)

    def vcpu_runnable(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_runnable: pending_exceptions || kvm_request_pending."""
        return self.irq_pending(vcpu) or request_pending(vcpu)

    def deliver_interrupt(self, vcpu: KvmVcpu) -> None:
        """kvm_vcpu_ioctl_interrupt: kvmppc_core_queue_external (set the priority bit
        in pending_exceptions), then kvm_vcpu_kick. No request: should_kick is always
        true, so the IPI goes out whatever the mode."""
        set_bit(0, vcpu.arch.irq)
        vcpu_kick(vcpu)

    # --- the run loop ----------------------------------------------------------------------

    def vcpu_enter_guest(self, vcpu: KvmVcpu) -> str:
        """One entry: kvmppc_prepare_to_enter (kvmppc_vcpu_run_pr, or for RESUME_GUEST
        kvmppc_handle_exit_pr), guest entry (__kvmppc_vcpu_run), exit."""
        st: Ppc64VcpuState = vcpu.arch
        cpu = self.cpu_of(vcpu)
        cpu.local_irq_disable()  # hard_irq_disable()
        WRITE_ONCE(st.thread_cpu, cpu.cpu_id)  # kvmhv_run_single_vcpu: thread_cpu = pcpu
        while True:
            state = self.prepare_to_enter(vcpu, cpu)
            if state == EXIT_VM_DEAD:
                WRITE_ONCE(st.thread_cpu, -1)
                cpu.local_irq_enable()
                WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)  # kvmppc_vcpu_run_pr: out:
                return EXIT_VM_DEAD
            if state == "enter":
                break
            self.entry_aborted(vcpu)
        how = self.guest_run(vcpu, cpu)
        WRITE_ONCE(st.thread_cpu, -1)  # vcpu->arch.thread_cpu = -1 after the exit
        # kvmppc_handle_exit_pr runs with interrupts enabled (the kick's IPI is taken
        # here); the mode stays as it is until the next kvmppc_prepare_to_enter
        cpu.local_irq_enable()
        return how

    def prepare_to_enter(self, vcpu: KvmVcpu, cpu: HostCpu) -> str:
        """One pass of kvmppc_prepare_to_enter's loop (IRQs disabled): "enter", "again"
        (requests were handled, start over) or EXIT_VM_DEAD."""
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)
        smp_mb()
        if request_pending(vcpu):
            return self.check_requests(vcpu, cpu)
        self.inject_pending_irq(vcpu)  # kvmppc_core_prepare_to_enter
        return "enter"

    def check_requests(self, vcpu: KvmVcpu, cpu: HostCpu) -> str:
        """"Make sure we process requests preemptable": IRQs on, kvmppc_core_check_requests,
        IRQs off (the mode is still IN_GUEST_MODE)."""
        cpu.local_irq_enable()
        alive = self.handle_requests(vcpu)
        cpu.local_irq_disable()
        return "again" if alive else EXIT_VM_DEAD


class Ppc64ModeAfterCheck(Ppc64Arch):
    """Broken on purpose: the mode is set, with only an smp_wmb, *after* the request
    check (PROTOCOL.md section 9, the historical powerpc bug; the comment in today's
    kvmppc_prepare_to_enter explains the missed request).

    A requester whose request lands just after the check reads OUTSIDE_GUEST_MODE.
    kvm_vcpu_kick still IPIs (should_kick is 1), but the broadcast
    kvm_make_all_cpus_request decides by the mode (kvm_request_needs_ipi): it sends no
    IPI, and for a WAIT request (a TLB flush) returns while the vCPU enters the guest
    with the request pending. Shows under every model.
    """

    name = "ppc64-mode-after-check"

    def prepare_to_enter(self, vcpu: KvmVcpu, cpu: HostCpu) -> str:
        if request_pending(vcpu):
            return self.check_requests(vcpu, cpu)
        self.inject_pending_irq(vcpu)
        smp_wmb()
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)
        return "enter"


class Ppc64NoMbAfterMode(Ppc64Arch):
    """Broken on purpose: kvmppc_prepare_to_enter without the smp_mb between
    ``vcpu->mode = IN_GUEST_MODE`` and reading vcpu->requests (PROTOCOL.md section 9,
    "Missing full barrier between setting IN_GUEST_MODE and reading requests").

    POWER (and PSO) let the store of the mode wait in the store buffer while the vCPU
    reads no request; a broadcast that makes its request then reads OUTSIDE_GUEST_MODE
    (kvm_request_needs_ipi), sends no IPI, and a WAIT broadcast returns while the vCPU
    enters the guest with the request pending. A kick alone still IPIs (should_kick is
    1). Needs store->load reordering (TSO has it too): checked under ``sc`` (verified)
    and ``pso`` (the lost request).
    """

    name = "ppc64-no-mb-after-mode"
    check_models = ("sc", "pso")
    buggy_under = ("pso",)

    def prepare_to_enter(self, vcpu: KvmVcpu, cpu: HostCpu) -> str:
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)  # no smp_mb()
        if request_pending(vcpu):
            return self.check_requests(vcpu, cpu)
        self.inject_pending_irq(vcpu)
        return "enter"


PPC64_ARCHES: tuple[type[Ppc64Arch], ...] = (Ppc64Arch, Ppc64ModeAfterCheck,
                                              Ppc64NoMbAfterMode)
