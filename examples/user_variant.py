"""Your own protocol variants, checked like built-in ones.

Subclass an architecture, override the one step you want to change, and run::

    vcpureq check --protocol examples/user_variant.py:X86NoMbBeforeRequestCheck

Every scenario that applies to the architecture is explored under its default memory
model (x86: TSO) and expected to be verified; a counterexample is printed with the
schedule that reproduces it (``vcpureq replay``), and the command exits with status 1.
Add ``--scenario async-request`` to run one scenario only, ``--memory-model sc`` to see
that sequential consistency alone cannot show this bug.

``X86NoMbBeforeRequestCheck`` drops the full barrier x86's vcpu_enter_guest has between
publishing IN_GUEST_MODE and reading vcpu->requests
(``smp_mb__after_srcu_read_unlock()``). Under TSO the store of the mode waits in the
store buffer while the vCPU reads no request; a requester that just set one reads
OUTSIDE_GUEST_MODE, sends no IPI, and the guest runs with the request pending: the
model reports the lost request, with the steps of the trace where it happened.

To replay a counterexample, name the variant and the scenario::

    vcpureq replay examples/user_variant.py:X86NoMbBeforeRequestCheck/async-request \
        tso:1*4.2*4.3*7.0*2.4.1*2.0*2

or a *program*: ``async_request_program`` below is the scenario built on the variant::

    vcpureq replay examples/user_variant.py:async_request_program tso:1*4.2*4.3*7.0*2.4.1*2.0*2

``Ppc64PlainKick`` changes the protocol without breaking it: the seed's kick callback
uses plain kvm_vcpu_kick (a reschedule IPI to vcpu->cpu) instead of book3s HV's fast
doorbell kick; every scenario verifies and the command exits with status 0.
"""

from vcpureq.arch.ppc64 import Ppc64Arch
from vcpureq.arch.x86 import X86Arch
from vcpureq.common import IN_GUEST_MODE, KvmVcpu, vcpu_kick
from vcpureq.model.kernel import smp_store_release
from vcpureq.scenarios import SCENARIOS


class X86NoMbBeforeRequestCheck(X86Arch):
    """x86 with the smp_mb after ``vcpu->mode = IN_GUEST_MODE`` removed."""

    name = "my-x86-no-mb"

    def enter_guest_mode(self, vcpu: KvmVcpu) -> None:
        smp_store_release(vcpu.mode, IN_GUEST_MODE)
        # smp_mb__after_srcu_read_unlock();   <- dropped


class Ppc64PlainKick(Ppc64Arch):
    """ppc64 whose unified-interface kick is kvm_vcpu_kick, not the doorbell fast path."""

    name = "my-ppc64-plain-kick"

    def kick(self, vcpu: KvmVcpu) -> None:
        vcpu_kick(vcpu)  # wake a sleeper, else (should_kick is 1) IPI vcpu->cpu


#: the async-request scenario on the broken variant, as a program `vcpureq replay` takes
async_request_program = SCENARIOS["async-request"].program(X86NoMbBeforeRequestCheck)
