"""Scenarios on the simulated host: halting and waking, interrupts, lockless walks,
broadcasts over many vCPUs, migration, arm64 pause/resume, synchronous kicks.

They run on the architectures with a host-aware run loop
(:class:`vcpureq.arch.kvm_run.RunLoopArch`: x86, arm64, ppc64 and their variants); each
scenario names the ``features`` it needs (``Scenario.requires``), and
``vcpureq.scenarios`` runs it only on architectures that have them.

Every program builds a VM, starts every vCPU thread (daemon threads that end up running
the guest for good, or asleep for good), runs its requester threads, joins them, and
then *settles* every vCPU: it waits until the vCPU owes nothing (no request pending, no
queued interrupt), or runs the guest with no IPI on its way, or sleeps in
``schedule()`` with nobody left to wake it. Then (PROTOCOL.md section 8):

- **no lost request / interrupt**: a vCPU that runs the guest for good has no request
  pending and no queued interrupt it was never given;
- **no lost wakeup**: a vCPU that sleeps for good does not satisfy the condition it
  sleeps on (kvm_vcpu_block: kvm_arch_vcpu_runnable or KVM_REQ_UNBLOCK; arm64
  kvm_vcpu_sleep: not paused). A NO_WAKEUP request may stay pending on a sleeper.

plus each scenario's own property, checked where it can break. Every violation message
starts with the property's name ("no lost request", "no lost wakeup", "no lost
interrupt", "sync", "pause"), says in words what broke, and ends with *how*, citing the
steps of the counterexample's trace (:mod:`vcpureq.hw.observe`). The outcome of an
execution is how the vCPUs met the requests they handled, as in
:mod:`vcpureq.scenarios.generic` (plus ``EXITED_ON_ITS_OWN`` with natural exits).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vcpureq.arch.kvm_run import EXIT_IRQ, EXIT_NATURAL, RunLoopArch
from vcpureq.common import (
    Kvm,
    KvmVcpu,
    make_all_cpus_request,
    make_request,
    pending_requests,
    vcpu_kick,
)
from vcpureq.common import test_request as kvm_test_request
from vcpureq.hw import HostCpu, MigrationPlan
from vcpureq.hw.cpu import GUEST_UNTIL_IPI
from vcpureq.hw.observe import current_step, step_text
from vcpureq.hw.sched import RCUWAIT_SLEEPING
from vcpureq.model import Atomic, check, spawn, wait_until
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE
from vcpureq.requests import TLB_FLUSH, UNBLOCK, Request
from vcpureq.scenarios.generic import (
    KICKED_OUT,
    SAW_BEFORE_ENTRY,
    ArchSpec,
    Program,
    StepLog,
    arch_name,
    ipis_how,
    new_arch,
    observed_vm,
)

__all__ = [
    "EXITED_ON_ITS_OWN",
    "HostHarness",
    "interrupt_delivery",
    "tlb_flush_walk",
    "kick_all_wait_all",
    "migrate_kick",
    "pause_resume",
    "kick_wait",
]

Job = tuple[str, Callable[[], Any]]

#: an outcome: the vCPU met the request after a natural exit of the guest
EXITED_ON_ITS_OWN = "the guest exited on its own first"


class HostHarness:
    """One run of a host scenario: the VM, its vCPU threads, the requesters, the checks.

    ``halted``: vCPUs whose guest starts halted (they block in kvm_vcpu_block first);
    ``asleep``: halted vCPUs already asleep in kvm_vcpu_block when the scenario
    starts (their registration as sleepers is done before any thread runs, so their
    going to sleep cannot interleave with the scenario: fewer executions; use
    ``halted`` where that race is the point).
    ``migrate``: ``{vcpu index: migrations}`` allowed (see MigrationPlan).
    ``natural_exits``: ``{vcpu index: exits}`` the guest may take on its own (see
    RunLoopArch.natural_exits).
    ``setup(kvm)`` runs before the vCPU threads start (e.g. to queue host work).
    ``log`` (a StepLog) notes guest entries; requesters note what they made.
    """

    def __init__(
        self,
        arch: ArchSpec,
        nr_vcpus: int,
        *,
        halted: Iterable[int] = (),
        asleep: Iterable[int] = (),
        migrate: Mapping[int, int] | None = None,
        natural_exits: Mapping[int, int] | None = None,
        on_request: Callable[[KvmVcpu, Request], None] | None = None,
        on_guest_entry: Callable[[KvmVcpu], None] | None = None,
        setup: Callable[[Kvm], None] | None = None,
    ) -> None:
        a = new_arch(arch)
        if not isinstance(a, RunLoopArch):
            raise TypeError(f"{arch_name(arch)}: host scenarios need a RunLoopArch")
        if migrate:
            a.migration = MigrationPlan(dict(migrate))
        if natural_exits:
            a.natural_exits = dict(natural_exits)
        self.arch: RunLoopArch = a
        self.met: set[str] = set()
        self.log = StepLog()
        self.kvm = observed_vm(a, nr_vcpus, self.log, self.requests_seen, on_request,
                               on_guest_entry)
        self.asleep = sorted(set(asleep))
        for i in {*halted, *self.asleep}:
            self.kvm.vcpus[i].arch.halted = True
        for i in self.asleep:  # asleep from the start: main's stores, before any thread
            vcpu = self.kvm.vcpus[i]
            vcpu.arch.asleep = True
            vcpu.wait.store(RCUWAIT_SLEEPING, order="full")
            vcpu.arch.task.in_schedule.store(1, order="full")
        if setup is not None:
            setup(self.kvm)
        for vcpu in self.kvm.vcpus:
            spawn(a.vcpu_run, vcpu, None, name=f"vcpu{vcpu.vcpu_id}", daemon=True)

    def requests_seen(self, vcpu: KvmVcpu, mask: int) -> None:
        how = {EXIT_IRQ: KICKED_OUT, EXIT_NATURAL: EXITED_ON_ITS_OWN}
        self.met.add(how.get(vcpu.stat.last_exit, SAW_BEFORE_ENTRY))

    def names(self, mask: int) -> str:
        return ", ".join(r.name for r in pending_requests(mask, self.arch.request_arch))

    def cpu_of(self, vcpu: KvmVcpu) -> HostCpu:
        """The CPU the vCPU's thread is on, read from the observation cell (any thread)."""
        return self.kvm.host.cpus[READ_ONCE(vcpu.arch.task.on_cpu)]

    def cpus_how(self, vcpu: KvmVcpu, after: int | None) -> str:
        """The IPIs to every CPU the vCPU's thread ran on, and its migrations, in words."""
        task = vcpu.arch.task
        said = [f"vCPU {vcpu.vcpu_id} migrated from CPU {old} to CPU {new} "
                f"(vcpu->cpu updated) at {step_text(step)}" for old, new, step in task.moves]
        said += [ipis_how(self.kvm.host.cpus[c], after=after)
                 for c in (*task.left, task.cpu.cpu_id)]
        return "; ".join(said)

    def asleep_for_good(self, vcpu: KvmVcpu) -> bool:
        """Registered as a sleeper and inside schedule(): only a waker can move it."""
        return bool(READ_ONCE(vcpu.wait) == RCUWAIT_SLEEPING
                    and READ_ONCE(vcpu.arch.task.in_schedule))

    def running_guest(self, vcpu: KvmVcpu) -> bool:
        return bool(READ_ONCE(self.cpu_of(vcpu).guest_running))

    # --- main ------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job]) -> tuple[str, ...]:
        """Run each job in its own thread, join them all, then settle every vCPU."""
        threads = [spawn(fn, name=name) for name, fn in jobs]
        for t in threads:
            t.join()
        for vcpu in self.kvm.vcpus:
            self.settle(vcpu)
        for cpu in self.kvm.host.cpus:  # e.g. a kick that hit a CPU a vCPU had left
            wait_until(functools.partial(_no_ipi_pending, cpu))
        return tuple(sorted(self.met))

    def settle(self, vcpu: KvmVcpu) -> None:
        """Wait until ``vcpu`` runs the guest for good or sleeps for good; then check
        that it lost no request, interrupt or wakeup.

        Main waits for one of these two *blocked* states (not merely for "nothing
        owed"), and at the end for every CPU to have taken its IPIs (an idle task
        that still has one to take could move), so that no thread can still move
        when the execution ends. The explorer would also explore daemon threads that
        run on after main (it does since its fix, see docs/architectures.md, "Runtime
        notes"); ending with every thread blocked leaves it nothing to add, which keeps
        these scenarios small.
        """
        arch = self.arch
        task = vcpu.arch.task

        def in_guest_for_good() -> bool:
            cpu = self.cpu_of(vcpu)
            return (READ_ONCE(cpu.guest_running) == GUEST_UNTIL_IPI
                    and not cpu.ipi_pending())

        def asleep_for_good() -> bool:
            return self.asleep_for_good(vcpu)

        def settled() -> bool:
            return in_guest_for_good() or asleep_for_good()

        wait_until(settled)
        if asleep_for_good():
            what, observe = task.waiting or ("schedule", None)
            if what == "kvm_vcpu_block":
                # kvm_vcpu_check_block's condition, counting only what wakes: a queued
                # interrupt the vCPU may take, or KVM_REQ_UNBLOCK (a NO_WAKEUP request,
                # which ppc64's kvm_arch_vcpu_runnable also counts, wakes nobody)
                owed = ((arch.irq_pending(vcpu) and arch.vcpu_runnable(vcpu))
                        or kvm_test_request(UNBLOCK, vcpu))
            else:
                owed = observe is not None and observe()
            if owed:
                check(
                    False,
                    f"no lost wakeup: vCPU {vcpu.vcpu_id} sleeps in {what} although its "
                    f"wake-up condition holds and no wake-up is on its way: a lost "
                    f"wakeup; how: it registered as the waiter at "
                    f"{step_text(task.registered_at)} and read its condition false at "
                    f"{step_text(task.checked_at)}; {self.log.events_how()}",
                )
            return
        pending = READ_ONCE(vcpu.requests)
        cpu = self.cpu_of(vcpu)
        if pending:
            requests = pending_requests(pending, self.arch.request_arch)
            check(
                False,
                f"no lost request: vCPU {vcpu.vcpu_id} is in guest mode with "
                f"{self.names(pending)} pending and no IPI on its way: the request is "
                f"lost; how: {self.log.lost_request_how(vcpu, cpu, requests)}"
                + (f"; {self.cpus_how(vcpu, None)}" if vcpu.arch.task.moves else ""),
            )
        if arch.irq_pending(vcpu):
            entry = self.log.last_entry(vcpu)
            check(
                False,
                f"no lost interrupt: vCPU {vcpu.vcpu_id} runs the guest with an interrupt "
                f"queued that it was never given and no IPI on its way: the interrupt is "
                f"lost; how: {self.log.events_how()}; the vCPU went into the guest after "
                f"{step_text(entry)}, and {ipis_how(cpu, after=entry)}",
            )

    def check_not_in_guest_with(self, vcpu: KvmVcpu, req: Request, after: str) -> None:
        """After a synchronous call returned: the vCPU does not run the guest with
        ``req`` unhandled. (Guest first: only the caller made ``req``, so pending now
        means pending while the guest ran, after the call returned.)"""
        if self.running_guest(vcpu) and kvm_test_request(req, vcpu):
            entry = self.log.last_entry(vcpu)
            check(
                False,
                f"sync: {after} returned but vCPU {vcpu.vcpu_id} is running the guest "
                f"with {req} not handled; how: the call returned at "
                f"{step_text(self.log.returned_at(after, vcpu))}, the vCPU went into the "
                f"guest after {step_text(entry)}; {self.cpus_how(vcpu, entry)}"
                + (f"; {self.log.events_how()}" if self.log.events else ""),
            )


