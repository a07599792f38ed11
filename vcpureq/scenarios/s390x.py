"""s390x workloads and the properties checked on them (PROTOCOL.md sections 5 and 8).

Each factory takes an s390 protocol (a name in ``vcpureq.arch.ARCHES`` naming an
:class:`~vcpureq.arch.s390x.S390xArch`, the class, or an instance) and returns a program
for ``vcpureq.model.explore``. vCPUs are daemon threads running ``__vcpu_run``; they end
up in SIE for good once nothing more comes (or parked, if they stopped themselves).
``main`` joins the requesters, then waits until every vCPU has handled its requests,
or runs SIE with nothing on its way to make it leave (no STOP_INT, no interrupt): then
no request may be pending (a lost request).

Properties:

- **prefix** (``prefix-unmap``, ``set-prefix``): no vCPU runs SIE while its prefix page
  is unmapped or unprotected. Checked by the vCPU at every SIE entry (its prefix page
  is mapped, writable and its notifier armed) and by memory management right after it
  invalidated a page (no vCPU whose prefix it is runs SIE).
- **tlb** (``set-prefix``): after SET PREFIX the guest runs only after the local
  TLB_FLUSH request was handled (the entry flushes).
- **sync** (``sync-request*``, ``sync-broadcast``, ``common-broadcast``): once the call
  returned, the target is out of SIE and handles the request before it enters again.
- **ibs** (``ibs``): a vCPU runs SIE with IBS (CPUSTAT_IBS) only while it is the only
  started vCPU.
- **no lost request** (every scenario), **no hang** of a waiting requester (the
  explorer reports a requester blocked forever).

:func:`summarize` turns a counterexample into a sentence with trace steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vcpureq.arch.s390x import (
    CPUSTAT_IBS,
    CPUSTAT_STOP_INT,
    CPUSTAT_STOPPED,
    PAGE_INVALID,
    PAGE_MAPPED,
    PAGE_PROTECTED,
    PROG_BLOCK_SIE,
    PROG_IN_SIE,
    PROG_REQUEST,
    S390X_ARCHES,
    SIE_ENTERED,
    SIE_GUEST,
    SIE_OUT,
    S390VcpuArch,
    S390xArch,
    spin_lock,
    spin_unlock,
)
from vcpureq.common import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    Kvm,
    KvmVcpu,
    make_all_cpus_request,
    pending_requests,
    test_request,
)
from vcpureq.hw.observe import current_step, step_text
from vcpureq.model import Atomic, Event, Violation, check, spawn, wait_until
from vcpureq.model.kernel import READ_ONCE
from vcpureq.requests import Request, lookup
from vcpureq.scenarios.generic import KICKED_OUT, SAW_BEFORE_ENTRY, ArchSpec, Program, new_arch

if TYPE_CHECKING:
    from vcpureq.catalogue import Case

__all__ = [
    "PAGE_INVALID",
    "PAGE_MAPPED",
    "PAGE_PROTECTED",
    "S390Scenario",
    "S390_SCENARIOS",
    "EXPECTED",
    "BIGGER",
    "LONG",
    "PROTOCOLS",
    "S390Harness",
    "sync_request",
    "async_kick",
    "prefix_unmap",
    "set_prefix",
    "ibs",
    "summarize",
    "property_broken",
    "cases",
    "cases_for_protocol",
]

Targets = Sequence[tuple[int, str]]


def _s390_arch(spec: ArchSpec, setup: Mapping[str, Any]) -> S390xArch:
    arch = new_arch(spec)
    if not isinstance(arch, S390xArch):
        raise TypeError(f"{arch.name!r} is not an s390x protocol")
    for key, value in setup.items():
        setattr(arch, key, value)
    return arch


InSie = Sequence[int] | str | None


def _in_sie(in_sie: InSie, nr_vcpus: int, active: Sequence[int]) -> frozenset[int]:
    """The vCPUs whose thread starts inside SIE, the guest running: by default every
    vCPU but the ``active`` ones, which start at the top of their run loop (so that a
    request can meet them anywhere in it); ``"all"``: every vCPU."""
    if in_sie is None:
        return frozenset(range(nr_vcpus)) - frozenset(active)
    if in_sie == "all":
        return frozenset(range(nr_vcpus))
    return frozenset(int(v) for v in in_sie)


def _resolve(targets: Targets, nr_vcpus: int) -> list[tuple[int, Request]]:
    out = [(v, lookup(name, "s390x")) for v, name in targets]
    for v, _ in out:
        if not 0 <= v < nr_vcpus:
            raise ValueError(f"target vCPU {v} outside 0..{nr_vcpus - 1}")
    return out


class S390Harness:
    """One run: the VM, its vCPU threads, the requesters, and the end-of-run checks.

    ``setup`` sets attributes of the fresh architecture object before the VM is built
    (``nr_pages``, ``initial_flags``, ``guest_programs``, ``mprotect_failures``).
    ``check_prefix`` adds the prefix property at every SIE entry. ``vcpu_prologue``
    (vCPU index -> callable) runs on a vCPU thread before ``__vcpu_run`` (e.g. its
    KVM_RUN starting it).

    It notes the trace steps its messages quote (plain bookkeeping, no scheduling point:
    :mod:`vcpureq.hw.observe`): each vCPU's last SIE entry, when requesters returned,
    when pages were unmapped.
    """

    def __init__(
        self,
        arch: ArchSpec,
        nr_vcpus: int,
        *,
        setup: Mapping[str, Any] | None = None,
        nr_requesters: int = 0,
        check_prefix: bool = False,
        on_guest_entry: Callable[[KvmVcpu], None] | None = None,
        vcpu_prologue: Mapping[int, Callable[[KvmVcpu], None]] | None = None,
        idle_vcpus: Sequence[int] = (),
    ) -> None:
        self.arch = _s390_arch(arch, setup or {})
        self.done = [Atomic(0, name=f"requester{i}.done") for i in range(nr_requesters)]
        self.met: set[str] = set()
        self.check_prefix = check_prefix
        self.scenario_entry = on_guest_entry
        self.entered: dict[int, int | None] = {}  # vCPU index -> step of its last SIE entry
        self.returned: dict[int, int | None] = {}  # requester -> step it returned at
        self.unmapped: dict[int, int | None] = {}  # page -> step it was unmapped at
        self.kvm = Kvm(self.arch, nr_vcpus, on_requests_seen=self.requests_seen,
                       on_guest_entry=self.guest_entry)
        prologue = vcpu_prologue or {}
        for vcpu in self.kvm.vcpus:
            spawn(self._vcpu_thread, vcpu, prologue.get(vcpu.vcpu_idx),
                  vcpu.vcpu_idx in idle_vcpus, name=f"vcpu{vcpu.vcpu_id}", daemon=True)

    def _vcpu_thread(self, vcpu: KvmVcpu, prologue: Callable[[KvmVcpu], None] | None,
                     idle: bool) -> None:
        if idle:  # a stopped vCPU that userspace does not run
            vcpu.arch.parked.store(1)
            vcpu.arch.cpu.idle()
        if prologue is not None:
            prologue(vcpu)
        self.arch.vcpu_run(vcpu)

    def returned_text(self) -> str:
        """"; requester0 returned at step N" for each requester that returned."""
        return "".join(f"; requester{i} returned at {step_text(step)}"
                       for i, step in sorted(self.returned.items()))

    def names(self, mask: int) -> str:
        return ", ".join(r.name for r in pending_requests(mask, "s390x"))

    def requests_seen(self, vcpu: KvmVcpu, mask: int) -> None:
        self.met.add(KICKED_OUT if vcpu.stat.last_exit == "irq" else SAW_BEFORE_ENTRY)

    def entry_text(self, vcpu: KvmVcpu) -> str:
        """"vCPU i entered SIE at step N" (its last entry), or "vCPU i has run SIE since
        the start" (a vCPU that starts inside SIE and never left)."""
        if vcpu.vcpu_idx not in self.entered and vcpu.arch.in_sie_at_start:
            return f"vCPU {vcpu.vcpu_id} has run SIE since the start"
        return f"vCPU {vcpu.vcpu_id} entered SIE at {step_text(self.entered.get(vcpu.vcpu_idx))}"

    def guest_entry(self, vcpu: KvmVcpu) -> None:
        a: S390VcpuArch = vcpu.arch
        self.entered[vcpu.vcpu_idx] = current_step()  # the SIE entry (sie_running store)
        if self.check_prefix:
            page = READ_ONCE(a.sie_block.prefix)
            state = READ_ONCE(self.arch.gmap.pages[page])
            if state != PAGE_PROTECTED:
                how = "unmapped" if state == PAGE_INVALID else "unprotected"
                when = (f"memory management unmapped it at {step_text(self.unmapped[page])}; "
                        if page in self.unmapped else "")
                check(False,
                      f"{self.entry_text(vcpu)} with its prefix page {page} {how} ({when}"
                      f"requests pending: {self.names(READ_ONCE(vcpu.requests)) or 'none'})")
        check(
            not a.tlb_stale,
            f"{self.entry_text(vcpu)} after SET PREFIX without the TLB flush",
        )
        if self.scenario_entry is not None:
            self.scenario_entry(vcpu)

    # --- main ---------------------------------------------------------------------------

    def run(self, requesters: Sequence[Callable[[], None]]) -> tuple[str, ...]:
        """Run each requester in a thread (its done flag set when it returns), join them,
        then wait until every vCPU has settled and check that no request is lost."""

        def body(i: int, fn: Callable[[], None]) -> None:
            fn()
            self.done[i].store(1)  # observation: never buffered
            self.returned[i] = current_step()

        threads = [spawn(body, i, fn, name=f"requester{i}") for i, fn in enumerate(requesters)]
        for t in threads:
            t.join()
        return self.settle()

    def settle(self) -> tuple[str, ...]:
        """Wait until every vCPU is parked (stopped) or runs the guest with nothing on
        its way to make it leave SIE (no STOP_INT, no interrupt); then no request may be
        pending. One wait over all vCPUs.

        The run ends only when every vCPU thread is about to block for good: that is
        the end state the no-lost-request check needs. (It also worked around a DPOR
        limitation, since fixed: races of daemon events after ``main`` returned were
        not reversed; see docs/s390x.md section 7 and tests/test_dpor_vs_naive.py.)
        """
        arch = self.arch

        def settled(vcpu: KvmVcpu) -> bool:
            a: S390VcpuArch = vcpu.arch
            if a.parked.load():
                return True
            if a.sie_running.load() != SIE_GUEST:
                return False
            if READ_ONCE(a.sie_block.cpuflags) & CPUSTAT_STOP_INT:
                return False
            return not (arch.uses_ipis and a.cpu.ipi_pending())

        wait_until(lambda: all(settled(v) for v in self.kvm.vcpus))
        for vcpu in self.kvm.vcpus:
            a: S390VcpuArch = vcpu.arch
            if a.parked.load():
                continue
            pending = READ_ONCE(vcpu.requests)
            check(
                pending == 0,
                f"vCPU {vcpu.vcpu_id} runs SIE with {self.names(pending)} pending and "
                f"nothing on its way to make it leave: the request is lost "
                f"({self.entry_text(vcpu)}{self.returned_text()})",
            )
        return tuple(sorted(self.met))


