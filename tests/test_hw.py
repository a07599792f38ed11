"""The simulated host (vcpureq.hw): IPIs and IRQ masking, cross-calls, guest mode, sleeping,
preemption and migration -- explored with the model, so each property holds in every
schedule. Each test is written so that it fails if the feature it names breaks (the
comment says how)."""

from __future__ import annotations

from typing import Any

from vcpureq.arch import Host, HostCpu
from vcpureq.arch.ppc64 import Ppc64Arch
from vcpureq.arch.x86 import X86Arch
from vcpureq.common import Kvm, vcpu_wake_up
from vcpureq.hw import MigrationPlan, Scheduler, rcuwait_wait_event
from vcpureq.hw.cpu import GUEST_OFF, GUEST_UNTIL_EXIT, GUEST_UNTIL_IPI
from vcpureq.hw.observe import current_step
from vcpureq.hw.sched import RCUWAIT_NONE, RCUWAIT_SLEEPING
from vcpureq.model import Atomic, check, explore, replay, spawn, wait_until
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE
from vcpureq.scenarios import SCENARIOS
from vcpureq.scenarios.hosts import EXITED_ON_ITS_OWN, interrupt_delivery


def test_host_and_hostcpu_are_reexported_from_arch_base() -> None:
    from vcpureq.arch.base import Host as BaseHost
    from vcpureq.arch.base import HostCpu as BaseHostCpu

    assert BaseHost is Host and BaseHostCpu is HostCpu
    assert Host.__module__ == "vcpureq.hw.host"


# --- IPIs: taken only with IRQs enabled --------------------------------------------------


def test_ipi_callback_runs_only_with_irqs_enabled_and_wait_means_it_ran() -> None:
    """The target takes the IPI (runs the callback) only once it enables IRQs; a sender
    with wait=True returns only after the callback ran. (Fails if irq_window took an IPI
    with IRQs off, or if call_function_many returned before csd_unlock.)"""
    seen: list[bool] = []

    def program() -> tuple[int, int]:
        host = Host(1)
        cpu = host.cpus[0]
        ran = Atomic(0, name="ran")
        ready = Atomic(0, name="ready")
        before = Atomic(-1, name="before")

        def callback() -> None:
            seen.append(cpu.irqs_enabled)
            ran.store(1)

        def target() -> None:  # the thread running on CPU 0 (it idles at the end)
            cpu.local_irq_disable()
            ready.store(1)
            cpu.irq_window()  # IRQs are off: nothing is taken here
            before.store(READ_ONCE(ran))
            cpu.local_irq_enable()  # a pending IPI is taken now
            cpu.idle()

        spawn(target, name="cpu0", daemon=True)
        wait_until(lambda: READ_ONCE(ready) == 1)
        host.call_function_many([0], callback, wait=True)
        check(READ_ONCE(ran) == 1, "smp_call_function_many(wait) returned before the callback")
        wait_until(lambda: READ_ONCE(before) >= 0)
        return int(READ_ONCE(before)), int(READ_ONCE(ran))

    ex = explore(program)
    assert ex.ok, [v.format() for v in ex.violations]
    assert set(ex.outcomes) == {(0, 1)}  # never run while IRQs were off
    assert seen and all(seen)


def test_irq_window_takes_a_pending_ipi_when_irqs_are_on() -> None:
    def program() -> int:
        cpu = HostCpu(0)
        cpu.send_ipi()
        cpu.irq_window()  # IRQs on: taken here
        return int(READ_ONCE(cpu.ipi_acked))

    assert set(explore(program).outcomes) == {1}


def test_smp_call_function_many_sends_all_ipis_before_waiting() -> None:
    """"Kick all, then wait for all": CPU 0 enables IRQs only once CPU 1's IPI is
    pending. A sender that waited for CPU 0 before IPIing CPU 1 would wait forever (the
    explorer would report a hang)."""

    def program() -> tuple[int, int]:
        host = Host(2)
        c0, c1 = host.cpus

        def target0() -> None:
            c0.local_irq_disable()
            wait_until(lambda: READ_ONCE(c1.ipi_sent) > 0)  # CPU 1's IPI went out too
            c0.local_irq_enable()
            c0.idle()

        spawn(target0, name="cpu0", daemon=True)
        spawn(c1.idle, name="cpu1", daemon=True)
        host.smp_call_function_many([0, 1], wait=True)
        return int(READ_ONCE(c0.ipi_acked)), int(READ_ONCE(c1.ipi_acked))

    ex = explore(program)
    assert ex.ok, [v.format() for v in ex.violations]
    assert set(ex.outcomes) == {(1, 1)}