def _no_ipi_pending(cpu: HostCpu) -> bool:
    return not cpu.ipi_pending()


def _bystanders(halted: Iterable[int], nr_vcpus: int, busy: int) -> list[int]:
    """The vCPUs to start halted: those asked for that exist and are not ``busy``."""
    return [v for v in halted if v < nr_vcpus and v != busy]


def _entry_check(req: Request, done: list[Atomic], targets: Iterable[int],
                 after: str, log: list[StepLog]) -> Callable[[KvmVcpu], None]:
    """At every guest entry: no entry with ``req`` pending once the call returned.
    ``log`` is filled with the harness's StepLog once it exists."""
    targets = frozenset(targets)

    def on_guest_entry(vcpu: KvmVcpu) -> None:
        if vcpu.vcpu_idx in targets and kvm_test_request(req, vcpu):
            check(
                not READ_ONCE(done[0]),
                f"sync: vCPU {vcpu.vcpu_id} entered the guest with {req} pending although "
                f"{after} had returned; how: the call returned at "
                f"{step_text(log[0].returned_at(after, vcpu) if log else None)}, and the "
                f"vCPU went into the guest after {step_text(current_step())}",
            )

    return on_guest_entry


# === interrupts: halt and wake, injection into a running vCPU ===========================


def interrupt_delivery(
    arch: ArchSpec = "x86",
    *,
    nr_vcpus: int = 2,
    targets: Sequence[int] = (0,),
    halted: bool = True,
    bystanders_halted: bool = True,
    natural_exits: int = 0,
) -> Program:
    """Injectors queue a guest interrupt for each vCPU in ``targets`` and notify it the
    architecture's way (x86: IRR + KVM_REQ_EVENT + kick; arm64: ap_list +
    KVM_REQ_IRQ_PENDING + kick; ppc64: pending_exceptions + kick). With ``halted`` every
    vCPU starts halted, in kvm_vcpu_block: the injection must wake it (no lost
    wakeup); otherwise the targets run and the interrupt must reach the guest (no
    lost interrupt), while the other vCPUs sleep (``bystanders_halted``) or run.
    ``natural_exits``: exits each target's guest may take on its own."""
    if not all(0 <= v < nr_vcpus for v in targets):
        raise ValueError(f"targets {targets} outside 0..{nr_vcpus - 1}")

    def program() -> tuple[str, ...]:
        others = [v for v in range(nr_vcpus) if v not in targets]
        h = HostHarness(arch, nr_vcpus, halted=targets if halted else (),
                        asleep=others if halted or bystanders_halted else (),
                        natural_exits={v: natural_exits for v in targets})

        def injector(vcpu: KvmVcpu) -> None:
            h.arch.deliver_interrupt(vcpu)
            h.log.note(f"the interrupt for vCPU {vcpu.vcpu_id} was queued and notified "
                       f"(deliver_interrupt returned)")

        jobs = [(f"injector{i}", functools.partial(injector, h.kvm.vcpus[v]))
                for i, v in enumerate(targets)]
        return h.run(jobs)

    program.__name__ = f"interrupt_delivery[{arch_name(arch)}]"
    return program


