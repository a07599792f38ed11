"""A userspace VMM on /dev/kvm whose vCPU threads run the ``kvm_user`` architecture.

The request protocol code of :mod:`vcpureq.arch.kvm_user` and :mod:`vcpureq.common` runs
here unchanged, on real threads (``vcpureq.model.real_world``: Atomics are Python objects,
``wait_until`` polls with a bound), with real ``ioctl(KVM_RUN)``, a real
``kvm_run.immediate_exit`` and real signals: :class:`RealBackend` is the architecture's
vCPU backend. Each vCPU is a :class:`VmmVcpu`, a :class:`vcpureq.kvm.vcpu.Vcpu` whose
thread runs ``KvmUserArch.vcpu_run`` instead of its own loop (creating the vCPU on its
thread, handling IO/MMIO/HLT exits, crashes and teardown are inherited).

The common API works on these vCPUs as it is (``vmm.kvm`` is a :class:`vcpureq.common.Kvm`,
``vmm.kvm.vcpus[i]`` a :class:`~vcpureq.common.KvmVcpu`): ``set_request``,
``set_sync_request``, ``set_sync_request_many`` (kick all, then wait all),
``make_all_cpus_request`` with WAIT. On top, the requests a VMM needs (:class:`Vmm`):

- :meth:`Vmm.call` / :meth:`Vmm.call_async`: run a function on a vCPU's thread, outside
  KVM_RUN and with any I/O access completed (e.g. read its registers while it runs);
- :meth:`Vmm.pause_all` / :meth:`Vmm.resume_all` / :meth:`Vmm.paused`: hold every vCPU out
  of the guest (PAUSE, a WAIT request: arm64's KVM_REQ_SLEEP pattern);
- :meth:`Vmm.interrupt`: inject an interrupt, waking a halted vCPU;
- :meth:`Vmm.remap_memslot`: replace a memslot's memory; with ``sync`` every vCPU is held
  out of the guest meanwhile, so no guest ever sees the range missing (PROTOCOL.md 7: the
  userspace analogue of the s390 prefix page);
- :meth:`Vmm.stop`: VM_DEAD on every vCPU; every thread ends.

Every wait is bounded. A vCPU thread that ended (its guest crashed, its code raised, the
VM was stopped) makes requests to it fail with :class:`VcpuStopped`, naming the cause.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from vcpureq.arch.kvm_user import (
    CALL,
    EXIT_EINTR,
    EXIT_HLT,
    EXIT_IO,
    EXIT_IRQ_WINDOW,
    EXIT_MMIO,
    INTERRUPT,
    PAUSE,
    PING,
    VARIANTS,
    KvmUserArch,
    UserVcpu,
    VcpuBackend,
    pause_vcpus,
    resume_vcpus,
)
from vcpureq.common import (
    OUTSIDE_GUEST_MODE,
    Kvm,
    KvmVcpu,
    make_all_cpus_request,
    make_request,
    set_request,
    set_sync_request,
    set_sync_request_many,
    vcpu_kick,
    vcpu_wake_up,
)
from vcpureq.model import Atomic, WaitTimeout, real
from vcpureq.requests import VM_DEAD, Request

from . import native
from .guests import REGION_SIZE, Guest
from .ioctls import KVM_INTERRUPT, KVM_RUN, KVM_SET_SIGNAL_MASK, ExitReason
from .kick import KickMode, kernel_sigset
from .structs import KERNEL_SIGSET_BYTES, KvmInterrupt, KvmRegs, KvmSignalMask
from .vcpu import IoHandler, MmioHandler, Vcpu, VcpuError, VcpuTimeout
from .vm import REGIONS_BASE, Memslot, Vm

__all__ = [
    "CallHandle",
    "RealBackend",
    "VcpuStopped",
    "Vmm",
    "VmmVcpu",
    "PAUSE_METHODS",
]

_EXIT_KINDS = {
    ExitReason.IO: EXIT_IO,
    ExitReason.MMIO: EXIT_MMIO,
    ExitReason.HLT: EXIT_HLT,
    ExitReason.IRQ_WINDOW_OPEN: EXIT_IRQ_WINDOW,
}

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl_run = _libc.ioctl  # KVM_RUN without an exception per -EINTR (ctypes drops the GIL)
_ioctl_run.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_ioctl_run.restype = ctypes.c_int
_EINTR = -errno.EINTR

#: How long a requester that just signalled a vCPU thread spins (native code, without the
#: GIL) for the thread's next release of the GIL before it looks at the protocol's state
#: again (RealBackend.await_exit). The C floor's kick -> re-entry is about 18 us here.
DEFAULT_SPIN_US = 100.0

#: how :meth:`Vmm.pause_all` asks: the kernel's WAIT broadcast, the seed's many-vCPU sync
#: request (both kick all, then wait for all), or one sync request after the other
PAUSE_METHODS = ("broadcast", "many", "one-by-one")


def _libc_kvm_run(fd: int, doorbell_addr: int) -> int:
    """KVM_RUN through libc (no native helpers): the result, or -errno."""
    ctypes.c_uint32.from_address(doorbell_addr).value += 1
    if _ioctl_run(fd, KVM_RUN, 0) < 0:
        return -ctypes.get_errno()
    return 0


class VcpuStopped(VcpuError):
    """The vCPU thread has ended: a request to it will never be handled. ``__cause__`` is
    what ended it (a crash, an exception), None when it was stopped."""


class CallHandle:
    """A function queued for a vCPU thread (a CALL request's payload)."""

    def __init__(self, vmm: Vmm, index: int, fn: Callable[[VmmVcpu], Any]) -> None:
        self.vmm = vmm
        self.index = index
        self.fn = fn
        self.done = Atomic(0, name=f"call@vcpu{index}.done")
        self.result: Any = None
        self.error: BaseException | None = None

    def _run(self, thread: VmmVcpu) -> None:
        try:
            self.result = self.fn(thread)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
        self.done.store(1)

    def ready(self) -> bool:
        return bool(self.done.load())

    def wait(self, timeout: float | None = None) -> Any:
        """The function's result (its exception is raised here). Bounded: VcpuTimeout,
        or VcpuStopped if the vCPU thread ended first."""
        thread = self.vmm.vcpus[self.index]
        limit = self.vmm.timeout if timeout is None else timeout

        def finished() -> bool:
            return bool(self.done.load()) or thread.finished

        try:
            real.real_wait_until(self.vmm.world, finished, limit)
        except WaitTimeout:
            raise VcpuTimeout(f"vCPU {self.index}: a call did not run within {limit:g} s",
                              self.index) from None
        if not self.done.load():
            self.vmm.backend.raise_stopped(self.index, "before running the call")
        if self.error is not None:
            raise self.error
        return self.result


class VmmVcpu(Vcpu):
    """A vCPU whose thread runs the ``kvm_user`` architecture's loop (``_loop``)."""

    def __init__(self, vmm: Vmm, index: int, guest: Guest, region_base: int,
                 kvm_vcpu: KvmVcpu, *, on_io: IoHandler | None = None,
                 on_mmio: MmioHandler | None = None) -> None:
        # The base class's own kick handling stays off (EMPTY_HANDLER: it sets no
        # immediate_exit and no signal mask); the architecture variant does that.
        assert vmm.vm is not None
        super().__init__(vmm.vm, index, guest, region_base, kick_mode=KickMode.EMPTY_HANDLER,
                         kick_signal=vmm.vm.kick_signal, on_io=on_io, on_mmio=on_mmio)
        self.vmm = vmm
        self.kvm_vcpu = kvm_vcpu
        kvm_vcpu.arch.backend_state = self  # RealBackend finds the thread here
        self.calls: collections.deque[CallHandle] = collections.deque()
        self.irqs: collections.deque[int] = collections.deque()
        self.mask_before: set[int] = set()
        # Kickers write kvm_run.immediate_exit and signal the thread only under this lock
        # and while ``_kickable``; the thread clears it under the lock before it unmaps
        # kvm_run and ends (a plain lock: cheaper than the condition variable).
        self.kick_lock = threading.Lock()
        self._kickable = False
        # The doorbell: bumped by this vCPU thread each time it gives up the GIL to enter
        # KVM_RUN (native.kvm_run, after the release), to sleep, or to end. Requesters
        # that just signalled the thread spin on it (RealBackend.await_exit). Pacing only:
        # what a requester concludes, it reads from the protocol's Atomics.
        self.doorbell = ctypes.c_uint32(0)
        self.doorbell_addr = ctypes.addressof(self.doorbell)
        self.pace_seen = 0  # the doorbell value a requester last waited on
        self.pace_until = 0  # TSC deadline of the current spin window (0: none)
        self.kvm_run_call = vmm.kvm_run_call

    @property
    def state(self) -> UserVcpu:
        """The architecture's per-vCPU state (halted, io_pending, handled requests)."""
        return self.kvm_vcpu.arch  # type: ignore[no-any-return]

    @property
    def finished(self) -> bool:
        return self._finished

    def _loop(self) -> None:
        pin = self.vmm.pin
        if pin:
            os.sched_setaffinity(0, {pin[self.index % len(pin)]})
        with self.kick_lock:
            self._kickable = True
        try:
            self.vmm.arch.vcpu_run(self.kvm_vcpu)
        finally:
            with self.kick_lock:
                self._kickable = False
            # Not in the guest any more, for good (requests to it now raise VcpuStopped).
            self.kvm_vcpu.mode.store(OUTSIDE_GUEST_MODE)
            self.doorbell.value += 1

    def ring(self) -> None:
        """Bump the doorbell: this thread is about to give up the GIL for a while."""
        self.doorbell.value += 1

    def _teardown(self) -> None:
        with self.kick_lock:
            self._kickable = False
        super()._teardown()

    def run_once(self) -> str:
        """ioctl(KVM_RUN) once, as the architecture's loop does it (RealBackend.kvm_run)."""
        return self.vmm.backend.kvm_run(self.kvm_vcpu)


class RealBackend(VcpuBackend):
    """The ``kvm_user`` architecture's vCPU backend on /dev/kvm (see VcpuBackend)."""

    def __init__(self, vmm: Vmm) -> None:
        self.vmm = vmm
        #: the native helpers when requesters may spin (None: they only poll; spinning on
        #: a machine's only CPU would keep the vCPU thread off it)
        spin = vmm.spin_us > 0 and (os.cpu_count() or 1) > 1
        self.helpers = native.helpers() if spin else None

    @staticmethod
    def _t(vcpu: KvmVcpu) -> VmmVcpu:
        return vcpu.arch.backend_state  # type: ignore[no-any-return]  # set by VmmVcpu

    # --- the vCPU thread -------------------------------------------------------------

    def kvm_run(self, vcpu: KvmVcpu) -> str:
        """ioctl(KVM_RUN) once; handle what it returned (IO/MMIO data, reports, HLT;
        GuestCrashed for a fatal exit). Decided on errno: EINTR is a kick or
        immediate_exit, whatever exit_reason says."""
        t: VmmVcpu = vcpu.arch.backend_state
        hook = t.before_entry
        if hook is not None:
            hook(t)
        stats = t.stats
        stats.entries += 1
        r = t.kvm_run_call(t.fd, t.doorbell_addr)
        if r == _EINTR:
            stats.eintr += 1
            return EXIT_EINTR
        if r < 0:
            raise VcpuError(f"vCPU {t.index}: KVM_RUN failed: {os.strerror(-r)} "
                            f"(errno {-r})", t.index)
        run = t._run
        assert run is not None
        reason = run.exit_reason
        t._handle_exit()  # raises GuestCrashed for what the VMM cannot go on with
        return _EXIT_KINDS[reason]

    def block_signal(self, vcpu: KvmVcpu) -> None:
        t = vcpu.arch.backend_state
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {t.kick_signal})
        t.mask_before = {int(s) for s in old}

    def unblock_signal_in_run(self, vcpu: KvmVcpu) -> None:
        t = vcpu.arch.backend_state
        mask = KvmSignalMask()
        mask.len = KERNEL_SIGSET_BYTES
        mask.sigset[:] = list(kernel_sigset(t.mask_before - {t.kick_signal}))
        t._ioctl(KVM_SET_SIGNAL_MASK, mask, "KVM_SET_SIGNAL_MASK")

    def eat_signals(self, vcpu: KvmVcpu) -> None:
        sig = vcpu.arch.backend_state.kick_signal
        while signal.sigtimedwait({sig}, 0) is not None:
            pass

    def schedule(self, vcpu: KvmVcpu, predicate: Callable[[], Any]) -> None:
        """Sleep (poll) until ``predicate()``; never past the VMM's teardown."""
        vcpu.arch.backend_state.ring()
        while True:
            try:
                real.real_wait_until(self.vmm.world, predicate, 0.25)
                return
            except WaitTimeout:
                if self.vmm.closing:
                    raise VcpuError(f"vCPU {vcpu.vcpu_idx}: still asleep at teardown",
                                    vcpu.vcpu_idx) from None

    def run_calls(self, vcpu: KvmVcpu) -> None:
        t = vcpu.arch.backend_state
        while t.calls:
            t.calls.popleft()._run(t)

    def inject_interrupts(self, vcpu: KvmVcpu) -> bool:
        """KVM_INTERRUPT the first queued vector if the guest can take it now, else ask
        KVM for an exit when it can (request_interrupt_window). True if the vCPU should
        run (no longer halted). QEMU: ``kvm_arch_pre_run``."""
        t = vcpu.arch.backend_state
        run = t._run
        assert run is not None
        runnable = False
        if t.irqs:
            if run.ready_for_interrupt_injection and run.if_flag:
                vector = t.irqs.popleft()
                try:
                    fcntl.ioctl(t.fd, KVM_INTERRUPT, KvmInterrupt(vector))  # type: ignore[call-overload]
                except OSError as exc:
                    if exc.errno != errno.EEXIST:  # EEXIST: one is queued already
                        raise VcpuError(f"vCPU {t.index}: KVM_INTERRUPT({vector}) failed: "
                                        f"{os.strerror(exc.errno or 0)}", t.index) from exc
                    t.irqs.appendleft(vector)
                else:
                    t.stats.irqs_injected += 1
                    runnable = True
            elif run.if_flag:
                runnable = True  # IF set, not ready yet: run until the window opens
            # else "cli; hlt": an external interrupt cannot wake it
        run.request_interrupt_window = 1 if t.irqs else 0
        if runnable:
            with t._cv:
                t._halted = False
                t._cv.notify_all()
        return runnable

    def idle(self, vcpu: KvmVcpu) -> None:
        """The loop ended (VM_DEAD): the thread ends."""

    # --- any thread --------------------------------------------------------------------

    def set_immediate_exit(self, vcpu: KvmVcpu, value: int) -> None:
        t = vcpu.arch.backend_state
        if not value:  # only the vCPU thread clears it, and it keeps kvm_run mapped
            run = t._run
            if run is not None:
                run.immediate_exit = 0
            return
        with t.kick_lock:  # only while the thread keeps kvm_run mapped
            run = t._run
            if t._kickable and run is not None:
                run.immediate_exit = value

    def send_signal(self, vcpu: KvmVcpu) -> None:
        t = vcpu.arch.backend_state
        if self.helpers is not None:  # a spin window for await_exit, opened by its first call
            t.pace_seen = t.doorbell.value
            t.pace_until = -1
        with t.kick_lock:  # never to a thread that has ended (its id may be reused)
            if t._kickable:
                signal.pthread_kill(t._ident, t.kick_signal)  # type: ignore[arg-type]
                t.stats.kicks_sent += 1

    def await_exit(self, vcpu: KvmVcpu) -> None:
        """A requester is about to look whether the vCPU left the guest (``in_guest``, or
        a WAIT broadcast's acknowledgement). If it was signalled within the last
        ``Vmm.spin_us`` and has not released the GIL since, spin in native code, without
        the GIL, until its thread does (it entered KVM_RUN again, or sleeps, or ended) or
        the window closes. The answer is then read from the protocol's state as always:
        this changes when the real world's poll looks, never what it sees. It replaces
        sleeps between polls that cost more than the whole kick on a machine whose idle
        CPUs halt (docs/kvm.md), and leaves the GIL free for the vCPU thread coming
        back from KVM_RUN."""
        t = vcpu.arch.backend_state
        until = t.pace_until
        if until and vcpu.mode.load() != OUTSIDE_GUEST_MODE:
            h = self.helpers
            assert h is not None
            if until < 0:  # the first look since the signal: the window starts now
                until = t.pace_until = h.deadline(self.vmm.spin_us)
            seen = t.pace_seen
            now_seen = h.spin_while(t.doorbell_addr, seen, until)
            if now_seen == seen:
                t.pace_until = 0  # the window closed: plain polls from now on
            t.pace_seen = now_seen

    def thread_ended(self, vcpu: KvmVcpu) -> bool:
        return vcpu.arch.backend_state._finished

    def check_alive(self, vcpu: KvmVcpu) -> None:
        if vcpu.arch.backend_state._finished:
            self.raise_stopped(vcpu.vcpu_idx)

    def raise_stopped(self, index: int, when: str = "") -> None:
        t = self.vmm.vcpus[index]
        err = t.error
        why = f": {err}" if err is not None else " (the VM was stopped)"
        raise VcpuStopped(f"vCPU {index} has stopped{' ' + when if when else ''}{why}",
                          index) from err


