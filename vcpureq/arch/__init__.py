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


def get_arch(name: str) -> Arch:
    """A fresh instance of the architecture called ``name``."""
    try:
        return ARCHES[name]()
    except KeyError:
        known = ", ".join(sorted(ARCHES))
        raise KeyError(f"unknown architecture {name!r} (known: {known})") from None
