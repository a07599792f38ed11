"""x86: vcpu_enter_guest, the lockless shadow-page-table walk, and their historical bugs.

Read beside arch/x86/kvm/x86.c (``vcpu_enter_guest``, ``vcpu_run``, ``vcpu_block``,
``kvm_arch_vcpu_load``, ``kvm_vcpu_exit_request``), arch/x86/kvm/mmu/mmu.c
(``walk_shadow_page_lockless_begin``/``_end``), arch/x86/kvm/lapic.c
(``__apic_accept_irq``) and virt/kvm/kvm_main.c.

Entry (``vcpu_enter_guest``), as the model runs it:

1. the request block (``kvm_request_pending`` -> ``kvm_check_request`` per request;
   ``KVM_REQ_EVENT`` injects a pending interrupt: ``kvm_check_and_inject_events``);
2. ``preempt_disable``; ``local_irq_disable`` ("Disable IRQs before setting
   IN_GUEST_MODE", so that a posted-interrupt or kick IPI stays pending until entry);
3. ``smp_store_release(&vcpu->mode, IN_GUEST_MODE)``, ``kvm_vcpu_srcu_read_unlock``,
   then ``smp_mb__after_srcu_read_unlock()``: the full barrier between publishing the
   mode and reading the requests (the comment there: "We should set ->mode before
   checking ->requests. Please see the comment in kvm_vcpu_exiting_guest_mode()");
4. ``kvm_vcpu_exit_request``: ``vcpu->mode == EXITING_GUEST_MODE`` or
   ``kvm_request_pending`` (or pending task work): back out with
   ``vcpu->mode = OUTSIDE_GUEST_MODE; smp_wmb(); local_irq_enable()``;
5. VM entry; interrupt delivery is re-enabled atomically, so an IPI that arrived during
   steps 2-4 makes the guest exit at once;
6. exit: ``vcpu->mode = OUTSIDE_GUEST_MODE; smp_wmb();`` ... ``local_irq_enable()``
   (the kick IPI is taken here).

``kvm_arch_vcpu_should_kick`` is the common cmpxchg IN_GUEST_MODE -> EXITING_GUEST_MODE
(kvm_vcpu_exiting_guest_mode). ``kvm_arch_vcpu_load`` sets ``vcpu->cpu = cpu`` when the
thread lands on another CPU; ``kvm_arch_vcpu_put`` leaves it.

Lockless walks (``walk_shadow_page_lockless_begin``): ``local_irq_disable`` then
``smp_store_mb(vcpu->mode, READING_SHADOW_PAGE_TABLES)`` ("Prevent page table teardown
by making any free-er wait during kvm_flush_remote_tlbs() IPI to all active vcpus");
``_end``: ``smp_store_release(&vcpu->mode, OUTSIDE_GUEST_MODE)`` then
``local_irq_enable``. A TLB flush (``kvm_flush_remote_tlbs`` ->
``kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH)``, a WAIT request) IPIs every vCPU whose
mode is not OUTSIDE_GUEST_MODE (``kvm_request_needs_ipi``) and waits for the IPIs: the
walker takes it only at ``local_irq_enable``, after its walk, so the zapper frees the
page-table page only after every walk that could still see it has ended.

Memory model: x86-TSO (the default ``"tso"``), exact for these accesses.

Variants, each a historical bug (PROTOCOL.md section 9) with the counterexample it must
show (``vcpureq.scenarios.KNOWN_BUGS``):

- ``x86-no-mb-after-mode``: no full barrier between IN_GUEST_MODE and reading requests.
- ``x86-kick-no-wait``: a WAIT request made with ``kvm_make_request`` +
  ``kvm_vcpu_kick``, which does not wait (AMD SEV-SNP AP destroy, fixed in 2025).
- ``x86-walk-ipi-in-guest-only``: a TLB flush that IPIs only vCPUs in IN_GUEST_MODE, not
  those walking shadow page tables.

and ``x86-kick-wait-exiting``, a proposed fix (not kernel code) for the kernel finding
that kvm_make_request_and_kick does not wait when another kick already moved the vCPU
to EXITING_GUEST_MODE (docs/architectures.md).
"""

from __future__ import annotations

from collections.abc import Callable

from vcpureq.arch.kvm_run import EXIT_VM_DEAD, KickWaitExiting, RunLoopArch
from vcpureq.common import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    READING_SHADOW_PAGE_TABLES,
    KvmVcpu,
    make_request,
    request_pending,
    vcpu_kick,
)
from vcpureq.hw import HostCpu
from vcpureq.model.kernel import (
    READ_ONCE,
    WRITE_ONCE,
    set_bit,
    smp_mb,
    smp_store_mb,
    smp_store_release,
    smp_wmb,
)
from vcpureq.requests import EVENT, UPDATE_PROTECTED_GUEST_STATE, Request

