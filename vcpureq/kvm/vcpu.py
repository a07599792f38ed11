"""A vCPU and the thread that creates it and runs it (api.rst: issue vCPU ioctls from the
thread that created the vCPU).

The run loop is the userspace VMM's half of the request protocol (PROTOCOL.md section 7):

    loop:
        [IMMEDIATE_EXIT] kvm_run.immediate_exit = 0          # before reading requests
        read requests (stop, pause, calls, interrupts); acknowledge kicks
        if a request needs the vCPU's state and the last exit was IO/MMIO:
            KVM_RUN with immediate_exit = 1                   # completes the access, -EINTR
        handle requests
        KVM_RUN                                               # "guest mode"
        -EINTR -> a kick: [SIGNAL_MASK] consume the pending signal; loop
        0      -> handle kvm_run.exit_reason; loop

Requests are made by other threads under one condition variable; a request that needs the
vCPU out of guest mode is followed by a kick (:mod:`vcpureq.kvm.kick`). Every wait on the
host side has a timeout and a clear error, and an exception in the vCPU thread (a crashed
guest included) is re-raised to whoever waits on that vCPU.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import errno
import fcntl
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .guests import STACK_TOP, Guest
from .ioctls import (
    EXITS_NEEDING_COMPLETION,
    FATAL_EXITS,
    KVM_CREATE_VCPU,
    KVM_EXIT_IO_OUT,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_INTERRUPT,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SIGNAL_MASK,
    KVM_SET_SREGS,
    ExitReason,
    InternalError,
)
from .kick import KickMode, kernel_sigset
from .structs import KERNEL_SIGSET_BYTES, KvmInterrupt, KvmRegs, KvmRun, KvmSignalMask, KvmSregs

if TYPE_CHECKING:
    from .vm import Vm

T = TypeVar("T")

REPORT_HISTORY = 4096  # reports kept per port (the total count is kept too)


class VcpuError(RuntimeError):
    """A vCPU thread failed; ``index`` names the vCPU."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class GuestCrashed(VcpuError):
    """The guest cannot go on: KVM_EXIT_SHUTDOWN (triple fault), INTERNAL_ERROR,
    FAIL_ENTRY, ... ``exit_reason`` and ``details`` say which and why."""

    def __init__(self, index: int, guest: str, exit_reason: int, details: dict[str, Any]):
        name = ExitReason.name_of(exit_reason)
        extra = ", ".join(f"{k}={v}" for k, v in details.items())
        super().__init__(
            f"vCPU {index} ({guest}) crashed: KVM_EXIT_{name}" + (f" ({extra})" if extra else ""),
            index,
        )
        self.exit_reason = exit_reason
        self.guest = guest
        self.details = details


