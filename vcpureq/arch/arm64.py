"""arm64: kvm_arch_vcpu_ioctl_run, KVM_REQ_SLEEP pause/resume, and their historical bugs.

Read beside arch/arm64/kvm/arm.c (``kvm_arch_vcpu_ioctl_run``, ``check_vcpu_requests``,
``kvm_vcpu_exit_request``, ``kvm_arm_halt_guest``, ``kvm_arm_resume_guest``, the
KVM_REQ_SLEEP handler ``kvm_vcpu_sleep`` -- ``vcpu_req_sleep`` in 5.x --,
``kvm_arch_vcpu_load``/``_put``, ``kvm_arch_vcpu_runnable``), arch/arm64/kvm/vgic/
(``vgic_queue_irq_unlock``, ``kvm_vgic_flush_hwstate``) and virt/kvm/kvm_main.c.

One round of the run loop, as the model runs it:

1. ``check_vcpu_requests``: KVM_REQ_SLEEP first (``kvm_vcpu_sleep``:
   ``rcuwait_wait_event(wait, !power_off && !pause)``, then re-make KVM_REQ_SLEEP if
   still paused), KVM_REQ_IRQ_PENDING is only cleared ("made to guarantee that a VCPU
   sees new virtual interrupts");
2. ``preempt_disable``; ``local_irq_disable``; ``kvm_vgic_flush_hwstate`` (queued
   interrupts go into the list registers; it starts with a lockless ``list_empty`` of
   the ap_list);
3. ``smp_store_mb(vcpu->mode, IN_GUEST_MODE)`` ("Ensure we set mode to IN_GUEST_MODE
   after we disable interrupts and before the final VCPU requests check. See the
   comment in kvm_vcpu_exiting_guest_mode() and Documentation/virt/kvm/
   vcpu-requests.rst");
4. ``kvm_vcpu_exit_request``: ``kvm_request_pending`` (arm64 does *not* read
   ``vcpu->mode`` here: smp_store_mb just overwrote an EXITING_GUEST_MODE, so a kick
   without a request is lost): back out with ``vcpu->mode = OUTSIDE_GUEST_MODE``,
   ``kvm_vgic_sync_hwstate``, ``local_irq_enable``;
5. guest entry; exit: ``vcpu->mode = OUTSIDE_GUEST_MODE`` (no barrier), the vgic/timer
   syncs, ``local_irq_enable`` (the kick IPI is taken here).

``kvm_arch_vcpu_load`` sets ``vcpu->cpu = cpu``, ``kvm_arch_vcpu_put`` sets it to -1.
``kvm_arm_halt_guest``: every vCPU's ``vcpu->arch.pause = true``, then
``kvm_make_all_cpus_request(kvm, KVM_REQ_SLEEP)`` (WAIT|NO_WAKEUP: the caller returns
once every vCPU that was not OUTSIDE_GUEST_MODE took the IPI). ``kvm_arm_resume_guest``:
``pause = false`` and ``rcuwait_wake_up`` per vCPU.

Memory model: the default is ``"pso"`` (SPARC PSO: store->load and store->store
reordering). **PSO under-approximates ARMv8**: ARM also reorders loads with loads and
loads with later stores, and a failed exclusive (the LL/SC of set_bit) orders nothing;
the model cannot show bugs that need those (a missing smp_rmb, acquire or
smp_mb__after_atomic on the reader side). A counterexample under PSO is real on ARM; a
verification under PSO is not a proof for ARM.

Variants, each a historical bug with the counterexample it must show:

- ``arm64-irq-kick-no-request`` (2017): interrupt injection by a kick without a request.
- ``arm64-pause-2017``: the pause flag set just as a vCPU entered the guest.
- ``arm64-swait-active``: the waker reads the waiter without a barrier (lost wakeup).
- ``arm64-no-mb-after-mode``: ``vcpu->mode = IN_GUEST_MODE`` without the full barrier of
  smp_store_mb before the last request check.

and ``arm64-kick-wait-exiting``, the proposed fix for kvm_make_request_and_kick (see
vcpureq/arch/kvm_run.py).
"""

from __future__ import annotations

from typing import Any

