"""Real vCPUs on ``/dev/kvm``: ioctls and structures, a VM with memslots, vCPU threads
that run tiny real-mode guests, and signal kicks (three variants).

Quick use::

    from vcpureq.kvm import Vm, guests
    with Vm() as vm:
        vcpu = vm.add_vcpu(guests.counter(k=1000))
        print(vcpu.wait_for_report(guests.PORT_REPORT, count=3))

See docs/kvm.md for how each piece maps to Documentation/virt/kvm/api.rst.
"""

from . import guests
from .asm import AssemblerError, AssemblerUnavailable, assemble
from .ioctls import Cap, ExitReason
from .kick import DEFAULT_KICK_SIGNAL, KickMode, install_kick_handler
from .system import Kvm, KvmUnavailable, info, probe
from .vcpu import GuestCrashed, MmioAccess, Vcpu, VcpuError, VcpuTimeout
from .vm import Memslot, MemslotError, Vm

__all__ = [
    "DEFAULT_KICK_SIGNAL",
    "AssemblerError",
    "AssemblerUnavailable",
    "Cap",
    "ExitReason",
    "GuestCrashed",
    "KickMode",
    "Kvm",
    "KvmUnavailable",
    "Memslot",
    "MemslotError",
    "MmioAccess",
    "Vcpu",
    "VcpuError",
    "VcpuTimeout",
    "Vm",
    "assemble",
    "guests",
    "info",
    "install_kick_handler",
    "probe",
]