def test_smp_call_function_many_without_wait_returns_at_once() -> None:
    """wait=False (the kernel's meaning): queue and IPI, do not wait. The target keeps
    IRQs off for good, so a waiting sender would hang."""

    def program() -> tuple[int, int]:
        host = Host(1)
        cpu = host.cpus[0]

        def target() -> None:
            cpu.local_irq_disable()
            wait_until(lambda: False)  # IRQs off forever

        spawn(target, name="cpu0", daemon=True)
        host.smp_call_function_many([0], wait=False)
        return int(READ_ONCE(cpu.ipi_sent)), int(READ_ONCE(cpu.ipi_acked))

    ex = explore(program)
    assert ex.ok and set(ex.outcomes) == {(1, 0)}
    # and with wait=True the same target makes the sender hang
    def waiting() -> None:
        host = Host(1)
        cpu = host.cpus[0]

        def target() -> None:
            cpu.local_irq_disable()
            wait_until(lambda: False)

        spawn(target, name="cpu0", daemon=True)
        host.smp_call_function_many([0], wait=True)

    assert explore(waiting).violations[0].kind in ("hang", "deadlock")


def test_reschedule_ipi_does_not_wait_and_doorbell_is_counted() -> None:
    def program() -> tuple[Any, ...]:
        kvm = Kvm(Ppc64Arch(), 1)
        vcpu, cpu = kvm.vcpus[0], kvm.host.cpus[0]
        WRITE_ONCE(vcpu.arch.thread_cpu, 0)
        kvm.arch.kick(vcpu)  # kvmppc_fast_vcpu_kick_hv: the vCPU is on a thread: doorbell
        WRITE_ONCE(vcpu.arch.thread_cpu, -1)
        kvm.arch.kick(vcpu)  # not on a thread: the reschedule IPI to vcpu->cpu
        return (int(READ_ONCE(cpu.ipi_sent)), cpu.stat.received["doorbell"],
                cpu.stat.received["reschedule"], int(READ_ONCE(cpu.ipi_acked)))

    ex = explore(program)
    assert ex.ok and set(ex.outcomes) == {(2, 1, 1, 0)}


# --- guest mode ------------------------------------------------------------------------------


def test_guest_entry_with_an_ipi_pending_exits_at_once_and_the_ipi_is_taken_after() -> None:
    """An IPI that arrived while IRQs were off makes run_guest return immediately; the
    IPI is acknowledged only when the exit path enables IRQs."""

    def program() -> tuple[int, int, bool]:
        cpu = HostCpu(0)
        cpu.local_irq_disable()
        cpu.send_ipi()  # arrives in the IRQs-off window before entry
        by_ipi = cpu.run_guest()  # would block forever if entry ignored the pending IPI
        acked_in_guest = int(READ_ONCE(cpu.ipi_acked))
        cpu.local_irq_enable()
        return acked_in_guest, int(READ_ONCE(cpu.ipi_acked)), by_ipi

    assert set(explore(program).outcomes) == {(0, 1, True)}


def test_guest_runs_until_an_ipi_reaches_its_cpu() -> None:
    """Without an IPI the guest never leaves; an IPI to another CPU does not make it
    leave; one to its own CPU does."""

    def program() -> tuple[int, int]:
        host = Host(2)
        c0 = host.cpus[0]
        exits = Atomic(0, name="exits")

        def vcpu_thread() -> None:
            c0.local_irq_disable()
            c0.run_guest()
            exits.store(1)
            c0.local_irq_enable()
            c0.idle()

        spawn(vcpu_thread, name="vcpu0", daemon=True)
        wait_until(lambda: READ_ONCE(c0.guest_running) == GUEST_UNTIL_IPI)
        host.smp_send_reschedule(1)  # another CPU: the guest stays
        still = int(READ_ONCE(c0.guest_running))
        host.smp_send_reschedule(0)
        wait_until(lambda: READ_ONCE(exits) == 1)
        return still, int(READ_ONCE(c0.guest_running))

    ex = explore(program)
    assert ex.ok and set(ex.outcomes) == {(GUEST_UNTIL_IPI, GUEST_OFF)}


def test_natural_exit_leaves_the_guest_without_an_ipi() -> None:
    def program() -> tuple[bool, int]:
        cpu = HostCpu(0)
        t = spawn(lambda: cpu.run_guest(natural_exit=True), name="vcpu0")
        seen = int(READ_ONCE(cpu.guest_running))  # before, during or after the guest ran
        return bool(t.join()), seen

    assert set(explore(program).outcomes) == {
        (False, GUEST_OFF), (False, GUEST_UNTIL_EXIT)}