class Vmm:
    """A VM whose vCPU threads run the ``kvm_user`` architecture (``variant``: one of
    ``vcpureq.arch.kvm_user.VARIANTS``). ``guests``: one guest for every vCPU, or one per
    vCPU. ``memslots``: (gpa, size, initial data) of extra memslots (slots 1, 2, ...),
    there before the vCPUs start. ``pin``: host CPUs; vCPU thread ``i`` runs on
    ``pin[i % len(pin)]`` (for measurements). ``spin_us``: how long a requester that just
    signalled a vCPU thread spins for it without the GIL (RealBackend.await_exit; 0: it
    only polls). Use as a context manager; :meth:`close` stops the vCPUs and frees
    everything.

    Requests are made by any thread through the common API on ``self.kvm.vcpus``, or the
    methods below. ``timeout`` bounds every wait (the real world's bound).
    """

    def __init__(
        self,
        guests: Guest | Sequence[Guest],
        nr_vcpus: int | None = None,
        *,
        variant: str = "kvm-user",
        timeout: float = 10.0,
        on_io: IoHandler | None = None,
        on_mmio: MmioHandler | None = None,
        memslots: Sequence[tuple[int, int, bytes | None]] = (),
        pin: Sequence[int] | None = None,
        spin_us: float = DEFAULT_SPIN_US,
    ) -> None:
        if isinstance(guests, Guest):
            guests = [guests] * (nr_vcpus or 1)
        guests = list(guests)
        if nr_vcpus is not None and nr_vcpus != len(guests):
            raise ValueError(f"{len(guests)} guests for {nr_vcpus} vCPUs")
        if not guests:
            raise ValueError("a VM needs at least one vCPU")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
        self.variant = variant
        self.timeout = timeout
        self.spin_us = spin_us
        h = native.helpers()
        #: KVM_RUN as the vCPU threads call it: (fd, doorbell address) -> result or -errno
        self.kvm_run_call: Callable[[int, int], int] = (
            h.kvm_run if h is not None else _libc_kvm_run)
        self.pin = list(pin) if pin else None
        self.closing = False
        self._closed = False
        self._world_cm: Any = None
        world = real.current()
        if world is None:
            self._world_cm = real.real_world(timeout=timeout)
            world = self._world_cm.__enter__()
        self.world: real.RealWorld = world
        self.vcpus: list[VmmVcpu] = []
        self.vm: Vm | None = None
        try:
            self.vm = Vm()
            for gpa, size, data in memslots:  # before any vCPU runs
                self.vm.add_memslot(gpa, size, data=data)
            self.backend = RealBackend(self)
            self.arch: KvmUserArch = VARIANTS[variant](backend=self.backend)
            self.kvm = Kvm(self.arch, len(guests))
            for i, guest in enumerate(guests):
                base = REGIONS_BASE + i * REGION_SIZE
                if base + REGION_SIZE > self.vm.ram.size:
                    raise VcpuError(f"no room for vCPU {i} in {self.vm.ram.size:#x} bytes")
                self.vm.write(base, bytes(REGION_SIZE))
                self.vm.write(base, guest.code)
                t = VmmVcpu(self, i, guest, base, self.kvm.vcpus[i], on_io=on_io,
                            on_mmio=on_mmio)
                self.vm.vcpus.append(t)
                self.vcpus.append(t)
            for t in self.vcpus:
                t.start(timeout)
        except BaseException:
            self.close()
            raise

    # --- access ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.vcpus)

    def kvm_vcpu(self, index: int) -> KvmVcpu:
        return self.kvm.vcpus[index]

    def check(self) -> None:
        """Raise the first vCPU thread's exception, if one failed."""
        for t in self.vcpus:
            t.check()

    def _need(self, index: int) -> KvmVcpu:
        if self._closed or self.closing:
            raise VcpuStopped(f"vCPU {index}: the VM is closed", index)
        return self.kvm.vcpus[index]

    # --- requests ---------------------------------------------------------------------

    def request(self, index: int, req: Request, *, sync: bool = False) -> None:
        """``set_request`` (or ``set_sync_request``) of ``req`` on vCPU ``index``."""
        vcpu = self._need(index)
        if sync:
            set_sync_request(req, vcpu)
        else:
            set_request(req, vcpu)

    def ping(self, index: int, *, sync: bool = True) -> None:
        """A request that does nothing: the cost of the protocol itself."""
        self.request(index, PING, sync=sync)

    def call_async(self, index: int, fn: Callable[[VmmVcpu], Any]) -> CallHandle:
        """Queue ``fn(vcpu)`` for vCPU ``index``'s thread and kick it (``set_request``);
        returns at once. ``handle.wait()`` gives the result."""
        vcpu = self._need(index)
        handle = CallHandle(self, index, fn)
        self.vcpus[index].calls.append(handle)  # the payload, before make_request's wmb
        set_request(CALL, vcpu)
        return handle

    def call(self, index: int, fn: Callable[[VmmVcpu], Any],
             timeout: float | None = None) -> Any:
        """Run ``fn(vcpu)`` on vCPU ``index``'s thread, outside KVM_RUN with any I/O
        completed (``set_sync_request``: on return the vCPU is out of the guest and runs
        ``fn`` before it enters again), and return its result."""
        vcpu = self._need(index)
        handle = CallHandle(self, index, fn)
        self.vcpus[index].calls.append(handle)
        set_sync_request(CALL, vcpu)
        return handle.wait(timeout)

    def get_regs(self, index: int, timeout: float | None = None) -> KvmRegs:
        """The vCPU's registers, read on its thread (coherent: the guest is not running
        and a pending I/O access has completed)."""
        return self.call(index, lambda t: t._get_regs(), timeout)  # type: ignore[no-any-return]

    def interrupt(self, index: int, vector: int) -> None:
        """Inject external interrupt ``vector`` (wakes a halted vCPU): queue it, then
        ``set_request(INTERRUPT)``."""
        if not 0 <= vector <= 0xFF:
            raise ValueError("vector must be in [0, 255]")
        vcpu = self._need(index)
        self.vcpus[index].irqs.append(vector)
        set_request(INTERRUPT, vcpu)

    def pause_all(self, method: str = "broadcast") -> None:
        """Hold every vCPU out of the guest: on return none runs it, and none will until
        :meth:`resume_all`. ``method``: see PAUSE_METHODS."""
        if method not in PAUSE_METHODS:
            raise ValueError(f"unknown method {method!r} (known: {', '.join(PAUSE_METHODS)})")
        vcpus = pause_vcpus(self._need(i) for i in range(len(self.vcpus)))
        if method == "broadcast":
            make_all_cpus_request(self.kvm, PAUSE)
        elif method == "many":
            set_sync_request_many(PAUSE, vcpus)
        else:
            for vcpu in vcpus:
                set_sync_request(PAUSE, vcpu)
        self.check()

    def resume_all(self) -> None:
        resume_vcpus(self.kvm.vcpus)

    @contextlib.contextmanager
    def paused(self, method: str = "broadcast") -> Iterator[None]:
        self.pause_all(method)
        try:
            yield
        finally:
            self.resume_all()

    # --- memory -------------------------------------------------------------------------

    def add_memslot(self, gpa: int, size: int, *, slot: int | None = None,
                    data: bytes | None = None) -> Memslot:
        assert self.vm is not None
        return self.vm.add_memslot(gpa, size, slot=slot, data=data)

    def remap_memslot(self, slot: int, *, sync: bool = True, hold: float = 0.0) -> None:
        """Give memslot ``slot`` fresh host memory with the same contents: delete it, then
        create it again (KVM cannot change a slot's userspace address in place). With
        ``sync`` every vCPU is held out of the guest meanwhile (:meth:`paused`); without,
        a running guest may find the range missing (an MMIO exit). ``hold`` keeps the
        slot deleted that long (a slow remap)."""
        assert self.vm is not None
        vm = self.vm

        def remap() -> None:
            ms = vm.memslots[slot]
            data, gpa, size, flags = bytes(ms.mapping), ms.guest_phys_addr, ms.size, ms.flags
            vm.delete_memslot(slot)
            if hold:
                time.sleep(hold)
            vm.add_memslot(gpa, size, slot=slot, flags=flags, data=data)

        if sync:
            with self.paused():
                remap()
        else:
            remap()

    # --- teardown ----------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """VM_DEAD on every vCPU, kick them all (waking sleepers), join every thread,
        re-signalling every 10 ms (the racy variant can lose a kick). VcpuTimeout if a
        thread does not end in time. Does not raise the vCPUs' own errors (see check)."""
        limit = self.timeout if timeout is None else timeout
        live = [t for t in self.vcpus if t.thread.ident is not None and t.alive]
        for t in live:
            make_request(VM_DEAD, t.kvm_vcpu)
        for t in live:
            if not t.finished:
                vcpu_kick(t.kvm_vcpu)
        deadline = time.monotonic() + limit
        for t in live:
            while t.alive:
                if time.monotonic() > deadline:
                    raise VcpuTimeout(f"vCPU {t.index} thread did not stop within {limit:g} s",
                                      t.index)
                t.thread.join(0.01)
                if t.alive:
                    vcpu_wake_up(t.kvm_vcpu)
                    self.arch.kick_vcpu_thread(t.kvm_vcpu)

    def close(self) -> None:
        """Stop every vCPU thread, close every fd and mapping, leave the real world."""
        if self._closed:
            return
        try:
            try:
                if self.vcpus:
                    self.stop()
            finally:
                self.closing = True  # sleepers that did not wake now give up
                if self.vm is not None:
                    self.vm.close()  # joins (bounded) before it frees fds and memory
        finally:
            self._closed = True
            self.closing = True
            if self._world_cm is not None:
                cm, self._world_cm = self._world_cm, None
                cm.__exit__(None, None, None)

    def __enter__(self) -> Vmm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observation ---------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-vCPU counters for display: exits by reason, entries, kicks, requests."""
        rows = []
        for t in self.vcpus:
            st = t.state
            rows.append({
                "vcpu": t.index,
                "guest": t.guest.name,
                "alive": t.alive,
                "halted": st.halted,
                "entries": t.stats.entries,
                "eintr": t.stats.eintr,
                "exits": dict(t.stats.exits),
                "kicks": t.stats.kicks_sent,
                "entry_aborts": t.kvm_vcpu.stat.entry_aborts,
                "completions": st.completions,
                "blocks": st.blocks,
                "requests": dict(st.handled),
                "irqs": t.stats.irqs_injected,
            })
        return rows
