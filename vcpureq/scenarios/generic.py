"""Request workloads that every architecture must pass, and the properties checked on them.

Each factory takes the architecture (a name in ``vcpureq.arch.ARCHES``, an ``Arch``
class or instance) and a small configuration and returns a *program*: a zero-argument
callable for ``vcpureq.model.explore``. A program builds a VM (``Kvm``), runs every vCPU
as a daemon thread (``Arch.vcpu_run``: it enters the guest over and over, and ends up in
the guest for good once nothing more comes), runs the requesters, joins them, then waits
until every request has been handled or a vCPU sits in the guest with one for good.
The outcome is the sorted tuple of how the vCPUs met the requests they handled:
``SAW_BEFORE_ENTRY`` (at the top of the run loop, or at the last check before entry) or
``KICKED_OUT`` (an IPI made the guest exit first).

Properties (PROTOCOL.md section 8), checked with ``check``. A violation message starts
with the property's name ("no lost request: ...", "sync: ...", "payload: ..."), says in
words what broke, and ends with *how*, citing the trace steps of the counterexample
(vcpureq.hw.observe): when the request was made, when the vCPU entered the guest, which
IPIs went to its CPU.

- no lost request (every scenario): once all requesters have returned, every request
  gets handled; no vCPU ends up running the guest with a request pending and no IPI
  on its way.
- ``sync_request``: set_sync_request, set_sync_request_many, or the kernel's WAIT
  broadcast make_all_cpus_request. Once the call returned, the vCPU does not run the
  guest with the request unhandled: not when it returns (checked by the requester), not
  at any later entry (checked by the vCPU as it enters).
- ``payload``: data written before make_request is seen by the handler.

``targets`` lists one requester per entry, ``(vcpu index, request name)``; a pair may
appear once (so a pending bit and its handler belong to one requester). What the checks
observe besides protocol state (``HostCpu.guest_running``, the requesters' "done"
flags) are Atomics too, so the explorer orders them with the protocol's accesses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from vcpureq.arch import Arch, get_arch
from vcpureq.common import (
    Kvm,
    KvmVcpu,
    make_all_cpus_request,
    make_request,
    pending_requests,
    set_request,
    set_sync_request,
    set_sync_request_many,
    test_request,
    vcpu_kick,
)
from vcpureq.hw.cpu import GUEST_UNTIL_IPI, HostCpu
from vcpureq.hw.observe import current_step, step_text
from vcpureq.model import Atomic, check, spawn, wait_until
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE
from vcpureq.requests import Request, lookup

__all__ = [
    "SAW_BEFORE_ENTRY",
    "KICKED_OUT",
    "Program",
    "Harness",
    "ArchSpec",
    "new_arch",
    "async_request",
    "ASYNC_CALLS",
    "sync_request",
    "SYNC_CALLS",
    "payload",
    "StepLog",
]

Program = Callable[[], Any]
Targets = Sequence[tuple[int, str]]
Work = tuple[int, KvmVcpu, Request]  # (requester index, target vCPU, request)

SAW_BEFORE_ENTRY = "the vCPU saw the request before entry"
KICKED_OUT = "kicked out of guest"

_ONE = ((0, "TLB_FLUSH"),)


ArchSpec = str | type[Arch] | Arch  # a name in ARCHES, an Arch class, or an instance


def new_arch(arch: ArchSpec) -> Arch:
    """A fresh architecture object for one run (an instance is copied, shallowly)."""
    if isinstance(arch, str):
        return get_arch(arch)
    if isinstance(arch, type):
        return arch()
    return copy.copy(arch)


def arch_name(arch: ArchSpec) -> str:
    return arch if isinstance(arch, str) else arch.name


def _resolve(arch: ArchSpec, nr_vcpus: int, targets: Targets) -> list[tuple[int, Request]]:
    request_arch = new_arch(arch).request_arch
    resolved = [(v, lookup(name, request_arch)) for v, name in targets]
    for v, _ in resolved:
        if not 0 <= v < nr_vcpus:
            raise ValueError(f"target vCPU {v} outside 0..{nr_vcpus - 1}")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"each (vCPU, request) pair may be targeted once: {targets}")
    return resolved


class StepLog:
    """What the harness saw happen, by trace step, to say *how* a property broke.

    ``made[v]``: (request, step) for each request a requester made on vCPU v (the step of
    make_request's set_bit); ``entries[v]``: for each guest entry of vCPU v, the step of
    its last visible operation before the guest ran (its last check, or the write of
    IN_GUEST_MODE where that comes later); ``returned[(call, v)]``: when a requester's
    call on vCPU v returned. IPIs are
    in the host CPUs' own logs (``HostCpu.sent_at``/``taken_at``). Plain bookkeeping,
    not visible operations (see vcpureq.hw.observe).
    """

    def __init__(self) -> None:
        self.made: dict[int, list[tuple[Request, int | None]]] = {}
        self.entries: dict[int, list[int | None]] = {}
        self.returned: dict[tuple[str, int], int | None] = {}
        self.events: list[tuple[str, int | None]] = []

    def note(self, what: str) -> None:
        """Note that ``what`` (a phrase: "the injector queued the interrupt") just
        happened: its last visible operation is the current step."""
        self.events.append((what, current_step()))

    def events_how(self) -> str:
        """The noted events in words, with their steps."""
        if not self.events:
            return "nothing else was noted"
        return ", ".join(f"{what} at {step_text(step)}" for what, step in self.events)

    def note_made(self, vcpu: KvmVcpu, req: Request) -> None:
        self.made.setdefault(vcpu.vcpu_idx, []).append((req, current_step()))

    def note_entry(self, vcpu: KvmVcpu) -> None:
        self.entries.setdefault(vcpu.vcpu_idx, []).append(current_step())

    def note_returned(self, call: str, vcpus: list[KvmVcpu]) -> None:
        step = current_step()
        for vcpu in vcpus:
            self.returned[(call, vcpu.vcpu_idx)] = step

    def returned_at(self, call: str, vcpu: KvmVcpu) -> int | None:
        return self.returned.get((call, vcpu.vcpu_idx))

    def made_at(self, vcpu: KvmVcpu, req: Request) -> int | None:
        steps = [s for r, s in self.made.get(vcpu.vcpu_idx, []) if r == req]
        return steps[-1] if steps else None

    def last_entry(self, vcpu: KvmVcpu) -> int | None:
        entries = self.entries.get(vcpu.vcpu_idx)
        return entries[-1] if entries else None

    def lost_request_how(self, vcpu: KvmVcpu, cpu: HostCpu, pending: list[Request]) -> str:
        """How a request ended up pending on a vCPU in the guest for good."""
        entry = self.last_entry(vcpu)
        parts = []
        for req in pending:
            made = self.made_at(vcpu, req)
            if made is None:
                calls = [f"{call} returned at {step_text(step)}"
                         for (call, v), step in self.returned.items() if v == vcpu.vcpu_idx]
                parts.append(f"vCPU {vcpu.vcpu_id} last went into the guest after "
                             f"{step_text(entry)} and {req} is pending"
                             + (f" ({', '.join(calls)})" if calls else ""))
            elif entry is not None and entry < made:
                parts.append(f"{req} was made at step {made}, when vCPU {vcpu.vcpu_id} had "
                             f"passed its last check (it went into the guest after step "
                             f"{entry})")
            else:
                parts.append(f"{req} was made at step {made}, yet vCPU {vcpu.vcpu_id} went "
                             f"into the guest after {step_text(entry)} with it pending (its "
                             f"last check did not see it)")
        parts.append(ipis_how(cpu, after=entry))
        return "; ".join(parts)


def observed_vm(arch: Arch, nr_vcpus: int, log: StepLog,
                requests_seen: Callable[[KvmVcpu, int], None],
                on_request: Callable[[KvmVcpu, Request], None] | None,
                on_guest_entry: Callable[[KvmVcpu], None] | None) -> Kvm:
    """A harness's VM: every guest entry is noted in ``log`` (for the "how" of a
    violation) before the scenario's own ``on_guest_entry`` check runs."""

    def guest_entry(vcpu: KvmVcpu) -> None:
        log.note_entry(vcpu)
        if on_guest_entry is not None:
            on_guest_entry(vcpu)

    return Kvm(arch, nr_vcpus, on_requests_seen=requests_seen, on_request=on_request,
               on_guest_entry=guest_entry)