# === Scenarios ==============================================================================

SYNC_VIA = ("sync_request", "broadcast", "common-broadcast")


def sync_request(
    arch: ArchSpec = "s390x",
    *,
    nr_vcpus: int = 2,
    targets: Targets | None = None,
    via: str = "sync_request",
    request: str = "TLB_FLUSH",
    in_sie: InSie = None,
) -> Program:
    """Synchronous requests; once the call returned the guest never runs it unhandled.

    ``via``: ``sync_request`` (the protocol's kvm_s390_sync_request, one requester per
    target), ``broadcast`` (the protocol's kvm_s390_sync_request_broadcast over every
    vCPU: kick all, then wait for all where the protocol does so) or
    ``common-broadcast`` (common kvm_make_all_cpus_request with a WAIT request).
    """
    if via not in SYNC_VIA:
        raise ValueError(f"unknown sync call {via!r} (known: {', '.join(SYNC_VIA)})")
    if targets is None:
        targets = ((0, request),) if via == "sync_request" else \
            tuple((v, request) for v in range(nr_vcpus))
    resolved = _resolve(targets, nr_vcpus)
    together = via != "sync_request"
    nr_requesters = 1 if together else len(resolved)
    running = _in_sie(in_sie, nr_vcpus, [resolved[0][0]])
    label = {"sync_request": "kvm_s390_sync_request", "broadcast": "sync broadcast",
             "common-broadcast": "kvm_make_all_cpus_request"}[via]

    def program() -> tuple[str, ...]:
        h: S390Harness

        def done_for(i: int) -> int:
            return 0 if together else i

        def on_guest_entry(vcpu: KvmVcpu) -> None:
            mine = [(i, req) for i, (v, req) in enumerate(resolved) if v == vcpu.vcpu_idx]
            if not mine:
                return
            pending = READ_ONCE(vcpu.requests)  # one read for all of this vCPU's targets
            for i, req in mine:
                if pending & (1 << req.number) and h.done[done_for(i)].load():
                    check(False,
                          f"{h.entry_text(vcpu)} with {req} pending although {label}({req}) "
                          f"had returned at {step_text(h.returned.get(done_for(i)))}")

        def check_returned(vcpu: KvmVcpu, req: Request) -> None:
            # Request, then SIE, then the request again: only this requester set it, so
            # pending at the second read means pending while SIE ran, after the return.
            if not test_request(req, vcpu):
                return
            a: S390VcpuArch = vcpu.arch
            check(
                not (a.sie_running.load() != SIE_OUT and test_request(req, vcpu)),
                f"{label}({req}) returned but vCPU {vcpu.vcpu_id} runs SIE with {req} "
                f"not handled ({h.entry_text(vcpu)})",
            )

        h = S390Harness(arch, nr_vcpus, nr_requesters=nr_requesters,
                        on_guest_entry=on_guest_entry, setup={"vcpus_in_sie": running})
        kvm, s390 = h.kvm, h.arch

        def one(v: int, req: Request) -> Callable[[], None]:
            def requester() -> None:
                s390.sync_request(req, kvm.vcpus[v])
                check_returned(kvm.vcpus[v], req)
            return requester

        def all_at_once() -> None:
            req = resolved[0][1]
            if via == "broadcast":
                s390.sync_request_broadcast(kvm, req)
            else:
                make_all_cpus_request(kvm, req)
            for vcpu in kvm.vcpus:
                check_returned(vcpu, req)

        if together:
            return h.run([all_at_once])
        return h.run([one(v, req) for v, req in resolved])

    program.__name__ = f"sync_request[{getattr(arch, 'name', arch)}, {via}]"
    return program


