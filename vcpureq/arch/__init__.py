"""Architectures: each is an :class:`~vcpureq.arch.base.Arch` (hooks + vCPU run loop).

``ARCHES`` maps a protocol name to its class; variants (historical bugs, seed
proposals) sit beside the correct architecture they vary.
"""

from __future__ import annotations

from vcpureq.arch.base import Arch, Host, HostCpu
from vcpureq.arch.generic import (
    GenericArch,
    GenericCheckBeforeMode,
    GenericNoMbAfterMode,
    GenericNoWmbInMakeRequest,
)

__all__ = ["ARCHES", "Arch", "Host", "HostCpu", "get_arch"]

ARCHES: dict[str, type[Arch]] = {
    cls.name: cls
    for cls in (GenericArch, GenericCheckBeforeMode, GenericNoMbAfterMode,
                GenericNoWmbInMakeRequest)
}

# s390x: the kernel protocol and its variants (vcpureq/arch/s390x.py)
from vcpureq.arch.s390x import S390X_ARCHES  # noqa: E402

ARCHES.update({cls.name: cls for cls in S390X_ARCHES})

# x86, arm64, ppc64: the vcpu->mode run loops on the simulated host, and their variants
from vcpureq.arch.arm64 import ARM64_ARCHES  # noqa: E402
from vcpureq.arch.ppc64 import PPC64_ARCHES  # noqa: E402
from vcpureq.arch.x86 import X86_ARCHES  # noqa: E402

ARCHES.update({cls.name: cls for cls in (*X86_ARCHES, *ARM64_ARCHES, *PPC64_ARCHES)})

# kvm_user: a userspace VMM's vCPU thread around KVM_RUN, kicks by signal (three variants)
from vcpureq.arch.kvm_user import VARIANTS as KVM_USER_ARCHES  # noqa: E402

ARCHES.update(KVM_USER_ARCHES)


def get_arch(name: str) -> Arch:
    """A fresh instance of the architecture called ``name``."""
    try:
        return ARCHES[name]()
    except KeyError:
        known = ", ".join(sorted(ARCHES))
        raise KeyError(f"unknown architecture {name!r} (known: {known})") from None