def ipis_how(cpu: HostCpu, after: int | None = None) -> str:
    """Which IPIs CPU ``cpu`` got (after step ``after``), in words with steps."""
    sent = sorted((t, s) for t, s in cpu.sent_at.items()
                  if after is None or s is None or s > after)
    if not sent:
        since = "" if after is None else f" after step {after}"
        return f"no IPI was sent to CPU {cpu.cpu_id}{since}"
    said = ", ".join(
        f"one sent at {step_text(s)} "
        + (f"taken at {step_text(cpu.taken_at[t])}" if t in cpu.taken_at else "not taken")
        for t, s in sent)
    return f"IPIs to CPU {cpu.cpu_id}: {said}"


def requests_named(requests: list[Request]) -> str:
    return ", ".join(r.name for r in requests)


class Harness:
    """One run of a scenario: the VM, its vCPU threads, the requesters and the checks.

    ``requester(i, vcpu, req)`` is requester i's work; when it returns, the harness sets
    ``done[i]``. ``on_request`` / ``on_guest_entry`` are scenario checks at the run
    loop's observation points (see ``Kvm``).
    """

    def __init__(
        self,
        arch: ArchSpec,
        nr_vcpus: int,
        targets: list[tuple[int, Request]],
        entries: int | None,
        on_request: Callable[[KvmVcpu, Request], None] | None = None,
        on_guest_entry: Callable[[KvmVcpu], None] | None = None,
    ) -> None:
        self.targets = targets
        self.done = [Atomic(0, name=f"requester{i}.done") for i in range(len(targets))]
        self.met: set[str] = set()
        self.log = StepLog()
        self.kvm = observed_vm(new_arch(arch), nr_vcpus, self.log, self.requests_seen,
                               on_request, on_guest_entry)
        for vcpu in self.kvm.vcpus:
            spawn(self.kvm.arch.vcpu_run, vcpu, entries, name=f"vcpu{vcpu.vcpu_id}", daemon=True)

    def names(self, mask: int) -> str:
        return ", ".join(r.name for r in pending_requests(mask, self.kvm.arch.request_arch))

    def requests_seen(self, vcpu: KvmVcpu, mask: int) -> None:
        """The vCPU found requests pending: note how it met them. (Noted before it
        consumes them, so the note is there whenever main sees them consumed.)"""
        self.met.add(KICKED_OUT if vcpu.stat.last_exit == "irq" else SAW_BEFORE_ENTRY)

    # --- main ---------------------------------------------------------------------------

    def run(self, requester: Callable[[int, KvmVcpu, Request], None]) -> tuple[str, ...]:
        """One requester thread per target; see ``run_together``."""

        def each(work: list[Work]) -> None:
            for i, vcpu, req in work:
                requester(i, vcpu, req)

        return self.run_together(each, together=False)

    def run_together(
        self, requester: Callable[[list[Work]], Any], together: bool = True
    ) -> tuple[str, ...]:
        """Run the requesters (one thread for all targets, or one per target), join
        them, then wait until every request is handled or a vCPU is stuck with one."""

        def body(work: list[Work]) -> None:
            requester(work)
            for i, _, _ in work:
                self.done[i].store(1, order="full")  # observation: never buffered

        work = [(i, self.kvm.vcpus[v], req) for i, (v, req) in enumerate(self.targets)]
        jobs = [work] if together else [[w] for w in work]
        threads = [spawn(body, job, name=f"requester{n}") for n, job in enumerate(jobs)]
        for t in threads:
            t.join()
        for vcpu in self.kvm.vcpus:
            self.wait_handled_or_stuck(vcpu)
        return tuple(sorted(self.met))

    def wait_handled_or_stuck(self, vcpu: KvmVcpu) -> None:
        """All requesters returned: wait until ``vcpu`` has handled every request, or runs
        the guest with no IPI on its way (no IPI is sent any more, so it stays there and
        its requests no longer change); in that state no request may be pending.
        """
        cpu = self.kvm.host.cpus[vcpu.vcpu_idx]

        def handled_or_stuck() -> bool:
            return READ_ONCE(vcpu.requests) == 0 or (
                READ_ONCE(cpu.guest_running) == GUEST_UNTIL_IPI and not cpu.ipi_pending()
            )

        wait_until(handled_or_stuck)
        pending = READ_ONCE(vcpu.requests)
        if pending:
            requests = pending_requests(pending, self.kvm.arch.request_arch)
            check(
                False,
                f"no lost request: vCPU {vcpu.vcpu_id} is in guest mode with "
                f"{self.names(pending)} pending and no IPI on its way: the request is lost; "
                f"how: {self.log.lost_request_how(vcpu, cpu, requests)}",
            )