def async_kick(
    arch: ArchSpec = "s390x-unified",
    *,
    nr_vcpus: int = 2,
    targets: Targets = ((0, "TLB_FLUSH"),),
    in_sie: InSie = None,
) -> Program:
    """Common code's request + kick (kvm_make_request + kvm_vcpu_kick, or the unified
    set_request): no request is lost."""
    resolved = _resolve(targets, nr_vcpus)
    running = _in_sie(in_sie, nr_vcpus, [v for v, _ in resolved])

    def program() -> tuple[str, ...]:
        h = S390Harness(arch, nr_vcpus, nr_requesters=len(resolved),
                        setup={"vcpus_in_sie": running})

        def one(v: int, req: Request) -> Callable[[], None]:
            return lambda: h.arch.async_request(req, h.kvm.vcpus[v])

        return h.run([one(v, req) for v, req in resolved])

    program.__name__ = f"async_kick[{getattr(arch, 'name', arch)}]"
    return program


def _unmap(h: S390Harness, page: int) -> Callable[[], None]:
    """Memory management invalidates guest page ``page`` (an IPTE under the page-table
    lock): if its notifier is armed, ptep_notify calls kvm_gmap_notifier first."""
    kvm, s390 = h.kvm, h.arch
    gmap = s390.gmap

    def unmapper() -> None:
        ptl = gmap.ptl(page)
        spin_lock(ptl)
        if READ_ONCE(gmap.pages[page]) == PAGE_PROTECTED:
            s390.gmap_notifier(kvm, page)
        gmap.pages[page].store(PAGE_INVALID)  # the IPTE: the page is gone now
        h.unmapped[page] = current_step()
        for vcpu in kvm.vcpus:
            if READ_ONCE(vcpu.arch.sie_block.prefix) == page:
                check(
                    vcpu.arch.sie_running.load() == SIE_OUT,
                    f"memory management unmapped page {page} at "
                    f"{step_text(h.unmapped[page])} while vCPU {vcpu.vcpu_id} runs SIE with "
                    f"it as its prefix page ({h.entry_text(vcpu)})",
                )
        spin_unlock(ptl)

    return unmapper


