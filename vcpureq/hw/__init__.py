"""The simulated host the vCPU threads run on, built from the model primitives.

- :mod:`vcpureq.hw.cpu`: one host CPU (:class:`HostCpu`): its IRQ flag, its IPI mailbox
  (tickets and call-function callbacks, taken only with IRQs enabled), guest execution
  and the idle loop.
- :mod:`vcpureq.hw.host`: the host (:class:`Host`): its CPUs and the SMP cross-call
  primitives of kernel/smp.c (``send_ipi``, ``smp_send_reschedule``,
  ``smp_call_function_many`` / ``_single`` with the kernel meaning of ``wait``, the
  powerpc doorbell).
- :mod:`vcpureq.hw.sched`: the vCPU threads as the host scheduler sees them
  (:class:`Task`): preemption and migration at the kernel's preemption points (with
  ``vcpu->cpu`` updated on sched-in, as kvm_arch_vcpu_load does) and sleeping
  (``rcuwait_wait_event`` / ``schedule``) for kvm_vcpu_block.

Everything shared is an :class:`~vcpureq.model.Atomic`, so the host is model-checked
together with the protocol running on it.
"""

from vcpureq.hw.cpu import CpuStat, HostCpu
from vcpureq.hw.host import Host
from vcpureq.hw.sched import MigrationPlan, Scheduler, Task, rcuwait_wait_event, schedule

__all__ = [
    "CpuStat",
    "Host",
    "HostCpu",
    "MigrationPlan",
    "Scheduler",
    "Task",
    "rcuwait_wait_event",
    "schedule",
]