ASYNC_CALLS = ("kick", "set_request")


def async_request(
    arch: ArchSpec = "generic",
    *,
    nr_vcpus: int = 2,
    targets: Targets = _ONE,
    entries: int | None = None,
    via: str = "kick",
) -> Program:
    """Requesters make a request on running vCPUs and kick them; no request may be lost.

    ``via="kick"``: make_request + vcpu_kick (kvm_make_request + kvm_vcpu_kick);
    ``via="set_request"``: the seed's set_request (make_request + the architecture's
    ``kick`` callback, e.g. ppc64's doorbell fast kick)."""
    if via not in ASYNC_CALLS:
        raise ValueError(f"unknown call {via!r} (known: {', '.join(ASYNC_CALLS)})")
    resolved = _resolve(arch, nr_vcpus, targets)

    def program() -> tuple[str, ...]:
        harness = Harness(arch, nr_vcpus, resolved, entries)

        def requester(i: int, vcpu: KvmVcpu, req: Request) -> None:
            if via == "set_request":
                set_request(req, vcpu)
                harness.log.note_returned("set_request", [vcpu])
                return
            make_request(req, vcpu)
            harness.log.note_made(vcpu, req)
            vcpu_kick(vcpu)

        return harness.run(requester)

    program.__name__ = f"async_request[{arch_name(arch)}{'' if via == 'kick' else ', ' + via}]"
    return program