def prefix_unmap(
    arch: ArchSpec = "s390x",
    *,
    nr_vcpus: int = 2,
    pages: Sequence[int] = (0,),
    mprotect_failures: int = 0,
    in_sie: InSie = None,
    split_ptl: bool = False,
) -> Program:
    """The gmap notifier while vCPUs run: one unmapper per page in ``pages`` (vCPU i's
    prefix is page i). The prefix property must hold throughout. ``split_ptl``: each
    page under its own page-table lock (prefix pages in different 1 MB segments);
    otherwise one lock for all (one segment: unmappers and re-arming vCPUs contend)."""
    for p in pages:
        if not 0 <= p < nr_vcpus:
            raise ValueError(f"page {p} is nobody's prefix (0..{nr_vcpus - 1})")
    initial = dict.fromkeys(range(nr_vcpus), PAGE_PROTECTED)
    running = _in_sie(in_sie, nr_vcpus, pages)

    def program() -> tuple[str, ...]:
        h = S390Harness(arch, nr_vcpus, nr_requesters=len(pages), check_prefix=True,
                        setup={"mprotect_failures": mprotect_failures,
                               "initial_pages": initial, "vcpus_in_sie": running,
                               "split_ptl": split_ptl})
        return h.run([_unmap(h, p) for p in pages])

    program.__name__ = f"prefix_unmap[{getattr(arch, 'name', arch)}]"
    return program


def set_prefix(
    arch: ArchSpec = "s390x",
    *,
    nr_vcpus: int = 2,
    unmap: bool = True,
    in_sie: InSie = None,
) -> Program:
    """vCPU 0's guest executes SET PREFIX to a fresh page (page ``nr_vcpus``):
    kvm_s390_set_prefix makes TLB_FLUSH and REFRESH_GUEST_PREFIX *local* requests, no
    kick. With ``unmap``, memory management invalidates that page meanwhile.
    Properties: prefix and tlb."""
    new_page = nr_vcpus
    initial = {**dict.fromkeys(range(nr_vcpus), PAGE_PROTECTED), new_page: PAGE_MAPPED}
    running = _in_sie(in_sie, nr_vcpus, [0])

    def program() -> tuple[str, ...]:
        h = S390Harness(arch, nr_vcpus, nr_requesters=1 if unmap else 0, check_prefix=True,
                        setup={"nr_pages": nr_vcpus + 1, "initial_pages": initial,
                               "guest_programs": {0: [("spx", new_page)]},
                               "vcpus_in_sie": running})
        return h.run([_unmap(h, new_page)] if unmap else [])

    program.__name__ = f"set_prefix[{getattr(arch, 'name', arch)}]"
    return program


def ibs(
    arch: ArchSpec = "s390x",
    *,
    nr_vcpus: int = 2,
    stop: bool = False,
    in_sie: InSie = None,
) -> Program:
    """IBS as vCPUs start and stop. vCPU 0 runs alone with IBS; vCPU 1's KVM_RUN starts
    it (kvm_s390_vcpu_start: DISABLE_IBS, sync, on every vCPU); with ``stop`` its guest
    then stops itself (SIGP STOP: kvm_s390_vcpu_stop, ENABLE_IBS on the vCPU left).
    Property ibs: IBS only while alone."""
    flags = {0: CPUSTAT_IBS, **{v: CPUSTAT_STOPPED for v in range(1, nr_vcpus)}}
    programs = {1: [("sigp-stop",)]} if stop else {}
    # vCPU 0 has been running alone; vCPU 1's thread starts it; others stay stopped
    running = _in_sie((0,) if in_sie is None else in_sie, nr_vcpus, ())

    def program() -> tuple[str, ...]:
        h: S390Harness

        def alone_with_ibs(vcpu: KvmVcpu) -> None:
            if READ_ONCE(vcpu.arch.sie_block.cpuflags) & CPUSTAT_IBS:
                for other in h.kvm.vcpus:
                    if other is not vcpu:
                        check(
                            h.arch.is_vcpu_stopped(other),
                            f"{h.entry_text(vcpu)} with IBS on although "
                            f"vCPU {other.vcpu_id} is started",
                        )

        def start(vcpu: KvmVcpu) -> None:  # vCPU 1's KVM_RUN starts it
            h.arch.vcpu_start(vcpu)
            started = current_step()
            for other in h.kvm.vcpus:
                if other is not vcpu:
                    a: S390VcpuArch = other.arch
                    check(
                        not (a.sie_running.load() != SIE_OUT
                             and READ_ONCE(a.sie_block.cpuflags) & CPUSTAT_IBS),
                        f"vCPU {vcpu.vcpu_id} started (kvm_s390_vcpu_start returned at "
                        f"{step_text(started)}) while vCPU {other.vcpu_id} runs SIE "
                        f"with IBS on ({h.entry_text(other)})",
                    )
            h.done[0].store(1)

        h = S390Harness(arch, nr_vcpus, nr_requesters=1, on_guest_entry=alone_with_ibs,
                        setup={"initial_flags": flags, "guest_programs": programs,
                               "vcpus_in_sie": running},
                        vcpu_prologue={1: start}, idle_vcpus=range(2, nr_vcpus))
        wait_until(lambda: h.done[0].load())
        if stop:  # and until vCPU 1 has stopped itself
            parked = h.kvm.vcpus[1].arch.parked
            wait_until(lambda: parked.load())
        return h.settle()

    program.__name__ = f"ibs[{getattr(arch, 'name', arch)}]"
    return program