# === x86: a TLB flush while a vCPU walks shadow page tables locklessly ===================

PAGE_LIVE = 0
PAGE_FREED = 1


def tlb_flush_walk(
    arch: ArchSpec = "x86",
    *,
    nr_vcpus: int = 2,
    walkers: Sequence[int] = (0,),
    halted: Sequence[int] = (1,),
) -> Program:
    """A zapper unlinks a shadow page-table page, flushes remote TLBs
    (kvm_flush_remote_tlbs: make_all_cpus_request(KVM_REQ_TLB_FLUSH), a WAIT request)
    and frees the page, as kvm_mmu_commit_zap_page does; meanwhile each vCPU in
    ``walkers`` handles a page fault with a lockless walk
    (walk_shadow_page_lockless_begin/end) that reads the parent spte and, if it still
    points to the page, an spte of the page; the vCPUs in ``halted`` sleep (a TLB
    flush neither wakes nor IPIs them). The flush must not return while a walk that
    may still read the page is in progress: no walk reads a freed page."""

    def program() -> tuple[str, ...]:
        sptep = Atomic(1, name="parent_spte")  # points to shadow page 1 (0: zapped)
        page = Atomic(PAGE_LIVE, name="shadow_page1")

        def fault(vcpu: KvmVcpu) -> None:  # the walk a page fault exit does
            def walk() -> None:
                h.log.note(f"vCPU {vcpu.vcpu_id} began its lockless walk "
                           f"(READING_SHADOW_PAGE_TABLES)")
                if READ_ONCE(sptep):
                    state = READ_ONCE(page)
                    if state != PAGE_LIVE:
                        cpu = h.cpu_of(vcpu)
                        check(
                            False,
                            f"sync (WAIT broadcast): vCPU {vcpu.vcpu_id}'s lockless walk "
                            f"read shadow page 1 after it was freed: kvm_flush_remote_tlbs "
                            f"returned while the walk (READING_SHADOW_PAGE_TABLES) was in "
                            f"progress; how: {h.log.events_how()}, the walk read the page "
                            f"at {step_text(current_step())}; {ipis_how(cpu)}",
                        )

            arch: Any = vcpu.kvm.arch  # an architecture with the "lockless-walk" feature
            arch.walk_shadow_page_lockless(vcpu, walk)

        def setup(kvm: Kvm) -> None:
            for w in walkers:
                kvm.vcpus[w].arch.work.append(fault)

        h = HostHarness(arch, nr_vcpus, asleep=[v for v in halted if v < nr_vcpus],
                        setup=setup)

        def zapper() -> None:
            WRITE_ONCE(sptep, 0)  # drop_parent_pte: unlink the page
            h.log.note("the zapper unlinked the page")
            make_all_cpus_request(h.kvm, TLB_FLUSH)  # kvm_flush_remote_tlbs
            h.log.note("kvm_flush_remote_tlbs returned")
            WRITE_ONCE(page, PAGE_FREED)  # free the page-table page
            h.log.note("the zapper freed the page")

        return h.run([("zapper", zapper)])

    program.__name__ = f"tlb_flush_walk[{arch_name(arch)}]"
    return program


