"""The userspace VMM's vCPU thread: the request protocol one level up (PROTOCOL.md 7).

A userspace VMM runs each vCPU on a thread that loops around ``ioctl(KVM_RUN)``. Seen from
the VMM, that thread is "in guest mode" while it is inside KVM_RUN, and the VMM's kick is a
signal sent with ``pthread_kill``, which makes KVM_RUN return ``-EINTR``. This module writes
that thread with the kernel's own request protocol on top (vcpu-requests.rst): the VMM's
``vcpu->mode`` and ``vcpu->requests`` are the :class:`~vcpureq.common.KvmVcpu` Atomics and
the entry is the kernel's Dekker pattern:

    handle requests (after an I/O exit: first re-enter once with immediate_exit)
    mode = IN_GUEST_MODE; full barrier                    (smp_store_mb)
    if mode == EXITING_GUEST_MODE or a request is pending: mode = OUTSIDE; again
    KVM_RUN                                               (the signal is the IPI)
    mode = OUTSIDE_GUEST_MODE; smp_wmb; take kicks; after -EINTR: the variant's clean-up

and the kick is common code's ``vcpu_kick``: wake a halted (sleeping) vCPU, else
``cmpxchg(mode, IN_GUEST_MODE, EXITING_GUEST_MODE)`` and, if that succeeded, "IPI" the
thread, which here means signal it (``SignalHost``). The first kicker moves the mode to
EXITING, so later kicks send no signal. The WAIT broadcast (``make_all_cpus_request``)
signals every thread first and then waits for every acknowledgement, which the vCPU
thread gives from outside KVM_RUN ("kick all, then wait all").

What differs between real VMMs is how they close the race "the signal lands after the
thread checked its requests but before it entered KVM_RUN" (a signal taken in userspace
by an empty handler is simply lost). The variants:

- ``kvm-user`` (default): the *sender* sets ``kvm_run.immediate_exit = 1`` and then
  signals; the thread clears it after KVM_RUN returned -EINTR, before it reads requests
  again. KVM reads ``immediate_exit`` once when KVM_RUN starts, so a kick in the window
  still makes that KVM_RUN return -EINTR at once. Firecracker since 2025:
  ``VcpuHandle::send_event`` (set_kvm_immediate_exit(1), a release fence, kill) and
  ``Vcpu::run_emulation`` (clears it on EINTR) in src/vmm/src/vstate/vcpu.rs; Cloud
  Hypervisor adopted the same in 2025 (cloud-hypervisor issue #7427, PR #7428/#7455).
- ``kvm-user-sigmask``: the kick signal is blocked in the thread
  (``pthread_sigmask``) and unblocked only inside KVM_RUN (``KVM_SET_SIGNAL_MASK``); a
  kick outside KVM_RUN stays pending and makes the next KVM_RUN return -EINTR at once;
  after -EINTR the thread consumes it (``sigtimedwait``, QEMU's ``kvm_eat_signals``).
  QEMU before ``kvm_immediate_exit`` (accel/kvm/kvm-all.c, ``kvm_init_cpu_signals``).
  QEMU today combines a handler that sets ``immediate_exit`` (``kvm_ipi_signal`` ->
  ``kvm_cpu_kick``), crosvm the same (its signal handler sets immediate_exit through a
  thread-local run handle): same guarantee as the default, set by the receiver.
- ``kvm-user-empty-handler`` (broken on purpose): signal only, with a handler that does
  nothing. Cloud Hypervisor's old bug (issue #7427: a pause lost until the next exit;
  worked around by re-signalling every 10 ms, PR #7459). The explorer finds the lost kick.

After an I/O or MMIO exit the access is complete only once KVM_RUN is entered again
(api.rst section 5), so before handling requests that touch vCPU state the thread
re-enters once with ``immediate_exit`` set (QEMU: ``kvm_cpu_exec`` calls
``kvm_cpu_kick_self`` when ``exit_request`` is set after an exit; Cloud Hypervisor: the
same with ``set_immediate_exit``).

The same code runs in two worlds through a small *vCPU backend* (:class:`VcpuBackend`):
enter KVM_RUN, set ``immediate_exit``, send the signal, block it / let KVM_RUN unblock it,
consume it, sleep. :class:`ModelBackend` models KVM_RUN, ``immediate_exit`` and signals
with Atomics for the explorer (``vcpureq check``); ``vcpureq.kvm.vmm.RealBackend`` does the
real ioctls and signals on /dev/kvm.

Requests of this architecture (``request_arch = "kvm_user"``), handled by the vCPU thread:
``CALL`` (run queued functions on the vCPU thread), ``PAUSE`` (WAIT: sleep until resumed,
arm64's KVM_REQ_SLEEP pattern: ``kvm_arm_halt_guest`` / ``kvm_vcpu_sleep``),
``INTERRUPT`` (inject queued interrupts; wakes a halted vCPU) and ``PING`` (nothing: for
measuring). ``VM_DEAD`` ends the thread.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from vcpureq.arch.base import Arch, Host, HostCpu, dekker_enter_guest_mode
from vcpureq.common import (
    OUTSIDE_GUEST_MODE,
    RCUWAIT_NONE,
    RCUWAIT_SLEEPING,
    check_request,
    make_request,
    pending_requests,
    request_pending,
    vcpu_kick,
)
from vcpureq.model import Atomic, check, choose, wait_until
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE, smp_store_mb, smp_wmb
from vcpureq.requests import ARCH_REQUESTS, VM_DEAD, Request, RequestFlag

if TYPE_CHECKING:
    from vcpureq.common import KvmVcpu

__all__ = [
    "REQUEST_ARCH",
    "CALL",
    "PAUSE",
    "INTERRUPT",
    "PING",
    "EXIT_EINTR",
    "EXIT_IO",
    "EXIT_MMIO",
    "EXIT_HLT",
    "EXIT_IRQ_WINDOW",
    "VcpuBackend",
    "ModelBackend",
    "SignalCpu",
    "SignalHost",
    "UserVcpu",
    "KvmUserArch",
    "KvmUserSigmask",
    "KvmUserEmptyHandler",
    "VARIANTS",
    "pause_vcpus",
    "resume_vcpus",
]

REQUEST_ARCH = "kvm_user"


def _req(name: str, nr: int, flags: RequestFlag = RequestFlag.NONE) -> Request:
    return Request(name, 8 + nr, flags, REQUEST_ARCH)  # KVM_ARCH_REQ_FLAGS(nr, flags)


#: run the functions queued for this vCPU on its thread (outside KVM_RUN, I/O completed)
CALL = _req("CALL", 0)
#: sleep until resumed; a broadcast waits until every vCPU is out of the guest
PAUSE = _req("PAUSE", 1, RequestFlag.WAIT)
#: inject the interrupts queued for this vCPU (KVM_INTERRUPT); wakes a halted vCPU
INTERRUPT = _req("INTERRUPT", 2)
#: nothing to do: a request for measuring the protocol itself
PING = _req("PING", 3)

# The userspace VMM's requests next to the kernel's, so vcpureq.requests.lookup() and
# from_number() name them.
ARCH_REQUESTS.setdefault(REQUEST_ARCH, {}).update(
    {r.name: r for r in (CALL, PAUSE, INTERRUPT, PING)}
)

# How KVM_RUN returned (the backend's answer).
EXIT_EINTR = "eintr"  # -1, errno EINTR: a signal or immediate_exit
EXIT_IO = "io"  # KVM_EXIT_IO: completes on the next KVM_RUN
EXIT_MMIO = "mmio"  # KVM_EXIT_MMIO: likewise
EXIT_HLT = "hlt"  # KVM_EXIT_HLT (no in-kernel irqchip): the VMM blocks the vCPU
EXIT_IRQ_WINDOW = "irq-window"  # KVM_EXIT_IRQ_WINDOW_OPEN: an interrupt can be injected
EXITS_NEEDING_COMPLETION = frozenset({EXIT_IO, EXIT_MMIO})
_VM_DEAD_BIT = 1 << VM_DEAD.number

class VcpuBackend:
    """What the vCPU thread and its kickers need from "KVM and the OS": the interface the
    architecture's code calls, in the model world and on /dev/kvm alike.

    Called on the vCPU thread: :meth:`thread_start`, :meth:`kvm_run`,
    :meth:`block_signal`, :meth:`unblock_signal_in_run`, :meth:`eat_signals`,
    :meth:`schedule`, :meth:`touch_vcpu_state`, :meth:`run_calls`,
    :meth:`inject_interrupts`, :meth:`idle`. Called by kickers (any thread):
    :meth:`set_immediate_exit` (also by the vCPU thread), :meth:`send_signal`,
    :meth:`check_alive`, :meth:`thread_ended`, :meth:`signal_pending`.
    """

    def vcpu_create(self, vcpu: KvmVcpu) -> Any:
        """Per-vCPU backend state (kept in ``vcpu.arch.backend_state``)."""
        return None

    def thread_start(self, vcpu: KvmVcpu) -> None:
        """The vCPU thread starts (after the architecture set up its signal mask)."""

    def kvm_run(self, vcpu: KvmVcpu) -> str:
        """ioctl(KVM_RUN): returns one of the ``EXIT_*`` strings (EXIT_EINTR for -EINTR)."""
        raise NotImplementedError

    def set_immediate_exit(self, vcpu: KvmVcpu, value: int) -> None:
        """Write ``kvm_run.immediate_exit`` (KVM reads it once when KVM_RUN starts)."""
        raise NotImplementedError

    def send_signal(self, vcpu: KvmVcpu) -> None:
        """pthread_kill(vcpu thread, kick signal). Nothing if the thread has ended."""
        raise NotImplementedError

    def block_signal(self, vcpu: KvmVcpu) -> None:
        """pthread_sigmask(SIG_BLOCK, kick signal) on the vCPU thread."""
        raise NotImplementedError

    def unblock_signal_in_run(self, vcpu: KvmVcpu) -> None:
        """KVM_SET_SIGNAL_MASK: the thread's mask without the kick signal, in force only
        while KVM_RUN runs."""
        raise NotImplementedError

    def eat_signals(self, vcpu: KvmVcpu) -> None:
        """Consume a pending (blocked) kick signal: sigtimedwait with a zero timeout."""
        raise NotImplementedError

    def schedule(self, vcpu: KvmVcpu, predicate: Callable[[], Any]) -> None:
        """Sleep until ``predicate()`` holds (the scheduler; bounded in the real world)."""
        wait_until(predicate)

    def check_alive(self, vcpu: KvmVcpu) -> None:
        """Raise (a clear error) if the vCPU thread has ended; requesters call this."""

    def await_exit(self, vcpu: KvmVcpu) -> None:
        """A requester is about to look whether the vCPU left the guest. Pacing of the
        real world's polls (see RealBackend.await_exit); the model needs none: the
        explorer schedules the threads. Must not change what the requester then reads."""

    def thread_ended(self, vcpu: KvmVcpu) -> bool:
        """Has the vCPU thread ended (it is certainly not in the guest)?"""
        return False

    def signal_pending(self, vcpu: KvmVcpu) -> bool:
        """Is a kick signal pending for the thread (observers only)?"""
        return False

    def touch_vcpu_state(self, vcpu: KvmVcpu) -> None:
        """The thread is about to handle requests, which may read or write vCPU state."""

    def run_calls(self, vcpu: KvmVcpu) -> None:
        """Handle CALL: run the functions queued for this vCPU."""

    def inject_interrupts(self, vcpu: KvmVcpu) -> bool:
        """Handle INTERRUPT: inject what the guest can take; True if it is no longer
        halted (an interrupt was injected, or it will run until it can take one)."""
        return True

    def idle(self, vcpu: KvmVcpu) -> None:
        """The run loop ended (VM_DEAD or its entry bound)."""


class UserVcpu:
    """The VMM's per-vCPU state (``vcpu.arch``; kernel: struct kvm_vcpu_arch). Plain
    fields are the vCPU thread's own; ``pause`` is written by other threads."""

    def __init__(self, vcpu: KvmVcpu) -> None:
        self.io_pending = False  # last exit was IO/MMIO: completes on the next KVM_RUN
        self.halted = False  # the guest executed HLT and no interrupt woke it yet
        self.pause = Atomic(0, name=f"vcpu{vcpu.vcpu_id}.pause")  # arm64: vcpu->arch.pause
        self.handled: Counter[str] = Counter()  # requests handled, by name
        self.completions = 0  # immediate_exit re-entries that completed an access
        self.blocks = 0  # times the thread slept (halted or paused)
        self.backend_state: Any = None


