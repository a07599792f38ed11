"""The host: its CPUs and the SMP cross-call primitives of kernel/smp.c over them.

- ``send_ipi(cpu, func)``: queue a call-function entry and IPI one CPU
  (``__smp_call_single_queue`` + ``send_call_function_single_ipi``).
- ``smp_send_reschedule(cpu)``: the reschedule IPI, fire and forget (``kvm_vcpu_kick``'s
  IPI).
- ``call_function_many(mask, func, wait)`` (the kernel's
  ``smp_call_function_many(mask, func, info, wait)``): queue ``func`` on every CPU of
  ``mask`` and send all the IPIs; with ``wait``, return only when ``func`` has run on
  every one of them (``csd_lock_wait`` on each csd), i.e. when every target has taken
  the interrupt with IRQs enabled. The IPIs all go out before the first wait: "kick all,
  then wait for all". ``smp_call_function_many(mask, wait)`` is the same with KVM's
  empty ``ack_kick``.
- ``send_doorbell(cpu)``: powerpc ``msgsnd`` (book3s HV ``kvmppc_ipi_thread``): a
  doorbell interrupt to a hardware thread; modelled as an IPI without callback, counted
  apart for cost.

The calling thread is never one of the targets here (requesters are not vCPU threads;
the kernel's "skip the current CPU" is done by the callers, see ``make_vcpu_request``).

``sched`` is the host scheduler (:class:`vcpureq.hw.sched.Scheduler`): which CPU each
vCPU thread runs on, preemption/migration, sleeping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from vcpureq.hw.cpu import IPI_DOORBELL, IPI_RESCHEDULE, HostCpu
from vcpureq.hw.sched import MigrationPlan, Scheduler
from vcpureq.model import spawn, wait_until

__all__ = ["Host"]


class Host:
    """The host's CPUs, the SMP IPI primitives over them, and the scheduler.

    ``nr_cpus`` CPUs; vCPU ``i`` starts on CPU ``i``. With a ``migration`` plan the
    host has spare CPUs beyond the vCPUs' own for the vCPU threads to migrate to.
    """

    def __init__(self, nr_cpus: int, *, migration: MigrationPlan | None = None) -> None:
        plan = migration or MigrationPlan()
        self.cpus = [HostCpu(i) for i in range(nr_cpus + plan.spare_cpus())]
        self.sched = Scheduler(self, plan)
        self._idle_spawned: set[int] = set()

    @property
    def nr_cpu_ids(self) -> int:
        return len(self.cpus)

    # --- sending ------------------------------------------------------------------------

    def send_ipi(self, cpu: int, func: Callable[[], None] | None = None) -> int:
        """Queue ``func`` (None: an empty callback) on ``cpu`` and IPI it; the ticket."""
        return self.cpus[cpu].send_call_function_ipi(func)

    def smp_send_reschedule(self, cpu: int) -> None:
        """The reschedule IPI: fire and forget."""
        target = self.cpus[cpu]
        target.send_ipi()
        target.stat.received[IPI_RESCHEDULE] += 1

    def send_doorbell(self, cpu: int) -> None:
        """powerpc msgsnd: a doorbell interrupt to hardware thread ``cpu``."""
        target = self.cpus[cpu]
        target.send_ipi()
        target.stat.received[IPI_DOORBELL] += 1

    def call_function_many(self, cpus: Iterable[int], func: Callable[[], None] | None,
                           wait: bool) -> None:
        """smp_call_function_many(mask, func, info, wait): IPI every CPU in ``cpus`` with
        ``func`` queued; with ``wait``, then wait until each one has run it."""
        tickets = [(self.cpus[cpu], self.cpus[cpu].send_call_function_ipi(func))
                   for cpu in sorted(cpus)]
        if wait:
            for target, ticket in tickets:
                wait_until(functools.partial(target.ipi_done, ticket))

    def smp_call_function_many(self, cpus: Iterable[int], wait: bool) -> None:
        """IPI every CPU in ``cpus`` (ack_kick); with ``wait``, then wait until each one
        took it."""
        self.call_function_many(cpus, None, wait)

    def smp_call_function_single(self, cpu: int, wait: bool) -> None:
        self.smp_call_function_many([cpu], wait)

    # --- the scheduler's side -------------------------------------------------------------

    def start_idle(self, cpu: HostCpu) -> None:
        """``cpu`` has no vCPU thread any more: its idle task (IRQs on) takes every IPI
        that arrives from now on. Spawned once per CPU (a vCPU never returns to a CPU
        it left)."""
        if cpu.cpu_id in self._idle_spawned:
            return
        self._idle_spawned.add(cpu.cpu_id)
        spawn(cpu.idle, name=f"cpu{cpu.cpu_id}.idle", daemon=True)