@dataclass(frozen=True)
class S390Scenario:
    name: str
    factory: Callable[..., Program]
    description: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def program(self, arch: ArchSpec, **overrides: Any) -> Program:
        return self.factory(arch, **{**self.config, **overrides})


S390_SCENARIOS: dict[str, S390Scenario] = {
    s.name: s
    for s in (
        S390Scenario(
            "prefix-unmap", prefix_unmap,
            "the gmap notifier unmaps vCPU 0's prefix page while the vCPUs run: no vCPU "
            "runs SIE while its prefix page is unmapped or unprotected",
        ),
        S390Scenario(
            "prefix-unmap-retry", prefix_unmap,
            "prefix-unmap where re-arming the prefix (gmap_mprotect_notify) may fail "
            "once: the request is made again",
            {"mprotect_failures": 1},
        ),
        S390Scenario(
            "prefix-unmap-2", prefix_unmap,
            "prefix-unmap on both running vCPUs' prefix pages, two unmappers, the pages "
            "under different page-table locks (bigger)",
            {"pages": (0, 1), "in_sie": "all", "split_ptl": True},
        ),
        S390Scenario(
            "prefix-unmap-2-one-ptl", prefix_unmap,
            "prefix-unmap-2 with both pages under one page-table lock: the unmappers and "
            "the re-arming vCPUs contend for it (long: see LONG)",
            {"pages": (0, 1), "in_sie": "all"},
        ),
        S390Scenario(
            "set-prefix", set_prefix,
            "vCPU 0's guest sets a new prefix (local TLB_FLUSH + REFRESH_GUEST_PREFIX, "
            "no kick) while that page is unmapped: prefix and TLB properties",
        ),
        S390Scenario(
            "ibs", ibs,
            "vCPU 1 starts while vCPU 0 runs with IBS (DISABLE_IBS on all, sync): IBS "
            "only while a vCPU is alone",
        ),
        S390Scenario(
            "ibs-start-stop", ibs,
            "ibs, then vCPU 1 stops itself (ENABLE_IBS on vCPU 0) (bigger)",
            {"stop": True},
        ),
        S390Scenario(
            "sync-request", sync_request,
            "a sync request on a running vCPU: on return it is out of SIE and handles the "
            "request before it enters again; the requester does not hang",
        ),
        S390Scenario(
            "sync-request-2", sync_request,
            "two requesters race to sync-request running vCPU 0 (PROG_REQUEST is one "
            "bit for both) (bigger)",
            {"targets": ((0, "TLB_FLUSH"), (0, "DISABLE_IBS")), "in_sie": "all"},
        ),
        S390Scenario(
            "sync-broadcast", sync_request,
            "the protocol's sync request on every running vCPU (kick all, then wait for "
            "all where it does so)",
            {"via": "broadcast", "in_sie": "all"},
        ),
        S390Scenario(
            "sync-broadcast-3", sync_request,
            "sync-broadcast over 3 running vCPUs (the unified interface kicks all three, "
            "then waits for all three; the kernel syncs one after the other) (bigger)",
            {"via": "broadcast", "in_sie": "all", "nr_vcpus": 3},
        ),
        S390Scenario(
            "common-broadcast", sync_request,
            "common kvm_make_all_cpus_request(TLB_FLUSH) (WAIT): on return no vCPU runs "
            "SIE with TLB_FLUSH pending, now or later",
            {"via": "common-broadcast"},
        ),
        S390Scenario(
            "async-kick", async_kick,
            "common code's request + kick (kvm_vcpu_kick / set_request) on a running "
            "vCPU: no request is lost",
        ),
    )
}

#: Protocols and the scenarios each is checked on: None = verified expected, a string =
#: a counterexample expected whose message contains it.
EXPECTED: dict[str, dict[str, str | None]] = {
    "s390x": {
        "prefix-unmap": None,
        "prefix-unmap-retry": None,
        "set-prefix": None,
        "ibs": None,
        "sync-request": None,
        "sync-broadcast": None,
    },
    "s390x-unified": {
        "prefix-unmap": None,
        "prefix-unmap-retry": None,
        "set-prefix": None,
        "ibs": None,
        "sync-request": None,
        "sync-broadcast": None,
        "async-kick": None,
    },
    "s390x-common-kick": {
        "prefix-unmap": None,
        "async-kick": "the request is lost",
        "common-broadcast": "returned",
    },
    "s390x-common-kick-irqoff": {
        "async-kick": "the request is lost",
    },
    "s390x-guest-mode-at-entry": {
        "prefix-unmap": None,
        "async-kick": None,
    },
    "s390x-make-all-cpus-request": {
        "sync-broadcast": "TLB_FLUSH",
    },
    "s390x-request-after-block": {
        "sync-request": "TLB_FLUSH",
        "prefix-unmap": "prefix page 0",
    },
    "s390x-async-prefix": {
        "prefix-unmap": "prefix page",
    },
    "s390x-no-host-tick": {
        "sync-request": "hang",
    },
    "s390x-sie-not-serializing": {
        "sync-request": "had returned",
    },
}