class SignalCpu(HostCpu):
    """A vCPU *thread* as the host's "CPU": its IPI is the kick signal.

    The ticket counters of :class:`HostCpu` (``ipi_sent`` / ``ipi_acked``) serve the WAIT
    broadcast: the thread acknowledges from outside KVM_RUN. In the model world ``sig``
    and ``immediate_exit`` are the thread's signal state and its kvm_run field (the real
    backend keeps the real ones); ``guest_running`` is observation only.
    """

    def __init__(self, cpu_id: int, arch: KvmUserArch) -> None:
        super().__init__(cpu_id)
        self.arch = arch
        self.vcpu: KvmVcpu | None = None  # set by KvmUserArch.vcpu_create
        self.sig = Atomic(0, name=f"thread{cpu_id}.sig")
        self.immediate_exit = Atomic(0, name=f"vcpu{cpu_id}.kvm_run.immediate_exit")

    def kick(self) -> None:
        """The reschedule IPI: the architecture variant's signal kick."""
        assert self.vcpu is not None
        self.arch.kick_vcpu_thread(self.vcpu)

    def send_ipi(self) -> int:
        ticket = super().send_ipi()
        self.kick()
        return ticket

    def ipi_done(self, ticket: int) -> bool:
        vcpu = self.vcpu
        assert vcpu is not None
        backend = self.arch.backend
        backend.await_exit(vcpu)
        return super().ipi_done(ticket) or backend.thread_ended(vcpu)

    def ipi_pending(self) -> bool:
        """Is something on its way to make the thread leave the guest? Its signal."""
        assert self.vcpu is not None
        return self.arch.backend.signal_pending(self.vcpu)

    def take_ipis(self) -> None:
        """Acknowledge every kick sent so far (the thread is outside KVM_RUN)."""
        self._take_pending_ipis()

    def ipi_arrived(self) -> bool:
        return self._ipi_arrived()


