"""Three tiny native helpers for the real world's hot path, assembled from text with GNU as
(the pipeline of the guests and the kick handler) into one read+exec page, called with
ctypes, which releases the interpreter lock (the GIL) around every call:

- ``kvm_run(fd, doorbell) -> long``: ``*doorbell += 1``, then the raw ``ioctl(fd,
  KVM_RUN, 0)`` system call; returns its result (``-errno`` on failure, so -EINTR is -4:
  no libc ``errno`` round trip). The increment happens *after* ctypes released the GIL:
  a thread that sees the doorbell move knows the vCPU thread no longer holds the lock.
- ``spin_while(word, old, tsc_deadline) -> uint32``: spin (``pause``) while ``*word ==
  old`` and the TSC is below ``tsc_deadline``; returns ``*word``. A busy wait that does not
  hold the GIL and does not sleep.
- ``rdtsc() -> uint64``.

Why: on a machine whose idle CPUs halt (a VM, say, with guest halt polling off), waking a
thread that sleeps on another CPU costs an IPI and a trip through the hypervisor: 15 us
here. A Python sync requester that sleeps between polls (``time.sleep(1e-6)`` lasts 27 us
here), or that blocks on the GIL while the vCPU thread holds it, pays that on every
request. Spinning without the GIL until the vCPU thread next releases it costs nothing of
the sort: see :meth:`vcpureq.kvm.vmm.RealBackend.await_exit` and docs/kvm.md.

:func:`helpers` returns None where the page cannot be made (no binutils, a W^X policy):
callers then fall back to libc's ``ioctl`` and plain polling.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from .asm import AssemblerError, assemble
from .ioctls import KVM_RUN

__all__ = ["Helpers", "helpers"]

_NR_IOCTL = 16  # x86-64 __NR_ioctl

_TEXT = f"""
    .globl kvm_run, spin_while, rdtsc
# long kvm_run(int fd /* rdi */, uint32_t *doorbell /* rsi */)
kvm_run:
    incl (%rsi)                 # one writer: the vCPU thread itself
    movl ${_NR_IOCTL}, %eax
    movl ${KVM_RUN:#x}, %esi
    xorl %edx, %edx
    syscall                     # clobbers rcx, r11 (caller-saved)
    ret

# uint32_t spin_while(const uint32_t *word /* rdi */, uint32_t old /* esi */,
#                     uint64_t tsc_deadline /* rdx */)
spin_while:
    movq %rdx, %r8
1:  movl (%rdi), %eax
    cmpl %esi, %eax
    jne 2f
    pause
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    cmpq %r8, %rax
    jb 1b
    movl (%rdi), %eax
2:  ret

# uint64_t rdtsc(void)
rdtsc:
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    ret
"""

_KvmRun = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_int, ctypes.c_void_p)
_SpinWhile = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32,
                              ctypes.c_uint64)
_Rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)


@dataclass(frozen=True)
class Helpers:
    """The callable helpers and the TSC rate (ticks per microsecond, measured)."""

    kvm_run: Any
    spin_while: Any
    rdtsc: Any
    tsc_per_us: float

    def deadline(self, us: float) -> int:
        """The TSC value ``us`` microseconds from now."""
        return int(self.rdtsc() + us * self.tsc_per_us)


_lock = threading.Lock()
_helpers: Helpers | None = None
_failed: str | None = None
_keep_alive: list[object] = []


def _build() -> Helpers:
    # A table of the helpers' addresses (linked at origin 0: their offsets) comes first.
    names = ("kvm_run", "spin_while", "rdtsc")
    table = "".join(f"    .quad {name}\n" for name in names)
    code = assemble(table + _TEXT, bits=64, name="native-helpers")
    offsets = {name: int.from_bytes(code[8 * i: 8 * i + 8], "little")
               for i, name in enumerate(names)}
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
    page[: len(code)] = code
    view = (ctypes.c_char * mmap.PAGESIZE).from_buffer(page)
    base = ctypes.addressof(view)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(ctypes.c_void_p(base), mmap.PAGESIZE,
                     mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect(PROT_EXEC) for the native helpers: {os.strerror(err)}")
    _keep_alive.extend([page, view])
    rdtsc = _Rdtsc(base + offsets["rdtsc"])
    # The TSC rate: two readings 2 ms apart against the monotonic clock.
    t0, c0 = time.perf_counter_ns(), rdtsc()
    time.sleep(0.002)
    t1, c1 = time.perf_counter_ns(), rdtsc()
    if c1 <= c0 or t1 <= t0:
        raise OSError("the TSC does not advance")
    return Helpers(
        kvm_run=_KvmRun(base + offsets["kvm_run"]),
        spin_while=_SpinWhile(base + offsets["spin_while"]),
        rdtsc=rdtsc,
        tsc_per_us=(c1 - c0) / ((t1 - t0) / 1000),
    )


def helpers() -> Helpers | None:
    """The helpers (built once per process), or None if they cannot be made here (see
    :func:`unavailable` for why)."""
    global _helpers, _failed
    if _helpers is not None or _failed is not None:
        return _helpers
    with _lock:
        if _helpers is None and _failed is None:
            try:
                _helpers = _build()
            except (OSError, AssemblerError, ValueError) as exc:
                _failed = str(exc)
    return _helpers


def unavailable() -> str | None:
    """None if :func:`helpers` works, else the reason it does not."""
    helpers()
    return _failed