def test_run_loop_natural_exits_are_opt_in_and_bounded() -> None:
    """An interrupt injected into a running x86 vCPU whose guest may also exit on its own
    once: verified, and some executions meet the interrupt after the natural exit; the
    choice (one choose per entry while budget is left) multiplies the executions."""
    plain = explore(interrupt_delivery("x86", halted=False, bystanders_halted=True),
                    memory_model="tso")
    natural = explore(interrupt_delivery("x86", halted=False, natural_exits=1),
                      memory_model="tso")
    assert plain.ok and natural.ok, [v.format() for v in natural.violations]
    assert natural.executions > plain.executions
    assert any(EXITED_ON_ITS_OWN in o for o in natural.outcomes)
    assert not any(EXITED_ON_ITS_OWN in o for o in plain.outcomes)


# --- sleeping: the waiter/waker protocol of PROTOCOL.md section 4 ---------------------------


class _SwaitActiveX86(X86Arch):
    name = "test-swait-active"
    knockouts = frozenset({"vcpu_wake_up:smp_mb"})


def _waiter_waker(arch: X86Arch) -> Any:
    """A waker sets a plain flag and wakes; the sleeper waits for the flag.

    Main waits until the sleeper is done or asleep for good (registered and inside
    schedule()), then checks it is not the latter."""

    def program() -> str:
        kvm = Kvm(arch, 1)
        vcpu = kvm.vcpus[0]
        task = kvm.host.sched.task_of(0)
        flag = Atomic(0, name="condition")
        done = Atomic(0, name="sleeper.done")

        def sleeper() -> None:
            rcuwait_wait_event(vcpu.wait, task, lambda: READ_ONCE(flag) == 1)
            done.store(1)

        def waker() -> None:
            WRITE_ONCE(flag, 1)  # a plain store: it may sit in the store buffer
            vcpu_wake_up(vcpu)

        spawn(sleeper, name="sleeper", daemon=True)
        spawn(waker, name="waker").join()

        def settled() -> bool:
            return bool(READ_ONCE(done) == 1 or (READ_ONCE(vcpu.wait) == RCUWAIT_SLEEPING
                                                and READ_ONCE(task.in_schedule) == 1))

        wait_until(settled)
        check(READ_ONCE(done) == 1,
              "the sleeper sleeps although its condition holds: a lost wakeup")
        return "woken"

    return program


def test_rcuwait_waker_with_barrier_never_loses_a_wakeup() -> None:
    for model in ("sc", "tso", "pso"):
        ex = explore(_waiter_waker(X86Arch()), memory_model=model)
        assert ex.ok, (model, [v.format() for v in ex.violations])
        assert ex.executions > 1


def test_swait_active_without_barrier_loses_a_wakeup_under_store_buffering() -> None:
    assert explore(_waiter_waker(_SwaitActiveX86()), memory_model="sc").ok
    ex = explore(_waiter_waker(_SwaitActiveX86()), memory_model="tso")
    assert ex.violations and "lost wakeup" in ex.violations[0].message


def test_a_woken_sleeper_leaves_the_wait_state_clean() -> None:
    """finish_rcuwait: after the wait vcpu->wait is RCUWAIT_NONE again, whether the task
    slept or found its condition true at once."""

    def program() -> tuple[bool, int]:
        kvm = Kvm(X86Arch(), 1)
        vcpu = kvm.vcpus[0]
        flag = Atomic(0, name="condition")
        t = spawn(rcuwait_wait_event, vcpu.wait, kvm.host.sched.task_of(0),
                  lambda: READ_ONCE(flag) == 1, name="sleeper")
        WRITE_ONCE(flag, 1)
        vcpu_wake_up(vcpu)
        slept = t.join()
        return bool(slept), int(READ_ONCE(vcpu.wait))

    outcomes = set(explore(program, memory_model="tso").outcomes)
    assert outcomes == {(True, RCUWAIT_NONE), (False, RCUWAIT_NONE)}


# --- vCPU threads on host CPUs: vcpu->cpu, preemption, migration ----------------------------


def test_each_vcpu_thread_starts_on_its_cpu_and_vcpu_cpu_says_so() -> None:
    def program() -> tuple[tuple[int, int], ...]:
        kvm = Kvm(X86Arch(), 3)
        return tuple((int(READ_ONCE(v.cpu)), v.arch.task.cpu.cpu_id) for v in kvm.vcpus)

    (outcome,) = explore(program).outcomes
    assert outcome == ((0, 0), (1, 1), (2, 2))