# === a WAIT broadcast over N vCPUs, some asleep: kick all, then wait for all ===============


def kick_all_wait_all(
    arch: ArchSpec = "x86",
    *,
    nr_vcpus: int = 2,
    halted: Sequence[int] = (0,),
    natural_exits: int = 0,
) -> Program:
    """make_all_cpus_request(KVM_REQ_TLB_FLUSH) over ``nr_vcpus`` vCPUs, those in
    ``halted`` asleep in kvm_vcpu_block (NO_WAKEUP: not woken, not IPI'd), the others
    running: every IPI goes out before the first wait (kvm_kick_many_cpus), and on
    return no vCPU runs the guest with TLB_FLUSH unhandled, now or at a later entry.
    ``natural_exits``: exits each running vCPU's guest may take on its own."""
    call = "make_all_cpus_request(TLB_FLUSH)"

    def program() -> tuple[str, ...]:
        done = [Atomic(0, name="requester.done")]
        log: list[StepLog] = []
        asleep = [v for v in halted if v < nr_vcpus]
        h = HostHarness(
            arch, nr_vcpus, asleep=asleep,
            natural_exits={v: natural_exits for v in range(nr_vcpus) if v not in asleep},
            on_guest_entry=_entry_check(TLB_FLUSH, done, range(nr_vcpus), call, log),
        )
        log.append(h.log)

        def requester() -> None:
            make_all_cpus_request(h.kvm, TLB_FLUSH)
            h.log.note_returned(call, h.kvm.vcpus)
            for vcpu in h.kvm.vcpus:
                h.check_not_in_guest_with(vcpu, TLB_FLUSH, call)
            done[0].store(1, order="full")  # observation

        return h.run([("requester", requester)])

    program.__name__ = f"kick_all_wait_all[{arch_name(arch)}]"
    return program


