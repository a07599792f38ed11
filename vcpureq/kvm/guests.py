"""Tiny real-mode (16-bit) guests, written as assembly text and assembled with binutils.

Each vCPU gets a *home region* of guest-physical memory (:data:`REGION_SIZE` bytes) and
starts with CS = DS = ES = SS = that region's segment, IP = 0, SP = :data:`STACK_TOP`, so a
guest addresses its own code and data with small offsets:

    0x0000 .. 0x0fff   code (assembled at origin 0)
    0x1000 .. 0x17ff   data the host may read (:data:`PROGRESS`, :data:`IRQ_COUNT`)
    0x1800 .. 0x1fff   stack

The interrupt vector table (real mode's IDT) is the shared page at guest-physical 0.

Guests talk to the VMM by port I/O (``out``: a KVM_EXIT_IO, the cheapest exit):

    PORT_REPORT  (0x10)  a 32-bit progress value (counter, heartbeats)
    PORT_MISSING (0x11)  16-bit: the critical page held this instead of its magic word
    PORT_IRQ     (0x12)  32-bit: interrupts handled so far
    PORT_READY   (0x13)  8-bit: set-up done (the IVT entry is installed)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .asm import assemble

REGION_SIZE = 0x2000
CODE_LIMIT = 0x1000
DATA = 0x1000
PROGRESS = DATA + 0x0  # u32, incremented by the spinner
IRQ_COUNT = DATA + 0x4  # u32, interrupts taken by the halt guest
STACK_TOP = 0x2000

PORT_REPORT = 0x10
PORT_MISSING = 0x11
PORT_IRQ = 0x12
PORT_READY = 0x13

CRITICAL_SEGMENT = 0xA000  # the critical page's default guest-physical address is 0xA0000
CRITICAL_MAGIC = 0xC0DE


@dataclasses.dataclass(frozen=True)
class Guest:
    """A guest program: assembly text plus the parameters substituted into it."""

    name: str
    text: str
    params: tuple[tuple[str, int], ...] = ()
    description: str = ""

    def source(self) -> str:
        """The full assembly text: ``.equ`` lines for the parameters, then the program."""
        consts = {
            "DATA": DATA,
            "PROGRESS": PROGRESS,
            "IRQ_COUNT": IRQ_COUNT,
            "PORT_REPORT": PORT_REPORT,
            "PORT_MISSING": PORT_MISSING,
            "PORT_IRQ": PORT_IRQ,
            "PORT_READY": PORT_READY,
            **dict(self.params),
        }
        header = "".join(f".equ {k}, 0x{v:x}\n" for k, v in consts.items())
        return header + self.text

    @property
    def code(self) -> bytes:
        code = assemble(self.source(), bits=16, origin=0, name=self.name)
        if len(code) > CODE_LIMIT:
            raise ValueError(f"guest {self.name}: {len(code)} bytes of code > {CODE_LIMIT}")
        return code

    def param(self, key: str) -> int:
        return dict(self.params)[key]


_COUNTER = """
# Count forever; every K increments, report the count on PORT_REPORT.
start:
    xorl    %ecx, %ecx
    movw    $PORT_REPORT, %dx
outer:
    movl    $K, %ebx
inner:
    incl    %ecx
    decl    %ebx
    jnz     inner
    movl    %ecx, %eax
    outl    %eax, %dx
    jmp     outer
"""

_SPINNER = """
# A tight loop that never exits on its own; PROGRESS (DS-relative) shows it runs.
start:
    incl    PROGRESS
    jmp     start
"""

_HALT = """
# Install an IVT entry for VECTOR, then idle with "sti; hlt". Each interrupt bumps
# IRQ_COUNT and reports it on PORT_IRQ; iret resumes after the hlt, which halts again.
start:
    xorw    %ax, %ax
    movw    %ax, %es
    movw    $handler, %es:(VECTOR * 4)      # IVT entry: offset ...
    movw    %cs, %es:(VECTOR * 4 + 2)       # ... then segment
    movl    $0, IRQ_COUNT
    movw    $PORT_READY, %dx
    outb    %al, %dx
idle:
    sti
    hlt
    jmp     idle