#: Bigger cases (a minute or more each): two requesters on one vCPU, two unmappers,
#: start and stop, the common broadcast on the corrected common-kick protocol.
#: ``cases(bigger=True)`` adds them; tests run them as slow.
BIGGER: dict[str, dict[str, str | None]] = {
    "s390x": {"sync-request-2": None, "prefix-unmap-2": None, "ibs-start-stop": None,
              "sync-broadcast-3": None},
    "s390x-unified": {"sync-request-2": None, "prefix-unmap-2": None,
                      "ibs-start-stop": None, "sync-broadcast-3": None},
    "s390x-guest-mode-at-entry": {"common-broadcast": None},
}

#: Longer still (tens of minutes): bench/s390x_bigger.py --long runs them.
LONG: dict[str, dict[str, str | None]] = {
    "s390x": {"prefix-unmap-2-one-ptl": None},
}

PROTOCOLS = tuple(cls.name for cls in S390X_ARCHES)


def cases(vcpus: int | None = None, bigger: bool = False, long: bool = False,
          which: str = "default") -> list[Case]:
    """Every s390x protocol on its scenarios, under each model it is checked under,
    with the verdict expected (a variant's bug only under its ``buggy_under``).
    ``bigger`` adds the :data:`BIGGER` cases, ``long`` the :data:`LONG` ones;
    ``which`` (as in :func:`vcpureq.scenarios.cases`): "big" gives only BIGGER, "all"
    EXPECTED and BIGGER."""
    from vcpureq.arch import ARCHES
    from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED, Case

    out: list[Case] = []
    bigger = bigger or which in ("big", "all")
    tables = ([] if which == "big" else [EXPECTED]) + ([BIGGER] if bigger else []) \
        + ([LONG] if long else [])
    for protocol, table in ((p, t) for tab in tables for p, t in tab.items()):
        cls = ARCHES[protocol]
        for model in cls.models_to_check():
            buggy = cls.buggy_under is None or model in cls.buggy_under
            for scenario, words in table.items():
                sc = S390_SCENARIOS[scenario]
                broken = words is not None and buggy
                n = vcpus or sc.config.get("nr_vcpus", 2)
                out.append(Case(
                    protocol=protocol,
                    scenario=scenario,
                    program=sc.program(protocol, nr_vcpus=n),
                    memory_model=model,
                    expect=COUNTEREXAMPLE if broken else VERIFIED,
                    expect_property=words if broken else None,
                    description=sc.description,
                    vcpus=n,
                    max_steps=20_000,
                    tags=("s390x",),
                    explain=summarize,
                ))
    return out


def cases_for_protocol(obj: Any, label: str, vcpus: int | None = None) -> list[Case]:
    """A user's s390x protocol (an S390xArch class or instance) on the scenarios of the
    kernel's protocol (and async-kick if it overrides async_request), expected to be
    verified; [] for anything that is not an S390xArch."""
    from vcpureq.catalogue import VERIFIED, Case

    is_s390 = isinstance(obj, S390xArch) or (isinstance(obj, type)
                                             and issubclass(obj, S390xArch))
    if not is_s390:
        return []
    n = vcpus or 2
    cls: type[S390xArch] = obj if isinstance(obj, type) else type(obj)
    names = list(EXPECTED["s390x"])
    if cls.async_request is not S390xArch.async_request:  # common kicks are not BUG()
        names.append("async-kick")
    return [
        Case(protocol=label, scenario=name, program=S390_SCENARIOS[name].program(obj, nr_vcpus=n),
             memory_model=obj.memory_model, expect=VERIFIED,
             description=S390_SCENARIOS[name].description, vcpus=n, max_steps=20_000,
             tags=("s390x",), explain=summarize)
        for name in names
    ]


# === Counterexamples in words ==================================================================


def summarize(violation: Violation) -> str:
    """A counterexample in words: the violation, the property it breaks, and how -- the
    trace steps that matter, in order, for the vCPUs the message names (every vCPU if
    it names none): requests made, taken and dropped; PROG_REQUEST and CPUSTAT_STOP_INT
    set and cleared; what the vCPU found when it read its requests; SIE entries (with
    the requests pending then) and exits; a requester's polls of PROG_IN_SIE; common
    kicks (vcpu->mode, IPIs sent and taken, vcpu->cpu); pages unmapped and re-armed;
    requesters returning. Example (``s390x-async-prefix``/``prefix-unmap``)::

        assertion: memory management unmapped page 0 while vCPU 0 runs SIE with it ...
        property: prefix -- no vCPU runs SIE while its prefix page is unmapped or ...
        how: requester0 made REFRESH_GUEST_PREFIX for vCPU 0 at step 12; ...; vCPU 0
        entered SIE at step 19 with REFRESH_GUEST_PREFIX pending; ...; page 0 was
        unmapped at step 26
    """
    lines = [f"{violation.kind}: {violation.message}",
             f"property: {property_broken(violation)}"]
    named = {f"vcpu{n}" for n in re.findall(r"vCPU (\d+)", violation.message)}
    notes = _Notes(named)
    for e in violation.trace:
        notes.note(e)
    if notes.facts:
        lines.append("how: " + "; ".join(notes.facts))
    return "\n".join(lines)