# === a vCPU migrating while it is being kicked ============================================

KICKS = ("kick", "kick-wait")


def migrate_kick(
    arch: ArchSpec = "x86",
    *,
    nr_vcpus: int = 2,
    migrating: int = 0,
    migrations: int = 1,
    via: str = "kick",
    halted: Sequence[int] = (1,),
) -> Program:
    """vCPU ``migrating`` may be preempted and migrate to a spare CPU at its preemption
    points (``migrations`` times) while a requester kicks it: ``via="kick"`` is
    make_request(TLB_FLUSH) + kvm_vcpu_kick (no request may be lost, even when the IPI
    goes to the CPU the vCPU just left); ``via="kick-wait"`` is the architecture's
    synchronous kick (kvm_make_request_and_kick of a WAIT request): on return the vCPU
    does not run the guest with the request unhandled, now or later. The vCPUs in
    ``halted`` (by default the bystander vCPU 1) sleep throughout."""
    if via not in KICKS:
        raise ValueError(f"unknown kick {via!r} (known: {', '.join(KICKS)})")

    req = _wait_kick_request(arch)
    call = f"make_request_and_kick({req})"

    def program() -> tuple[str, ...]:
        done = [Atomic(0, name="requester.done")]
        log: list[StepLog] = []
        entry = (_entry_check(req, done, [migrating], call, log) if via == "kick-wait"
                 else None)
        h = HostHarness(arch, nr_vcpus, asleep=_bystanders(halted, nr_vcpus, migrating),
                        migrate={migrating: migrations}, on_guest_entry=entry)
        log.append(h.log)
        vcpu = h.kvm.vcpus[migrating]

        def requester() -> None:
            if via == "kick":
                make_request(TLB_FLUSH, vcpu)
                h.log.note_made(vcpu, TLB_FLUSH)
                vcpu_kick(vcpu)
                h.log.note("kvm_vcpu_kick returned")
                return
            h.arch.make_request_and_kick(req, vcpu)
            h.log.note_returned(call, [vcpu])
            h.check_not_in_guest_with(vcpu, req, call)
            done[0].store(1, order="full")  # observation

        return h.run([("requester", requester)])

    program.__name__ = f"migrate_kick[{arch_name(arch)}, {via}]"
    return program