handler:
    pushl   %eax
    pushw   %dx
    incl    IRQ_COUNT
    movl    IRQ_COUNT, %eax
    movw    $PORT_IRQ, %dx
    outl    %eax, %dx
    popw    %dx
    popl    %eax
    iret
"""

_CRITICAL = """
# Keep reading the word at CRIT_SEG:0 (the critical page, its own memslot). Every K good
# reads, report a heartbeat count on PORT_REPORT; a read that is not MAGIC is reported on
# PORT_MISSING with the value seen. With the memslot gone, the read is an MMIO exit.
start:
    movw    $CRIT_SEG, %ax
    movw    %ax, %es
    xorl    %ecx, %ecx
outer:
    movl    $K, %ebx
inner:
    movw    %es:0, %ax
    cmpw    $MAGIC, %ax
    jne     missing
    decl    %ebx
    jnz     inner
    incl    %ecx
    movl    %ecx, %eax
    movw    $PORT_REPORT, %dx
    outl    %eax, %dx
    jmp     outer
missing:
    movw    $PORT_MISSING, %dx
    outw    %ax, %dx
    jmp     outer
"""

_NO_IDT = """
# Load an empty IDT (limit 0) and set CR0.PE: from here on no exception can be delivered
# (the IDT limit is checked in protected mode; KVM's real-mode emulator ignores it).
start:
    lidt    null_idtr
    movl    %cr0, %eax
    orb     $1, %al
    movl    %eax, %cr0
"""

_NULL_IDTR = """
null_idtr:
    .word   0
    .long   0
"""

_TRIPLE_FAULT = _NO_IDT + """
# Divide by zero: #DE cannot be delivered -> #GP -> #DF -> triple fault, which KVM
# reports as KVM_EXIT_SHUTDOWN.
    xorw    %bx, %bx
    xorw    %dx, %dx
    movw    $1, %ax
    divw    %bx
    jmp     start
""" + _NULL_IDTR

_INVALID_INSTRUCTION = _NO_IDT + """
# An undefined opcode: on hardware #UD cannot be delivered -> triple fault
# (KVM_EXIT_SHUTDOWN); where KVM emulates this mode, it fails to emulate ud2
# (KVM_EXIT_INTERNAL_ERROR, suberror EMULATION).
ud:
    ud2
    jmp     start
""" + _NULL_IDTR


def counter(k: int = 1000) -> Guest:
    if not 1 <= k < 2**31:
        raise ValueError("k must be in [1, 2**31)")
    return Guest("counter", _COUNTER, (("K", k),), "count; report every K on port 0x10")


def spinner() -> Guest:
    return Guest("spinner", _SPINNER, (), "tight loop, never exits on its own")


def halt(vector: int = 0x20) -> Guest:
    if not 0x20 <= vector <= 0xFF:
        raise ValueError("vector must be in [0x20, 0xff] (below 0x20 are CPU exceptions)")
    return Guest("halt", _HALT, (("VECTOR", vector),), "sti; hlt loop, woken by interrupts")


def critical_page(
    segment: int = CRITICAL_SEGMENT, magic: int = CRITICAL_MAGIC, k: int = 1000
) -> Guest:
    return Guest(
        "critical-page",
        _CRITICAL,
        (("CRIT_SEG", segment), ("MAGIC", magic), ("K", k)),
        "reads a word of a separate memslot, reports when it is missing or wrong",
    )


def triple_fault() -> Guest:
    return Guest("triple-fault", _TRIPLE_FAULT, (), "divide error, protected mode, no IDT")


def invalid_instruction() -> Guest:
    return Guest("invalid-instruction", _INVALID_INSTRUCTION, (), "ud2, protected mode, no IDT")


GUESTS: dict[str, Callable[..., Guest]] = {
    "counter": counter,
    "spinner": spinner,
    "halt": halt,
    "critical-page": critical_page,
    "triple-fault": triple_fault,
    "invalid-instruction": invalid_instruction,
}


def guest(name: str, **params: int) -> Guest:
    try:
        factory = GUESTS[name]
    except KeyError:
        raise ValueError(f"unknown guest {name!r}; known: {', '.join(GUESTS)}") from None
    return factory(**params)