SYNC_CALLS = ("set_sync_request", "set_sync_request_many", "make_all_cpus_request")


def sync_request(
    arch: ArchSpec = "generic",
    *,
    nr_vcpus: int = 2,
    targets: Targets | None = None,
    entries: int | None = None,
    via: str = "set_sync_request",
) -> Program:
    """Synchronous requests: once the call returned, the guest never runs it unhandled.

    ``via`` is the call: ``set_sync_request`` (one requester thread per target),
    ``set_sync_request_many`` (one requester for all targets: kick all first, then wait
    for all) or ``make_all_cpus_request`` (one requester, every vCPU, a WAIT request:
    the kernel's synchronous broadcast). The last two take one request for all targets,
    by default TLB_FLUSH on every vCPU.
    """
    if via not in SYNC_CALLS:
        raise ValueError(f"unknown sync call {via!r} (known: {', '.join(SYNC_CALLS)})")
    if targets is None:  # one vCPU, or every vCPU for the calls that take several
        many = via != "set_sync_request"
        targets = [(v, "TLB_FLUSH") for v in range(nr_vcpus)] if many else _ONE
    resolved = _resolve(arch, nr_vcpus, targets)
    together = via != "set_sync_request"
    if together and len({req for _, req in resolved}) != 1:
        raise ValueError(f"{via} takes one request for all targets")
    if via == "make_all_cpus_request" and (
        sorted(v for v, _ in resolved) != list(range(nr_vcpus)) or not resolved[0][1].wait
    ):
        raise ValueError("make_all_cpus_request targets every vCPU with a WAIT request")

    def program() -> tuple[str, ...]:
        harness: Harness

        def on_guest_entry(vcpu: KvmVcpu) -> None:
            # The request first: the last check just found none, so the requester's
            # flag is rarely read (fewer interleavings, same verdict: only this thread
            # clears the request, so it is still pending when the flag is read).
            for i, (v, req) in enumerate(resolved):
                if v == vcpu.vcpu_idx and test_request(req, vcpu):
                    check(
                        not READ_ONCE(harness.done[i]),
                        f"sync: vCPU {v} entered the guest with {req} pending although "
                        f"{via}({req}) had returned; how: the call returned at "
                        f"{step_text(harness.log.returned_at(via, vcpu))}, and the vCPU "
                        f"went into the guest after {step_text(current_step())}",
                    )

        def check_returned(vcpu: KvmVcpu, req: Request) -> None:
            # Guest first, then the request: only this requester sets it, so pending now
            # means pending while the guest ran, after the call returned.
            cpu = harness.kvm.host.cpus[vcpu.vcpu_idx]
            check(
                not (READ_ONCE(cpu.guest_running) and test_request(req, vcpu)),
                f"sync: {via}({req}) returned but vCPU {vcpu.vcpu_id} is running the guest "
                f"with {req} not handled; how: the call returned at "
                f"{step_text(harness.log.returned_at(via, vcpu))}, vCPU {vcpu.vcpu_id} went "
                f"into the guest after {step_text(harness.log.last_entry(vcpu))}, and "
                f"{ipis_how(cpu, after=harness.log.last_entry(vcpu))}",
            )

        def requester(i: int, vcpu: KvmVcpu, req: Request) -> None:
            set_sync_request(req, vcpu)
            harness.log.note_returned(via, [vcpu])
            check_returned(vcpu, req)

        def requester_together(work: list[Work]) -> None:
            req = work[0][2]
            if via == "make_all_cpus_request":
                make_all_cpus_request(harness.kvm, req)
            else:
                set_sync_request_many(req, [vcpu for _, vcpu, _ in work])
            harness.log.note_returned(via, [vcpu for _, vcpu, _ in work])
            for _, vcpu, _ in work:
                check_returned(vcpu, req)

        harness = Harness(arch, nr_vcpus, resolved, entries, on_guest_entry=on_guest_entry)
        if together:
            return harness.run_together(requester_together)
        return harness.run(requester)

    program.__name__ = f"sync_request[{arch_name(arch)}, {via}]"
    return program