#: (words in the message, property), first match wins; see the module docstring
_PROPERTIES = (
    ("the request is lost", "no lost request -- no vCPU runs SIE with a request pending "
                            "and nothing on its way to make it leave"),
    ("prefix page", "prefix -- no vCPU runs SIE while its prefix page is unmapped or "
                    "unprotected"),
    ("without the TLB flush", "tlb -- after SET PREFIX the guest runs only once the local "
                              "TLB_FLUSH was handled"),
    ("with IBS on", "ibs -- a vCPU runs SIE with IBS only while it is the only started "
                    "vCPU"),
    ("returned", "sync -- once the call returned, the vCPU is out of SIE and handles the "
                 "request before it enters SIE again"),
)


def property_broken(violation: Violation) -> str:
    """Which property of the module docstring a violation breaks, in words."""
    if violation.kind in ("hang", "deadlock"):
        return "no hang -- a requester waits for ever (nothing can make it go on)"
    for words, prop in _PROPERTIES:
        if words in violation.message:
            return prop
    return violation.kind


def _vcpu(name: str) -> str:
    return f"vCPU {name.removeprefix('vcpu')}"


def _who(thread: str) -> str:
    if thread.startswith("vcpu") and "." not in thread:
        return _vcpu(thread)
    if thread.endswith(".other"):
        return f"the task that took CPU {thread.split('.')[0].removeprefix('cpu')} over"
    return thread


