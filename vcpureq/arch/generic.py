"""A minimal architecture with the run loop of Documentation/virt/kvm/vcpu-requests.rst.

``generic``: the vCPU processes its requests, disables IRQs, publishes IN_GUEST_MODE
with a full barrier (smp_store_mb), then checks once more: if the mode became
EXITING_GUEST_MODE (a kicker's cmpxchg) or a request is pending, it goes back to
OUTSIDE_GUEST_MODE, enables IRQs and starts over; otherwise it enters the guest, which
runs until an IPI arrives on its CPU. Exit: OUTSIDE_GUEST_MODE, smp_wmb, enable IRQs
(taking the IPI). This is the "Ensuring Requests Are Seen" Dekker pattern of
vcpu-requests.rst on (vcpu->mode, vcpu->requests), paired with the
smp_mb__before_atomic + cmpxchg in kvm_vcpu_exiting_guest_mode; x86's
vcpu_enter_guest and arm64's kvm_arch_vcpu_ioctl_run have this shape.

``generic-check-before-mode`` (deliberately broken): the vCPU checks its requests first
and publishes IN_GUEST_MODE afterwards, with only a write barrier: the historical powerpc
bug shape (PROTOCOL.md section 9; today kvmppc_prepare_to_enter has the full barrier
and its comment explains the missed request). A requester that sets its request just
after the check reads OUTSIDE_GUEST_MODE, sends no IPI, and the vCPU enters the guest
with the request pending.
"""

from __future__ import annotations

from vcpureq.arch.base import Arch, HostCpu, dekker_enter_guest_mode
from vcpureq.common import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    KvmVcpu,
    request_pending,
)
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE, smp_wmb

__all__ = [
    "GenericArch",
    "GenericCheckBeforeMode",
    "GenericNoMbAfterMode",
    "GenericNoWmbInMakeRequest",
]

EXIT_ABORTED = "aborted"  # the last check before entry said no
EXIT_IRQ = "irq"  # the guest ran and an IPI made it exit
EXIT_VM_DEAD = "vm-dead"


class GenericArch(Arch):
    """The vcpu-requests.rst run loop, with x86/arm64 kick semantics."""

    name = "generic"
    check_models: tuple[str, ...] = ("sc", "tso", "pso")

    def vcpu_run(self, vcpu: KvmVcpu, entries: int | None = None) -> None:
        """The vCPU thread (KVM_RUN): vcpu_enter_guest over and over.

        Every round either consumes something (a request, a kick) or leaves the vCPU in
        the guest until an IPI comes, so with finitely many requesters the thread ends
        up in the guest for good: a daemon thread the model ends while it waits there.
        ``entries`` bounds the rounds; after them the host CPU idles with IRQs on.
        """
        cpu = vcpu.kvm.host.cpus[vcpu.vcpu_idx]  # loaded on its own CPU, no migration
        rounds = 0
        while entries is None or rounds < entries:
            rounds += 1
            if self.vcpu_enter_guest(vcpu, cpu) == EXIT_VM_DEAD:
                break
        cpu.idle()

    def vcpu_enter_guest(self, vcpu: KvmVcpu, cpu: HostCpu) -> str:
        """One entry attempt (x86 vcpu_enter_guest); returns how it ended."""
        if not self.handle_requests(vcpu):
            return EXIT_VM_DEAD
        cpu.local_irq_disable()
        if not self.enter_guest_mode(vcpu):
            cpu.local_irq_enable()
            vcpu.stat.entry_aborts += 1
            vcpu.stat.last_exit = EXIT_ABORTED
            return EXIT_ABORTED
        if vcpu.kvm.on_guest_entry is not None:
            vcpu.kvm.on_guest_entry(vcpu)
        vcpu.stat.guest_entries += 1
        cpu.run_guest()
        vcpu.stat.irq_exits += 1
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        smp_wmb()
        cpu.local_irq_enable()  # the IPI that made the guest exit is taken here
        vcpu.stat.last_exit = EXIT_IRQ
        return EXIT_IRQ

    def enter_guest_mode(self, vcpu: KvmVcpu) -> bool:
        """Publish IN_GUEST_MODE, then the last check (IRQs are off). True: enter.
        The Dekker entry of vcpu-requests.rst (:func:`dekker_enter_guest_mode`); the
        variants below override this step."""
        return dekker_enter_guest_mode(vcpu)


class GenericCheckBeforeMode(GenericArch):
    """Broken on purpose: requests are checked before IN_GUEST_MODE is published."""

    name = "generic-check-before-mode"

    def enter_guest_mode(self, vcpu: KvmVcpu) -> bool:
        if request_pending(vcpu):
            return False
        smp_wmb()
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)
        return True


class GenericNoMbAfterMode(GenericArch):
    """Broken on purpose: IN_GUEST_MODE is published with a plain store, no full barrier
    before the last check of vcpu->requests.

    Under SC nothing goes wrong.  Under TSO the store of IN_GUEST_MODE can sit in the
    vCPU's store buffer while it reads no request; the requester's set_bit and cmpxchg
    then read OUTSIDE_GUEST_MODE, send no IPI, and the vCPU enters the guest with the
    request pending: the Dekker pattern needs both full barriers (vcpu-requests.rst).
    """

    name = "generic-no-mb-after-mode"
    check_models = ("sc", "tso")
    buggy_under = ("tso",)

    def enter_guest_mode(self, vcpu: KvmVcpu) -> bool:
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)  # smp_store_mb without its smp_mb
        if READ_ONCE(vcpu.mode) == EXITING_GUEST_MODE or request_pending(vcpu):
            WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
            smp_wmb()
            return False
        return True


class GenericNoWmbInMakeRequest(GenericArch):
    """Broken on purpose: kvm_make_request without its smp_wmb before set_bit.

    Under TSO stores become visible in order, so nothing shows.  Under PSO the request
    bit (an unordered set_bit) can become visible before the payload written just before
    it, and the handler reads stale data: the smp_wmb pairs with check_request's
    smp_mb__after_atomic (kvm_host.h).
    """

    name = "generic-no-wmb-in-make-request"
    check_models = ("tso", "pso")
    buggy_under = ("pso",)
    knockouts = frozenset({"make_request:smp_wmb"})
