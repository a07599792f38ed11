"""The common vCPU request code: virt/kvm/kvm_main.c and include/linux/kvm_host.h.

Read this beside the kernel sources; each function names the kernel function it models.
Everything a requester and a vCPU share is an :class:`~vcpureq.model.Atomic`, accessed
through the kernel vocabulary of :mod:`vcpureq.model.kernel`, with the barriers where
the kernel has them. Architecture-specific behaviour goes through the VM's architecture
object, ``vcpu.kvm.arch`` (see :class:`vcpureq.arch.base.Arch`): the hooks
``should_kick``, ``pre_announce``, ``kick``, ``in_guest`` and ``request_handled``.
Host CPUs and their IPIs are ``vcpu.kvm.host`` (see :class:`vcpureq.arch.base.Host`).

The last part of the file is the unified interface proposed in the seed thread
(``set_request``, ``set_sync_request``, ``set_sync_request_many``); it is not kernel code.

Sources: include/linux/kvm_host.h (kvm_make_request, kvm_check_request, kvm_test_request,
kvm_clear_request, kvm_request_pending, kvm_vcpu_exiting_guest_mode, the mode enum),
virt/kvm/kvm_main.c (kvm_vcpu_wake_up, __kvm_vcpu_kick, kvm_request_needs_ipi,
kvm_kick_many_cpus, kvm_make_vcpu_request, kvm_make_vcpus_request_mask,
kvm_make_all_cpus_request), kernel/exit.c (rcuwait_wake_up),
Documentation/virt/kvm/vcpu-requests.rst.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vcpureq.hw.sched import (
    RCUWAIT_NONE,
    RCUWAIT_SLEEPING,
    RCUWAIT_WOKEN,
    rcuwait_wait_event,
)
from vcpureq.model import Atomic, wait_until
from vcpureq.model.kernel import (
    READ_ONCE,
    clear_bit,
    cmpxchg,
    set_bit,
    smp_mb,
    smp_mb__after_atomic,
    smp_mb__before_atomic,
    smp_wmb,
    test_bit,
)
from vcpureq.requests import KVM_REQUEST_MASK, UNBLOCK, Request, from_number

if TYPE_CHECKING:
    from vcpureq.arch.base import Arch, Host

__all__ = [
    "OUTSIDE_GUEST_MODE",
    "IN_GUEST_MODE",
    "EXITING_GUEST_MODE",
    "READING_SHADOW_PAGE_TABLES",
    "MODE_NAMES",
    "RCUWAIT_NONE",
    "RCUWAIT_SLEEPING",
    "RCUWAIT_WOKEN",
    "VcpuStat",
    "KvmVcpu",
    "Kvm",
    "make_request",
    "check_request",
    "test_request",
    "clear_request",
    "request_pending",
    "pending_requests",
    "vcpu_exiting_guest_mode",
    "vcpu_wake_up",
    "vcpu_check_block",
    "vcpu_block",
    "vcpu_kick",
    "make_request_and_kick",
    "request_needs_ipi",
    "make_vcpu_request",
    "kick_many_cpus",
    "make_vcpus_request_mask",
    "make_all_cpus_request",
    "set_request",
    "set_sync_request",
    "set_sync_request_many",
]

# --- vcpu->mode (include/linux/kvm_host.h, the anonymous enum) -------------------------
OUTSIDE_GUEST_MODE = 0
IN_GUEST_MODE = 1
EXITING_GUEST_MODE = 2
#: outside guest mode, but walking shadow page tables locklessly: TLB-flush senders
#: (WAIT requests) must still wait for it
READING_SHADOW_PAGE_TABLES = 3
MODE_NAMES = {
    OUTSIDE_GUEST_MODE: "OUTSIDE_GUEST_MODE",
    IN_GUEST_MODE: "IN_GUEST_MODE",
    EXITING_GUEST_MODE: "EXITING_GUEST_MODE",
    READING_SHADOW_PAGE_TABLES: "READING_SHADOW_PAGE_TABLES",
}

# --- vcpu->wait (struct rcuwait) -------------------------------------------------------
# The kernel keeps the sleeping task in vcpu->wait.task and its state in the task; we
# keep both in one cell: no waiter; a waiter registered and asleep (or about to sleep,
# TASK_INTERRUPTIBLE); a registered waiter already woken (TASK_RUNNING). The waiter side
# is vcpureq.hw.sched.rcuwait_wait_event, which defines the values.

#: the CPU a requesting thread runs on: none of the vCPUs' host CPUs (requesters are
#: never vCPU threads in these models, so __kvm_vcpu_kick's "kick myself" path is absent)
_REQUESTER_CPU = -1


@dataclass
class VcpuStat:
    """struct kvm_vcpu_stat, the counters the models keep (plain, like the kernel's)."""

    guest_entries: int = 0
    entry_aborts: int = 0  # entry abandoned at the last check (mode or request)
    irq_exits: int = 0  # guest left because an IPI arrived
    requests_handled: int = 0
    halt_wakeup: int = 0
    #: how the previous entry attempt ended: "none" (no attempt yet), "aborted", "irq"
    last_exit: str = "none"


class KvmVcpu:
    """struct kvm_vcpu: the fields the request protocol uses, under the kernel's names.

    ``mode``, ``requests``, ``cpu`` and ``wait`` are shared Atomics. ``arch`` is the
    architecture's per-vCPU state (struct kvm_vcpu_arch), made by ``Arch.vcpu_create``.
    """

    def __init__(self, kvm: Kvm, vcpu_id: int, cpu: int) -> None:
        self.kvm = kvm
        self.vcpu_id = vcpu_id
        self.vcpu_idx = vcpu_id
        # kvm_vcpu_init() sets cpu = -1 and vcpu_load() the running CPU; with one host CPU
        # per vCPU and no migration the vCPU is loaded on its CPU from the start.
        self.cpu = Atomic(cpu, name=f"vcpu{vcpu_id}.cpu")
        self.mode = Atomic(OUTSIDE_GUEST_MODE, name=f"vcpu{vcpu_id}.mode")
        self.requests = Atomic(0, name=f"vcpu{vcpu_id}.requests")
        self.wait = Atomic(RCUWAIT_NONE, name=f"vcpu{vcpu_id}.wait")
        self.stat = VcpuStat()
        self.arch: Any = kvm.arch.vcpu_create(self)

    def __repr__(self) -> str:
        return f"<vCPU {self.vcpu_id}>"


class Kvm:
    """struct kvm: the VM's vCPUs and architecture, plus the simulated host it runs on.

    Observation points for scenarios (not kernel code), called by the run loop:
    ``on_requests_seen(vcpu, mask)`` when it finds requests pending, before it consumes
    any (so whoever sees a request consumed knows it was seen); ``on_request(vcpu, req)``
    for every request it consumes, after check_request (the handler's place);
    ``on_guest_entry(vcpu)`` just before the guest runs (IRQs off, mode published, the
    last check passed).
    """

    def __init__(
        self,
        arch: Arch,
        nr_vcpus: int,
        *,
        on_requests_seen: Callable[[KvmVcpu, int], None] | None = None,
        on_request: Callable[[KvmVcpu, Request], None] | None = None,
        on_guest_entry: Callable[[KvmVcpu], None] | None = None,
    ) -> None:
        self.arch = arch
        self.host: Host = arch.create_host(nr_vcpus)  # vCPU i runs on host CPU i
        self.on_requests_seen = on_requests_seen
        self.on_request = on_request
        self.on_guest_entry = on_guest_entry
        self.vcpus: list[KvmVcpu] = [KvmVcpu(self, i, cpu=i) for i in range(nr_vcpus)]

    def get_vcpu(self, i: int) -> KvmVcpu:  # kvm_get_vcpu
        return self.vcpus[i]


# === Requests (include/linux/kvm_host.h) ===============================================


def _make_request(req: Request, vcpu: KvmVcpu) -> None:
    """__kvm_make_request: publish the request's payload, then set the bit.

    The smp_wmb pairs with the smp_mb__after_atomic in check_request; set_bit itself is
    unordered (atomic_bitops.txt).
    """
    if "make_request:smp_wmb" not in vcpu.kvm.arch.knockouts:
        smp_wmb()
    set_bit(req & KVM_REQUEST_MASK, vcpu.requests)


def make_request(req: Request, vcpu: KvmVcpu) -> None:
    """kvm_make_request: set ``req`` for ``vcpu`` (without a kick).

    A NO_ACTION request would stay in vcpu->requests forever and stop the vCPU from ever
    entering the guest; the kernel refuses it at build time, we raise.
    """
    if req.no_action:
        raise ValueError(f"{req} is a NO_ACTION request: it must not be stored")
    _make_request(req, vcpu)


def request_pending(vcpu: KvmVcpu) -> bool:
    """kvm_request_pending: READ_ONCE(vcpu->requests) != 0."""
    return READ_ONCE(vcpu.requests) != 0


def test_request(req: Request, vcpu: KvmVcpu) -> bool:
    """kvm_test_request: test_bit, unordered."""
    return test_bit(req & KVM_REQUEST_MASK, vcpu.requests)


def clear_request(req: Request, vcpu: KvmVcpu) -> None:
    """kvm_clear_request: clear_bit, unordered."""
    clear_bit(req & KVM_REQUEST_MASK, vcpu.requests)


def check_request(req: Request, vcpu: KvmVcpu) -> bool:
    """kvm_check_request: if ``req`` is pending, clear it, full barrier, return True.

    The smp_mb__after_atomic makes the payload the requester published before its
    smp_wmb visible to the handler. Only the vCPU itself consumes its requests.
    """
    if test_request(req, vcpu):
        clear_request(req, vcpu)
        if "check_request:smp_mb__after_atomic" not in vcpu.kvm.arch.knockouts:
            smp_mb__after_atomic()
        return True
    return False


def pending_requests(mask: int, arch: str | None = None) -> list[Request]:
    """The requests whose bits are set in ``mask`` (a value of vcpu->requests)."""
    return [from_number(nr, arch) for nr in range(mask.bit_length()) if (mask >> nr) & 1]


def vcpu_exiting_guest_mode(vcpu: KvmVcpu) -> int:
    """kvm_vcpu_exiting_guest_mode: move IN_GUEST_MODE to EXITING_GUEST_MODE.

    Returns the mode found. The smp_mb__before_atomic orders the caller's earlier write
    of vcpu->requests before the read of vcpu->mode (a failed cmpxchg is unordered); it
    pairs with the full barrier after the vCPU's write of IN_GUEST_MODE.
    """
    if "vcpu_exiting_guest_mode:smp_mb__before_atomic" not in vcpu.kvm.arch.knockouts:
        smp_mb__before_atomic()
    return int(cmpxchg(vcpu.mode, IN_GUEST_MODE, EXITING_GUEST_MODE))


# === Wake-up and kick (virt/kvm/kvm_main.c) =============================================


def vcpu_wake_up(vcpu: KvmVcpu) -> bool:
    """kvm_vcpu_wake_up -> __kvm_vcpu_wake_up -> rcuwait_wake_up: wake a sleeping vCPU.

    rcuwait_wake_up starts with smp_mb() (its barrier "B"): the waker's condition (here,
    the request just set) is ordered before its read of the waiter. wake_up_process is
    true only if the task was actually asleep. Returns whether a sleeper was woken.
    (vcpu->ready, a directed-yield hint kvm_vcpu_wake_up also sets, is not modelled.)
    """
    if "vcpu_wake_up:smp_mb" not in vcpu.kvm.arch.knockouts:  # (B); swait_active lacked it
        smp_mb()
    if READ_ONCE(vcpu.wait) != RCUWAIT_SLEEPING:
        return False
    if cmpxchg(vcpu.wait, RCUWAIT_SLEEPING, RCUWAIT_WOKEN) != RCUWAIT_SLEEPING:
        return False
    vcpu.stat.halt_wakeup += 1
    return True


def vcpu_check_block(vcpu: KvmVcpu) -> bool:
    """kvm_vcpu_check_block(vcpu) < 0: must the vCPU stop blocking?

    kvm_arch_vcpu_runnable (the architecture's wake-up condition: an interrupt pending,
    ...), or a KVM_REQ_UNBLOCK (consumed here). Pending timers and signals, which the
    kernel also checks, are not modelled.
    """
    if vcpu.kvm.arch.vcpu_runnable(vcpu):
        return True
    return check_request(UNBLOCK, vcpu)


def vcpu_block(vcpu: KvmVcpu, *, asleep: bool = False) -> bool:
    """kvm_vcpu_block: sleep until kvm_vcpu_check_block says the vCPU may run.

    The waiter side of PROTOCOL.md section 4 (rcuwait_wait_event on vcpu->wait):
    register as the waiter and set the task state with a full barrier, check
    runnable / request, only then schedule(); a waker sets the condition, issues a full
    barrier and then reads the waiter (vcpu_wake_up). Returns whether it slept.
    Halt polling (kvm_vcpu_halt) is not modelled. ``asleep``: the vCPU is asleep in
    here from the start (a model device for scenarios, see rcuwait_wait_event).
    """
    task = vcpu.kvm.host.sched.task_of(vcpu.vcpu_idx)
    vcpu.kvm.arch.vcpu_blocking(vcpu)
    arch = vcpu.kvm.arch
    waited = rcuwait_wait_event(
        vcpu.wait, task, lambda: vcpu_check_block(vcpu), what="kvm_vcpu_block",
        observe=lambda: arch.vcpu_runnable(vcpu) or test_request(UNBLOCK, vcpu),
        asleep=asleep,
    )
    vcpu.kvm.arch.vcpu_unblocking(vcpu)
    return waited


def vcpu_kick(vcpu: KvmVcpu, wait: bool = False) -> None:
    """kvm_vcpu_kick / __kvm_vcpu_kick(vcpu, wait): kick a sleeping or running vCPU.

    Wake it if it sleeps; else, if ``should_kick`` (x86/arm64: the IN_GUEST_MODE ->
    EXITING_GUEST_MODE cmpxchg succeeded) and it runs on another CPU, send the
    reschedule IPI, or with ``wait`` a function-call IPI and wait for its
    acknowledgement (kvm_make_request_and_kick since 2025). Without ``wait`` it does not
    wait, even for a WAIT request.
    """
    if vcpu_wake_up(vcpu):
        return
    if vcpu.kvm.arch.should_kick(vcpu):
        cpu = READ_ONCE(vcpu.cpu)
        host = vcpu.kvm.host
        if cpu != _REQUESTER_CPU and 0 <= cpu < host.nr_cpu_ids:
            if wait:
                host.smp_call_function_single(cpu, wait=True)
            else:
                host.smp_send_reschedule(cpu)


def make_request_and_kick(req: Request, vcpu: KvmVcpu) -> None:
    """kvm_make_request_and_kick: make the request, kick, and wait if ``req`` has WAIT."""
    make_request(req, vcpu)
    vcpu_kick(vcpu, wait=req.wait)


# === Broadcast (virt/kvm/kvm_main.c) ====================================================


def request_needs_ipi(vcpu: KvmVcpu, req: Request) -> bool:
    """kvm_request_needs_ipi: must this vCPU's CPU get an IPI for ``req``?

    Plain requests: only a vCPU that was IN_GUEST_MODE. WAIT requests: anything but
    OUTSIDE_GUEST_MODE, so that senders also wait for a vCPU that is EXITING (its IRQs
    may still be off) or READING_SHADOW_PAGE_TABLES.
    """
    mode = vcpu_exiting_guest_mode(vcpu)
    if req.wait and "request_needs_ipi:wait_for_every_mode" not in vcpu.kvm.arch.knockouts:
        return mode != OUTSIDE_GUEST_MODE
    return mode == IN_GUEST_MODE


def make_vcpu_request(vcpu: KvmVcpu, req: Request, cpus: set[int], current_cpu: int) -> None:
    """kvm_make_vcpu_request: make ``req`` on one vCPU and collect its CPU if it needs an IPI.

    NO_ACTION requests are not stored. Unless NO_WAKEUP, a sleeping vCPU is woken and
    needs no IPI.
    """
    if not req.no_action:
        _make_request(req, vcpu)
    if not req.no_wakeup and vcpu_wake_up(vcpu):
        return
    if request_needs_ipi(vcpu, req):
        cpu = READ_ONCE(vcpu.cpu)
        if cpu != -1 and cpu != current_cpu:
            cpus.add(cpu)


def kick_many_cpus(host: Host, cpus: set[int], wait: bool) -> bool:
    """kvm_kick_many_cpus: IPI every CPU in ``cpus`` (an empty callback, ack_kick).

    With ``wait``, return only when every one of them ran the callback, i.e. took the
    interrupt with IRQs enabled. Returns whether any IPI was sent.
    """
    if not cpus:
        return False
    host.smp_call_function_many(cpus, wait=wait)
    return True


def make_vcpus_request_mask(kvm: Kvm, req: Request, vcpu_bitmap: Iterable[int]) -> bool:
    """kvm_make_vcpus_request_mask: make ``req`` on the vCPUs in ``vcpu_bitmap``.

    First the request on every vCPU (collecting the CPUs to IPI), then one IPI to the
    whole mask and, with WAIT, one wait for all: "kick all first, then wait for all".
    """
    cpus: set[int] = set()
    for i in sorted(set(vcpu_bitmap)):
        make_vcpu_request(kvm.get_vcpu(i), req, cpus, _REQUESTER_CPU)
    return kick_many_cpus(kvm.host, cpus, req.wait)


def make_all_cpus_request(kvm: Kvm, req: Request) -> bool:
    """kvm_make_all_cpus_request: make_vcpus_request_mask over every vCPU of the VM."""
    cpus: set[int] = set()
    for vcpu in kvm.vcpus:
        make_vcpu_request(vcpu, req, cpus, _REQUESTER_CPU)
    return kick_many_cpus(kvm.host, cpus, req.wait)


# === The seed's unified interface (lkml, February 2017; not kernel code) ================


def set_request(req: Request, vcpu: KvmVcpu) -> None:
    """kvm_set_request (proposed): set the request and kick the vCPU out of guest mode."""
    make_request(req, vcpu)
    vcpu.kvm.arch.kick(vcpu)


def set_sync_request(req: Request, vcpu: KvmVcpu) -> None:
    """kvm_set_sync_request (proposed): set, kick, wait until guest mode was left.

    Set the request, pre-announce it (s390: PROG_REQUEST, so SIE is not re-entered),
    kick, then wait until the vCPU is out of the guest; the architecture's run loop
    handles the request before the vCPU enters the guest again. (s390's
    kvm_s390_sync_request has this shape.) See set_sync_request_many for the wait.
    This is set_sync_request_many(req, [vcpu]) written out, step for step (the real
    world, vcpureq.kvm, makes it on every sync request).
    """
    arch = vcpu.kvm.arch
    make_request(req, vcpu)
    arch.pre_announce(vcpu, req)
    arch.kick(vcpu)
    wait_until(_left_guest_or_handled(req, vcpu))


def set_sync_request_many(req: Request, vcpus: Sequence[KvmVcpu]) -> None:
    """set_sync_request on several vCPUs: set, pre-announce and kick all, then wait for all.

    The wait ends when the vCPU is out of the guest (``in_guest`` false) *or* has already
    consumed the request. Polling ``in_guest`` alone can miss the exit: the vCPU may
    leave, handle the request and enter the guest again between two polls, and then
    nothing makes it leave again (the model finds this: the requester spins forever on
    a vCPU that handled its request long ago). A request seen consumed was handled
    outside the guest, after it was made, which is what the caller waits for.
    """
    for vcpu in vcpus:
        arch = vcpu.kvm.arch
        make_request(req, vcpu)
        arch.pre_announce(vcpu, req)
        arch.kick(vcpu)
    for vcpu in vcpus:
        wait_until(_left_guest_or_handled(req, vcpu))


def _left_guest_or_handled(req: Request, vcpu: KvmVcpu) -> Callable[[], bool]:
    arch = vcpu.kvm.arch

    def left_guest_or_handled() -> bool:
        return not arch.in_guest(vcpu) or not test_request(req, vcpu)

    return left_guest_or_handled