from vcpureq.arch.kvm_run import EXIT_VM_DEAD, KickWaitExiting, RunLoopArch, VcpuState
from vcpureq.common import (
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    Kvm,
    KvmVcpu,
    make_all_cpus_request,
    make_request,
    request_pending,
    vcpu_kick,
    vcpu_wake_up,
)
from vcpureq.hw import HostCpu, rcuwait_wait_event
from vcpureq.model import Atomic
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE, set_bit, smp_store_mb
from vcpureq.requests import IRQ_PENDING, REQ_OUTSIDE_GUEST_MODE, SLEEP, Request

__all__ = [
    "Arm64Arch",
    "Arm64VcpuState",
    "Arm64IrqKickNoRequest",
    "Arm64Pause2017",
    "Arm64SwaitActive",
    "Arm64NoMbAfterMode",
    "Arm64KickWaitExiting",
    "ARM64_ARCHES",
]


class Arm64VcpuState(VcpuState):
    """struct kvm_vcpu_arch: ``irq`` is the vGIC ap_list, ``pause`` vcpu->arch.pause."""

    def __init__(self, vcpu: KvmVcpu, task: Any) -> None:
        super().__init__(vcpu, task)
        self.pause = Atomic(0, name=f"vcpu{vcpu.vcpu_id}.pause")
        self.lrs = 0  # interrupts in the list registers, presented at the next entry


