"""ctypes mirrors of the KVM userspace ABI structures this package uses (x86-64).

Sources (read through the search tool, restated here, not copied):
- ``include/uapi/linux/kvm.h``: ``struct kvm_userspace_memory_region``, ``struct kvm_run``
  (the ``immediate_exit`` byte took the first byte of ``padding1``: KVM_CAP_IMMEDIATE_EXIT),
  ``struct kvm_interrupt``, ``struct kvm_signal_mask``, ``struct kvm_irq_level``.
- ``arch/x86/include/uapi/asm/kvm.h``: ``struct kvm_regs``, ``kvm_segment``, ``kvm_dtable``,
  ``kvm_sregs`` (``interrupt_bitmap`` has ``(KVM_NR_INTERRUPTS + 63) / 64`` = 4 words).
- ``Documentation/virt/kvm/api.rst`` section 5, "The kvm_run structure", for what each
  ``kvm_run`` field means.

Offsets and sizes are checked against the machine's ``<linux/kvm.h>`` by
``tests/test_kvm_abi.py`` (it compiles a tiny C program when gcc is present).
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

KVM_NR_INTERRUPTS = 256

# The kernel's sigset for KVM_SET_SIGNAL_MASK is _NSIG / 8 bytes: 64 signals on x86-64.
KERNEL_SIGSET_BYTES = 8


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (KVM_SET_USER_MEMORY_REGION in api.rst)."""

    _fields_ = [
        ("slot", c_uint32),  # bits 0-15 slot id, bits 16-31 address space id
        ("flags", c_uint32),  # KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),  # bytes; 0 deletes the slot
        ("userspace_addr", c_uint64),  # start of the host mapping that backs the slot
    ]


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs`` (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment``: a segment register as KVM exposes it."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable``: GDTR / IDTR."""

    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs`` (KVM_GET_SREGS / KVM_SET_SREGS)."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmInterrupt(ctypes.Structure):
    """``struct kvm_interrupt`` (KVM_INTERRUPT): an interrupt *vector* on x86."""

    _fields_ = [("irq", c_uint32)]


class KvmIrqLevel(ctypes.Structure):
    """``struct kvm_irq_level`` (KVM_IRQ_LINE, in-kernel irqchip only)."""

    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class KvmSignalMaskHeader(ctypes.Structure):
    """The fixed part of ``struct kvm_signal_mask``; ``sigset[len]`` bytes follow it."""

    _fields_ = [("len", c_uint32)]


class KvmSignalMask(ctypes.Structure):
    """``struct kvm_signal_mask`` with the x86-64 kernel sigset (8 bytes) appended."""

    _fields_ = [("len", c_uint32), ("sigset", c_uint8 * KERNEL_SIGSET_BYTES)]


# --- struct kvm_run -------------------------------------------------------------------


class KvmRunHw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class KvmRunFailEntry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class KvmRunEx(ctypes.Structure):
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class KvmRunIo(ctypes.Structure):
    """KVM_EXIT_IO: data is ``size * count`` bytes at ``data_offset`` from the kvm_run start
    (a separate page of the vCPU mapping, not inside this structure)."""

    _fields_ = [
        ("direction", c_uint8),  # KVM_EXIT_IO_IN = 0, KVM_EXIT_IO_OUT = 1
        ("size", c_uint8),  # bytes per access
        ("port", c_uint16),
        ("count", c_uint32),  # > 1 for rep ins/outs
        ("data_offset", c_uint64),
    ]


class KvmRunMmio(ctypes.Structure):
    """KVM_EXIT_MMIO: a guest access to a guest-physical address no memslot backs."""

    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),  # written data, or where userspace puts the read result
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class KvmRunInternal(ctypes.Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class KvmRunSystemEvent(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class KvmRunExit(ctypes.Union):
    """The per-exit-reason union of ``struct kvm_run`` (fixed at 256 bytes by the ABI)."""

    _fields_ = [
        ("hw", KvmRunHw),
        ("fail_entry", KvmRunFailEntry),
        ("ex", KvmRunEx),
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("internal", KvmRunInternal),
        ("system_event", KvmRunSystemEvent),
        ("padding", ctypes.c_char * 256),
    ]


class KvmRun(ctypes.Structure):
    """``struct kvm_run``, the page shared with the kernel by ``mmap(vcpu_fd, 0)``.

    Only the x86 layout (no s390 PSW words). ``immediate_exit`` is read once when KVM_RUN
    starts: non-zero makes KVM_RUN return -EINTR without entering the guest (api.rst 5).
    """

    _anonymous_ = ("u",)
    _fields_ = [
        # in
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        # out
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        # in (pre_kvm_run), out (post_kvm_run)
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("u", KvmRunExit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", ctypes.c_char * 2048),  # struct kvm_sync_regs, padded
    ]


# Field offsets the rest of the package (and the C floor benchmark) rely on.
RUN_IMMEDIATE_EXIT_OFFSET = KvmRun.immediate_exit.offset
RUN_EXIT_REASON_OFFSET = KvmRun.exit_reason.offset

__all__ = [
    "KERNEL_SIGSET_BYTES",
    "KVM_NR_INTERRUPTS",
    "KvmDtable",
    "KvmInterrupt",
    "KvmIrqLevel",
    "KvmRegs",
    "KvmRun",
    "KvmRunExit",
    "KvmRunIo",
    "KvmRunMmio",
    "KvmSegment",
    "KvmSignalMask",
    "KvmSignalMaskHeader",
    "KvmSregs",
    "KvmUserspaceMemoryRegion",
]
