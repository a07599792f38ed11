"""``/dev/kvm``: open it, check the API version and the capabilities this package uses.

api.rst section 2: the first fd comes from ``open("/dev/kvm")`` and carries the *system*
ioctls; KVM_CREATE_VM on it returns a VM fd. Applications must refuse to run unless
KVM_GET_API_VERSION returns 12, and probe optional features with KVM_CHECK_EXTENSION.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from .ioctls import (
    KVM_API_VERSION,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_VCPU_MMAP_SIZE,
    REQUIRED_CAPS,
    Cap,
)

DEVICE = "/dev/kvm"


class KvmUnavailable(RuntimeError):
    """``/dev/kvm`` cannot be used here; the message says why and what to do."""


def _explain_open_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return (
            f"{path} does not exist: the kvm module is not loaded, this CPU has no "
            "virtualization extensions enabled, or this container was started without the "
            "device (pass --device /dev/kvm)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{path} exists but this user (uid {os.getuid()}) may not open it read-write "
            f"({os.strerror(exc.errno)}); add the user to the group that owns it "
            "(usually 'kvm') or run as root"
        )
    if exc.errno == errno.ENXIO or exc.errno == errno.ENODEV:
        return f"{path} exists but no KVM driver answers behind it ({os.strerror(exc.errno)})"
    return f"cannot open {path}: {os.strerror(exc.errno or 0)}"


class Kvm:
    """The ``/dev/kvm`` system fd. Use as a context manager or call :meth:`close`.

    Raises :class:`KvmUnavailable` when the device is missing, not permitted, speaks another
    API version, or lacks one of ``required`` capabilities.
    """

    def __init__(self, path: str = DEVICE, required: tuple[Cap, ...] = REQUIRED_CAPS) -> None:
        self.path = path
        try:
            self.fd: int = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmUnavailable(_explain_open_error(path, exc)) from exc
        try:
            try:
                version = self.ioctl(KVM_GET_API_VERSION)
            except OSError as exc:
                raise KvmUnavailable(
                    f"{path} does not answer KVM_GET_API_VERSION "
                    f"({os.strerror(exc.errno or 0)}): it is not a KVM device"
                ) from exc
            if version != KVM_API_VERSION:
                raise KvmUnavailable(
                    f"{path} speaks KVM API version {version}; this package needs "
                    f"{KVM_API_VERSION}"
                )
            self.api_version = version
            missing = [cap for cap in required if self.check_extension(cap) <= 0]
            if missing:
                names = ", ".join(f"KVM_CAP_{getattr(c, 'name', c)}" for c in missing)
                raise KvmUnavailable(f"{path} lacks required capabilities: {names}")
            try:
                self.vcpu_mmap_size = self.ioctl(KVM_GET_VCPU_MMAP_SIZE)
            except OSError as exc:
                raise KvmUnavailable(f"KVM_GET_VCPU_MMAP_SIZE failed on {path}: "
                                     f"{os.strerror(exc.errno or 0)}") from exc
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def ioctl(self, request: int, arg: int = 0) -> int:
        if self.fd < 0:
            raise ValueError("the /dev/kvm fd is closed")
        return fcntl.ioctl(self.fd, request, arg)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 = unsupported, > 0 = supported (some return a number)."""
        try:
            return self.ioctl(KVM_CHECK_EXTENSION, int(cap))
        except OSError:
            return 0

    def create_vm_fd(self) -> int:
        """KVM_CREATE_VM with the default machine type; the caller owns the returned fd."""
        try:
            return self.ioctl(KVM_CREATE_VM, 0)
        except OSError as exc:
            raise KvmUnavailable(f"KVM_CREATE_VM failed: {os.strerror(exc.errno or 0)}") from exc

    def capabilities(self) -> dict[str, int]:
        return {f"KVM_CAP_{cap.name}": self.check_extension(cap) for cap in Cap}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten Kvm must not leak its fd
        try:
            self.close()
        except Exception:
            pass


def backends() -> list[str]:
    """The KVM vendor modules loaded here (kvm_intel, kvm_amd, kvm_pvm, ...), if visible."""
    try:
        return sorted(m for m in os.listdir("/sys/module")
                      if m.startswith("kvm_") and os.path.isdir(f"/sys/module/{m}/parameters"))
    except OSError:
        return []


def probe(path: str = DEVICE) -> str | None:
    """``None`` when /dev/kvm is usable by this package, else the reason it is not."""
    try:
        with Kvm(path):
            return None
    except KvmUnavailable as exc:
        return str(exc)


def info(path: str = DEVICE) -> dict[str, Any]:
    """What ``vcpureq kvm info`` prints: availability, API version, mmap size, capabilities.

    Never raises for an unusable device: ``available`` is False and ``reason`` says why.
    """
    try:
        kvm = Kvm(path, required=())
    except KvmUnavailable as exc:
        return {"device": path, "available": False, "reason": str(exc)}
    with kvm:
        caps = kvm.capabilities()
        missing = [f"KVM_CAP_{c.name}" for c in REQUIRED_CAPS if caps[f"KVM_CAP_{c.name}"] <= 0]
        return {
            "device": path,
            "available": not missing,
            "reason": f"lacks {', '.join(missing)}" if missing else None,
            "api_version": kvm.api_version,
            "backends": backends(),
            "vcpu_mmap_size": kvm.vcpu_mmap_size,
            "required": [f"KVM_CAP_{c.name}" for c in REQUIRED_CAPS],
            "capabilities": caps,
        }
