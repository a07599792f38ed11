"""A VM: guest memory in memslots, vCPUs on their own threads, orderly teardown.

api.rst: KVM_CREATE_VM returns the VM fd; KVM_SET_USER_MEMORY_REGION creates, moves
(same slot id, new guest_phys_addr), or deletes (memory_size 0) a slot, whose memory is a
host mapping (here an anonymous ``mmap``); KVM_SET_TSS_ADDR reserves three pages of
guest-physical space that no slot may use (Intel real mode needs it). VM ioctls may come
from any thread of the process; vCPU ioctls come from each vCPU's own thread.

Guest-physical layout (real mode):

    0x00000 .. 0x003ff    interrupt vector table          } slot 0, "ram"
    0x10000 + i * 0x2000  vCPU i's home region (8 KiB)     } (0 .. 0xa0000)
    0xa0000               free for extra slots (the critical page by default)
    0xfffbd000            the TSS pages (KVM_SET_TSS_ADDR)
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import mmap
import os
import threading
import time
from typing import Any

from .guests import REGION_SIZE, Guest
from .ioctls import KVM_SET_TSS_ADDR, KVM_SET_USER_MEMORY_REGION, ioctl_ulong
from .kick import DEFAULT_KICK_SIGNAL, KickMode, install_kick_handler
from .structs import KvmUserspaceMemoryRegion
from .system import DEVICE, Kvm, KvmUnavailable
from .vcpu import IoHandler, MmioHandler, Vcpu, VcpuError, VcpuTimeout

RAM_SIZE = 0xA0000
REGIONS_BASE = 0x10000
TSS_ADDR = 0xFFFBD000
PAGE = mmap.PAGESIZE


class MemslotError(RuntimeError):
    pass


@dataclasses.dataclass
class Memslot:
    """A memslot and the host mapping behind it (kept while the slot exists or is moved)."""

    slot: int
    guest_phys_addr: int
    size: int
    flags: int
    mapping: mmap.mmap
    view: Any  # ctypes array over the mapping; its address is userspace_addr

    @property
    def userspace_addr(self) -> int:
        return ctypes.addressof(self.view)

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self.guest_phys_addr <= gpa and gpa + size <= self.guest_phys_addr + self.size


class Vm:
    """A KVM virtual machine. Use as a context manager; :meth:`close` stops every vCPU
    (kick all, then wait for all), then closes every fd and mapping."""

    def __init__(
        self,
        *,
        ram_size: int = RAM_SIZE,
        kick_mode: KickMode | str = KickMode.IMMEDIATE_EXIT,
        kick_signal: int = DEFAULT_KICK_SIGNAL,
        handler_impl: str = "native",
        device: str = DEVICE,
    ) -> None:
        self.kick_mode = KickMode(kick_mode)
        self.kick_signal = kick_signal
        self.vcpus: list[Vcpu] = []
        self.memslots: dict[int, Memslot] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.fd = -1
        self.kvm = Kvm(device)
        try:
            self.vcpu_mmap_size = self.kvm.vcpu_mmap_size
            self.fd = self.kvm.create_vm_fd()
            try:
                ioctl_ulong(self.fd, KVM_SET_TSS_ADDR, TSS_ADDR)
            except OSError as exc:
                raise KvmUnavailable(
                    f"KVM_SET_TSS_ADDR failed: {os.strerror(exc.errno or 0)}") from exc
            self.handler_impl = install_kick_handler(kick_signal, handler_impl)
            self.ram = self.add_memslot(0, ram_size, slot=0)
        except BaseException:
            self._close_fds()
            raise

    # ------------------------------------------------------------------ memory
    def _set_region(self, slot: int, flags: int, gpa: int, size: int, addr: int) -> None:
        region = KvmUserspaceMemoryRegion(slot, flags, gpa, size, addr)
        try:
            fcntl.ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region)  # type: ignore[call-overload]
        except OSError as exc:
            raise MemslotError(
                f"KVM_SET_USER_MEMORY_REGION(slot={slot}, gpa=0x{gpa:x}, size=0x{size:x}) "
                f"failed: {os.strerror(exc.errno or 0)}") from exc

    def add_memslot(self, gpa: int, size: int, *, slot: int | None = None,
                    flags: int = 0, data: bytes | None = None) -> Memslot:
        """Back ``size`` bytes of guest-physical memory at ``gpa`` with fresh anonymous
        memory in a new slot: zero-filled, or starting with ``data`` (copied in before the
        slot becomes visible to the guest)."""
        if gpa % PAGE or size % PAGE or size <= 0:
            raise ValueError("gpa and size must be positive multiples of the page size")
        if data is not None and len(data) > size:
            raise ValueError(f"{len(data)} bytes of data for a {size}-byte memslot")
        with self._lock:
            if slot is None:
                slot = max(self.memslots, default=-1) + 1
            if slot in self.memslots:
                raise MemslotError(f"memslot {slot} exists")
            for other in self.memslots.values():
                if gpa < other.guest_phys_addr + other.size and other.guest_phys_addr < gpa + size:
                    raise MemslotError(f"0x{gpa:x}+0x{size:x} overlaps memslot {other.slot}")
            mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
            if data:
                mapping[: len(data)] = data
            view = (ctypes.c_char * size).from_buffer(mapping)
            ms = Memslot(slot, gpa, size, flags, mapping, view)
            try:
                self._set_region(slot, flags, gpa, size, ms.userspace_addr)
            except BaseException:
                del view, ms
                mapping.close()
                raise
            self.memslots[slot] = ms
            return ms

    def move_memslot(self, slot: int, new_gpa: int) -> None:
        """Move a slot in guest-physical space (same memory; api.rst allows moving a slot
        or changing its flags, not resizing it)."""
        with self._lock:
            ms = self._slot(slot)
            self._set_region(slot, ms.flags, new_gpa, ms.size, ms.userspace_addr)
            ms.guest_phys_addr = new_gpa

    def delete_memslot(self, slot: int) -> None:
        """Delete a slot (memory_size 0). KVM guarantees no vCPU uses it once the ioctl
        returns; only then is the host memory unmapped. A running guest that touches the
        range afterwards gets KVM_EXIT_MMIO."""
        with self._lock:
            ms = self._slot(slot)
            self._set_region(slot, ms.flags, ms.guest_phys_addr, 0, ms.userspace_addr)
            del self.memslots[slot]
        ms.view = None
        ms.mapping.close()

    def _slot(self, slot: int) -> Memslot:
        try:
            return self.memslots[slot]
        except KeyError:
            raise MemslotError(f"no memslot {slot}") from None

    def _find(self, gpa: int, size: int) -> tuple[Memslot, int]:
        for ms in self.memslots.values():
            if ms.contains(gpa, size):
                return ms, gpa - ms.guest_phys_addr
        raise MemslotError(f"guest-physical 0x{gpa:x}+{size} is not in one memslot")

    def read(self, gpa: int, size: int) -> bytes:
        with self._lock:
            ms, off = self._find(gpa, size)
            return ms.mapping[off:off + size]

    def write(self, gpa: int, data: bytes) -> None:
        with self._lock:
            ms, off = self._find(gpa, len(data))
            ms.mapping[off:off + len(data)] = data

    # ------------------------------------------------------------------ vCPUs
    def add_vcpu(self, guest: Guest, *, on_io: IoHandler | None = None,
                 on_mmio: MmioHandler | None = None, start: bool = True,
                 kick_mode: KickMode | str | None = None, timeout: float = 10.0) -> Vcpu:
        """Load ``guest`` into the next vCPU's home region and create that vCPU on a new
        thread (started unless ``start=False``; then call :meth:`Vcpu.start`)."""
        if self._closed:
            raise VcpuError("the VM is closed")
        index = len(self.vcpus)
        base = REGIONS_BASE + index * REGION_SIZE
        if base + REGION_SIZE > self.ram.size:
            raise VcpuError(f"no room for vCPU {index} in {self.ram.size:#x} bytes of RAM")
        code = guest.code
        self.write(base, bytes(REGION_SIZE))
        self.write(base, code)
        vcpu = Vcpu(self, index, guest, base,
                    kick_mode=KickMode(kick_mode) if kick_mode else self.kick_mode,
                    kick_signal=self.kick_signal, on_io=on_io, on_mmio=on_mmio)
        self.vcpus.append(vcpu)
        if start:
            vcpu.start(timeout)
        return vcpu

    def kick_all(self, wait: bool = True, timeout: float = 5.0) -> None:
        """Kick every vCPU first, then wait for every acknowledgement."""
        seqs = [(v, v.kick()) for v in self.vcpus if v.alive]
        if wait:
            for v, seq in seqs:
                v.wait_kick(seq, timeout)

    def pause_all(self, timeout: float = 5.0) -> None:
        """Sync-request a pause of every vCPU: signal all, then wait for all."""
        live = [v for v in self.vcpus if v.alive]
        for v in live:
            v.pause(wait=False)
        deadline = time.monotonic() + timeout
        for v in live:
            v.pause(wait=True, timeout=max(0.0, deadline - time.monotonic()))

    def resume_all(self) -> None:
        for v in self.vcpus:
            v.resume()

    # ------------------------------------------------------------------ teardown
    def close(self, timeout: float = 5.0) -> None:
        """Stop all vCPU threads (request all, then join all), then close the fds and
        unmap guest memory. Raises VcpuTimeout if a thread would not stop (its fd and the
        guest memory are then left alone rather than freed under it)."""
        if self._closed:
            return
        for v in self.vcpus:
            v.stop(join=False)
        deadline = time.monotonic() + timeout
        stuck = []
        for v in self.vcpus:
            try:
                v.join_stopped(deadline)
            except VcpuTimeout:
                stuck.append(v.index)
        if stuck:
            raise VcpuTimeout(f"vCPU thread(s) {stuck} did not stop within {timeout}s")
        self._closed = True
        self._close_fds()

    def _close_fds(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for ms in list(self.memslots.values()):
            ms.view = None
            ms.mapping.close()
        self.memslots.clear()
        self.kvm.close()

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
