"""One host CPU: its IRQ flag, its IPI mailbox, guest execution and the idle loop.

The kernel facts this models (kernel/smp.c, arch/x86/kernel/smp.c, include/linux/irqflags.h):

- An IPI is *pending* on its target CPU until the CPU takes the interrupt, which it can
  only do with IRQs enabled (``local_irq_enable``, the idle loop, or guest mode: running
  the guest re-enables interrupt delivery, so an IPI makes the guest exit at once).
- ``smp_call_function_many``/``_single`` queue a call-function entry (a ``csd``) on the
  target's ``call_single_queue`` and send the IPI; the target's interrupt handler
  (``generic_smp_call_function_single_interrupt`` -> ``flush_smp_call_function_queue``)
  runs every queued callback and then unlocks each csd (``csd_unlock``, a release
  store); a sender that waits spins on ``csd_lock_wait`` (an acquire load). KVM's
  callback is the empty ``ack_kick``: taking the interrupt is the acknowledgement.
- The reschedule IPI (``smp_send_reschedule``) carries no callback and nobody waits.

Model: IPIs are counted. ``ipi_sent`` is bumped by every sender (a fully ordered RMW, as
queueing the csd is), ``ipi_acked`` is advanced by the CPU when it takes the interrupt,
covering every IPI sent so far (one interrupt flushes the whole queue). An IPI is pending
while sent > acked; a waiting sender waits until ``ipi_acked`` reaches its ticket. The
callback of a call-function IPI is registered under its ticket by the sender right after
its ``fetch_add`` (in the model a thread's local code after a visible operation runs
before any other thread does, so the entry is queued when the ticket is published); the
CPU runs the callbacks of the tickets it takes, in ticket order, before it acknowledges.

Guest mode (``run_guest``) lasts until an exit cause reaches it: an IPI to this CPU
(at once if one is pending at entry), or, if the caller allows it, a *natural* exit (the
guest executes HLT, touches MMIO, its timer fires, ...), which needs no one's help.

``irqs_disabled`` is private to the thread running on this CPU (the flag is per-CPU
state only that CPU reads). ``guest_running`` is observation only (hardware truth, never
read by protocol code): ``GUEST_OFF``, ``GUEST_UNTIL_IPI`` (only an IPI can make this
guest exit) or ``GUEST_UNTIL_EXIT`` (it will also exit on its own); its stores are
"full" so that no weak memory model delays them. ``sent_at`` / ``taken_at`` note the
trace steps of the IPIs (see :mod:`vcpureq.hw.observe`), for counterexample messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vcpureq.hw.observe import current_step
from vcpureq.model import Atomic, wait_until

__all__ = ["CpuStat", "HostCpu", "GUEST_OFF", "GUEST_UNTIL_IPI", "GUEST_UNTIL_EXIT"]

#: values of HostCpu.guest_running (observation)
GUEST_OFF = 0
GUEST_UNTIL_IPI = 1  # in the guest until an IPI arrives on this CPU
GUEST_UNTIL_EXIT = 2  # in the guest, and it will exit on its own (a natural exit)

#: kinds of interrupts a CPU receives, for cost accounting (CpuStat.received)
IPI_RESCHEDULE = "reschedule"
IPI_CALL_FUNCTION = "call-function"
IPI_DOORBELL = "doorbell"


@dataclass
class CpuStat:
    """What one CPU received and did (plain counters, like the kernel's irq stats)."""

    received: Counter[str] = field(default_factory=Counter)  # interrupts, by kind
    taken: int = 0  # interrupts taken (one may cover several IPIs)
    callbacks: int = 0  # call-function callbacks run


class HostCpu:
    """One host CPU: an IRQ flag, an IPI mailbox, and whether it runs guest code."""

    def __init__(self, cpu_id: int) -> None:
        self.cpu_id = cpu_id
        self.ipi_sent = Atomic(0, name=f"cpu{cpu_id}.ipi_sent")
        self.ipi_acked = Atomic(0, name=f"cpu{cpu_id}.ipi_acked")
        self.guest_running = Atomic(0, name=f"cpu{cpu_id}.guest_running")
        self.irqs_disabled = False
        self.stat = CpuStat()
        self._acked = 0  # this CPU's own copy of ipi_acked (only this CPU writes it)
        self._calls: dict[int, Callable[[], None]] = {}  # call_single_queue, by ticket
        #: trace steps (observation): IPI sent, by ticket; interrupt taken, by ticket
        #: covered (one interrupt covers every ticket sent so far)
        self.sent_at: dict[int, int | None] = {}
        self.taken_at: dict[int, int | None] = {}

    @property
    def irqs_enabled(self) -> bool:
        return not self.irqs_disabled

    # --- any CPU: sending -------------------------------------------------------------

    def send_ipi(self) -> int:
        """Send an IPI to this CPU (no callback); return its ticket."""
        ticket = int(self.ipi_sent.fetch_add(1, order="full")) + 1
        step = current_step()
        if step is not None:  # a model execution; the real world keeps no trace
            self.sent_at[ticket] = step
        return ticket

    def send_call_function_ipi(self, func: Callable[[], None] | None = None) -> int:
        """Queue ``func`` on this CPU's call_single_queue and send the IPI; return the
        ticket. ``func`` runs on this CPU when it takes the interrupt (None: ack_kick)."""
        ticket = self.send_ipi()
        if func is not None:
            self._calls[ticket] = func  # queued with the ticket (see the module doc)
        self.stat.received[IPI_CALL_FUNCTION] += 1
        return ticket

    def ipi_done(self, ticket: int) -> bool:
        """Has the IPI with ``ticket`` been taken (csd_lock_wait's acquire load)?"""
        return bool(self.ipi_acked.load(order="acquire") >= ticket)

    def ipi_pending(self) -> bool:
        """Is an IPI sent to this CPU not yet taken? (For observers.)"""
        return bool(self.ipi_sent.load(order="relaxed") > self.ipi_acked.load(order="relaxed"))

    # --- the thread running on this CPU -------------------------------------------------

    def local_irq_disable(self) -> None:
        self.irqs_disabled = True

    def local_irq_enable(self) -> None:
        """Enable IRQs: a pending IPI is taken (acknowledged) now."""
        self.irqs_disabled = False
        self._take_pending_ipis()

    def irq_window(self) -> None:
        """A point where this CPU runs with IRQs enabled: a pending IPI may be taken here
        (the model takes it here rather than at an arbitrary instruction)."""
        if not self.irqs_disabled:
            self._take_pending_ipis()

    def handle_ipis(self) -> None:
        """The IPI handler: run the queued callbacks, then acknowledge (IRQs enabled)."""
        self._take_pending_ipis()

    def _take_pending_ipis(self) -> None:
        sent = self.ipi_sent.load(order="acquire")
        if sent > self._acked:
            for ticket in range(self._acked + 1, sent + 1):
                func = self._calls.pop(ticket, None)
                if func is not None:
                    self.stat.callbacks += 1
                    func()
            self.stat.taken += 1
            self._acked = sent
            self.ipi_acked.store(sent, order="release")  # csd_unlock: smp_store_release
            step = current_step()
            if step is not None:  # as in send_ipi: nothing grows in the real world
                for ticket in range(len(self.taken_at) + 1, sent + 1):
                    self.taken_at[ticket] = step

    def _ipi_arrived(self) -> bool:
        return bool(self.ipi_sent.load(order="acquire") > self._acked)

    def run_guest(self, natural_exit: bool = False) -> bool:
        """Run guest code until an exit cause reaches it; True if it was an IPI.

        Entering the guest re-enables interrupt delivery atomically, so an IPI that
        arrived while IRQs were off makes the guest exit immediately (VM entry with an
        interrupt pending: the guest runs no instruction, or one). The IPI itself stays
        pending: the host takes it when it enables IRQs after the exit.

        ``natural_exit``: the guest exits on its own (HLT, MMIO, its timer, ...) after
        running for a while, whether or not an IPI comes. Since the model interleaves
        this thread's next operation anywhere, "after a while" is any later point.
        """
        if natural_exit:
            self.guest_running.store(GUEST_UNTIL_EXIT, order="full")  # observation
            self.guest_running.store(GUEST_OFF, order="full")
            return False
        self.guest_running.store(GUEST_UNTIL_IPI, order="full")  # observation: never buffered
        wait_until(self._ipi_arrived)
        self.guest_running.store(GUEST_OFF, order="full")
        return True

    def idle(self) -> None:
        """Run with IRQs on and nothing to do, forever: take every IPI that arrives.

        The last state of a vCPU thread that has stopped entering the guest, and the
        idle task of a CPU a vCPU thread has left (daemon threads: the model ends while
        they wait here).
        """
        self.irqs_disabled = False
        while True:
            wait_until(self._ipi_arrived)
            self._take_pending_ipis()

    def idle_until(self, done: Callable[[], bool]) -> None:
        """The CPU idles (IRQs on, taking every IPI that arrives) until ``done()`` holds:
        the CPU side of schedule() while the task running here sleeps.

        ``done`` is a predicate over Atomics (loads only). One wait evaluates both
        conditions; which one held is recorded by the evaluation itself, so no extra
        load is needed to tell them apart.
        """
        irqs_were_disabled = self.irqs_disabled
        self.irqs_disabled = False
        seen = [False, False]  # (done, IPI arrived) at the evaluation that returned true

        def woken_or_ipi() -> bool:
            seen[0] = bool(done())
            seen[1] = not seen[0] and self._ipi_arrived()
            return seen[0] or seen[1]

        while True:
            wait_until(woken_or_ipi)
            if seen[0]:
                break
            self._take_pending_ipis()
        self.irqs_disabled = irqs_were_disabled

    def __repr__(self) -> str:
        return f"<HostCpu {self.cpu_id}>"