class SignalHost(Host):
    """The host of a userspace VMM: one "CPU" per vCPU thread, IPIs are signals."""

    def __init__(self, nr_cpus: int, arch: KvmUserArch) -> None:
        self.cpus: list[SignalCpu] = [  # type: ignore[assignment]
            SignalCpu(i, arch) for i in range(nr_cpus)
        ]

    def smp_send_reschedule(self, cpu: int) -> None:
        """A plain kick: signal the thread (no acknowledgement to wait for)."""
        self.cpus[cpu].kick()

    def smp_call_function_many(self, cpus: Iterable[int], wait: bool) -> None:
        """Kick every thread in ``cpus`` first; with ``wait``, then wait until each one
        acknowledged from outside KVM_RUN (or has ended)."""
        tickets = [(self.cpus[cpu], self.cpus[cpu].send_ipi()) for cpu in sorted(cpus)]
        if wait:
            for target, ticket in tickets:
                wait_until(functools.partial(target.ipi_done, ticket))


class ModelBackend(VcpuBackend):
    """KVM_RUN, ``immediate_exit`` and signals as model state, for the explorer.

    Per vCPU thread, ``SignalCpu.sig`` is 1 while a kick signal is pending for it and
    ``SignalCpu.immediate_exit`` is its kvm_run field. ``kvm_run`` follows the kernel:

    - on the way in, still in userspace: a pending, unblocked signal may be delivered
      right there, on the thread (its empty handler runs and the signal is gone), or it
      may still be pending when the syscall starts: the explorer tries both
      (``choose``). That is the window of PROTOCOL.md 7. (A signal taken in userspace
      anywhere else belongs to an entry that was aborted or has ended, or is followed
      by a KVM_RUN that sees immediate_exit, so this one point is enough.)
    - ``wants_to_run = !READ_ONCE(run->immediate_exit)``, read once (kvm_main.c
      ``kvm_vcpu_ioctl``, KVM_RUN);
    - complete a pending I/O access (x86.c ``kvm_arch_vcpu_ioctl_run``:
      ``complete_userspace_io``), then return -EINTR if ``!wants_to_run``;
    - else run the guest: it does the next thing of its script (an I/O exit, HLT), or
      runs until a signal is pending, at once if one already is (``vcpu_run``: pending
      signal -> -EINTR, KVM_EXIT_INTR; a signal sent while the guest runs kicks it out
      with an IPI); a signal blocked inside KVM_RUN too (no KVM_SET_SIGNAL_MASK) does
      not interrupt it;
    - back to userspace: ``kvm_sigset_deactivate`` (a signal blocked outside KVM_RUN
      stays pending), and the unblocked signal that interrupted the guest is delivered:
      the handler runs. (A signal still pending after an -EINTR from immediate_exit or
      after an exit is left to the next entry's choice: the real kernel would deliver it
      on this return; leaving it adds only -EINTR rounds, never hides one.)

    ``guest`` is the script of what the guest does each time it runs: "io" (an I/O
    exit), "hlt" (HLT), "spin" (runs until kicked); the last entry repeats.
    """

    def __init__(self, guest: tuple[str, ...] = ("spin",)) -> None:
        for action in guest:
            if action not in ("io", "hlt", "spin"):
                raise ValueError(f"unknown guest action {action!r} (io, hlt, spin)")
        self.guest = tuple(guest) or ("spin",)

    class State:
        def __init__(self) -> None:
            self.runs = 0  # times the guest ran (index into the script)
            self.io_incomplete = False  # KVM's view: an access waits for completion
            self.blocked = False  # the kick signal is blocked in userspace
            self.kvm_sigmask = False  # KVM_SET_SIGNAL_MASK unblocks it inside KVM_RUN

    @staticmethod
    def _cpu(vcpu: KvmVcpu) -> SignalCpu:
        return vcpu.kvm.host.cpus[vcpu.vcpu_idx]  # type: ignore[return-value]

    def vcpu_create(self, vcpu: KvmVcpu) -> ModelBackend.State:
        return ModelBackend.State()

    def kvm_run(self, vcpu: KvmVcpu) -> str:
        cpu = self._cpu(vcpu)
        st: ModelBackend.State = vcpu.arch.backend_state
        if not st.blocked and cpu.sig.load(order="relaxed") and choose(2):
            cpu.sig.store(0)  # delivered in userspace just before the syscall: gone
        wants_to_run = not READ_ONCE(cpu.immediate_exit)
        st.io_incomplete = False  # complete_userspace_io
        result = EXIT_EINTR
        if wants_to_run:
            action = self.guest[min(st.runs, len(self.guest) - 1)]
            st.runs += 1
            vcpu.stat.guest_entries += 1
            if action == "io":
                st.io_incomplete = True
                result = EXIT_IO
            elif action == "hlt":
                result = EXIT_HLT
            else:
                if vcpu.kvm.on_guest_entry is not None:
                    vcpu.kvm.on_guest_entry(vcpu)
                interruptible = not st.blocked or st.kvm_sigmask

                def kicked() -> bool:
                    return interruptible and bool(cpu.sig.load(order="relaxed"))

                cpu.guest_running.store(1, order="full")  # observation: never buffered
                wait_until(kicked)
                cpu.guest_running.store(0, order="full")
                vcpu.stat.irq_exits += 1
        if not st.blocked and result == EXIT_EINTR and wants_to_run:
            cpu.sig.store(0)  # back in userspace: the handler takes the signal
        return result

    def set_immediate_exit(self, vcpu: KvmVcpu, value: int) -> None:
        WRITE_ONCE(self._cpu(vcpu).immediate_exit, value)

    def send_signal(self, vcpu: KvmVcpu) -> None:
        self._cpu(vcpu).sig.exchange(1)  # tgkill: queue it, kick the thread (ordered)

    def block_signal(self, vcpu: KvmVcpu) -> None:
        vcpu.arch.backend_state.blocked = True

    def unblock_signal_in_run(self, vcpu: KvmVcpu) -> None:
        vcpu.arch.backend_state.kvm_sigmask = True

    def eat_signals(self, vcpu: KvmVcpu) -> None:
        self._cpu(vcpu).sig.store(0)  # sigtimedwait: the pending signal is consumed

    def signal_pending(self, vcpu: KvmVcpu) -> bool:
        return bool(self._cpu(vcpu).sig.load(order="relaxed"))

    def touch_vcpu_state(self, vcpu: KvmVcpu) -> None:
        check(
            not vcpu.arch.backend_state.io_incomplete,
            f"vCPU {vcpu.vcpu_id} handled requests with an I/O exit not completed "
            "(re-enter KVM_RUN with immediate_exit first)",
        )

    def inject_interrupts(self, vcpu: KvmVcpu) -> bool:
        return True

    def idle(self, vcpu: KvmVcpu) -> None:
        cpu = self._cpu(vcpu)
        while True:  # keep acknowledging kicks (a WAIT sender may be waiting)
            wait_until(cpu.ipi_arrived)
            cpu.take_ipis()


