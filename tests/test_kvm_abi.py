"""The KVM layer's pieces that need no /dev/kvm: ioctl numbers and structure layouts
(checked against the machine's <linux/kvm.h> with a C compiler), the assembler, the kernel
sigset encoding, and the KvmUnavailable messages."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vcpureq.kvm import asm, guests, ioctls, structs
from vcpureq.kvm.kick import kernel_sigset
from vcpureq.kvm.system import Kvm, KvmUnavailable, info

HEADER = Path("/usr/include/linux/kvm.h")

IOCTLS = [
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_SET_TSS_ADDR",
    "KVM_SET_IDENTITY_MAP_ADDR", "KVM_CREATE_IRQCHIP", "KVM_IRQ_LINE", "KVM_RUN",
    "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_INTERRUPT",
    "KVM_SET_SIGNAL_MASK",
]

# (C expression, Python value)
LAYOUT = [
    ("sizeof(struct kvm_run)", ctypes.sizeof(structs.KvmRun)),
    ("offsetof(struct kvm_run, immediate_exit)", structs.KvmRun.immediate_exit.offset),
    ("offsetof(struct kvm_run, exit_reason)", structs.KvmRun.exit_reason.offset),
    ("offsetof(struct kvm_run, ready_for_interrupt_injection)",
     structs.KvmRun.ready_for_interrupt_injection.offset),
    ("offsetof(struct kvm_run, if_flag)", structs.KvmRun.if_flag.offset),
    ("offsetof(struct kvm_run, io)", structs.KvmRun.u.offset),
    ("offsetof(struct kvm_run, io.port)", structs.KvmRun.u.offset + structs.KvmRunIo.port.offset),
    ("offsetof(struct kvm_run, io.data_offset)",
     structs.KvmRun.u.offset + structs.KvmRunIo.data_offset.offset),
    ("offsetof(struct kvm_run, mmio.len)",
     structs.KvmRun.u.offset + structs.KvmRunMmio.len.offset),
    ("offsetof(struct kvm_run, mmio.is_write)",
     structs.KvmRun.u.offset + structs.KvmRunMmio.is_write.offset),
    ("offsetof(struct kvm_run, kvm_valid_regs)", structs.KvmRun.kvm_valid_regs.offset),
    ("sizeof(struct kvm_regs)", ctypes.sizeof(structs.KvmRegs)),
    ("offsetof(struct kvm_regs, rip)", structs.KvmRegs.rip.offset),
    ("sizeof(struct kvm_segment)", ctypes.sizeof(structs.KvmSegment)),
    ("sizeof(struct kvm_sregs)", ctypes.sizeof(structs.KvmSregs)),
    ("offsetof(struct kvm_sregs, idt)", structs.KvmSregs.idt.offset),
    ("offsetof(struct kvm_sregs, cr0)", structs.KvmSregs.cr0.offset),
    ("offsetof(struct kvm_sregs, interrupt_bitmap)", structs.KvmSregs.interrupt_bitmap.offset),
    ("sizeof(struct kvm_userspace_memory_region)",
     ctypes.sizeof(structs.KvmUserspaceMemoryRegion)),
    ("sizeof(struct kvm_interrupt)", ctypes.sizeof(structs.KvmInterrupt)),
    ("sizeof(struct kvm_irq_level)", ctypes.sizeof(structs.KvmIrqLevel)),
    ("sizeof(struct kvm_signal_mask)", ctypes.sizeof(structs.KvmSignalMaskHeader)),
]


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or not HEADER.exists():
        pytest.skip("needs a C compiler and <linux/kvm.h> (Debian: gcc, linux-libc-dev)")
    names = IOCTLS + [f"KVM_CAP_{c.name}" for c in ioctls.Cap]
    names += [f"KVM_EXIT_{r.name}" for r in ioctls.ExitReason]
    lines = []
    for n in names:
        lines.append(f'#ifdef {n}\n  printf("{n} %llu\\n", (unsigned long long)({n}));\n#endif')
    for expr, _ in LAYOUT:
        lines.append(f'  printf("{expr} %zu\\n", (size_t)({expr}));')
    src = "#include <stddef.h>\n#include <stdio.h>\n#include <linux/kvm.h>\nint main(void){\n"
    src += "\n".join(lines) + "\nreturn 0;}\n"
    d = tmp_path_factory.mktemp("abi")
    (d / "abi.c").write_text(src)
    subprocess.run([cc, "-o", str(d / "abi"), str(d / "abi.c")], check=True, timeout=60)
    out = subprocess.run([str(d / "abi")], capture_output=True, text=True, check=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


def test_ioctl_numbers_match_header(header_values: dict[str, int]) -> None:
    for name in IOCTLS:
        assert getattr(ioctls, name) == header_values[name], name


def test_capabilities_and_exit_reasons_match_header(header_values: dict[str, int]) -> None:
    checked = 0
    for cap in ioctls.Cap:
        key = f"KVM_CAP_{cap.name}"
        if key in header_values:
            assert cap.value == header_values[key], key
            checked += 1
    for reason in ioctls.ExitReason:
        key = f"KVM_EXIT_{reason.name}"
        if key in header_values:
            assert reason.value == header_values[key], key
            checked += 1
    assert checked > 40


def test_struct_layouts_match_header(header_values: dict[str, int]) -> None:
    for expr, value in LAYOUT:
        assert value == header_values[expr], expr


def test_ioctl_encoding_by_hand() -> None:
    # _IOR(0xAE, 0x81, 144 bytes): dir 2 << 30 | 144 << 16 | 0xAE << 8 | 0x81
    assert ioctls.KVM_GET_REGS == (2 << 30) | (144 << 16) | (0xAE << 8) | 0x81
    assert ioctls.KVM_RUN == 0xAE80
    with pytest.raises(ValueError):
        ioctls._IOC(1, 0xAE, 1, 1 << 14)


def test_kernel_sigset_layout() -> None:
    assert kernel_sigset(set()) == bytes(8)
    assert kernel_sigset({1}) == b"\x01" + bytes(7)
    assert kernel_sigset({10, 64}) == (1 << 9 | 1 << 63).to_bytes(8, "little")
    with pytest.raises(ValueError):
        kernel_sigset({65})


needs_as = pytest.mark.skipif(asm.available() is not None, reason=str(asm.available()))


@needs_as
def test_assembler_encodes_16_bit_code_and_resolves_labels() -> None:
    assert asm.assemble("1: jmp 1b") == bytes.fromhex("ebfe")
    code = asm.assemble("start: movw $target, %ax\n.fill 7, 1, 0x90\ntarget: hlt", origin=0x100)
    assert code[:3] == bytes([0xB8, 0x03 + 7, 0x01])  # mov ax, 0x10a (origin 0x100 + 3 + 7)
    assert asm.assemble("ret", bits=64) == b"\xc3"


@needs_as
def test_assembler_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCPUREQ_ASM_CACHE", str(tmp_path))
    with pytest.raises(asm.AssemblerError, match="no such instruction"):
        asm.assemble("frobnicate %ax", name="bad")
    with pytest.raises(ValueError):
        asm.assemble("nop", bits=8)


@needs_as
def test_assembler_caches_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCPUREQ_ASM_CACHE", str(tmp_path))
    text = f"nop\nnop\n# cache test {os.getpid()}"
    code = asm.assemble(text)
    assert list(tmp_path.glob("*.bin")) and code == b"\x90\x90"


def test_assembler_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    asm.toolchain.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        assert "binutils" in str(asm.available())
        with pytest.raises(asm.AssemblerUnavailable, match="binutils"):
            asm.toolchain()
    finally:
        asm.toolchain.cache_clear()


@needs_as
def test_every_guest_assembles_within_its_code_area() -> None:
    for name, factory in guests.GUESTS.items():
        code = factory().code
        assert 0 < len(code) <= guests.CODE_LIMIT, name
    with pytest.raises(ValueError, match="unknown guest"):
        guests.guest("nope")


def test_unavailable_device_is_explained() -> None:
    with pytest.raises(KvmUnavailable, match="does not exist"):
        Kvm("/nonexistent/kvm")
    report = info("/nonexistent/kvm")
    assert report["available"] is False and "does not exist" in report["reason"]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/kvm"),
                    reason="needs root (to drop privileges) and /dev/kvm")
def test_permission_denied_is_explained() -> None:
    st = os.stat("/dev/kvm")
    if st.st_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible here")
    from vcpureq.kvm.system import probe

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try to open /dev/kvm, report, exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, str(probe()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert "may not open it" in message and "Permission denied" in message, message
