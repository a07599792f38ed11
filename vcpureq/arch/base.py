"""The architecture interface, and the simulated host CPUs the vCPUs run on.

``Arch`` is what common code (vcpureq.common) calls through ``vcpu.kvm.arch``:

- ``should_kick(vcpu)``: kvm_arch_vcpu_should_kick; must ``vcpu_kick`` send an IPI?
- the seed thread's three callbacks for the unified interface:
  ``pre_announce(vcpu, req)`` (s390: set PROG_REQUEST), ``kick(vcpu)`` (s390:
  CPUSTAT_STOP_INT + vSIE kick; elsewhere kvm_vcpu_kick), ``in_guest(vcpu)`` (s390:
  PROG_IN_SIE; elsewhere vcpu->mode != OUTSIDE_GUEST_MODE);
- ``request_handled(vcpu)``: called by the run loop when it starts handling requests
  (s390: kvm_s390_vcpu_request_handled clears PROG_REQUEST);

plus the vCPU thread itself, ``vcpu_run``. The defaults are the x86/arm64/riscv
behaviour. ``Host``/``HostCpu`` (the simulated host: per-CPU IRQ masking, IPIs,
scheduling) live in :mod:`vcpureq.hw` and are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vcpureq.common import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    check_request,
    pending_requests,
    request_pending,
    vcpu_exiting_guest_mode,
    vcpu_kick,
)
from vcpureq.hw import Host, HostCpu
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE, smp_store_mb, smp_wmb
from vcpureq.requests import VM_DEAD, Request

if TYPE_CHECKING:
    from vcpureq.common import KvmVcpu

__all__ = ["Arch", "Host", "HostCpu", "dekker_enter_guest_mode"]


def dekker_enter_guest_mode(vcpu: KvmVcpu) -> bool:
    """Publish IN_GUEST_MODE, then the last check (IRQs are off). True: enter.

    vcpu-requests.rst ("Ensuring Requests Are Seen"): the write of IN_GUEST_MODE to
    vcpu->mode is ordered by a full barrier before the read of vcpu->requests, and pairs
    with the requester's barrier between setting the request and reading the mode. x86
    vcpu_enter_guest checks kvm_vcpu_exit_request() (mode == EXITING_GUEST_MODE or
    kvm_request_pending()); on abort it writes OUTSIDE_GUEST_MODE followed by smp_wmb().
    The entry of the generic architecture and of a userspace VMM (kvm_user)."""
    smp_store_mb(vcpu.mode, IN_GUEST_MODE)
    if READ_ONCE(vcpu.mode) == EXITING_GUEST_MODE or request_pending(vcpu):
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        smp_wmb()
        return False
    return True


class Arch:
    """An architecture: the hooks common code calls, and the vCPU run loop.

    Subclasses set ``name`` (the key in vcpureq.arch.ARCHES), ``request_arch`` (the
    architecture whose request numbers vcpu->requests holds, see vcpureq.requests) and
    ``memory_model`` (the model it is checked under by default).
    """

    name = "base"
    request_arch: str | None = None
    memory_model = "sc"
    #: The memory models `vcpureq check` runs this protocol under (default: its own).
    check_models: tuple[str, ...] = ()
    #: For a broken variant: the models under which its bug shows (default: all).  Under
    #: the others it is expected to verify (e.g. a missing smp_mb is invisible under SC).
    buggy_under: tuple[str, ...] | None = None
    #: Barriers of common code this protocol leaves out, by site (a variant's knob):
    #: "make_request:smp_wmb", "check_request:smp_mb__after_atomic",
    #: "vcpu_exiting_guest_mode:smp_mb__before_atomic", "vcpu_wake_up:smp_mb" (the
    #: waker's barrier (B): a barrier-free swait_active check), and
    #: "request_needs_ipi:wait_for_every_mode" (WAIT requests IPI only IN_GUEST_MODE,
    #: not READING_SHADOW_PAGE_TABLES / EXITING_GUEST_MODE).
    knockouts: frozenset[str] = frozenset()
    #: What the run loop supports beyond the basic request protocol; a scenario runs on
    #: an architecture only if its ``requires`` are all here (vcpureq.scenarios).
    #: Names: "block" (kvm_vcpu_block / halt), "interrupts" (queue + deliver a guest
    #: interrupt), "migration" (preemption points, vcpu_load/put), "lockless-walk"
    #: (x86 READING_SHADOW_PAGE_TABLES), "pause" (arm64 kvm_arm_halt_guest/resume).
    features: frozenset[str] = frozenset()

    @classmethod
    def models_to_check(cls) -> tuple[str, ...]:
        return cls.check_models or (cls.memory_model,)

    # --- construction ----------------------------------------------------------------

    def create_host(self, nr_vcpus: int) -> Host:
        """The host the VM runs on: one host CPU per vCPU."""
        return Host(nr_vcpus)

    def vcpu_create(self, vcpu: KvmVcpu) -> Any:
        """kvm_arch_vcpu_create: the per-vCPU architecture state (vcpu.arch)."""
        return None

    # --- hooks called by common code -------------------------------------------------

    def should_kick(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_should_kick (x86, arm64, riscv): IN_GUEST -> EXITING succeeded."""
        return vcpu_exiting_guest_mode(vcpu) == IN_GUEST_MODE

    def pre_announce(self, vcpu: KvmVcpu, req: Request) -> None:
        """Announce a sync request before the kick. Nothing to do with vcpu->mode."""

    def kick(self, vcpu: KvmVcpu) -> None:
        """Kick the vCPU out of the guest: kvm_vcpu_kick."""
        vcpu_kick(vcpu)

    def in_guest(self, vcpu: KvmVcpu) -> bool:
        """Is the vCPU still (possibly) executing the guest? vcpu->mode says so."""
        return bool(READ_ONCE(vcpu.mode) != OUTSIDE_GUEST_MODE)

    def request_handled(self, vcpu: KvmVcpu) -> None:
        """The run loop starts handling requests. Nothing to undo with vcpu->mode."""

    def vcpu_runnable(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_runnable: may a blocked vCPU stop blocking? (loads only)"""
        return False

    def vcpu_blocking(self, vcpu: KvmVcpu) -> None:
        """kvm_arch_vcpu_blocking: the vCPU is about to block."""

    def vcpu_unblocking(self, vcpu: KvmVcpu) -> None:
        """kvm_arch_vcpu_unblocking: the vCPU stopped blocking."""

    def vcpu_load(self, vcpu: KvmVcpu, cpu: HostCpu) -> None:
        """kvm_arch_vcpu_load(vcpu, cpu): the vCPU thread is scheduled in on ``cpu``."""

    def vcpu_put(self, vcpu: KvmVcpu) -> None:
        """kvm_arch_vcpu_put: the vCPU thread is scheduled out."""

    # --- the vCPU thread -------------------------------------------------------------

    def vcpu_run(self, vcpu: KvmVcpu, entries: int | None = None) -> None:
        """The vCPU thread (KVM_RUN); ``entries`` bounds its attempts to enter the guest."""
        raise NotImplementedError

    def handle_requests(self, vcpu: KvmVcpu) -> bool:
        """The request block at the top of an entry (x86 vcpu_enter_guest, arm64
        kvm_vcpu_handle_requests): consume every pending request with check_request.

        Returns False if the VM is dead (KVM_REQ_VM_DEAD is never cleared; x86 then
        fails KVM_RUN with -EIO). Handlers are the VM's ``on_request`` observer.
        Only the vCPU clears its requests, so a bit in the snapshot is still set when
        check_request tests it.
        """
        pending = READ_ONCE(vcpu.requests)  # kvm_request_pending, keeping the value
        if not pending:
            return True
        self.request_handled(vcpu)
        if vcpu.kvm.on_requests_seen is not None:
            vcpu.kvm.on_requests_seen(vcpu, pending)
        if pending & (1 << VM_DEAD.number):  # kvm_test_request(KVM_REQ_VM_DEAD)
            return False
        for req in pending_requests(pending, self.request_arch):
            if check_request(req, vcpu):
                vcpu.stat.requests_handled += 1
                if vcpu.kvm.on_request is not None:
                    vcpu.kvm.on_request(vcpu, req)
                self.handle_request(vcpu, req)
        return True

    def handle_request(self, vcpu: KvmVcpu, req: Request) -> None:
        """The architecture's handler for one consumed request (default: nothing)."""