__all__ = [
    "X86Arch",
    "X86NoMbAfterMode",
    "X86KickNoWait",
    "X86WalkIpiInGuestOnly",
    "X86KickWaitExiting",
    "X86_ARCHES",
]


class X86Arch(RunLoopArch):
    """x86 (VMX/SVM): vcpu_enter_guest on the simulated host; default model x86-TSO."""

    name = "x86"
    request_arch = "x86"
    memory_model = "tso"
    features = RunLoopArch.features | {"lockless-walk"}
    #: sev_snp_ap_creation's request (KVM_ARCH_REQ_FLAGS(34, KVM_REQUEST_WAIT) since 2025)
    wait_kick_request: Request = UPDATE_PROTECTED_GUEST_STATE

    # --- hooks -------------------------------------------------------------------------

    def vcpu_load(self, vcpu: KvmVcpu, cpu: HostCpu) -> None:
        """kvm_arch_vcpu_load: ``if (vcpu->cpu != cpu) ... vcpu->cpu = cpu``."""
        WRITE_ONCE(vcpu.cpu, cpu.cpu_id)

    def vcpu_runnable(self, vcpu: KvmVcpu) -> bool:
        """kvm_arch_vcpu_runnable -> kvm_vcpu_has_events: an interrupt in the IRR."""
        return self.irq_pending(vcpu)

    def deliver_interrupt(self, vcpu: KvmVcpu) -> None:
        """__apic_accept_irq (APIC_DM_FIXED, no posted interrupts): set the vector in
        the IRR (kvm_lapic_set_irr), then kvm_make_request(KVM_REQ_EVENT) and
        kvm_vcpu_kick."""
        set_bit(0, vcpu.arch.irq)
        make_request(EVENT, vcpu)
        vcpu_kick(vcpu)

    def handle_request(self, vcpu: KvmVcpu, req: Request) -> None:
        if req == EVENT:  # kvm_check_and_inject_events
            self.inject_pending_irq(vcpu)

    # --- vcpu_enter_guest ------------------------------------------------------------------

    def vcpu_enter_guest(self, vcpu: KvmVcpu) -> str:
        """arch/x86/kvm/x86.c vcpu_enter_guest (one call)."""
        if not self.handle_requests(vcpu):
            return EXIT_VM_DEAD
        cpu = self.cpu_of(vcpu)  # preempt_disable(): the thread stays on this CPU
        cpu.local_irq_disable()
        self.enter_guest_mode(vcpu)
        if self.vcpu_exit_request(vcpu):
            WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
            smp_wmb()
            cpu.local_irq_enable()
            return self.entry_aborted(vcpu)
        how = self.guest_run(vcpu, cpu)
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        smp_wmb()
        cpu.local_irq_enable()  # the IPI that made the guest exit is taken here
        return how

    def enter_guest_mode(self, vcpu: KvmVcpu) -> None:
        """``smp_store_release(&vcpu->mode, IN_GUEST_MODE)`` ("Store vcpu->apicv_active
        before vcpu->mode"), kvm_vcpu_srcu_read_unlock, then
        ``smp_mb__after_srcu_read_unlock()``: a full barrier before the requests are
        read (pairs with kvm_vcpu_exiting_guest_mode's smp_mb__before_atomic)."""
        smp_store_release(vcpu.mode, IN_GUEST_MODE)
        smp_mb()  # smp_mb__after_srcu_read_unlock()

    def vcpu_exit_request(self, vcpu: KvmVcpu) -> bool:
        """kvm_vcpu_exit_request: a kicker moved the mode to EXITING, or a request is
        pending (xfer_to_guest_mode_work_pending is not modelled)."""
        return bool(READ_ONCE(vcpu.mode) == EXITING_GUEST_MODE) or request_pending(vcpu)

    # --- the lockless shadow-page-table walk (arch/x86/kvm/mmu/mmu.c) ------------------------

    def walk_shadow_page_lockless_begin(self, vcpu: KvmVcpu) -> None:
        """local_irq_disable(); smp_store_mb(vcpu->mode, READING_SHADOW_PAGE_TABLES):
        a following spte read is not reordered before the write of the mode."""
        self.cpu_of(vcpu).local_irq_disable()
        smp_store_mb(vcpu.mode, READING_SHADOW_PAGE_TABLES)

    def walk_shadow_page_lockless_end(self, vcpu: KvmVcpu) -> None:
        """smp_store_release(&vcpu->mode, OUTSIDE_GUEST_MODE); local_irq_enable(): the
        spte reads are done before the mode says OUTSIDE, and a TLB-flush IPI that
        arrived during the walk is taken (acknowledged) only now."""
        smp_store_release(vcpu.mode, OUTSIDE_GUEST_MODE)
        self.cpu_of(vcpu).local_irq_enable()

    def walk_shadow_page_lockless(self, vcpu: KvmVcpu, walk: Callable[[], None]) -> None:
        """A lockless walk (fast_page_fault, kvm_mmu_get_spte_hierarchy, ...): ``walk``
        reads sptes between walk_shadow_page_lockless_begin and _end."""
        self.walk_shadow_page_lockless_begin(vcpu)
        walk()
        self.walk_shadow_page_lockless_end(vcpu)


