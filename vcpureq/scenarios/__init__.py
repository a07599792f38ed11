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

    def program(self, arch: ArchSpec, **overrides: Any) -> Program:
        return self.factory(arch, **{**self.config, **overrides})


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


def _cases(arch: ArchSpec, label: str, memory_model: str, vcpus: int | None,
           bugs: Mapping[str, str | None] | None,
           only: Collection[str] | None = None) -> list[Case]:
    from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED, Case

    out = []
    for sc in SCENARIOS.values():
        n = vcpus or 2
        if n < sc.min_vcpus or (only is not None and sc.name not in only):
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
            tags=("generic",),
        ))
    return out


def cases(vcpus: int | None = None) -> list[Case]:
    """Every built-in architecture on every scenario, with the verdict expected."""
    out: list[Case] = []
    for name, cls in ARCHES.items():
        known = KNOWN_BUGS.get(name)
        for model in cls.models_to_check():
            bugs = known
            if cls.buggy_under is not None and model not in cls.buggy_under:
                bugs = None
            # A variant runs on the scenarios its bug is about (also under the models
            # where it is expected to verify); a correct architecture on all of them.
            out += _cases(name, name, model, vcpus, bugs, only=known)
    return out


def cases_for_protocol(obj: Any, label: str, vcpus: int | None = None) -> list[Case]:
    """A user's architecture (an Arch class or instance) on every scenario, expected to
    be verified; [] for anything else."""
    is_arch = isinstance(obj, Arch) or (isinstance(obj, type) and issubclass(obj, Arch))
    if not is_arch:
        return []
    return _cases(obj, label, obj.memory_model, vcpus, None)