class KvmUserArch(Arch):
    """A userspace VMM's vCPU thread with the kernel's mode/requests entry; the kick sets
    ``immediate_exit`` and then signals (Firecracker since 2025)."""

    name = "kvm-user"
    request_arch = REQUEST_ARCH
    #: a userspace VMM on x86-64: TSO (its executions include every SC one)
    memory_model = "tso"
    #: what closes the window before KVM_RUN: "immediate-exit", "signal-mask" or "none"
    kick_variant = "immediate-exit"

    def __init__(self, backend: VcpuBackend | None = None) -> None:
        self.backend: VcpuBackend = backend if backend is not None else ModelBackend()
        self._by_mask: dict[int, list[Request]] = {}

    # --- construction ----------------------------------------------------------------

    def create_host(self, nr_vcpus: int) -> Host:
        return SignalHost(nr_vcpus, self)

    def vcpu_create(self, vcpu: KvmVcpu) -> UserVcpu:
        cpu = vcpu.kvm.host.cpus[vcpu.vcpu_idx]
        assert isinstance(cpu, SignalCpu)
        cpu.vcpu = vcpu
        state = UserVcpu(vcpu)
        vcpu.arch = state  # the backend reads it below
        state.backend_state = self.backend.vcpu_create(vcpu)
        return state

    # --- hooks called by common code -------------------------------------------------

    def kick(self, vcpu: KvmVcpu) -> None:
        """kvm_vcpu_kick one level up: wake a halted or paused vCPU thread, else
        IN_GUEST -> EXITING and signal it. QEMU: ``qemu_cpu_kick`` ->
        ``qemu_cpu_kick_thread`` (pthread_kill SIG_IPI); Firecracker: ``send_event``."""
        self.backend.check_alive(vcpu)
        vcpu_kick(vcpu)

    def in_guest(self, vcpu: KvmVcpu) -> bool:
        """Still (possibly) inside KVM_RUN? A vCPU thread that has ended raises: the
        request will never be handled."""
        backend = self.backend
        backend.check_alive(vcpu)
        backend.await_exit(vcpu)
        return bool(READ_ONCE(vcpu.mode) != OUTSIDE_GUEST_MODE)

    def kick_vcpu_thread(self, vcpu: KvmVcpu) -> None:
        """The "IPI": Firecracker's order, immediate_exit first, then the signal."""
        self.backend.set_immediate_exit(vcpu, 1)
        self.backend.send_signal(vcpu)

    # --- the vCPU thread -------------------------------------------------------------

    def thread_setup(self, vcpu: KvmVcpu) -> None:
        """Signal set-up on the vCPU thread before the loop (the default: none)."""

    def after_eintr(self, vcpu: KvmVcpu) -> None:
        """KVM_RUN returned -EINTR: clear immediate_exit before reading requests again
        (Firecracker ``run_emulation``; QEMU ``kvm_eat_signals`` with immediate_exit)."""
        self.backend.set_immediate_exit(vcpu, 0)

    def vcpu_run(self, vcpu: KvmVcpu, entries: int | None = None) -> None:
        """The vCPU thread: ``vcpu_enter_guest`` until VM_DEAD (or ``entries`` rounds),
        then idle. QEMU ``kvm_vcpu_thread_fn`` / ``kvm_cpu_exec``, Firecracker
        ``Vcpu::run`` / ``running``, crosvm ``vcpu_loop``."""
        cpu = vcpu.kvm.host.cpus[vcpu.vcpu_idx]
        assert isinstance(cpu, SignalCpu)
        self.thread_setup(vcpu)
        self.backend.thread_start(vcpu)
        rounds = 0
        while entries is None or rounds < entries:
            rounds += 1
            if not self.vcpu_enter_guest(vcpu, cpu):
                break
        self.backend.idle(vcpu)

    def vcpu_enter_guest(self, vcpu: KvmVcpu, cpu: SignalCpu) -> bool:
        """One round: requests, the Dekker entry, KVM_RUN, the exit. False: VM dead."""
        st: UserVcpu = vcpu.arch
        if not self.handle_requests(vcpu):
            return False
        if st.halted:
            self.vcpu_block(vcpu, cpu)
            return True
        if not self.enter_guest_mode(vcpu):
            cpu.take_ipis()
            vcpu.stat.entry_aborts += 1
            vcpu.stat.last_exit = "aborted"
            return True
        exit_reason = self.backend.kvm_run(vcpu)
        WRITE_ONCE(vcpu.mode, OUTSIDE_GUEST_MODE)
        smp_wmb()
        cpu.take_ipis()  # out of KVM_RUN: every kick sent so far has done its job
        if exit_reason == EXIT_EINTR:
            vcpu.stat.last_exit = "irq"  # kicked out (or immediate_exit)
            self.after_eintr(vcpu)
        else:
            vcpu.stat.last_exit = exit_reason
            self.handle_exit(vcpu, exit_reason)
        return True

    def enter_guest_mode(self, vcpu: KvmVcpu) -> bool:
        """Publish IN_GUEST_MODE with a full barrier, then the last check: the kernel's
        ``vcpu_enter_guest`` (vcpu-requests.rst "Ensuring Requests Are Seen"), as
        :func:`~vcpureq.arch.base.dekker_enter_guest_mode` writes it."""
        return dekker_enter_guest_mode(vcpu)

    def handle_exit(self, vcpu: KvmVcpu, exit_reason: str) -> None:
        st: UserVcpu = vcpu.arch
        if exit_reason in EXITS_NEEDING_COMPLETION:
            st.io_pending = True  # the backend already handled the access's data
        elif exit_reason == EXIT_HLT:
            st.halted = True
        elif exit_reason == EXIT_IRQ_WINDOW:
            make_request(INTERRUPT, vcpu)  # a local request (no kick): inject next round

    def complete_io(self, vcpu: KvmVcpu) -> None:
        """Re-enter KVM_RUN once with immediate_exit set: KVM completes the I/O or MMIO
        access and returns -EINTR without running the guest (api.rst 5; QEMU
        ``kvm_cpu_kick_self``). A string instruction may exit again instead."""
        st: UserVcpu = vcpu.arch
        self.backend.set_immediate_exit(vcpu, 1)
        while True:
            exit_reason = self.backend.kvm_run(vcpu)
            if exit_reason == EXIT_EINTR:
                break
            self.handle_exit(vcpu, exit_reason)
        self.backend.set_immediate_exit(vcpu, 0)
        st.io_pending = False
        st.completions += 1

    def handle_requests(self, vcpu: KvmVcpu) -> bool:
        """The request block: complete a pending I/O access first, then consume every
        pending request (check_request) and handle it. False if the VM is dead."""
        pending = READ_ONCE(vcpu.requests)  # kvm_request_pending, keeping the value
        if not pending:
            return True
        st: UserVcpu = vcpu.arch
        if pending & _VM_DEAD_BIT:  # never cleared: the thread ends
            return False
        if st.io_pending:
            self.complete_io(vcpu)
        self.request_handled(vcpu)
        if vcpu.kvm.on_requests_seen is not None:
            vcpu.kvm.on_requests_seen(vcpu, pending)
        self.backend.touch_vcpu_state(vcpu)
        reqs = self._by_mask.get(pending)
        for req in reqs if reqs is not None else self._pending(pending):
            if check_request(req, vcpu):
                vcpu.stat.requests_handled += 1
                st.handled[req.name] += 1
                self.handle_request(vcpu, req)
                if vcpu.kvm.on_request is not None:
                    vcpu.kvm.on_request(vcpu, req)
        return True

    def _pending(self, mask: int) -> list[Request]:
        """pending_requests(mask, "kvm_user"), with the common masks remembered (the
        real-world hot path: one lookup instead of a table search per bit)."""
        reqs = self._by_mask.get(mask)
        if reqs is None:
            reqs = pending_requests(mask, self.request_arch)
            if len(self._by_mask) < 256:
                self._by_mask[mask] = reqs
        return reqs

    def handle_request(self, vcpu: KvmVcpu, req: Request) -> None:
        """This VMM's requests; others (TLB_FLUSH, ...) need nothing here."""
        if req is CALL:
            self.backend.run_calls(vcpu)
        elif req is PAUSE:
            self.vcpu_sleep(vcpu)
        elif req is INTERRUPT:
            if self.backend.inject_interrupts(vcpu):
                vcpu.arch.halted = False

    # --- sleeping --------------------------------------------------------------------

    def rcuwait_wait_event(self, vcpu: KvmVcpu, condition: Callable[[], Any]) -> None:
        """Sleep until ``condition()``, woken by ``vcpu_wake_up`` (include/linux/rcuwait.h
        ``rcuwait_wait_event``: register, set the task state with a full barrier, test,
        schedule; kvm_main.c ``kvm_vcpu_block``). While asleep the thread still
        acknowledges kicks: it is outside KVM_RUN."""
        cpu = vcpu.kvm.host.cpus[vcpu.vcpu_idx]
        assert isinstance(cpu, SignalCpu)
        vcpu.arch.blocks += 1

        def woken() -> bool:
            return READ_ONCE(vcpu.wait) != RCUWAIT_SLEEPING or cpu.ipi_arrived()

        while True:
            smp_store_mb(vcpu.wait, RCUWAIT_SLEEPING)  # prepare_to_rcuwait + set_current_state
            if condition():
                break
            self.backend.schedule(vcpu, woken)
            cpu.take_ipis()
        WRITE_ONCE(vcpu.wait, RCUWAIT_NONE)  # finish_rcuwait

    def vcpu_block(self, vcpu: KvmVcpu, cpu: SignalCpu) -> None:
        """HLT exited to userspace (no in-kernel irqchip): sleep until a request comes
        (kvm_vcpu_block / kvm_vcpu_check_block: an interrupt to inject is a request)."""
        self.rcuwait_wait_event(vcpu, functools.partial(request_pending, vcpu))

    def vcpu_sleep(self, vcpu: KvmVcpu) -> None:
        """PAUSE: sleep while paused (arm64 ``kvm_vcpu_sleep``). Woken for another request,
        handle it and come back: make PAUSE again (a local request)."""
        st: UserVcpu = vcpu.arch

        def resumed_or_request() -> bool:
            return not READ_ONCE(st.pause) or request_pending(vcpu)

        self.rcuwait_wait_event(vcpu, resumed_or_request)
        if READ_ONCE(st.pause):
            make_request(PAUSE, vcpu)


