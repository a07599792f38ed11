"""Scenarios of the userspace VMM (``vcpureq.arch.kvm_user``) beyond the generic ones.

The generic scenarios (vcpureq.scenarios.generic) run on the ``kvm-user`` variants as on
every architecture: the guest runs until kicked. These add what a userspace VMM has on
top, with the model backend's guest script (``ModelBackend(guest=...)``):

- ``io-exit-sync``: the guest's first run ends in an I/O exit (its access completes only
  on the next KVM_RUN) while a requester does ``set_sync_request``; besides the sync
  properties, the vCPU must not handle the request (touch vCPU state) before it
  re-entered KVM_RUN once with ``immediate_exit`` (checked by the model backend).
- ``halt-interrupt``: the guest halts (KVM_EXIT_HLT: the thread sleeps in the VMM,
  ``vcpu_block``) while a requester makes INTERRUPT and kicks: the kick must wake it (no
  lost wake-up: the wake-up path, ``vcpu_wake_up``, does not depend on the signal).
- ``pause-all``: PAUSE on every vCPU by the kernel's WAIT broadcast
  (``make_all_cpus_request``), then resume: from the moment the broadcast returns until
  the resume, no vCPU runs the guest, and afterwards every vCPU runs it again.

``cases(vcpus)`` lists them for ``vcpureq check`` with the verdict each variant should get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vcpureq.arch.kvm_user import (
    PAUSE,
    VARIANTS,
    KvmUserArch,
    ModelBackend,
    pause_vcpus,
    resume_vcpus,
)
from vcpureq.common import KvmVcpu, make_all_cpus_request
from vcpureq.model import Atomic, check, spawn, wait_until
from vcpureq.model.kernel import READ_ONCE
from vcpureq.scenarios.generic import Harness, Program, async_request, sync_request

if TYPE_CHECKING:
    from vcpureq.catalogue import Case

__all__ = ["KVM_USER_SCENARIOS", "KVM_USER_BUGS", "GENERIC_SCENARIOS", "PROTOCOLS",
           "io_exit_sync", "halt_interrupt", "pause_all", "with_guest", "cases"]


def with_guest(arch: str | type[KvmUserArch], *script: str) -> KvmUserArch:
    """The variant ``arch`` whose model guest follows ``script`` (ModelBackend)."""
    cls = VARIANTS[arch] if isinstance(arch, str) else arch
    return cls(backend=ModelBackend(guest=script))


def io_exit_sync(arch: str | type[KvmUserArch] = "kvm-user", *, nr_vcpus: int = 1) -> Program:
    """set_sync_request(TLB_FLUSH) racing with the guest's first I/O exit."""
    program = sync_request(with_guest(arch, "io", "spin"), nr_vcpus=nr_vcpus)
    program.__name__ = f"io_exit_sync[{_name(arch)}]"
    return program


def halt_interrupt(arch: str | type[KvmUserArch] = "kvm-user", *,
                   nr_vcpus: int = 1) -> Program:
    """make_request(INTERRUPT) + kick to a vCPU whose guest halts on its first run."""
    program = async_request(with_guest(arch, "hlt", "spin"), nr_vcpus=nr_vcpus,
                            targets=((0, "INTERRUPT"),))
    program.__name__ = f"halt_interrupt[{_name(arch)}]"
    return program


def pause_all(arch: str | type[KvmUserArch] = "kvm-user", *, nr_vcpus: int = 1) -> Program:
    """Pause every vCPU with the WAIT broadcast, then resume them.

    Checked: when ``make_all_cpus_request(PAUSE)`` returns no vCPU runs the guest, and none
    enters it until the resume (at every guest entry); after the resume every vCPU runs
    the guest again (main waits for it: a vCPU that stays asleep is a hang).
    """
    cls = VARIANTS[arch] if isinstance(arch, str) else arch

    def program() -> str:
        # 0: pausing; 1: the broadcast returned, paused; 2: resuming.
        phase = Atomic(0, name="phase")
        ran_again = [Atomic(0, name=f"vcpu{i}.ran_after_resume") for i in range(nr_vcpus)]

        def on_guest_entry(vcpu: KvmVcpu) -> None:
            p = READ_ONCE(phase)
            check(p != 1, f"vCPU {vcpu.vcpu_id} entered the guest while the VM was paused")
            if p == 2:
                ran_again[vcpu.vcpu_idx].store(1, order="full")

        harness = Harness(cls(), nr_vcpus, [], None, on_guest_entry=on_guest_entry)
        vcpus = harness.kvm.vcpus

        def requester() -> None:
            pause_vcpus(vcpus)
            make_all_cpus_request(harness.kvm, PAUSE)
            phase.store(1, order="full")  # observation: never buffered
            for vcpu in vcpus:
                cpu = harness.kvm.host.cpus[vcpu.vcpu_idx]
                check(not READ_ONCE(cpu.guest_running),
                      f"make_all_cpus_request(PAUSE) returned but vCPU {vcpu.vcpu_id} "
                      "is running the guest")
            phase.store(2, order="full")
            resume_vcpus(vcpus)

        spawn(requester, name="requester").join()
        for flag in ran_again:
            wait_until(flag.load)
        return "paused and resumed"

    program.__name__ = f"pause_all[{cls.name}]"
    return program


