"""Kicking a vCPU thread out of KVM_RUN with a signal: the handler and the three variants.

A thread blocked in ``ioctl(KVM_RUN)`` is "in guest mode". A signal sent to it with
``pthread_kill`` makes KVM_RUN return -EINTR, *if the signal is delivered*: its disposition
must be a handler (SIG_IGN signals are dropped when sent, and the default action of SIGUSR1
or a real-time signal kills the process).

The handler must be a C-level function that does nothing:

- ``signal.signal`` installs CPython's own C handler, which only records the signal and
  schedules the Python handler to run later *in the main thread*. It does make KVM_RUN
  return EINTR, but it can only be installed from the main thread, every kick costs the main
  thread a Python call, and it writes to the wakeup fd when one is set (asyncio).
- A ``ctypes.CFUNCTYPE`` callback is *not* safe as a handler: it takes the GIL and runs
  Python code inside a signal handler, which may interrupt malloc or the interpreter itself.
- So the default handler is a native ``ret``: one instruction, assembled by the same
  binutils pipeline as the guests, placed in an executable page and installed with libc
  ``sigaction`` through ctypes (``SA_RESTART``, so the kick does not disturb other system
  calls of the vCPU thread; KVM_RUN itself returns -EINTR, never restarts). It can be
  installed from any thread, and nothing runs in Python when a kick lands.

The variants (:class:`KickMode`), after PROTOCOL.md section 7 and api.rst:

- ``IMMEDIATE_EXIT`` (default): the *sender* sets ``kvm_run.immediate_exit = 1`` and then
  signals. KVM reads ``immediate_exit`` once when KVM_RUN starts, so a kick that lands
  after the vCPU thread checked its requests but before it entered KVM_RUN still makes that
  KVM_RUN return -EINTR at once. The vCPU thread clears the flag *before* it reads its
  requests (Firecracker's order since 2025).
- ``SIGNAL_MASK``: the kick signal is blocked in the vCPU thread (``pthread_sigmask``) and
  unblocked only inside KVM_RUN by ``KVM_SET_SIGNAL_MASK``. A kick sent outside KVM_RUN stays
  pending and makes the next KVM_RUN return -EINTR; after each -EINTR the thread consumes the
  pending signal (``sigtimedwait`` with a zero timeout) *before* reading its requests
  (QEMU's ``kvm_eat_signals``). api.rst calls this the less scalable option.
- ``EMPTY_HANDLER``: signal only. Racy: a signal that lands between the request check and
  KVM_RUN is lost and the vCPU stays in the guest until some other exit. Kept to demonstrate
  the race (Cloud Hypervisor's bug; its workaround re-signals every 10 ms).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import mmap
import os
import signal
import threading

from .asm import AssemblerError, assemble
from .structs import KERNEL_SIGSET_BYTES


class KickMode(enum.StrEnum):
    IMMEDIATE_EXIT = "immediate-exit"
    SIGNAL_MASK = "signal-mask"
    EMPTY_HANDLER = "empty-handler"


DEFAULT_KICK_SIGNAL = int(signal.SIGRTMIN) + 2

SA_RESTART = 0x10000000


class _Sigaction(ctypes.Structure):
    """glibc's ``struct sigaction`` on x86-64 (handler, 1024-bit sa_mask, flags, restorer)."""

    _fields_ = [
        ("sa_handler", ctypes.c_void_p),
        ("sa_mask", ctypes.c_ulong * 16),
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


_lock = threading.Lock()
_installed: dict[int, str] = {}
_keep_alive: list[object] = []  # the executable page and its view live as long as the process


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _native_noop() -> int:
    """Address of an executable ``ret`` (assembled from text, page mapped read+exec)."""
    code = assemble("ret", bits=64, name="kick-handler")
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
    page[: len(code)] = code
    view = (ctypes.c_char * mmap.PAGESIZE).from_buffer(page)
    address = ctypes.addressof(view)
    libc = _libc()
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(ctypes.c_void_p(address), mmap.PAGESIZE,
                     mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect(PROT_EXEC) for the kick handler: {os.strerror(err)}")
    _keep_alive.extend([page, view])
    return address


def _sigaction(sig: int, handler: int, flags: int) -> None:
    libc = _libc()
    libc.sigaction.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigaction),
                               ctypes.POINTER(_Sigaction)]
    act = _Sigaction()
    act.sa_handler = handler
    act.sa_flags = flags
    old = _Sigaction()
    if libc.sigaction(sig, ctypes.byref(act), ctypes.byref(old)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sigaction({sig}): {os.strerror(err)}")
    check = _Sigaction()
    libc.sigaction(sig, None, ctypes.byref(check))
    if check.sa_handler != handler:
        raise OSError(f"sigaction({sig}) did not take: handler is {check.sa_handler}")


def _python_noop(signum: int, frame: object) -> None:
    return None


def install_kick_handler(sig: int = DEFAULT_KICK_SIGNAL, impl: str = "native") -> str:
    """Install (once per process and signal) a no-op handler for the kick signal.

    ``impl`` is ``"native"`` (default; falls back to ``"python"`` when no executable page
    can be made, e.g. under a W^X policy) or ``"python"`` (``signal.signal``, main thread
    only). Returns the implementation in force.
    """
    with _lock:
        if sig in _installed:
            return _installed[sig]
        chosen = impl
        if impl == "native":
            try:
                _sigaction(sig, _native_noop(), SA_RESTART)
            except (OSError, AssemblerError):
                chosen = "python"
        if chosen == "python":
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError(
                    "the Python-level kick handler can only be installed from the main thread"
                )
            signal.signal(sig, _python_noop)
        elif chosen != "native":
            raise ValueError(f"unknown kick handler implementation {impl!r}")
        _installed[sig] = chosen
        return chosen


def installed_handler(sig: int = DEFAULT_KICK_SIGNAL) -> str | None:
    return _installed.get(sig)


def kernel_sigset(signals: set[int] | frozenset[int]) -> bytes:
    """The kernel's sigset layout for KVM_SET_SIGNAL_MASK: bit (signo - 1), little-endian."""
    bits = 0
    for s in signals:
        if not 1 <= s <= KERNEL_SIGSET_BYTES * 8:
            raise ValueError(f"signal {s} out of range for the kernel sigset")
        bits |= 1 << (s - 1)
    return bits.to_bytes(KERNEL_SIGSET_BYTES, "little")