class VcpuTimeout(TimeoutError):
    """A wait on a vCPU ran out of time; the message says what was awaited."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclasses.dataclass
class MmioAccess:
    phys_addr: int
    length: int
    is_write: bool
    data: bytes


@dataclasses.dataclass
class VcpuStats:
    entries: int = 0  # KVM_RUN calls
    eintr: int = 0  # KVM_RUN returned -EINTR
    completions: int = 0  # immediate_exit re-entries that completed an IO/MMIO access
    kicks_sent: int = 0  # signals sent to this vCPU thread
    irqs_injected: int = 0
    exits: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


IoHandler = Callable[["Vcpu", int, bool, int, bytes], "bytes | None"]
MmioHandler = Callable[["Vcpu", int, bool, int, bytes], "bytes | None"]


class RunMapping:
    """``mmap(vcpu_fd, 0)``: the kvm_run page and the pages after it (PIO data, coalesced
    MMIO ring). Mapped with libc so that no Python buffer export can keep it alive: the
    vCPU thread unmaps it deterministically when it ends."""

    _libc: Any = None

    def __init__(self, fd: int, size: int) -> None:
        libc = RunMapping._lib()
        addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of the vcpu fd: {os.strerror(err)}")
        self.address: int = addr
        self.size = size

    @classmethod
    def _lib(cls) -> Any:
        if cls._libc is None:
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            libc.mmap.restype = ctypes.c_void_p
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.munmap.restype = ctypes.c_int
            cls._libc = libc
        return cls._libc

    def _check(self, offset: int, length: int) -> None:
        if self.address == 0:
            raise ValueError("the kvm_run mapping is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"0x{offset:x}+{length} outside the {self.size}-byte mapping")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return ctypes.string_at(self.address + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        ctypes.memmove(self.address + offset, data, len(data))

    def close(self) -> None:
        if self.address:
            if RunMapping._lib().munmap(self.address, self.size) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"munmap of kvm_run: {os.strerror(err)}")
            self.address = 0


class _Call:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[Vcpu], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class Vcpu:
    """One vCPU, created on and run by its own thread. Made by :meth:`Vm.add_vcpu`.

    Host-side API (any thread): :meth:`kick`, :meth:`pause`, :meth:`resume`, :meth:`call`,
    :meth:`get_regs`, :meth:`interrupt`, :meth:`stop`, :meth:`wait`, :meth:`wait_until`,
    :meth:`wait_for_report`, :meth:`reports`.
    """

    def __init__(
        self,
        vm: Vm,
        index: int,
        guest: Guest,
        region_base: int,
        *,
        kick_mode: KickMode,
        kick_signal: int,
        on_io: IoHandler | None = None,
        on_mmio: MmioHandler | None = None,
        name: str | None = None,
    ) -> None:
        self.vm = vm
        self.index = index
        self.guest = guest
        self.region_base = region_base
        self.kick_mode = KickMode(kick_mode)
        self.kick_signal = kick_signal
        self.on_io = on_io
        self.on_mmio = on_mmio
        self.name = name or f"vcpu{index}"
        self.stats = VcpuStats()
        # Test hook: called in the vCPU thread after the request check, just before KVM_RUN
        # (the window in which a kick without immediate_exit is lost).
        self.before_entry: Callable[[Vcpu], None] | None = None

        self._cv = threading.Condition(threading.RLock())  # predicates may use properties
        # --- state shared with other threads (guarded by _cv) ---
        self._alive = False  # the thread may be signalled and kvm_run may be written
        self._finished = False
        self._ident: int | None = None
        self.native_id: int | None = None
        self.error: BaseException | None = None
        self._stop = False
        self._pause = False
        self._paused = False
        self._calls: collections.deque[_Call] = collections.deque()
        self._irqs: collections.deque[int] = collections.deque()
        self._kick_seq = 0
        self._ack_seq = 0
        self._halted = False
        self._reports: dict[int, collections.deque[tuple[int, int]]] = {}  # (seq, value)
        self._report_totals: collections.Counter[int] = collections.Counter()
        self._mmio: collections.deque[MmioAccess] = collections.deque(maxlen=REPORT_HISTORY)
        self._mmio_total = 0
        self._ready = False
        # --- owned by the vCPU thread ---
        self.fd = -1
        self._run_map: RunMapping | None = None
        self._run: KvmRun | None = None
        self._io_pending = False
        self._thread = threading.Thread(target=self._main, name=f"vcpureq-{self.name}",
                                        daemon=True)

    # ------------------------------------------------------------------ host side
    def start(self, timeout: float = 10.0) -> None:
        """Start the thread; return once the vCPU exists and its registers are set."""
        self._thread.start()
        self.wait_until(lambda v: v._ready, timeout, "the vCPU thread to create its vCPU")

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def halted(self) -> bool:
        with self._cv:
            return self._halted

    @property
    def paused(self) -> bool:
        with self._cv:
            return self._paused

    def _in_thread(self) -> bool:
        return threading.get_ident() == self._ident

    def _raise_if_failed(self) -> None:
        err = self.error
        if err is None:
            return
        if isinstance(err, VcpuError):
            raise err
        raise VcpuError(f"vCPU {self.index} thread failed: {err!r}", self.index) from err

    def _signal_locked(self) -> bool:
        """Send the kick (caller holds _cv). False if the thread can no longer be signalled."""
        if not self._alive or self._ident is None:
            return False
        if self.kick_mode is KickMode.IMMEDIATE_EXIT and self._run is not None:
            self._run.immediate_exit = 1  # before the signal: read once by KVM_RUN
        signal.pthread_kill(self._ident, self.kick_signal)
        self.stats.kicks_sent += 1
        return True

    def kick(self, wait: bool = False, timeout: float = 5.0,
             resend_every: float | None = None) -> int:
        """Make the vCPU leave guest mode (or not enter it) and look at its requests.

        With ``wait``, return only once the vCPU thread acknowledged the kick from outside
        KVM_RUN (a sync request). ``resend_every`` re-signals while waiting (Cloud
        Hypervisor's workaround for the racy variant). Returns the kick's sequence number.
        """
        with self._cv:
            self._kick_seq += 1
            seq = self._kick_seq
            self._signal_locked()
            self._cv.notify_all()
        if wait:
            self.wait_kick(seq, timeout, resend_every)
        return seq

    def wait_kick(self, seq: int, timeout: float = 5.0,
                  resend_every: float | None = None) -> None:
        """Wait until kick ``seq`` (from :meth:`kick`) was acknowledged by the vCPU thread
        from outside KVM_RUN; VcpuTimeout if not within ``timeout``."""
        if self._in_thread():
            return
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._ack_seq < seq:
                if self.error is not None or self._finished:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VcpuTimeout(
                        f"vCPU {self.index}: kick {seq} not acknowledged within {timeout:.3g}s "
                        f"(kick mode {self.kick_mode.value}; a kick that lands before KVM_RUN "
                        "without immediate_exit or a signal mask is lost)",
                        self.index,
                    )
                step = left if resend_every is None else min(left, resend_every)
                if not self._cv.wait(step) and resend_every is not None:
                    self._signal_locked()
        if self._ack_seq < seq:
            self._raise_if_failed()
            raise VcpuError(f"vCPU {self.index} stopped before acknowledging the kick",
                            self.index)

    def pause(self, wait: bool = True, timeout: float = 5.0) -> None:
        """Sync request: the vCPU leaves guest mode, completes any pending IO/MMIO access
        and stays out until :meth:`resume`. Callable from the vCPU thread (no wait then)."""
        with self._cv:
            self._pause = True
            if not self._in_thread():
                self._signal_locked()
            self._cv.notify_all()
        if wait and not self._in_thread():
            self.wait_until(lambda v: v._paused or v._finished, timeout,
                            "the vCPU to pause", self._request_resend)
            self._raise_if_failed()

    def resume(self) -> None:
        with self._cv:
            self._pause = False
            self._cv.notify_all()

    def call(self, fn: Callable[[Vcpu], T], timeout: float = 5.0) -> T:
        """Run ``fn(vcpu)`` on the vCPU thread, outside KVM_RUN, with any pending IO/MMIO
        access completed first (api.rst 5). This is how to touch vCPU state safely."""
        if self._in_thread():
            return fn(self)
        c = _Call(fn)
        with self._cv:
            if self._finished:
                self._raise_if_failed()
                raise VcpuError(f"vCPU {self.index} is not running", self.index)
            self._calls.append(c)
            self._signal_locked()
            self._cv.notify_all()
        self.wait_until(lambda v: c.done or v._finished, timeout, "a call on the vCPU thread",
                        self._request_resend)
        if not c.done:
            self._raise_if_failed()
            raise VcpuError(f"vCPU {self.index} stopped before running the call", self.index)
        if c.error is not None:
            raise c.error
        return c.result  # type: ignore[no-any-return]

    def get_regs(self, timeout: float = 5.0) -> KvmRegs:
        return self.call(lambda v: v._get_regs(), timeout)

    def get_sregs(self, timeout: float = 5.0) -> KvmSregs:
        return self.call(lambda v: v._get_sregs(), timeout)

    def interrupt(self, vector: int) -> None:
        """Queue an external interrupt (a vector; no irqchip). The vCPU thread injects it
        with KVM_INTERRUPT when the guest can take it, waking a halted vCPU."""
        if not 0 <= vector <= 0xFF:
            raise ValueError("vector must be in [0, 255]")
        with self._cv:
            self._irqs.append(vector)
            if not self._halted:
                self._signal_locked()
            self._cv.notify_all()

    def stop(self, timeout: float = 5.0, *, join: bool = True) -> None:
        """Ask the thread to stop; with ``join``, wait for it (its vCPU fd is then closed).
        Does not raise the guest's error: :meth:`wait` and :meth:`check` do."""
        with self._cv:
            self._stop = True
            self._signal_locked()
            self._cv.notify_all()
        if join:
            self.join_stopped(time.monotonic() + timeout)

    def join_stopped(self, deadline: float) -> None:
        """Join a thread asked to stop, re-sending the kick every 10 ms: with the racy
        EMPTY_HANDLER variant a single kick can be lost."""
        if self._thread.ident is None or self._in_thread():
            return
        while self._thread.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                raise VcpuTimeout(f"vCPU {self.index} thread did not stop in time", self.index)
            self._thread.join(min(left, 0.01))
            with self._cv:
                if self._thread.is_alive():
                    self._signal_locked()

    def wait(self, timeout: float) -> None:
        """Wait for the thread to end (stop or crash); re-raise its exception."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise VcpuTimeout(f"vCPU {self.index} still running after {timeout}s", self.index)
        self._raise_if_failed()

    def check(self) -> None:
        """Raise the vCPU thread's exception, if it failed."""
        self._raise_if_failed()

    def wait_until(self, predicate: Callable[[Vcpu], bool], timeout: float, what: str,
                   resend_every: float | None = None) -> None:
        """Wait until ``predicate(self)`` holds (evaluated under the vCPU's lock, after every
        exit it records). Raises the thread's error if it fails meanwhile, VcpuTimeout if
        time runs out. ``resend_every`` re-sends the kick signal while waiting."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self):
                if self.error is not None:
                    break
                if self._finished:
                    raise VcpuError(f"vCPU {self.index} stopped while waiting for {what}",
                                    self.index)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VcpuTimeout(f"vCPU {self.index}: timed out after {timeout:.3g}s "
                                      f"waiting for {what}", self.index)
                step = left if resend_every is None else min(left, resend_every)
                if not self._cv.wait(step) and resend_every is not None:
                    self._signal_locked()
            else:
                return
        self._raise_if_failed()

    @property
    def _request_resend(self) -> float | None:
        """Requests other than a bare kick re-signal every 10 ms in the racy variant
        (Cloud Hypervisor's workaround), so that pause/call/stop still complete."""
        return 0.01 if self.kick_mode is KickMode.EMPTY_HANDLER else None

    def wait_halted(self, timeout: float = 5.0) -> None:
        """Wait until the guest executed HLT and the vCPU sleeps in the VMM."""
        self.wait_until(lambda v: v._halted, timeout, "the guest to halt")

    def wait_for_report(self, port: int, predicate: Callable[[int], bool] | None = None,
                        timeout: float = 5.0, *, count: int = 1) -> list[int]:
        """Wait until ``count`` reports on ``port`` made from now on satisfy ``predicate``;
        return their values (oldest first)."""
        with self._cv:
            seen = self._report_totals[port]
        found: list[int] = []

        def ready(v: Vcpu) -> bool:
            nonlocal seen
            total = v._report_totals[port]
            if total > seen:
                fresh = [val for seq, val in reversed(v._reports[port]) if seq > seen]
                fresh.reverse()
                found.extend(x for x in fresh if predicate is None or predicate(x))
                seen = total
            return len(found) >= count

        self.wait_until(ready, timeout, f"{count} report(s) on port 0x{port:x}")
        return found[:count]

    def reports(self, port: int) -> list[int]:
        """The recent values the guest wrote to ``port`` (oldest first)."""
        with self._cv:
            return [val for _, val in self._reports.get(port, ())]

    def report_count(self, port: int) -> int:
        with self._cv:
            return self._report_totals[port]

    def mmio_accesses(self) -> list[MmioAccess]:
        """Recent accesses to unbacked guest-physical addresses (e.g. a deleted memslot)."""
        with self._cv:
            return list(self._mmio)

    @property
    def mmio_count(self) -> int:
        with self._cv:
            return self._mmio_total

    def read_data(self, offset: int, size: int = 4) -> int:
        """A little-endian integer at ``offset`` of this vCPU's home region (host view)."""
        return int.from_bytes(self.vm.read(self.region_base + offset, size), "little")

    # ------------------------------------------------------------------ vCPU thread
    def _ioctl(self, request: int, arg: Any = 0, what: str = "") -> int:
        try:
            if isinstance(arg, int):
                return fcntl.ioctl(self.fd, request, arg)
            return fcntl.ioctl(self.fd, request, arg, True)  # type: ignore[call-overload]
        except OSError as exc:
            raise VcpuError(f"vCPU {self.index}: {what or hex(request)} failed: "
                            f"{os.strerror(exc.errno or 0)}", self.index) from exc

    def _get_regs(self) -> KvmRegs:
        regs = KvmRegs()
        self._ioctl(KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def _get_sregs(self) -> KvmSregs:
        sregs = KvmSregs()
        self._ioctl(KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def _setup(self) -> None:
        """Create the vCPU on this thread, map kvm_run, enter real mode at the guest."""
        try:
            self.fd = fcntl.ioctl(self.vm.fd, KVM_CREATE_VCPU, self.index)
        except OSError as exc:
            raise VcpuError(f"KVM_CREATE_VCPU({self.index}) failed: "
                            f"{os.strerror(exc.errno or 0)}", self.index) from exc
        self._run_map = RunMapping(self.fd, self.vm.vcpu_mmap_size)
        self._run = KvmRun.from_address(self._run_map.address)
        sregs = self._get_sregs()
        segment = self.region_base >> 4
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            seg.base = self.region_base
            seg.selector = segment
            seg.limit = 0xFFFF
        self._ioctl(KVM_SET_SREGS, sregs, "KVM_SET_SREGS")
        regs = KvmRegs()
        regs.rip = 0
        regs.rsp = STACK_TOP
        regs.rflags = 0x2  # bit 1 is always set; IF = 0 until the guest says sti
        self._ioctl(KVM_SET_REGS, regs, "KVM_SET_REGS")
        if self.kick_mode is KickMode.SIGNAL_MASK:
            # Block the kick signal in this thread; KVM unblocks it only inside KVM_RUN.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {self.kick_signal})
            during_run = {int(s) for s in old} - {self.kick_signal}
            mask = KvmSignalMask()
            mask.len = KERNEL_SIGSET_BYTES
            mask.sigset[:] = list(kernel_sigset(during_run))
            self._ioctl(KVM_SET_SIGNAL_MASK, mask, "KVM_SET_SIGNAL_MASK")

    def _main(self) -> None:
        try:
            with self._cv:
                self._ident = threading.get_ident()
                self.native_id = threading.get_native_id()
            self._setup()
            with self._cv:
                self._alive = True
                self._ready = True
                self._cv.notify_all()
            self._loop()
        except BaseException as exc:  # noqa: B036 - propagated to whoever waits
            self.error = exc
        finally:
            with self._cv:
                self._alive = False  # no more signals, no more kvm_run writes by senders
                self._finished = True
                self._paused = False
                for c in self._calls:
                    c.error = VcpuError(f"vCPU {self.index} stopped", self.index)
                    c.done = True
                self._calls.clear()
                self._cv.notify_all()
            self._teardown()

    def _teardown(self) -> None:
        # Senders no longer touch kvm_run (_alive is False), so it can be unmapped.
        self._run = None
        try:
            if self._run_map is not None:
                self._run_map.close()
                self._run_map = None
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _complete_pending_io(self) -> None:
        """api.rst 5: IO/MMIO exits complete only in the next KVM_RUN. Re-enter with
        immediate_exit set: KVM finishes the access, then returns -EINTR without running
        the guest. A string instruction may exit again instead; handle that exit too."""
        run = self._run
        assert run is not None
        while self._io_pending:
            run.immediate_exit = 1
            self.stats.entries += 1
            try:
                fcntl.ioctl(self.fd, KVM_RUN, 0)
            except InterruptedError:
                self.stats.eintr += 1
                self.stats.completions += 1
                self._io_pending = False
                self._eat_kick()
            except OSError as exc:
                raise VcpuError(f"vCPU {self.index}: KVM_RUN (completion) failed: "
                                f"{os.strerror(exc.errno or 0)}", self.index) from exc
            else:
                self._handle_exit()
        run.immediate_exit = 0  # (IMMEDIATE_EXIT mode: the loop top clears it again anyway)

    def _eat_kick(self) -> None:
        if self.kick_mode is KickMode.SIGNAL_MASK:
            # The kick stays pending (blocked) after KVM_RUN: consume it, or every later
            # KVM_RUN returns -EINTR at once.
            while signal.sigtimedwait({self.kick_signal}, 0) is not None:
                pass

    _STOP, _COMPLETE, _CALLS, _ENTER = range(4)

    def _next_action(self, run: KvmRun) -> tuple[int, list[_Call]]:
        """Read the requests (under the lock) and decide what to do before entering; block
        while paused or halted. Kicks are acknowledged here: the thread is outside KVM_RUN
        and reads every request made before the kick."""
        cv = self._cv
        with cv:
            while True:
                if self._ack_seq != self._kick_seq:
                    self._ack_seq = self._kick_seq
                    cv.notify_all()
                if self._stop:
                    return self._STOP, []
                if (self._calls or self._pause) and self._io_pending:
                    return self._COMPLETE, []
                if self._calls:
                    calls = list(self._calls)
                    self._calls.clear()
                    return self._CALLS, calls
                if self._pause:
                    if not self._paused:
                        self._paused = True
                        cv.notify_all()
                    cv.wait(0.5)
                    continue
                if self._paused:
                    self._paused = False
                    cv.notify_all()
                if self._irqs:
                    self._inject_locked(run)
                if self._halted:
                    # Userspace irqchip: HLT exited to us. Sleep until an interrupt can be
                    # injected or another request comes: the VMM's vcpu_block().
                    cv.wait(0.5)
                    continue
                return self._ENTER, []

    def _loop(self) -> None:
        run = self._run
        assert run is not None
        while True:
            if self.kick_mode is KickMode.IMMEDIATE_EXIT:
                run.immediate_exit = 0  # before reading requests: a later kick sets it again
            action, calls = self._next_action(run)
            if action == self._STOP:
                return
            if action == self._COMPLETE:
                self._complete_pending_io()
                continue
            if action == self._CALLS:
                for c in calls:
                    try:
                        c.result = c.fn(self)
                    except BaseException as exc:  # noqa: B036 - handed to the caller
                        c.error = exc
                    with self._cv:
                        c.done = True
                        self._cv.notify_all()
                continue
            hook = self.before_entry
            if hook is not None:
                hook(self)
            self.stats.entries += 1
            try:
                fcntl.ioctl(self.fd, KVM_RUN, 0)
            except InterruptedError:
                # -EINTR: a kick (decided on errno; exit_reason says KVM_EXIT_INTR too).
                self.stats.eintr += 1
                self._eat_kick()
                continue
            except OSError as exc:
                raise VcpuError(f"vCPU {self.index}: KVM_RUN failed: "
                                f"{os.strerror(exc.errno or 0)} (errno {exc.errno})",
                                self.index) from exc
            self._handle_exit()

    def _inject_locked(self, run: KvmRun) -> None:
        """KVM_INTERRUPT the first queued vector if the guest can take it now, else ask KVM
        for an exit when it can (request_interrupt_window). Caller holds the lock."""
        if run.ready_for_interrupt_injection and run.if_flag:
            vector = self._irqs.popleft()
            try:
                fcntl.ioctl(self.fd, KVM_INTERRUPT, KvmInterrupt(vector))  # type: ignore[call-overload]
            except OSError as exc:
                if exc.errno != errno.EEXIST:  # EEXIST: one is queued already; retry later
                    raise VcpuError(f"vCPU {self.index}: KVM_INTERRUPT({vector}) failed: "
                                    f"{os.strerror(exc.errno or 0)}", self.index) from exc
                self._irqs.appendleft(vector)
            else:
                self.stats.irqs_injected += 1
                self._halted = False
        elif self._halted and not run.if_flag:
            return  # "cli; hlt": an external interrupt cannot wake it; stay halted
        elif self._halted:
            self._halted = False  # IF set but not ready yet: run until the window opens
        run.request_interrupt_window = 1 if self._irqs else 0

    def _record_report(self, port: int, value: int) -> None:
        hist = self._reports.get(port)
        if hist is None:
            hist = self._reports[port] = collections.deque(maxlen=REPORT_HISTORY)
        self._report_totals[port] += 1
        hist.append((self._report_totals[port], value))

    def _handle_exit(self) -> None:
        run = self._run
        run_map = self._run_map
        assert run is not None and run_map is not None
        reason = run.exit_reason
        self.stats.exits[ExitReason.name_of(reason)] += 1
        # IO and MMIO accesses complete only in the next KVM_RUN (api.rst 5).
        self._io_pending = reason in EXITS_NEEDING_COMPLETION
        if reason == ExitReason.IO:
            io = run.io
            size, count, off = io.size, io.count, io.data_offset
            is_out = io.direction == KVM_EXIT_IO_OUT
            length = size * count
            data = run_map.read(off, length) if is_out else bytes(length)
            reply = self.on_io(self, io.port, is_out, size, data) if self.on_io else None
            if is_out:
                with self._cv:
                    for i in range(count):
                        self._record_report(io.port, int.from_bytes(
                            data[i * size:(i + 1) * size], "little"))
                    self._cv.notify_all()
            else:
                fill = reply if reply is not None else b"\xff" * length
                run_map.write(off, bytes(fill[:length]).ljust(length, b"\xff"))
        elif reason == ExitReason.MMIO:
            mmio = run.mmio
            length = min(int(mmio.len), 8)
            written = bytes(mmio.data[:length]) if mmio.is_write else b""
            access = MmioAccess(int(mmio.phys_addr), length, bool(mmio.is_write), written)
            reply = (self.on_mmio(self, access.phys_addr, access.is_write, length, written)
                     if self.on_mmio else None)
            if not mmio.is_write:
                # Unbacked guest-physical memory reads as all ones (an empty bus).
                fill = bytes(reply[:length]) if reply is not None else b"\xff" * length
                ctypes.memmove(ctypes.addressof(mmio.data), fill.ljust(length, b"\xff"),
                               length)
            with self._cv:
                self._mmio.append(access)
                self._mmio_total += 1
                self._cv.notify_all()
        elif reason == ExitReason.HLT:
            with self._cv:
                self._halted = True
                self._cv.notify_all()
        elif reason == ExitReason.IRQ_WINDOW_OPEN:
            pass  # the loop top injects
        elif reason in FATAL_EXITS:
            raise GuestCrashed(self.index, self.guest.name, reason, self._crash_details(reason))
        else:
            raise GuestCrashed(self.index, self.guest.name, reason,
                               {"note": "exit reason not handled by this VMM"})

    def _crash_details(self, reason: int) -> dict[str, Any]:
        run = self._run
        assert run is not None
        details: dict[str, Any] = {}
        if reason == ExitReason.FAIL_ENTRY:
            details["hardware_entry_failure_reason"] = hex(
                run.fail_entry.hardware_entry_failure_reason)
        elif reason == ExitReason.UNKNOWN:
            details["hardware_exit_reason"] = hex(run.hw.hardware_exit_reason)
        elif reason == ExitReason.INTERNAL_ERROR:
            sub = run.internal.suberror
            try:
                details["suberror"] = InternalError(sub).name
            except ValueError:
                details["suberror"] = sub
        elif reason == ExitReason.EXCEPTION:
            details["exception"] = run.ex.exception
            details["error_code"] = run.ex.error_code
        try:
            regs = self._get_regs()
            details["rip"] = hex(regs.rip)
            details["cs:ip"] = f"{self.region_base >> 4:04x}:{regs.rip:04x}"
        except VcpuError:
            pass
        return details