def test_migration_plan_adds_spare_cpus() -> None:
    def program() -> tuple[int, tuple[int, ...]]:
        host = Host(2, migration=MigrationPlan({0: 1}))
        return host.nr_cpu_ids, tuple(host.sched.task_of(0).spares)

    (outcome,) = explore(program).outcomes
    assert outcome == (3, (2,))


def test_cond_resched_chooses_only_where_the_plan_allows_a_migration() -> None:
    """A preemption point is a choice (stay / migrate) only while the plan allows a
    migration: no plan, one execution; one migration allowed, two."""

    def program(plan: MigrationPlan) -> Any:
        def run() -> tuple[int, ...]:
            host = Host(1, migration=plan)
            sched: Scheduler = host.sched
            task = sched.task_of(0)
            moved = [sched.cond_resched(task, lambda: None, lambda cpu: None)
                     for _ in range(2)]
            return (task.cpu.cpu_id, *map(int, moved))

        return run

    assert set(explore(program(MigrationPlan())).outcomes) == {(0, 0, 0)}
    assert set(explore(program(MigrationPlan({0: 1}))).outcomes) == {
        (0, 0, 0), (1, 1, 0), (1, 0, 1)}


def _migrate_kick_events(arch: str) -> tuple[Any, list[list[Any]]]:
    runs: list[list[Any]] = []
    ex = explore(SCENARIOS["migrate-kick"].program(arch),
                 memory_model=X86Arch.memory_model if arch == "x86" else "pso",
                 on_execution=lambda outcome, events: runs.append(events))
    return ex, runs


def test_migration_updates_vcpu_cpu_and_a_kick_can_hit_the_cpu_left() -> None:
    """vCPU 0 migrates from CPU 0 to spare CPU 2 at a preemption point; on sched-in
    kvm_arch_vcpu_load stores vcpu->cpu = 2; in some execution the kicker read the old
    vcpu->cpu and its IPI lands on CPU 0 after the vCPU left (CPU 0's idle task takes
    it). No request is lost either way."""
    ex, runs = _migrate_kick_events("x86")
    assert ex.ok, [v.format() for v in ex.violations]
    migrated = hit_left = 0
    for events in runs:
        moved = next((e.step for e in events if e.op == "store"
                      and e.cell_names == ("vcpu0.on_cpu",)), None)
        if moved is None:
            continue
        migrated += 1
        assert any(e.op in ("store", "flush") and e.cell_names == ("vcpu0.cpu",)
                   and e.value == 2 for e in events), "vcpu->cpu not updated on sched-in"
        # the kick's IPI went to CPU 0 and was taken there by CPU 0's idle task, i.e.
        # after the vCPU thread had left CPU 0
        if any(e.thread_name.startswith("cpu0.idle") and e.op in ("store", "flush")
               and e.cell_names == ("cpu0.ipi_acked",) for e in events):
            hit_left += 1
    assert migrated and hit_left


def test_arm64_vcpu_put_clears_vcpu_cpu() -> None:
    ex, runs = _migrate_kick_events("arm64")
    assert ex.ok
    assert any(
        any(e.cell_names == ("vcpu0.cpu",) and e.value == -1 for e in events)
        for events in runs
    )


# --- step numbers for messages ------------------------------------------------------------------


def test_current_step_is_the_trace_index_of_the_last_operation() -> None:
    noted: list[int | None] = []

    def program() -> None:
        x = Atomic(0, name="x")
        x.store(1)
        x.store(2)
        noted.append(current_step())
        check(False, f"stop at {current_step()}")

    ex = explore(program)
    v = ex.violations[0]
    trace = replay(program, v.schedule)
    assert v.message == f"stop at {noted[0]}"
    assert trace[noted[0]].op == "store" and trace[noted[0]].value == 2
    assert current_step() is None  # outside a model execution


def test_real_world_ipis_keep_no_step_log() -> None:
    """The step log is for model counterexamples; in the real world (a VMM that pauses
    its vCPUs for hours) it must not grow with every IPI."""
    from vcpureq.model import real_world

    with real_world():
        cpu = HostCpu(0)
        for _ in range(100):
            cpu.send_call_function_ipi()
            cpu.handle_ipis()
        assert cpu.stat.taken == 100
        assert cpu.sent_at == {} and cpu.taken_at == {}