def payload(
    arch: ArchSpec = "generic",
    *,
    nr_vcpus: int = 2,
    targets: Targets = _ONE,
    entries: int | None = None,
) -> Program:
    """Requesters write data, then make_request + vcpu_kick; the handler must see the data."""
    resolved = _resolve(arch, nr_vcpus, targets)

    def program() -> tuple[str, ...]:
        data = [Atomic(0, name=f"requester{i}.data") for i in range(len(resolved))]
        written: dict[int, int | None] = {}

        def on_request(vcpu: KvmVcpu, req: Request) -> None:
            for i, (v, r) in enumerate(resolved):
                if v == vcpu.vcpu_idx and r == req:
                    seen = READ_ONCE(data[i])
                    check(
                        seen == i + 1,
                        f"payload: vCPU {v} handled {req} with stale data: it read {seen}, "
                        f"not the {i + 1} written before make_request; how: the data was "
                        f"written at {step_text(written.get(i))}, {req} made at "
                        f"{step_text(harness.log.made_at(vcpu, req))}, the handler read "
                        f"the data at {step_text(current_step())}",
                    )

        harness = Harness(arch, nr_vcpus, resolved, entries, on_request=on_request)

        def requester(i: int, vcpu: KvmVcpu, req: Request) -> None:
            WRITE_ONCE(data[i], i + 1)
            written[i] = current_step()
            make_request(req, vcpu)
            harness.log.note_made(vcpu, req)
            vcpu_kick(vcpu)

        return harness.run(requester)

    program.__name__ = f"payload[{arch_name(arch)}]"
    return program