class Arm64Arch(RunLoopArch):
    """arm64: kvm_arch_vcpu_ioctl_run on the simulated host; default model PSO (an
    under-approximation of ARMv8, see the module doc)."""

    name = "arm64"
    request_arch = "arm64"
    memory_model = "pso"
    features = RunLoopArch.features | {"pause"}

    def vcpu_create(self, vcpu: KvmVcpu) -> Any:
        return self.init_vcpu_state(
            Arm64VcpuState(vcpu, vcpu.kvm.host.sched.task_of(vcpu.vcpu_idx)), vcpu)

    # --- hooks -------------------------------------------------------------------------

    def vcpu_load(self, vcpu: KvmVcpu, cpu: HostCpu) -> None:
        """kvm_arch_vcpu_load: ``vcpu->cpu = cpu``."""
        WRITE_ONCE(vcpu.cpu, cpu.cpu_id)

    def vcpu_put(self, vcpu: KvmVcpu) -> None:
        """kvm_arch_vcpu_put: ``vcpu->cpu = -1``."""
        WRITE_ONCE(vcpu.cpu, -1)

    def vcpu_runnable(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_runnable: an interrupt pending (kvm_vgic_vcpu_pending_irq) and
        not paused (power_off is not modelled)."""
        st: Arm64VcpuState = vcpu.arch
        return (st.lrs > 0 or self.irq_pending(vcpu)) and not READ_ONCE(st.pause)

    def deliver_interrupt(self, vcpu: KvmVcpu) -> None:
        """vgic_queue_irq_unlock: put the interrupt on the vCPU's ap_list, then
        ``kvm_make_request(KVM_REQ_IRQ_PENDING, vcpu); kvm_vcpu_kick(vcpu)``."""
        set_bit(0, vcpu.arch.irq)  # list_add_tail under ap_list_lock
        make_request(IRQ_PENDING, vcpu)
        vcpu_kick(vcpu)

    def inject_pending_irq(self, vcpu: KvmVcpu) -> None:
        """kvm_vgic_flush_hwstate: a lockless list_empty, then the ap_list into the LRs
        (kept across an aborted entry: kvm_vgic_sync_hwstate folds them back)."""
        st: Arm64VcpuState = vcpu.arch
        before = st.injected
        super().inject_pending_irq(vcpu)
        st.lrs += st.injected - before

    # --- the run loop ----------------------------------------------------------------------

    def check_vcpu_requests(self, vcpu: KvmVcpu) -> bool:
        """check_vcpu_requests (the handlers run in handle_request)."""
        return self.handle_requests(vcpu)

    def handle_request(self, vcpu: KvmVcpu, req: Request) -> None:
        if req == SLEEP:
            self.vcpu_req_sleep(vcpu)
        # KVM_REQ_IRQ_PENDING: nothing, the flush below picks the interrupt up

    def vcpu_req_sleep(self, vcpu: KvmVcpu) -> None:
        """kvm_vcpu_sleep (vcpu_req_sleep): sleep until not paused; if still paused
        (woken by a signal, not modelled) re-make KVM_REQ_SLEEP. (The trailing smp_rmb
        pairs with kvm_psci_vcpu_on, not modelled.)"""
        st: Arm64VcpuState = vcpu.arch

        def not_paused() -> bool:
            return not READ_ONCE(st.pause)

        rcuwait_wait_event(vcpu.wait, st.task, not_paused, what="kvm_vcpu_sleep",
                           observe=not_paused)

    def vcpu_enter_guest(self, vcpu: KvmVcpu) -> str:
        """One round of arch/arm64/kvm/arm.c kvm_arch_vcpu_ioctl_run."""
        if not self.check_vcpu_requests(vcpu):
            return EXIT_VM_DEAD
        cpu = self.cpu_of(vcpu)  # preempt_disable()
        cpu.local_irq_disable()
        self.inject_pending_irq(vcpu)  # kvm_vgic_flush_hwstate
        if not self.enter_guest_mode(vcpu):
            WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)  # then isb(), vgic sync
            cpu.local_irq_enable()
            return self.entry_aborted(vcpu)
        how = self.guest_run(vcpu, cpu)
        vcpu.arch.lrs = 0  # the guest has seen the interrupts in the LRs
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        cpu.local_irq_enable()
        return how

    def enter_guest_mode(self, vcpu: KvmVcpu) -> bool:
        """smp_store_mb(vcpu->mode, IN_GUEST_MODE), then kvm_vcpu_exit_request (a
        pending request). True: enter."""
        smp_store_mb(vcpu.mode, IN_GUEST_MODE)
        return not request_pending(vcpu)

    # --- pause / resume (arch/arm64/kvm/arm.c) ---------------------------------------------

    def halt_guest(self, kvm: Kvm) -> None:
        """kvm_arm_halt_guest: pause every vCPU, then make_all_cpus_request(SLEEP)."""
        for vcpu in kvm.vcpus:
            WRITE_ONCE(vcpu.arch.pause, 1)
        make_all_cpus_request(kvm, SLEEP)

    def resume_guest(self, kvm: Kvm) -> None:
        """kvm_arm_resume_guest: unpause every vCPU and wake it (rcuwait_wake_up)."""
        for vcpu in kvm.vcpus:
            WRITE_ONCE(vcpu.arch.pause, 0)
            vcpu_wake_up(vcpu)


class Arm64IrqKickNoRequest(Arm64Arch):
    """Broken on purpose: a virtual interrupt is injected with a bare kvm_vcpu_kick.

    Before Andrew Jones' 2017 series that moved arm/arm64 to vcpu requests (Linux 4.13:
    "use vcpu requests for irq injection"), vgic_queue_irq_unlock and
    vcpu_interrupt_line queued the interrupt and called kvm_vcpu_kick() without making a
    request. The kick only sends an IPI if its cmpxchg finds IN_GUEST_MODE; a vCPU that
    has already flushed its vGIC state (kvm_vgic_flush_hwstate) but not yet published
    IN_GUEST_MODE is missed: it finds no request at its last check and runs the guest
    without the new interrupt until some unrelated exit (PROTOCOL.md section 2: "a kick
    without a request is almost never correct"). The fix makes KVM_REQ_IRQ_PENDING
    before the kick; the run loop's last check then sees it. Shows under every model.
    """

    name = "arm64-irq-kick-no-request"

    def deliver_interrupt(self, vcpu: KvmVcpu) -> None:
        set_bit(0, vcpu.arch.irq)
        vcpu_kick(vcpu)  # no KVM_REQ_IRQ_PENDING


class Arm64Pause2017(Arm64Arch):
    """Broken on purpose: the pre-4.13 pause protocol ("the pause flag set just as a
    vCPU entered the guest", PROTOCOL.md section 9).

    The run loop checked ``vcpu->arch.pause`` (a plain flag) at the top (``vcpu_sleep``)
    and again with IRQs disabled, and only then wrote ``vcpu->mode = IN_GUEST_MODE``
    (``guest_enter_irqoff(); vcpu->mode = IN_GUEST_MODE;``) with no barrier and no
    request check. kvm_arm_halt_guest set ``pause = true`` and forced an exit with a
    broadcast that IPIs only vCPUs not OUTSIDE_GUEST_MODE and stores no request
    (kvm_make_all_cpus_request of an exit-only request; modelled with
    KVM_REQ_OUTSIDE_GUEST_MODE, which is NO_ACTION|WAIT). A vCPU that read
    ``pause == false`` just before the flag was set still looked OUTSIDE_GUEST_MODE to
    the broadcast, got no IPI, and entered the guest: kvm_arm_halt_guest returned with
    the vCPU running the guest. The 2017 series replaced the flag check by
    KVM_REQ_SLEEP (kvm_make_all_cpus_request(kvm, KVM_REQ_SLEEP)) checked after
    smp_store_mb(mode). Shows under every model.
    """

    name = "arm64-pause-2017"

    def vcpu_enter_guest(self, vcpu: KvmVcpu) -> str:
        st: Arm64VcpuState = vcpu.arch
        if READ_ONCE(st.pause):  # vcpu_sleep(): swait_event_interruptible(!pause)
            self.vcpu_req_sleep(vcpu)
        cpu = self.cpu_of(vcpu)
        cpu.local_irq_disable()
        self.inject_pending_irq(vcpu)
        if READ_ONCE(st.pause):  # "Re-check atomic conditions"
            cpu.local_irq_enable()
            return self.entry_aborted(vcpu)
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)  # after the check, no barrier
        how = self.guest_run(vcpu, cpu)
        st.lrs = 0
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        cpu.local_irq_enable()
        return how

    def halt_guest(self, kvm: Kvm) -> None:
        for vcpu in kvm.vcpus:
            WRITE_ONCE(vcpu.arch.pause, 1)
        make_all_cpus_request(kvm, REQ_OUTSIDE_GUEST_MODE)  # IPI, no request stored


class Arm64SwaitActive(Arm64Arch):
    """Broken on purpose: the waker checks for a waiter without a barrier (lost wakeup).

    Until 2017 kvm_vcpu_wake_up did ``if (swait_active(wqp)) swake_up(wqp)``, and until
    2018 swake_up() itself started with a lockless swait_active() check; Davidlohr
    Bueso's fix used swq_has_sleeper() (an smp_mb() first), today's rcuwait_wake_up has
    barrier (B). kvm_arm_resume_guest is a plain store ``pause = false`` followed by the
    wake-up: without the barrier, the waker can read "no waiter" while its store of
    ``pause`` still sits in its store buffer, and the vCPU -- registering as a waiter
    with a full barrier and then reading ``pause`` -- still sees it true and sleeps:
    nobody wakes it (PROTOCOL.md section 4). Needs store->load reordering: checked under
    ``sc`` (verified) and ``pso`` (lost wakeup).
    """

    name = "arm64-swait-active"
    check_models = ("sc", "pso")
    buggy_under = ("pso",)
    knockouts = frozenset({"vcpu_wake_up:smp_mb"})


class Arm64NoMbAfterMode(Arm64Arch):
    """Broken on purpose: ``vcpu->mode = IN_GUEST_MODE`` with a plain store instead of
    smp_store_mb (PROTOCOL.md section 9, "Missing full barrier between setting
    IN_GUEST_MODE and reading requests"; the comment above the smp_store_mb in
    kvm_arch_vcpu_ioctl_run points to kvm_vcpu_exiting_guest_mode).

    ARM (and PSO) let the store wait in the store buffer while the vCPU reads no
    request; the requester's set_bit + cmpxchg then read OUTSIDE_GUEST_MODE, no IPI is
    sent and the guest runs with the request pending. Needs store->load reordering:
    checked under ``sc`` (verified) and ``pso`` (the lost request).
    """

    name = "arm64-no-mb-after-mode"
    check_models = ("sc", "pso")
    buggy_under = ("pso",)

    def enter_guest_mode(self, vcpu: KvmVcpu) -> bool:
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)  # smp_store_mb without its smp_mb
        return not request_pending(vcpu)


class Arm64KickWaitExiting(KickWaitExiting, Arm64Arch):
    """A proposed fix, not kernel code: kvm_make_request_and_kick that also waits for a
    vCPU another kicker already moved to EXITING_GUEST_MODE (see
    vcpureq.arch.kvm_run.make_request_and_kick_wait_exiting and X86KickWaitExiting)."""

    name = "arm64-kick-wait-exiting"


ARM64_ARCHES: tuple[type[Arm64Arch], ...] = (
    Arm64Arch,
    Arm64IrqKickNoRequest,
    Arm64Pause2017,
    Arm64SwaitActive,
    Arm64NoMbAfterMode,
    Arm64KickWaitExiting,
)