def _name(arch: str | type[KvmUserArch]) -> str:
    return arch if isinstance(arch, str) else arch.name


#: name -> (factory, description)
KVM_USER_SCENARIOS = {
    "io-exit-sync": (io_exit_sync, "set_sync_request races with the guest's I/O exit: "
                     "handled only after the access completed (immediate_exit re-entry)"),
    "halt-interrupt": (halt_interrupt, "INTERRUPT + kick to a vCPU halting in the VMM: "
                       "the wake-up is not lost"),
    "pause-all": (pause_all, "make_all_cpus_request(PAUSE) then resume: no guest runs "
                  "while paused, every vCPU runs again after"),
}

#: The protocols whose cases come from this module (vcpureq.scenarios._OWN_CASES).
PROTOCOLS: tuple[str, ...] = tuple(VARIANTS)

#: The generic scenarios (vcpureq.scenarios.SCENARIOS) run on every variant, and the vCPU
#: count each runs with unless ``--vcpus`` says otherwise. One vCPU is enough for all but
#: sync-request-2, whose two vCPUs are independent of each other: its traces are the
#: product of two sync-request runs (about 200 s for kvm-user, where immediate_exit
#: multiplies the interleavings), so it runs only when two vCPUs are asked for.
GENERIC_SCENARIOS: dict[str, int] = {
    "async-request": 1,
    "async-request-2": 1,
    "sync-request": 1,
    "sync-request-many": 1,
    "broadcast-wait": 1,
    "payload": 1,
}

#: Expected counterexamples of the racy variant: words of its first violation, per
#: scenario ("hang": a sync requester waits forever for a vCPU that kept running the
#: guest after its kick was lost). Its halt-interrupt is verified: waking a sleeping vCPU
#: does not use the signal.
KVM_USER_BUGS: dict[str, dict[str, str | None]] = {
    "kvm-user-empty-handler": {
        "async-request": "the request is lost",
        "async-request-2": "the request is lost",
        "sync-request": "hang",
        "sync-request-2": "hang",
        "sync-request-many": "hang",
        "broadcast-wait": "hang",
        "payload": "the request is lost",
        "io-exit-sync": "hang",
        "pause-all": "hang",
    },
}


#: Cases too big for the default `vcpureq check` (minutes each): two requesters racing to
#: kick the same vCPU, where immediate_exit multiplies the interleavings (kvm-user:
#: 335,298 executions, 220 s here). The signal-mask variant's space is far smaller
#: (9,322 executions, 5 s) and the racy variant's counterexample comes at once, so both
#: keep it in the default set. bench/hosts.py --set big runs these.
BIG: dict[str, frozenset[str]] = {
    "kvm-user": frozenset({"async-request-2"}),
}


def cases(vcpus: int | None = None, which: str = "default") -> list[Case]:
    """Every kvm_user variant on the generic scenarios and on this module's, with the
    verdict expected (``vcpus``: the vCPU count of every scenario; default: its own).
    ``which``: "default" (without BIG), "big" (only BIG) or "all"."""
    from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED, Case
    from vcpureq.scenarios import SCENARIOS

    out = []
    for name, cls in VARIANTS.items():
        bugs = KVM_USER_BUGS.get(name, {})
        jobs: list[tuple[str, Program, str, int, str]] = []
        generic = dict(GENERIC_SCENARIOS)
        if vcpus is not None and vcpus >= 2:
            generic["sync-request-2"] = 2
        for scenario, default_n in generic.items():
            sc = SCENARIOS[scenario]
            n = vcpus or default_n
            if n < sc.min_vcpus:
                continue
            jobs.append((scenario, sc.program(cls, nr_vcpus=n), sc.description, n, "generic"))
        for scenario, (factory, description) in KVM_USER_SCENARIOS.items():
            n = vcpus or 1
            jobs.append((scenario, factory(cls, nr_vcpus=n), description, n, "kvm-user"))
        for model in cls.models_to_check():
            for scenario, program, description, n, tag in jobs:
                big = scenario in BIG.get(name, ())
                if (which == "default" and big) or (which == "big" and not big):
                    continue
                broken = scenario in bugs
                out.append(Case(
                    protocol=name,
                    scenario=scenario,
                    program=program,
                    memory_model=model,
                    expect=COUNTEREXAMPLE if broken else VERIFIED,
                    expect_property=bugs.get(scenario),
                    description=description,
                    vcpus=n,
                    tags=(tag,),
                ))
    return out
