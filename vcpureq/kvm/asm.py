"""Assemble guest code from assembly text with GNU binutils (``as``, ``ld``, ``objcopy``).

Guests are written as AT&T-syntax assembly (the syntax of the kernel's own ``.S`` files) and
assembled at first use; the flat binary is cached on disk, keyed by the text, the mode and
the load address, so later runs need no toolchain work.

Why not the ``keystone-engine`` wheel (tried first): version 0.9.2 installs and imports
here, but mis-assembles 16-bit code *silently*: with ``.equ V, 0x21``, ``[V*4]`` is encoded
as ``[0x21]``; in AT&T mode decimal literals are read as hexadecimal (``$100000`` becomes
0x100000, ``.fill 200`` emits 512 bytes); it adds 32-bit address-size prefixes to 16-bit
memory operands; and Intel-syntax ``offset label`` is rejected. docs/kvm.md has the details.
A guest assembled wrong does not fail loudly, it misbehaves, so only binutils is used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_TOOLS = ("as", "ld", "objcopy")
_MODES = {
    16: ("--32", "elf_i386", ".code16\n"),
    32: ("--32", "elf_i386", ".code32\n"),
    64: ("--64", "elf_x86_64", ".code64\n"),
}


class AssemblerError(RuntimeError):
    """The assembler rejected the text (the message has its diagnostics)."""


class AssemblerUnavailable(AssemblerError):
    """No usable assembler on this machine (the message names what is missing)."""


def cache_dir() -> Path:
    env = os.environ.get("VCPUREQ_ASM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vcpureq" / "asm"


@functools.lru_cache(maxsize=1)
def toolchain() -> dict[str, str]:
    """Paths of as/ld/objcopy and the ``as`` version line; raises if one is missing."""
    found = {tool: shutil.which(tool) for tool in _TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise AssemblerUnavailable(
            f"GNU binutils not found on PATH (missing: {', '.join(missing)}); guests are "
            "assembled from text at first use: install binutils (Debian: apt-get install "
            "binutils)"
        )
    paths = {tool: str(path) for tool, path in found.items()}
    try:
        out = subprocess.run(
            [paths["as"], "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise AssemblerUnavailable(f"{paths['as']} --version failed: {exc}") from exc
    paths["version"] = out.splitlines()[0] if out else "unknown"
    return paths


def available() -> str | None:
    """``None`` if guests can be assembled here, else the reason they cannot."""
    try:
        toolchain()
    except AssemblerUnavailable as exc:
        return str(exc)
    return None


def _run(cmd: list[str], what: str) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AssemblerError(f"{what}: could not run {cmd[0]}: {exc}") from exc
    if res.returncode != 0:
        raise AssemblerError(f"{what} failed ({' '.join(cmd)}):\n{res.stderr.strip()}")


def _assemble_uncached(text: str, bits: int, origin: int, name: str) -> bytes:
    tools = toolchain()
    as_flag, emulation, directive = _MODES[bits]
    with tempfile.TemporaryDirectory(prefix="vcpureq-asm-") as tmp:
        src = os.path.join(tmp, "guest.S")
        obj = os.path.join(tmp, "guest.o")
        elf = os.path.join(tmp, "guest.elf")
        out = os.path.join(tmp, "guest.bin")
        with open(src, "w") as f:
            f.write(directive + text + "\n")
        _run([tools["as"], as_flag, "-o", obj, src], f"assembling {name}")
        # Linking resolves absolute references to labels (e.g. an IVT entry's offset).
        _run(
            [tools["ld"], "-m", emulation, "-nostdlib", "-static", "-e", "0",
             f"-Ttext=0x{origin:x}", "-o", elf, obj],
            f"linking {name}",
        )
        _run([tools["objcopy"], "-O", "binary", "-j", ".text", elf, out], f"objcopy {name}")
        with open(out, "rb") as f:
            return f.read()


_memo: dict[str, bytes] = {}


def assemble(text: str, *, bits: int = 16, origin: int = 0, name: str = "guest") -> bytes:
    """Flat machine code for ``text`` (AT&T syntax), linked to run at ``origin``.

    ``bits`` is 16 (real mode), 32 or 64; the matching ``.codeNN`` directive is prepended.
    Results are cached in memory and under :func:`cache_dir` (best effort: an unwritable
    cache only costs a re-assembly).
    """
    if bits not in _MODES:
        raise ValueError(f"bits must be one of {sorted(_MODES)}, not {bits}")
    tools = toolchain()
    key = hashlib.sha256(
        f"{tools['version']}\0{bits}\0{origin}\0{text}".encode()
    ).hexdigest()
    if key in _memo:
        return _memo[key]
    path = cache_dir() / f"{key}.bin"
    try:
        code = path.read_bytes()
    except OSError:
        code = _assemble_uncached(text, bits, origin, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(code)
            os.replace(tmp, path)
        except OSError:
            pass
    _memo[key] = code
    return code
