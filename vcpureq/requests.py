"""vCPU request numbers and flags, and the standard requests (include/linux/kvm_host.h).

A request is a bit number in ``vcpu->requests`` plus flags that tell the broadcast code
how to deliver it. The kernel packs both into one ``unsigned int``: bits 0-7 are the
number (``KVM_REQUEST_MASK``), the flags sit above. Numbers 0-7 are architecture
independent; architecture requests start at ``KVM_REQUEST_ARCH_BASE`` (8), so the same
number means different requests on different architectures (x86 ``EVENT`` and s390
``REFRESH_GUEST_PREFIX`` are both number 14): look arch requests up per architecture.

Numbers and flags as in the kernel headers (include/linux/kvm_host.h,
arch/{s390,arm64,x86}/include/asm/kvm_host.h); we keep the subset the models use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "KVM_REQUEST_MASK",
    "KVM_REQUEST_NO_WAKEUP",
    "KVM_REQUEST_WAIT",
    "KVM_REQUEST_NO_ACTION",
    "KVM_REQUEST_ARCH_BASE",
    "RequestFlag",
    "Request",
    "TLB_FLUSH",
    "VM_DEAD",
    "UNBLOCK",
    "DIRTY_RING_SOFT_FULL",
    "REQ_OUTSIDE_GUEST_MODE",
    "ENABLE_IBS",
    "DISABLE_IBS",
    "REFRESH_GUEST_PREFIX",
    "SLEEP",
    "IRQ_PENDING",
    "EVENT",
    "UPDATE_PROTECTED_GUEST_STATE",
    "GENERIC_REQUESTS",
    "ARCH_REQUESTS",
    "lookup",
    "from_number",
]

KVM_REQUEST_MASK = 0xFF  # GENMASK(7, 0): the request number
KVM_REQUEST_ARCH_BASE = 8  # first architecture-specific request number


class RequestFlag(enum.IntFlag):
    """The flag bits above the request number."""

    NONE = 0
    #: do not wake a sleeping vCPU for this request (broadcast skips kvm_vcpu_wake_up)
    NO_WAKEUP = 1 << 8
    #: a broadcast waits until every IPI'd CPU acknowledged (smp_call_function wait=1)
    WAIT = 1 << 9
    #: never stored in vcpu->requests; only forces the vCPU out of guest mode
    NO_ACTION = 1 << 10


KVM_REQUEST_NO_WAKEUP = RequestFlag.NO_WAKEUP
KVM_REQUEST_WAIT = RequestFlag.WAIT
KVM_REQUEST_NO_ACTION = RequestFlag.NO_ACTION


@dataclass(frozen=True)
class Request:
    """One request: ``name``, bit ``number`` (0-255), ``flags``, owning ``arch``.

    ``int(req)`` (and ``req.value``) is the kernel encoding ``number | flags``, so that
    ``req & KVM_REQUEST_WAIT`` reads as in C.
    """

    name: str
    number: int
    flags: RequestFlag = RequestFlag.NONE
    arch: str | None = None  # None: architecture independent

    def __post_init__(self) -> None:
        if not 0 <= self.number <= KVM_REQUEST_MASK:
            raise ValueError(f"request number {self.number} outside 0..{KVM_REQUEST_MASK}")
        # The encoding and the flag tests, computed once: IntFlag arithmetic costs about a
        # microsecond per operation, and the real world (vcpureq.kvm) does these on every
        # request. (Frozen dataclass: set through object.__setattr__; not fields, so
        # equality, hashing and repr are unchanged.)
        flags = int(self.flags)
        object.__setattr__(self, "_value", self.number | flags)
        object.__setattr__(self, "_wait", bool(flags & RequestFlag.WAIT.value))
        object.__setattr__(self, "_no_wakeup", bool(flags & RequestFlag.NO_WAKEUP.value))
        object.__setattr__(self, "_no_action", bool(flags & RequestFlag.NO_ACTION.value))

    @property
    def value(self) -> int:
        return self._value  # type: ignore[attr-defined, no-any-return]

    def __int__(self) -> int:
        return self._value  # type: ignore[attr-defined, no-any-return]

    def __and__(self, other: int) -> int:
        return self._value & int(other)  # type: ignore[attr-defined, no-any-return]

    @property
    def wait(self) -> bool:
        return self._wait  # type: ignore[attr-defined, no-any-return]

    @property
    def no_wakeup(self) -> bool:
        return self._no_wakeup  # type: ignore[attr-defined, no-any-return]

    @property
    def no_action(self) -> bool:
        return self._no_action  # type: ignore[attr-defined, no-any-return]

    def __str__(self) -> str:
        return self.name


def _arch_req(name: str, nr: int, arch: str, flags: RequestFlag = RequestFlag.NONE) -> Request:
    """KVM_ARCH_REQ_FLAGS(nr, flags): arch request ``nr`` is bit ``8 + nr``."""
    return Request(name, KVM_REQUEST_ARCH_BASE + nr, flags, arch)


_WAIT_NO_WAKEUP = RequestFlag.WAIT | RequestFlag.NO_WAKEUP

# --- architecture independent (include/linux/kvm_host.h) ------------------------------
TLB_FLUSH = Request("TLB_FLUSH", 0, _WAIT_NO_WAKEUP)
VM_DEAD = Request("VM_DEAD", 1, _WAIT_NO_WAKEUP)  # never cleared: entry fails for good
UNBLOCK = Request("UNBLOCK", 2)
DIRTY_RING_SOFT_FULL = Request("DIRTY_RING_SOFT_FULL", 3)
#: KVM_REQ_OUTSIDE_GUEST_MODE: NO_ACTION|WAIT|NO_WAKEUP, only forces an exit. The Python
#: name carries REQ_ so that it does not clash with the OUTSIDE_GUEST_MODE mode constant.
REQ_OUTSIDE_GUEST_MODE = Request(
    "OUTSIDE_GUEST_MODE", 0, RequestFlag.NO_ACTION | _WAIT_NO_WAKEUP
)

# --- s390 (arch/s390/include/asm/kvm_host.h) -------------------------------------------
ENABLE_IBS = _arch_req("ENABLE_IBS", 0, "s390x")
DISABLE_IBS = _arch_req("DISABLE_IBS", 1, "s390x")
ICPT_OPEREXC = _arch_req("ICPT_OPEREXC", 2, "s390x")
START_MIGRATION = _arch_req("START_MIGRATION", 3, "s390x")
STOP_MIGRATION = _arch_req("STOP_MIGRATION", 4, "s390x")
VSIE_RESTART = _arch_req("VSIE_RESTART", 5, "s390x")
#: was KVM_REQ_MMU_RELOAD in 2017 (the prefix-page request of the seed thread)
REFRESH_GUEST_PREFIX = _arch_req("REFRESH_GUEST_PREFIX", 6, "s390x", _WAIT_NO_WAKEUP)

# --- arm64 (arch/arm64/include/asm/kvm_host.h) -----------------------------------------
SLEEP = _arch_req("SLEEP", 0, "arm64", _WAIT_NO_WAKEUP)
IRQ_PENDING = _arch_req("IRQ_PENDING", 1, "arm64")
VCPU_RESET = _arch_req("VCPU_RESET", 2, "arm64")

# --- x86 (arch/x86/include/asm/kvm_host.h) ---------------------------------------------
TRIPLE_FAULT = _arch_req("TRIPLE_FAULT", 2, "x86")
MMU_SYNC = _arch_req("MMU_SYNC", 3, "x86")
CLOCK_UPDATE = _arch_req("CLOCK_UPDATE", 4, "x86")
EVENT = _arch_req("EVENT", 6, "x86")
NMI = _arch_req("NMI", 9, "x86")
MCLOCK_INPROGRESS = _arch_req("MCLOCK_INPROGRESS", 14, "x86", _WAIT_NO_WAKEUP)
#: SEV-SNP AP creation/destroy (sev_snp_ap_creation); KVM_REQUEST_WAIT since the 2025 fix
#: "KVM: SVM: Fix SNP AP destroy race with VMRUN"
UPDATE_PROTECTED_GUEST_STATE = _arch_req(
    "UPDATE_PROTECTED_GUEST_STATE", 34, "x86", RequestFlag.WAIT
)


def _table(*reqs: Request) -> dict[str, Request]:
    return {r.name: r for r in reqs}


#: Architecture independent requests, by name (REQ_OUTSIDE_GUEST_MODE is kept out of the
#: by-number view because it is never stored).
GENERIC_REQUESTS: dict[str, Request] = _table(
    TLB_FLUSH, VM_DEAD, UNBLOCK, DIRTY_RING_SOFT_FULL, REQ_OUTSIDE_GUEST_MODE
)

#: Architecture requests, by architecture then name.
ARCH_REQUESTS: dict[str, dict[str, Request]] = {
    "s390x": _table(
        ENABLE_IBS,
        DISABLE_IBS,
        ICPT_OPEREXC,
        START_MIGRATION,
        STOP_MIGRATION,
        VSIE_RESTART,
        REFRESH_GUEST_PREFIX,
    ),
    "arm64": _table(SLEEP, IRQ_PENDING, VCPU_RESET),
    "x86": _table(TRIPLE_FAULT, MMU_SYNC, CLOCK_UPDATE, EVENT, NMI, MCLOCK_INPROGRESS,
                  UPDATE_PROTECTED_GUEST_STATE),
}


def lookup(name: str, arch: str | None = None) -> Request:
    """The request called ``name`` (``"TLB_FLUSH"``, ``"KVM_REQ_TLB_FLUSH"``).

    Generic requests are found for every ``arch``; with ``arch`` given, that
    architecture's requests too; without it, every architecture's.
    """
    key = name.upper().removeprefix("KVM_REQ_")
    if key in GENERIC_REQUESTS:
        return GENERIC_REQUESTS[key]
    tables = [ARCH_REQUESTS.get(arch, {})] if arch else list(ARCH_REQUESTS.values())
    for table in tables:
        if key in table:
            return table[key]
    where = f" on {arch}" if arch else ""
    raise KeyError(f"no request named {name!r}{where}")


def from_number(number: int, arch: str | None = None) -> Request:
    """The request stored as bit ``number`` of ``vcpu->requests`` on ``arch``.

    A number the tables do not know gets a placeholder ``Request("REQ_<n>", n)``.
    """
    for req in GENERIC_REQUESTS.values():
        if req.number == number and not req.no_action:
            return req
    for req in ARCH_REQUESTS.get(arch or "", {}).values():
        if req.number == number:
            return req
    return Request(f"REQ_{number}", number, arch=arch)