class KvmUserSigmask(KvmUserArch):
    """The kick signal is blocked outside KVM_RUN (KVM_SET_SIGNAL_MASK); the sender only
    signals; after -EINTR the thread consumes the pending signal."""

    name = "kvm-user-sigmask"
    kick_variant = "signal-mask"

    def kick_vcpu_thread(self, vcpu: KvmVcpu) -> None:
        self.backend.send_signal(vcpu)

    def thread_setup(self, vcpu: KvmVcpu) -> None:
        """QEMU ``kvm_init_cpu_signals`` without immediate_exit: block SIG_IPI in the
        thread, give KVM_RUN the mask without it."""
        self.backend.block_signal(vcpu)
        self.backend.unblock_signal_in_run(vcpu)

    def after_eintr(self, vcpu: KvmVcpu) -> None:
        """QEMU ``kvm_eat_signals``: the kick is still pending (blocked again outside
        KVM_RUN); consume it, or every later KVM_RUN returns -EINTR at once."""
        self.backend.eat_signals(vcpu)


class KvmUserEmptyHandler(KvmUserArch):
    """Broken on purpose: signal only, with an empty handler (Cloud Hypervisor before
    2025). A signal that lands between the last check and KVM_RUN runs the handler in
    userspace and is gone; KVM_RUN then runs the guest with the request pending."""

    name = "kvm-user-empty-handler"
    kick_variant = "none"

    def kick_vcpu_thread(self, vcpu: KvmVcpu) -> None:
        self.backend.send_signal(vcpu)

    def after_eintr(self, vcpu: KvmVcpu) -> None:
        """Nothing to clean up: the signal was taken by the empty handler."""


VARIANTS: dict[str, type[KvmUserArch]] = {
    cls.name: cls for cls in (KvmUserArch, KvmUserSigmask, KvmUserEmptyHandler)
}


# --- pausing (arm64 kvm_arm_halt_guest / kvm_arm_resume_guest) --------------------------


def pause_vcpus(vcpus: Iterable[KvmVcpu]) -> list[KvmVcpu]:
    """Mark every vCPU paused (the flag its PAUSE handler sleeps on); returns them. Then
    make PAUSE (a WAIT request): ``make_all_cpus_request`` or ``set_sync_request_many``."""
    chosen = list(vcpus)
    for vcpu in chosen:
        WRITE_ONCE(vcpu.arch.pause, 1)
    return chosen


def resume_vcpus(vcpus: Iterable[KvmVcpu]) -> None:
    """Clear the pause flag, then wake each vCPU (kvm_vcpu_wake_up has the full barrier
    between the flag and the read of the waiter)."""
    from vcpureq.common import vcpu_wake_up

    for vcpu in vcpus:
        WRITE_ONCE(vcpu.arch.pause, 0)
        vcpu_wake_up(vcpu)
