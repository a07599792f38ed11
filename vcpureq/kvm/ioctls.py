"""KVM ioctl request numbers, capabilities and exit reasons (x86-64).

Numbers are *computed* with the Linux ``_IO``/``_IOR``/``_IOW``/``_IOWR`` encoding
(``include/uapi/asm-generic/ioctl.h``: 8 bits number, 8 bits type, 14 bits size, 2 bits
direction) from the ``KVMIO`` type 0xAE and the command numbers and argument structures of
``include/uapi/linux/kvm.h``. What each ioctl does is in ``Documentation/virt/kvm/api.rst``
section 4, where each ioctl has a subsection under its own name.
"""

from __future__ import annotations

import ctypes
import enum

from .structs import (
    KvmInterrupt,
    KvmIrqLevel,
    KvmRegs,
    KvmSignalMaskHeader,
    KvmSregs,
    KvmUserspaceMemoryRegion,
)

# --- the generic ioctl encoding (asm-generic/ioctl.h) ---------------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:  # noqa: N802 (kernel name)
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _size(arg: type | int) -> int:
    return arg if isinstance(arg, int) else ctypes.sizeof(arg)


def _IO(type_: int, nr: int) -> int:  # noqa: N802
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, arg: type | int) -> int:  # noqa: N802
    return _IOC(_IOC_READ, type_, nr, _size(arg))


def _IOW(type_: int, nr: int, arg: type | int) -> int:  # noqa: N802
    return _IOC(_IOC_WRITE, type_, nr, _size(arg))


def _IOWR(type_: int, nr: int, arg: type | int) -> int:  # noqa: N802
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(arg))


KVMIO = 0xAE
KVM_API_VERSION = 12  # "Applications should refuse to run if KVM_GET_API_VERSION returns
#                        a value other than 12" (api.rst)

# --- system ioctls (on the /dev/kvm fd) ---
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)  # arg: machine type, 0 = default
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)  # arg: KVM_CAP_*; returns 0 or > 0
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)  # size of the vcpu fd mapping

# --- VM ioctls (on the VM fd) ---
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)  # arg: vcpu id; returns the vcpu fd
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)  # 3 pages of guest-physical space
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, KvmIrqLevel)

# --- vCPU ioctls (on a vcpu fd; issue them from the thread that created the vcpu) ---
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, KvmRegs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, KvmRegs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, KvmSregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, KvmSregs)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, KvmInterrupt)  # x86: a vector, no irqchip
# The size encoded is that of the fixed header only (``__u32 len``), as in kvm.h.
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, KvmSignalMaskHeader)

# KVM_EXIT_IO direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# Memslot flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class Cap(enum.IntEnum):
    """``KVM_CAP_*`` numbers (kvm.h) for KVM_CHECK_EXTENSION."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9  # recommended max vCPUs per VM
    NR_MEMSLOTS = 10  # max memory slots per VM
    PIT = 11
    MP_STATE = 14
    COALESCED_MMIO = 15
    SYNC_MMU = 16  # changes to the host mapping are reflected in the guest
    USER_NMI = 22
    SET_GUEST_DEBUG = 23
    IRQ_INJECT_STATUS = 26
    SET_IDENTITY_MAP_ADDR = 37
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    MAX_VCPUS = 66  # max vCPUs per VM
    READONLY_MEM = 81
    MULTI_ADDRESS_SPACE = 118
    MAX_VCPU_ID = 128
    IMMEDIATE_EXIT = 136


# The capabilities this package cannot do without (checked by ``system.Kvm``).
REQUIRED_CAPS: tuple[Cap, ...] = (
    Cap.USER_MEMORY,  # KVM_SET_USER_MEMORY_REGION
    Cap.SET_TSS_ADDR,  # KVM_SET_TSS_ADDR (real mode on Intel needs it; harmless elsewhere)
    Cap.IMMEDIATE_EXIT,  # kvm_run.immediate_exit: the default kick
)


class ExitReason(enum.IntEnum):
    """``KVM_EXIT_*``: why KVM_RUN returned 0 (kvm.h; api.rst section 5)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8  # x86: triple fault
    FAIL_ENTRY = 9
    INTR = 10  # set with -EINTR; decide on errno, not on this
    SET_TPR = 11
    TPR_ACCESS = 12
    S390_SIEIC = 13
    S390_RESET = 14
    DCR = 15
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    PAPR_HCALL = 19
    S390_UCONTROL = 20
    WATCHDOG = 21
    S390_TSCH = 22
    EPR = 23
    SYSTEM_EVENT = 24
    S390_STSI = 25
    IOAPIC_EOI = 26
    HYPERV = 27
    ARM_NISV = 28
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    RISCV_SBI = 35
    RISCV_CSR = 36
    NOTIFY = 37
    LOONGARCH_IOCSR = 38
    MEMORY_FAULT = 39

    @classmethod
    def name_of(cls, value: int) -> str:
        try:
            return cls(value).name
        except ValueError:
            return f"exit reason {value}"


class InternalError(enum.IntEnum):
    """``KVM_INTERNAL_ERROR_*`` sub-errors of KVM_EXIT_INTERNAL_ERROR."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


# Exits after which KVM has an operation half done: it completes it in the *next* KVM_RUN,
# before looking at immediate_exit or signals (api.rst 5, the note under KVM_EXIT_MMIO).
EXITS_NEEDING_COMPLETION = frozenset({ExitReason.IO, ExitReason.MMIO})

# Exits that mean the guest cannot go on: a crashed guest is an error carrying the reason.
FATAL_EXITS = frozenset(
    {
        ExitReason.UNKNOWN,
        ExitReason.EXCEPTION,
        ExitReason.SHUTDOWN,
        ExitReason.FAIL_ENTRY,
        ExitReason.INTERNAL_ERROR,
        ExitReason.SYSTEM_EVENT,
        ExitReason.MEMORY_FAULT,
    }
)


_libc_ioctl = None


def ioctl_ulong(fd: int, request: int, value: int) -> int:
    """``ioctl(fd, request, (unsigned long)value)``.

    ``fcntl.ioctl`` passes an integer argument as a C ``int``, which cannot carry e.g. the
    TSS address 0xfffbd000; this goes through libc with an ``unsigned long`` instead.
    Raises OSError like ``fcntl.ioctl``.
    """
    global _libc_ioctl
    if _libc_ioctl is None:
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.ioctl
        fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        fn.restype = ctypes.c_int
        _libc_ioctl = fn
    ret = _libc_ioctl(fd, request, value)
    if ret < 0:
        import os

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)