class X86NoMbAfterMode(X86Arch):
    """Broken on purpose: no full barrier between IN_GUEST_MODE and reading requests.

    vcpu_enter_guest relies on ``smp_mb__after_srcu_read_unlock()`` after
    ``smp_store_release(&vcpu->mode, IN_GUEST_MODE)`` (PROTOCOL.md section 9: "Missing
    full barrier between setting IN_GUEST_MODE and reading requests"; the comment in
    vcpu_enter_guest and kvm_vcpu_exiting_guest_mode explain the pairing). Without it,
    under TSO the release store of IN_GUEST_MODE sits in the vCPU's store buffer while
    it reads no request; the requester's set_bit and cmpxchg then read
    OUTSIDE_GUEST_MODE, no IPI is sent, and the guest runs with the request pending
    until some unrelated exit. Sequential consistency cannot show it: checked under
    ``sc`` (verified) and ``tso`` (the lost request).
    """

    name = "x86-no-mb-after-mode"
    check_models = ("sc", "tso")
    buggy_under = ("tso",)

    def enter_guest_mode(self, vcpu: KvmVcpu) -> None:
        smp_store_release(vcpu.mode, IN_GUEST_MODE)  # no smp_mb__after_srcu_read_unlock


class X86KickNoWait(X86Arch):
    """Broken on purpose: a WAIT request sent with ``kvm_make_request`` +
    ``kvm_vcpu_kick``, which never waits (AMD SEV-SNP AP destroy, 2025).

    sev_snp_ap_creation made KVM_REQ_UPDATE_PROTECTED_GUEST_STATE and kicked the target
    with kvm_vcpu_kick. An AP destroy is followed by an RMPADJUST that removes the VMSA
    attribute of the page the target uses; if the target was about to VMRUN (HLT not
    intercepted, e.g. ``-overcommit cpu-pm=on``), it entered with that VMSA and failed
    with #VMEXIT_INVALID, crashing the guest. The fix ("KVM: SVM: Fix SNP AP destroy race
    with VMRUN", commit 309d28576f0a) gave the request KVM_REQUEST_WAIT and added
    kvm_make_request_and_kick, which kicks with ``__kvm_vcpu_kick(vcpu, wait)``: a
    call-function IPI, waited for. Without the wait the caller returns while the target
    still runs the guest with the request unhandled (scenario ``kick-wait``).
    """

    name = "x86-kick-no-wait"

    def make_request_and_kick(self, req: Request, vcpu: KvmVcpu) -> None:
        make_request(req, vcpu)
        vcpu_kick(vcpu)  # kvm_vcpu_kick: __kvm_vcpu_kick(vcpu, false)


class X86WalkIpiInGuestOnly(X86Arch):
    """Broken on purpose: a TLB flush that IPIs only vCPUs in IN_GUEST_MODE.

    kvm_request_needs_ipi IPIs every vCPU whose mode is not OUTSIDE_GUEST_MODE for a
    WAIT request ("We need to wait for the VCPU to reenable interrupts and get out of
    READING_SHADOW_PAGE_TABLES mode"), and plain requests only IN_GUEST_MODE. Treating
    the WAIT request like a plain one skips a vCPU in the middle of a lockless walk: the
    zapper's kvm_flush_remote_tlbs returns at once and frees the page-table page the
    walker is about to read (scenario ``tlb-flush-walk``). (Not a released kernel; the
    rule the 2017 kvm_request_needs_ipi kept.)
    """

    name = "x86-walk-ipi-in-guest-only"
    knockouts = frozenset({"request_needs_ipi:wait_for_every_mode"})


class X86KickWaitExiting(KickWaitExiting, X86Arch):
    """A proposed fix, not kernel code: a synchronous kick that also waits for a vCPU
    another kicker already moved to EXITING_GUEST_MODE.

    __kvm_vcpu_kick(vcpu, wait=true) acts on ``wait`` only when its own cmpxchg saw
    IN_GUEST_MODE (kvm_arch_vcpu_should_kick); if a concurrent kvm_vcpu_kick got there
    first, the mode is EXITING_GUEST_MODE, no IPI is sent and the call returns while the
    vCPU may still be in the guest (scenario ``kick-wait-race``: the model shows it on
    x86 and arm64). This variant decides like kvm_request_needs_ipi does for WAIT
    broadcasts: IPI and wait unless the mode was OUTSIDE_GUEST_MODE
    (vcpureq.arch.kvm_run.make_request_and_kick_wait_exiting).
    """

    name = "x86-kick-wait-exiting"


X86_ARCHES: tuple[type[X86Arch], ...] = (
    X86Arch,
    X86NoMbAfterMode,
    X86KickNoWait,
    X86WalkIpiInGuestOnly,
    X86KickWaitExiting,
)
