"""Scenarios: who requests what, and the property checked, as programs for the explorer.

``SCENARIOS`` is the built-in list: a name, a program factory, its configuration.
``SCENARIOS[name].program(arch)`` is the zero-argument program to explore (``arch``: a
name in ``vcpureq.arch.ARCHES``, an ``Arch`` class or instance).

For ``vcpureq check`` (vcpureq.catalogue): ``cases(vcpus)`` is every built-in
architecture on every scenario with its expected verdict, ``cases_for_protocol`` runs
every scenario on a user's architecture, expecting it to be verified.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vcpureq.arch import ARCHES, Arch
from vcpureq.scenarios.generic import (
    KICKED_OUT,
    SAW_BEFORE_ENTRY,
    ArchSpec,
    Program,
    async_request,
    payload,
    sync_request,
)

if TYPE_CHECKING:
    from vcpureq.catalogue import Case

__all__ = [
    "KICKED_OUT",
    "SAW_BEFORE_ENTRY",
    "SCENARIOS",
    "KNOWN_BUGS",
    "KERNEL_FINDINGS",
    "PROPOSALS",
    "BIG_CASES",
    "Program",
    "Scenario",
    "cases",
    "cases_for_protocol",
]


@dataclass(frozen=True)
class Scenario:
    name: str
    factory: Callable[..., Program]
    description: str
    config: Mapping[str, Any] = field(default_factory=dict)
    min_vcpus: int = 1  # its targets name vCPUs up to min_vcpus - 1
    #: architecture features it needs (Arch.features); runs only where all are present
    requires: frozenset[str] = frozenset()

    def program(self, arch: ArchSpec, **overrides: Any) -> Program:
        return self.factory(arch, **{**self.config, **overrides})

    def applies_to(self, arch: ArchSpec) -> bool:
        features = frozenset(getattr(arch, "features", ())) if not isinstance(arch, str) \
            else frozenset(ARCHES[arch].features)
        return self.requires <= features


_TWO_ON_VCPU0 = ((0, "TLB_FLUSH"), (0, "UNBLOCK"))
_BOTH_VCPUS = ((0, "TLB_FLUSH"), (1, "TLB_FLUSH"))

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "async-request",
            async_request,
            "make_request + vcpu_kick to a running vCPU: no request is lost",
        ),
        Scenario(
            "async-request-2",
            async_request,
            "two requesters race to kick the same vCPU: no request is lost",
            {"targets": _TWO_ON_VCPU0},
        ),
        Scenario(
            "set-request",
            async_request,
            "set_request (the seed's unified interface: make_request + the "
            "architecture's kick) to a running vCPU: no request is lost",
            {"via": "set_request"},
        ),
        Scenario(
            "sync-request",
            sync_request,
            "set_sync_request: on return the vCPU is out of the guest and handles the "
            "request before it enters again",
        ),
        Scenario(
            "sync-request-2",
            sync_request,
            "two set_sync_request calls, one per vCPU",
            {"targets": _BOTH_VCPUS},
            min_vcpus=2,
        ),
        Scenario(
            "sync-request-many",
            sync_request,
            "set_sync_request_many on every vCPU: kick all first, then wait for all",
            {"via": "set_sync_request_many"},
        ),
        Scenario(
            "broadcast-wait",
            sync_request,
            "make_all_cpus_request(TLB_FLUSH): on return no vCPU runs the guest with "
            "TLB_FLUSH pending, now or later",
            {"via": "make_all_cpus_request"},
        ),
        Scenario(
            "payload",
            payload,
            "data written before make_request is seen by the request's handler",
        ),
    )
}


#: Built-in broken variants: words their counterexample must contain, per scenario; the
#: lost request's name where every memory model's first counterexample names it (None:
#: any counterexample; under SC set_sync_request_many's first one is the requester
#: hanging).
KNOWN_BUGS: dict[str, dict[str, str | None]] = {
    "generic-check-before-mode": {
        "async-request": "TLB_FLUSH pending",
        "set-request": "TLB_FLUSH pending",
        "async-request-2": "the request is lost",
        "sync-request": "TLB_FLUSH pending",
        "sync-request-2": "TLB_FLUSH pending",
        "sync-request-many": None,
        "broadcast-wait": "TLB_FLUSH",
        "payload": "TLB_FLUSH pending",
    },
    # Only under the models in the arch's buggy_under; verified under the others.
    "generic-no-mb-after-mode": {
        "async-request": "the request is lost",
        "sync-request": "the request is lost",
        "payload": "the request is lost",
    },
    "generic-no-wmb-in-make-request": {
        "payload": "stale",
    },
}


# --- scenarios on the simulated host (vcpureq/scenarios/hosts.py): x86, arm64, ppc64 ----
from vcpureq.scenarios import hosts as _hosts  # noqa: E402

_HOST = frozenset({"block", "interrupts"})
SCENARIOS.update({
    s.name: s
    for s in (
        Scenario(
            "halt-wake", _hosts.interrupt_delivery,
            "every vCPU halted in kvm_vcpu_block; an interrupt for vCPU 0 wakes it (no "
            "lost wakeup) and reaches the guest",
            {"halted": True}, requires=_HOST,
        ),
        Scenario(
            "irq-inject", _hosts.interrupt_delivery,
            "an interrupt injected into a running vCPU reaches the guest (no lost "
            "interrupt)",
            {"halted": False, "bystanders_halted": False}, requires=_HOST,
        ),
        Scenario(
            "tlb-flush-walk", _hosts.tlb_flush_walk,
            "kvm_flush_remote_tlbs while vCPU 0 walks shadow page tables locklessly: "
            "the zapper does not free the page while the walk can still read it",
            min_vcpus=2, requires=frozenset({"lockless-walk", "block"}),
        ),
        Scenario(
            "kick-all-wait-all", _hosts.kick_all_wait_all,
            "make_all_cpus_request(TLB_FLUSH) over N vCPUs, vCPU 0 asleep: kick all, "
            "wait for all; on return none runs the guest with TLB_FLUSH pending",
            requires=_HOST,
        ),
        Scenario(
            "migrate-kick", _hosts.migrate_kick,
            "vCPU 0 migrates to another CPU while it is kicked (the IPI may hit the CPU "
            "it left): no request is lost",
            {"via": "kick", "halted": ()}, requires=frozenset({"migration"}),
        ),
        Scenario(
            "migrate-kick-wait", _hosts.migrate_kick,
            "vCPU 0 migrates while kvm_make_request_and_kick waits for it: on return it "
            "is out of the guest and handles the request before it enters again",
            {"via": "kick-wait", "halted": ()}, requires=frozenset({"migration"}),
        ),
        Scenario(
            "pause-resume", _hosts.pause_resume,
            "kvm_arm_halt_guest then kvm_arm_resume_guest (vCPU 1 in WFI): no vCPU runs "
            "the guest while paused, every vCPU runs again after resume",
            {"halted": (1,)}, min_vcpus=2, requires=frozenset({"pause"}),
        ),
        Scenario(
            "kick-wait", _hosts.kick_wait,
            "kvm_make_request_and_kick of a WAIT request: on return the vCPU is out of "
            "the guest and handles the request before it enters again",
            requires=_HOST,
        ),
        Scenario(
            "kick-wait-race", _hosts.kick_wait,
            "kick-wait while a second requester kicks the same vCPU "
            "(make_request + kvm_vcpu_kick)",
            {"racer": True}, requires=_HOST,
        ),
    )
})

#: Bug variants of the host architectures (vcpureq/arch/{x86,arm64,ppc64}.py): words
#: their counterexample must contain, per scenario (as KNOWN_BUGS above).
KNOWN_BUGS.update({
    "x86-no-mb-after-mode": {
        "async-request": "the request is lost",
        "sync-request": "the request is lost",
        "payload": "the request is lost",
    },
    "x86-kick-no-wait": {
        "kick-wait": "is running the guest with UPDATE_PROTECTED_GUEST_STATE not handled",
    },
    "x86-walk-ipi-in-guest-only": {
        "tlb-flush-walk": "read shadow page 1 after it was freed",
    },
    "arm64-irq-kick-no-request": {
        "irq-inject": "the interrupt is lost",
    },
    "arm64-pause-2017": {
        "pause-resume": "kvm_arm_halt_guest returned but vCPU 0 is running the guest",
    },
    "arm64-swait-active": {
        "pause-resume": "a lost wakeup",
    },
    "arm64-no-mb-after-mode": {
        "async-request": "the request is lost",
        "sync-request": "the request is lost",
    },
    "ppc64-mode-after-check": {
        "broadcast-wait": "TLB_FLUSH",
        "kick-all-wait-all": "TLB_FLUSH",
    },
    "ppc64-no-mb-after-mode": {
        "broadcast-wait": "the request is lost",
        "kick-all-wait-all": "the request is lost",
    },
})

#: What the model finds in kernel code itself (not a historical bug): the correct
#: architecture is expected to show this counterexample. kvm_make_request_and_kick
#: waits only when its own cmpxchg moved the vCPU from IN_GUEST_MODE to
#: EXITING_GUEST_MODE; if another kicker got there first, the call returns while the
#: vCPU may still run the guest (see docs/architectures.md).
KERNEL_FINDINGS: dict[str, dict[str, str | None]] = {
    "x86": {"kick-wait-race": "is running the guest with UPDATE_PROTECTED_GUEST_STATE"},
    "arm64": {"kick-wait-race": "is running the guest with TLB_FLUSH"},
}

#: Proposed fixes (not kernel code), run on the scenarios they fix, expected verified.
PROPOSALS: dict[str, tuple[str, ...]] = {
    "x86-kick-wait-exiting": ("kick-wait", "kick-wait-race", "migrate-kick-wait"),
    "arm64-kick-wait-exiting": ("kick-wait", "kick-wait-race", "migrate-kick-wait"),
}

#: The big set: scenarios of a protocol (every memory model it is checked under) that
#: the default `vcpureq check` leaves out because together they take minutes (since
#: DPOR also reverses the races of daemon vCPU threads that run on after main, two
#: synchronous requesters on the generic harness give 18k-56k executions each; the
#: generic run loop is checked under three models). ``cases(which="big")`` lists
#: them; bench/hosts.py runs them. A user's variant derived from one of these
#: protocols leaves out its base's big set too.
_BIG_SYNC = frozenset({"sync-request-2", "sync-request-many"})
BIG_CASES: dict[str, frozenset[str]] = {
    "generic": _BIG_SYNC | {"async-request-2", "broadcast-wait"},
    "x86": _BIG_SYNC,
    "arm64": _BIG_SYNC,
    "ppc64": _BIG_SYNC,
    "x86-kick-wait-exiting": frozenset({"kick-wait-race"}),
}


def _cases(arch: ArchSpec, label: str, memory_model: str, vcpus: int | None,
           bugs: Mapping[str, str | None] | None,
           only: Collection[str] | None = None,
           skip: Collection[str] = ()) -> list[Case]:
    from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED, Case

    out = []
    for sc in SCENARIOS.values():
        n = vcpus or 2
        if n < sc.min_vcpus or (only is not None and sc.name not in only):
            continue
        if sc.name in skip:
            continue
        if not sc.applies_to(arch):
            continue
        broken = bugs is not None and sc.name in bugs
        out.append(Case(
            protocol=label,
            scenario=sc.name,
            program=sc.program(arch, nr_vcpus=n),
            memory_model=memory_model,
            expect=COUNTEREXAMPLE if broken else VERIFIED,
            expect_property=bugs.get(sc.name) if bugs is not None else None,
            description=sc.description,
            vcpus=n,
            tags=(("host",) if sc.requires else ("generic",))
            + (("big",) if sc.name in BIG_CASES.get(label, ()) else ()),
        ))
    return out


#: Architectures whose cases come from their own scenario module (its ``cases(vcpus)``
#: and ``PROTOCOLS``), not from the generic scenarios above.
from vcpureq.scenarios import kvm_user as _kvm_user  # noqa: E402
from vcpureq.scenarios import s390x as _s390x  # noqa: E402

_OWN_CASES = (_s390x, _kvm_user)


def cases(vcpus: int | None = None, which: str = "default") -> list[Case]:
    """Every built-in architecture on every scenario, with the verdict expected.

    ``which``: ``"default"`` (what `vcpureq check` runs), ``"big"`` (only the big set,
    BIG_CASES, for bench/hosts.py) or ``"all"``."""
    if which not in ("default", "big", "all"):
        raise ValueError(f"which must be 'default', 'big' or 'all', not {which!r}")
    out: list[Case] = []
    own = {p for mod in _OWN_CASES for p in mod.PROTOCOLS}
    for name, cls in ARCHES.items():
        if name in own:
            continue
        known = KNOWN_BUGS.get(name)
        only: Collection[str] | None = known if known is not None else PROPOSALS.get(name)
        big = BIG_CASES.get(name, frozenset())
        if which == "big":
            if not big:
                continue
            only = big if only is None else set(only) & big
        for model in cls.models_to_check():
            bugs = known if known is not None else KERNEL_FINDINGS.get(name)
            if cls.buggy_under is not None and model not in cls.buggy_under:
                bugs = None
            # A variant runs on the scenarios its bug is about (also under the models
            # where it is expected to verify); a correct architecture on all of them.
            out += _cases(name, name, model, vcpus, bugs, only=only,
                          skip=big if which == "default" else ())
    for mod in _OWN_CASES:
        out += mod.cases(vcpus, which=which)
    return out


def cases_for_protocol(obj: Any, label: str, vcpus: int | None = None) -> list[Case]:
    """A user's architecture (an Arch class or instance) on every scenario, expected to
    be verified; [] for anything else."""
    is_arch = isinstance(obj, Arch) or (isinstance(obj, type) and issubclass(obj, Arch))
    if not is_arch:
        return []
    for mod in _OWN_CASES:  # an architecture with its own scenarios (e.g. an s390x variant)
        own = getattr(mod, "cases_for_protocol", None)
        found = own(obj, label, vcpus) if own is not None else None
        if found:
            return list(found)
    # Scenarios where the kernel architecture a variant derives from already shows a
    # counterexample (KERNEL_FINDINGS) are left out: run them with --protocol NAME. So is
    # the base's big set (BIG_CASES; bench/hosts.py --protocol FILE.py:NAME runs it).
    cls = obj if isinstance(obj, type) else type(obj)
    bases = [vars(base).get("name", "") for base in cls.__mro__]
    findings = {sc for base in bases for sc in KERNEL_FINDINGS.get(base, {})}
    only = [name for name in SCENARIOS if name not in findings] if findings else None
    big = {sc for base in bases for sc in BIG_CASES.get(base, ())}
    return _cases(obj, label, obj.memory_model, vcpus, None, only=only, skip=big)
