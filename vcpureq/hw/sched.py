"""The vCPU threads as the host scheduler sees them: CPUs, preemption, migration, sleep.

A vCPU thread is a :class:`Task`. It runs on one host CPU at a time (``Task.cpu``,
private to the thread). The kernel facts modelled:

- **Preemption points.** A vCPU thread can be preempted where preemption is enabled;
  KVM's run loops have an explicit point at the top of every round (x86 ``vcpu_run`` ->
  ``kvm_xfer_to_guest_mode_handle_work``, arm64 ``cond_resched()`` /
  ``xfer_to_guest_mode_handle_work``, powerpc ``need_resched()`` in
  ``kvmppc_prepare_to_enter``), always outside guest mode with IRQs enabled.
  :meth:`Scheduler.cond_resched` is that point. Preemption alone changes nothing the
  protocol can see (the model's interleavings already delay a thread arbitrarily), so
  only a *migration* is a choice here, and only for the vCPUs a scenario's
  :class:`MigrationPlan` allows (opt-in: other scenarios keep their sizes).
- **Migration.** ``kvm_sched_out`` -> ``kvm_arch_vcpu_put`` on the old CPU, the old CPU
  goes idle (its idle task, IRQs on, takes any IPI that still arrives there: a kick that
  read the old ``vcpu->cpu`` lands on the CPU the vCPU just left), then on the new CPU
  ``kvm_sched_in`` -> ``kvm_arch_vcpu_load(vcpu, cpu)``, which updates ``vcpu->cpu``
  (virt/kvm/kvm_main.c kvm_sched_out/kvm_sched_in; x86 and arm64 kvm_arch_vcpu_load set
  ``vcpu->cpu = cpu``; arm64 and powerpc book3s PR kvm_arch_vcpu_put set it to -1). A
  vCPU migrates only to a fresh spare CPU and never comes back (bounded by the plan), so
  a CPU it left keeps its idle task forever.
- **Sleeping.** :func:`rcuwait_wait_event` is the waiter side of include/linux/rcuwait.h
  as kvm_vcpu_block uses it: register as the waiter and set the task state
  (``prepare_to_rcuwait`` + ``set_current_state``, whose ``smp_store_mb`` is barrier (A)),
  check the condition, and only then :func:`schedule`; on the way out
  ``finish_rcuwait``. The waker side (set the condition, barrier (B), read the waiter)
  is ``rcuwait_wake_up`` in :func:`vcpureq.common.vcpu_wake_up`.
  ``vcpu->wait`` folds the waiter pointer and the task state into one cell:
  ``RCUWAIT_NONE`` (no waiter), ``RCUWAIT_SLEEPING`` (a waiter in TASK_INTERRUPTIBLE),
  ``RCUWAIT_WOKEN`` (a waiter that wake_up_process made TASK_RUNNING).
  While the task sleeps its CPU idles with IRQs on and takes IPIs.

``Task.on_cpu`` and ``Task.in_schedule`` are observation cells for scenarios (which CPU
the thread is on; whether it sleeps inside schedule()), written with "full" stores and
never read by protocol code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vcpureq.hw.observe import current_step
from vcpureq.model import Atomic, choose
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE, smp_store_mb

if TYPE_CHECKING:
    from vcpureq.hw.cpu import HostCpu
    from vcpureq.hw.host import Host

__all__ = [
    "RCUWAIT_NONE",
    "RCUWAIT_SLEEPING",
    "RCUWAIT_WOKEN",
    "MigrationPlan",
    "Task",
    "Scheduler",
    "rcuwait_wait_event",
    "schedule",
]

# --- vcpu->wait (struct rcuwait + the waiter's task state) ---------------------------
RCUWAIT_NONE = 0
RCUWAIT_SLEEPING = 1
RCUWAIT_WOKEN = 2


@dataclass(frozen=True)
class MigrationPlan:
    """Which vCPU threads may migrate, and how often (``{vcpu index: migrations}``).

    Each migration moves the thread to a fresh spare CPU, so the host gets one spare CPU
    per allowed migration. Every allowed migration is one ``choose(2)`` at a preemption
    point while it is still available.
    """

    migrations: Mapping[int, int] = field(default_factory=dict)

    def spare_cpus(self) -> int:
        return sum(self.migrations.values())


class Task:
    """A vCPU thread (task_struct) as the scheduler sees it."""

    def __init__(self, name: str, cpu: HostCpu, spares: list[int]) -> None:
        self.name = name
        self.cpu = cpu  # the CPU this thread runs on: private to the thread
        self.spares = spares  # the CPUs it may migrate to, in order
        self.migrations = 0
        self.on_cpu = Atomic(cpu.cpu_id, name=f"{name}.on_cpu")  # observation
        self.in_schedule = Atomic(0, name=f"{name}.in_schedule")  # observation
        self.left: list[int] = []  # CPUs it left (for reports)
        #: (old CPU, new CPU, trace step of kvm_arch_vcpu_load's last operation)
        self.moves: list[tuple[int, int, int | None]] = []
        #: while in rcuwait_wait_event: (what it waits in, its condition without side
        #: effects); set before ``in_schedule`` is, so an observer that read
        #: ``in_schedule == 1`` may read it
        self.waiting: tuple[str, Callable[[], bool] | None] | None = None
        #: trace steps (observation, vcpureq.hw.observe) of the last round of
        #: rcuwait_wait_event: registered as the waiter, read its condition false
        self.registered_at: int | None = None
        self.checked_at: int | None = None

    def __repr__(self) -> str:
        return f"<Task {self.name} on cpu{self.cpu.cpu_id}>"


class Scheduler:
    """The host scheduler: one :class:`Task` per vCPU thread, migrations by plan."""

    def __init__(self, host: Host, plan: MigrationPlan) -> None:
        self.host = host
        self.plan = plan
        self.tasks: dict[int, Task] = {}
        first_spare = len(host.cpus) - plan.spare_cpus()
        self._spares: dict[int, list[int]] = {}
        nxt = first_spare
        for idx in sorted(plan.migrations):
            n = plan.migrations[idx]
            self._spares[idx] = list(range(nxt, nxt + n))
            nxt += n

    def task_of(self, vcpu_idx: int) -> Task:
        """The task of vCPU ``vcpu_idx``, created on first use on CPU ``vcpu_idx``."""
        task = self.tasks.get(vcpu_idx)
        if task is None:
            task = Task(f"vcpu{vcpu_idx}", self.host.cpus[vcpu_idx],
                        list(self._spares.get(vcpu_idx, [])))
            self.tasks[vcpu_idx] = task
        return task

    def cond_resched(self, task: Task, sched_out: Callable[[], None],
                     sched_in: Callable[[HostCpu], None]) -> bool:
        """A preemption point (IRQs and preemption enabled, outside guest mode).

        If the plan still allows this thread a migration, the explorer tries both: stay,
        or be preempted and migrate (``sched_out`` is kvm_sched_out ->
        kvm_arch_vcpu_put, ``sched_in(cpu)`` is kvm_sched_in -> kvm_arch_vcpu_load).
        Returns whether it migrated.
        """
        if not task.spares or choose(2) == 0:
            return False
        self.migrate(task, sched_out, sched_in)
        return True

    def migrate(self, task: Task, sched_out: Callable[[], None],
                sched_in: Callable[[HostCpu], None]) -> None:
        old = task.cpu
        sched_out()  # kvm_sched_out -> kvm_arch_vcpu_put, on the old CPU
        self.host.start_idle(old)  # context switch: the old CPU runs its idle task
        new = self.host.cpus[task.spares.pop(0)]
        task.cpu = new
        task.migrations += 1
        task.left.append(old.cpu_id)
        task.on_cpu.store(new.cpu_id, order="full")  # observation
        sched_in(new)  # kvm_sched_in -> kvm_arch_vcpu_load(vcpu, new), on the new CPU
        task.moves.append((old.cpu_id, new.cpu_id, current_step()))


def schedule(task: Task, woken: Callable[[], bool], *, already: bool = False) -> None:
    """schedule() for a task in TASK_INTERRUPTIBLE: sleep until a waker made it
    TASK_RUNNING (``woken``); meanwhile its CPU idles and takes IPIs. ``already``: the
    task is asleep in here from the start (``in_schedule`` is set already)."""
    if not already:
        task.in_schedule.store(1, order="full")  # observation
    task.cpu.idle_until(woken)
    task.in_schedule.store(0, order="full")


def rcuwait_wait_event(wait: Atomic, task: Task, condition: Callable[[], bool], *,
                       what: str = "rcuwait_wait_event",
                       observe: Callable[[], bool] | None = None,
                       asleep: bool = False) -> bool:
    """rcuwait_wait_event(w, condition, TASK_INTERRUPTIBLE) as kvm_vcpu_block runs it.

    Register as the waiter and set the task state with a full barrier (barrier (A) of
    rcuwait.h, pairing with the waker's (B)), check ``condition``, and only then
    schedule(); loop until the condition holds; finish_rcuwait. Returns whether it
    slept. (Signals, which also end the wait in the kernel, are not modelled.)

    ``what`` names the wait and ``observe`` is ``condition`` without side effects; both
    are left on the task while it waits, for observers that find it asleep for good
    (``Task.waiting``). ``asleep``: the task starts asleep inside schedule(), its
    registration already done (``wait`` is RCUWAIT_SLEEPING and ``in_schedule`` set
    before the thread started: a vCPU that was halted before the scenario began).
    """
    task.waiting = (what, observe)

    def woken() -> bool:
        return bool(READ_ONCE(wait) == RCUWAIT_WOKEN)

    waited = asleep
    if asleep:
        schedule(task, woken, already=True)
    while True:
        smp_store_mb(wait, RCUWAIT_SLEEPING)  # prepare_to_rcuwait + set_current_state
        task.registered_at = current_step()
        if condition():
            break
        task.checked_at = current_step()
        waited = True
        schedule(task, woken)
    WRITE_ONCE(wait, RCUWAIT_NONE)  # finish_rcuwait: w->task = NULL; TASK_RUNNING
    task.waiting = None
    return waited