class _Notes:
    """The facts of one trace, in order (consecutive repeats dropped)."""

    def __init__(self, named: set[str]) -> None:
        self.named = named
        self.requests: dict[str, int] = {}
        self.facts: list[str] = []
        #: a vCPU's store to prog0c still in its store buffer: (value, step, polled at)
        self.buffered: dict[str, tuple[int, int, int | None]] = {}
        self.entering: set[str] = set()  # sie64a's tm found nothing: SIE tests STOP_INT next

    def add(self, fact: str) -> None:
        # the same thing again (a poll in a spin loop) only once, with its first step
        key = re.sub(r" at step \d+", "", fact)
        if not self.facts or re.sub(r" at step \d+", "", self.facts[-1]) != key:
            self.facts.append(fact)

    def relevant(self, owner: str) -> bool:
        return not self.named or owner in self.named

    def note(self, e: Event) -> None:
        if not e.cell_names:
            return
        if e.op == "wait":
            self.note_wait(e)
            return
        cell = e.cell_names[0]
        owner, _, field_ = cell.partition(".")
        if owner.startswith("vcpu") and not self.relevant(owner):
            return
        thread = e.thread_name
        mine = thread == owner
        at = f"at step {e.step}"
        in_arch = (e.source or "").startswith("vcpureq/arch/")  # not the harness's checks
        if field_ == "requests" and e.op in ("fetch_or", "fetch_and"):
            old, new = e.value
            self.requests[owner] = new
            if e.op == "fetch_or" and new & ~old:
                names = _names(new & ~old)
                self.add(f"{_vcpu(owner)} made {names} for itself {at}" if mine
                         else f"{_who(thread)} made {names} for {_vcpu(owner)} {at}")
            elif e.op == "fetch_and" and old & ~new:
                names = _names(old & ~new)
                self.add(f"{_vcpu(owner)} took {names} {at}" if mine
                         else f"{_who(thread)} dropped {names} of {_vcpu(owner)} {at}")
        elif field_ == "requests" and e.op == "load" and mine and in_arch and not e.value:
            self.add(f"{_vcpu(owner)} found no request pending {at}")
        elif field_ == "prog20" and e.op in ("fetch_or", "fetch_and"):
            old, new = e.value
            for bit, name in ((PROG_REQUEST, "PROG_REQUEST"), (PROG_BLOCK_SIE, "PROG_BLOCK_SIE")):
                if e.op == "fetch_or" and new & bit and not old & bit:
                    self.add(f"{_who(thread)} set {name} on {_vcpu(owner)} {at}")
                elif e.op == "fetch_and" and old & bit and not new & bit:
                    self.add(f"{_vcpu(owner)} cleared its {name} {at}" if mine
                             else f"{_who(thread)} cleared {name} of {_vcpu(owner)} {at}")
        elif field_ == "prog20" and e.op == "load" and mine:  # sie64a: tm prog20
            if e.value & (PROG_REQUEST | PROG_BLOCK_SIE):
                self.add(f"sie64a of {_vcpu(owner)} found "
                         f"{'PROG_REQUEST' if e.value & PROG_REQUEST else 'PROG_BLOCK_SIE'} "
                         f"and skipped SIE {at}")
            else:
                self.entering.add(owner)
                self.add(f"sie64a of {_vcpu(owner)} found no PROG_REQUEST {at}")
        elif field_ == "cpuflags" and e.op == "load" and mine and owner in self.entering:
            self.entering.discard(owner)  # the SIE instruction's test of STOP_INT
            if e.value & CPUSTAT_STOP_INT:
                self.add(f"SIE of {_vcpu(owner)} saw CPUSTAT_STOP_INT and left at once {at}")
            else:
                self.add(f"SIE of {_vcpu(owner)} found no CPUSTAT_STOP_INT {at}")
        elif field_ == "cpuflags" and e.op in ("fetch_or", "fetch_and"):
            old, new = e.value
            if e.op == "fetch_or" and new & CPUSTAT_STOP_INT and not old & CPUSTAT_STOP_INT:
                self.add(f"{_who(thread)} set CPUSTAT_STOP_INT on {_vcpu(owner)} {at}")
            elif old & CPUSTAT_IBS and not new & CPUSTAT_IBS:
                self.add(f"{_vcpu(owner)} turned IBS off {at}")
            elif new & CPUSTAT_IBS and not old & CPUSTAT_IBS:
                self.add(f"{_vcpu(owner)} turned IBS on {at}")
            elif old & CPUSTAT_STOPPED and not new & CPUSTAT_STOPPED:
                self.add(f"{_who(thread)} started {_vcpu(owner)} {at}")
            elif new & CPUSTAT_STOPPED and not old & CPUSTAT_STOPPED:
                self.add(f"{_who(thread)} stopped {_vcpu(owner)} {at}")
        elif field_ == "prog0c":
            self.note_prog0c(e, owner, mine)
        elif field_ == "sie_running" and e.op == "store":
            if e.value == SIE_ENTERED:
                pending = _names(self.requests.get(owner, 0)) or "no request"
                self.add(f"{_vcpu(owner)} entered SIE {at} with {pending} pending")
            elif e.value == SIE_OUT:
                self.add(f"{_vcpu(owner)} left SIE {at}")
        elif field_ == "mode" and e.op == "cas" and not mine:
            old, new = e.value
            if old != new:
                self.add(f"{_who(thread)} moved {_vcpu(owner)}'s vcpu->mode from "
                         f"{_MODES.get(old, old)} to {_MODES.get(new, new)} {at}")
            else:
                self.add(f"{_who(thread)} found {_vcpu(owner)}'s vcpu->mode "
                         f"{_MODES.get(old, old)} {at}")
        elif field_ == "cpu" and owner.startswith("vcpu"):
            if e.op == "store" and mine:
                self.add(f"{_vcpu(owner)} moved to CPU {e.value} (vcpu->cpu) {at}")
            elif e.op == "flush":
                self.add(f"{_vcpu(owner)}'s new vcpu->cpu = {e.value} became visible {at}")
            elif e.op == "load" and not mine:
                self.add(f"{_who(thread)} read {_vcpu(owner)}'s vcpu->cpu = {e.value} {at}")
        elif field_ == "ipi_sent" and e.op == "fetch_add":
            self.add(f"{_who(thread)} sent an IPI to CPU {owner.removeprefix('cpu')} {at}")
        elif field_ == "ipi_acked" and e.op == "store":
            self.add(f"{_who(thread)} took the IPI on CPU {owner.removeprefix('cpu')} {at}")
        elif owner.startswith("page") and e.op in ("store", "flush"):
            page = owner.removeprefix("page")
            if e.value == PAGE_INVALID:
                self.add(f"page {page} was unmapped {at}")
            elif e.value == PAGE_PROTECTED and thread.startswith("vcpu"):
                self.add(f"{_who(thread)} re-armed the notifier of page {page} {at}")
        elif field_ == "done" and e.op == "store" and e.value == 1:
            self.add(f"{owner} returned {at}")

    def note_prog0c(self, e: Event, owner: str, mine: bool) -> None:
        """sie64a's oi/ni of PROG_IN_SIE: told only when a store sat in the store buffer
        while another thread polled the old value (TSO)."""
        if e.op == "store" and mine:
            self.buffered[owner] = (e.value, e.step, None)
        elif e.op == "flush" and owner in self.buffered:
            value, step, polled = self.buffered.pop(owner)
            if polled is not None:
                what = "set PROG_IN_SIE (oi)" if value & PROG_IN_SIE else \
                    "cleared PROG_IN_SIE (ni)"
                self.add(f"{_vcpu(owner)} {what} at step {step}, but the store sat in its "
                         f"store buffer until step {e.step}, after the poll at step {polled}")

    def note_wait(self, e: Event) -> None:
        """A requester's wait on a vCPU's PROG_IN_SIE (exit_sie, the unified wait)."""
        thread = e.thread_name
        for cell in e.cell_names:
            owner, _, field_ = cell.partition(".")
            if field_ != "prog0c" or thread == owner or not self.relevant(owner):
                continue
            if owner in self.buffered and self.buffered[owner][2] is None:
                value, step, _ = self.buffered[owner]
                self.buffered[owner] = (value, step, e.step)
            if e.value:
                self.add(f"{_who(thread)}'s wait for {_vcpu(owner)} to leave SIE ended "
                         f"at step {e.step}")
            else:
                self.add(f"{_who(thread)} polled {_vcpu(owner)}: still in SIE (PROG_IN_SIE) "
                         f"at step {e.step}")


_MODES = {OUTSIDE_GUEST_MODE: "OUTSIDE_GUEST_MODE", IN_GUEST_MODE: "IN_GUEST_MODE",
          EXITING_GUEST_MODE: "EXITING_GUEST_MODE"}


def _names(mask: int) -> str:
    return ", ".join(r.name for r in pending_requests(mask, "s390x"))