# === arm64: kvm_arm_halt_guest / kvm_arm_resume_guest ======================================


def pause_resume(arch: ArchSpec = "arm64", *, nr_vcpus: int = 2,
                 halted: Sequence[int] = ()) -> Program:
    """kvm_arm_halt_guest, then kvm_arm_resume_guest (as the vGIC does around an MMIO
    access to the active state). When halt returns no vCPU runs the guest, and none
    enters it until resume; after resume every vCPU runs again (no lost wakeup).
    vCPUs in ``halted`` start in WFI (kvm_vcpu_block)."""

    def program() -> tuple[str, ...]:
        paused = Atomic(0, name="vm.paused")  # observation: between halt and resume

        def on_guest_entry(vcpu: KvmVcpu) -> None:
            check(
                not READ_ONCE(paused),
                f"pause: vCPU {vcpu.vcpu_id} entered the guest while the VM is paused "
                f"(kvm_arm_halt_guest had returned, kvm_arm_resume_guest not yet called); "
                f"how: {h.log.events_how()}, and the vCPU went into the guest after "
                f"{step_text(current_step())}",
            )

        h = HostHarness(arch, nr_vcpus, asleep=[v for v in halted if v < nr_vcpus],
                        on_guest_entry=on_guest_entry)
        a: Any = h.arch

        def halter() -> None:
            a.halt_guest(h.kvm)
            h.log.note("kvm_arm_halt_guest returned")
            paused.store(1, order="full")
            for vcpu in h.kvm.vcpus:
                if h.running_guest(vcpu):
                    entry = h.log.last_entry(vcpu)
                    check(
                        False,
                        f"pause: kvm_arm_halt_guest returned but vCPU {vcpu.vcpu_id} is "
                        f"running the guest; how: {h.log.events_how()}, the vCPU went "
                        f"into the guest after {step_text(entry)}, and "
                        f"{ipis_how(h.cpu_of(vcpu), after=entry)}",
                    )
            paused.store(0, order="full")
            a.resume_guest(h.kvm)
            h.log.note("kvm_arm_resume_guest returned")

        return h.run([("halter", halter)])

    program.__name__ = f"pause_resume[{arch_name(arch)}]"
    return program


def _wait_kick_request(arch: ArchSpec) -> Request:
    probe = new_arch(arch)
    return probe.wait_kick_request if isinstance(probe, RunLoopArch) else TLB_FLUSH


# === synchronous kick of one vCPU (kvm_make_request_and_kick) ==============================


def kick_wait(
    arch: ArchSpec = "x86",
    *,
    nr_vcpus: int = 2,
    target: int = 0,
    racer: bool = False,
    halted: Sequence[int] = (1,),
) -> Program:
    """A requester makes the architecture's WAIT request on vCPU ``target`` and kicks it
    synchronously (kvm_make_request_and_kick; x86: KVM_REQ_UPDATE_PROTECTED_GUEST_STATE,
    as sev_snp_ap_creation does for an AP destroy): on return the vCPU does not run the
    guest with the request unhandled, now or at a later entry. With ``racer``, a second
    thread races it with a bare kvm_vcpu_kick of the same vCPU. The
    vCPUs in ``halted`` (by default the bystander vCPU 1) sleep throughout."""

    req = _wait_kick_request(arch)
    call = f"make_request_and_kick({req})"

    def program() -> tuple[str, ...]:
        done = [Atomic(0, name="requester.done")]
        log: list[StepLog] = []
        h = HostHarness(arch, nr_vcpus, asleep=_bystanders(halted, nr_vcpus, target),
                        on_guest_entry=_entry_check(req, done, [target], call, log))
        log.append(h.log)
        vcpu = h.kvm.vcpus[target]

        def requester() -> None:
            h.arch.make_request_and_kick(req, vcpu)
            h.log.note_returned(call, [vcpu])
            h.check_not_in_guest_with(vcpu, req, call)
            done[0].store(1, order="full")  # observation

        def kicker() -> None:
            # a request-less kick, as x86 posted-interrupt delivery does when the
            # notification IPI cannot be used (the PIR is synced at the next entry)
            vcpu_kick(vcpu)
            h.log.note("the other kicker's kvm_vcpu_kick returned")

        jobs: list[Job] = [("requester", requester)]
        if racer:
            jobs.append(("kicker", kicker))
        return h.run(jobs)

    program.__name__ = f"kick_wait[{arch_name(arch)}{', racer' if racer else ''}]"
    return program
