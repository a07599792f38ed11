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
behaviour. ``Host``/``HostCpu`` model the host hardware the run loops need: per-CPU
IRQ masking and IPIs (this belongs to a hardware layer; it lives here until one exists).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vcpureq.common import (
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    check_request,
    pending_requests,
    vcpu_exiting_guest_mode,
    vcpu_kick,
)
from vcpureq.model import Atomic, wait_until
from vcpureq.model.kernel import READ_ONCE
from vcpureq.requests import VM_DEAD, Request

if TYPE_CHECKING:
    from vcpureq.common import KvmVcpu

__all__ = ["Arch", "Host", "HostCpu"]


class HostCpu:
    """One host CPU: an IRQ flag, an IPI mailbox, and whether it runs guest code.

    IPIs are counted: ``ipi_sent`` is bumped by every sender (fully ordered RMW, as
    queueing a call-function entry is), ``ipi_acked`` is advanced by this CPU when it
    takes the interrupt with IRQs enabled, covering every IPI sent so far (one interrupt
    runs the whole call-function queue). An IPI is pending while sent > acked. A sender
    that must wait (smp_call_function_many with wait=1) waits until ``ipi_acked``
    reaches its own ticket.

    ``irqs_disabled`` is private to the thread running on this CPU. Pending IPIs are
    taken at ``local_irq_enable`` and while idle; in guest mode an IPI makes the guest
    exit (with IRQs still off until the exit path enables them).
    ``guest_running`` is observation only (hardware truth, not read by protocol code);
    its stores are "full" so that no weak memory model delays them.
    """

    def __init__(self, cpu_id: int) -> None:
        self.cpu_id = cpu_id
        self.ipi_sent = Atomic(0, name=f"cpu{cpu_id}.ipi_sent")
        self.ipi_acked = Atomic(0, name=f"cpu{cpu_id}.ipi_acked")
        self.guest_running = Atomic(0, name=f"cpu{cpu_id}.guest_running")
        self.irqs_disabled = False
        self._acked = 0  # this CPU's own copy of ipi_acked (only this CPU writes it)

    # --- any CPU ---------------------------------------------------------------------

    def send_ipi(self) -> int:
        """Send an IPI to this CPU; return its ticket."""
        return int(self.ipi_sent.fetch_add(1, order="full")) + 1

    def ipi_done(self, ticket: int) -> bool:
        """Has the IPI with ``ticket`` been taken (csd_lock_wait's acquire load)?"""
        return bool(self.ipi_acked.load(order="acquire") >= ticket)

    def ipi_pending(self) -> bool:
        """Is an IPI sent to this CPU not yet taken? (For observers.)"""
        return bool(self.ipi_sent.load(order="relaxed") > self.ipi_acked.load(order="relaxed"))

    # --- the thread running on this CPU ----------------------------------------------

    def local_irq_disable(self) -> None:
        self.irqs_disabled = True

    def local_irq_enable(self) -> None:
        """Enable IRQs: a pending IPI is taken (acknowledged) now."""
        self.irqs_disabled = False
        self._take_pending_ipis()

    def _take_pending_ipis(self) -> None:
        sent = self.ipi_sent.load(order="acquire")
        if sent > self._acked:
            self._acked = sent
            self.ipi_acked.store(sent, order="release")  # csd_unlock: smp_store_release

    def _ipi_arrived(self) -> bool:
        return bool(self.ipi_sent.load(order="acquire") > self._acked)

    def run_guest(self) -> None:
        """Run guest code until an IPI arrives on this CPU (at once if one is pending).

        Entering the guest re-enables interrupt delivery atomically, so an IPI that
        arrived while IRQs were off makes the guest exit immediately.
        """
        self.guest_running.store(1, order="full")  # observation: never buffered
        wait_until(self._ipi_arrived)
        self.guest_running.store(0, order="full")

    def idle(self) -> None:
        """Run with IRQs on and nothing to do, forever: take every IPI that arrives.

        The last state of a vCPU thread that has stopped entering the guest (a daemon
        thread: the model ends while it waits here).
        """
        self.irqs_disabled = False
        while True:
            wait_until(self._ipi_arrived)
            self._take_pending_ipis()


class Host:
    """The host's CPUs and the SMP IPI primitives (kernel/smp.c) over them."""

    def __init__(self, nr_cpus: int) -> None:
        self.cpus = [HostCpu(i) for i in range(nr_cpus)]

    @property
    def nr_cpu_ids(self) -> int:
        return len(self.cpus)

    def smp_send_reschedule(self, cpu: int) -> None:
        """The reschedule IPI: fire and forget."""
        self.cpus[cpu].send_ipi()

    def smp_call_function_many(self, cpus: Iterable[int], wait: bool) -> None:
        """IPI every CPU in ``cpus``; with ``wait``, then wait until each one took it."""
        tickets = [(self.cpus[cpu], self.cpus[cpu].send_ipi()) for cpu in sorted(cpus)]
        if wait:
            for target, ticket in tickets:
                wait_until(functools.partial(target.ipi_done, ticket))

    def smp_call_function_single(self, cpu: int, wait: bool) -> None:
        self.smp_call_function_many([cpu], wait)


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
    #: "vcpu_exiting_guest_mode:smp_mb__before_atomic".
    knockouts: frozenset[str] = frozenset()

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
        return True
