"""``vcpureq kvm run``: run a VM of the kvm_user architecture and show, live, what its vCPUs
do: KVM_RUN entries and exits, kicks, requests handled, and the latency of requests made
to them while they run.

While the VM runs, the driver (the calling thread) goes round the vCPUs and makes a sync
request that does nothing (PING: ``set_sync_request``), timed; every 50 ms a register
read on the vCPU's thread (CALL: ``Vmm.get_regs``), timed; and, for guests that halt, an
interrupt (INTERRUPT) that wakes them. The table refreshes several times a second.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from vcpureq.model import WaitTimeout

from . import guests
from .ioctls import ExitReason
from .vcpu import GuestCrashed, VcpuError
from .vmm import VcpuStopped, Vmm

__all__ = ["LiveStats", "run_live", "table"]

CRIT_GPA = guests.CRITICAL_SEGMENT << 4
IRQ_VECTOR = 0x20
HISTORY = 2000


@dataclass
class LiveStats:
    """What the driver measured, per vCPU (latencies in microseconds)."""

    ping_us: list[collections.deque[float]] = field(default_factory=list)
    call_us: list[collections.deque[float]] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # sync requests that timed out
    last_exits: list[int] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    last_time: float = 0.0

    @classmethod
    def for_vcpus(cls, n: int) -> LiveStats:
        return cls([collections.deque(maxlen=HISTORY) for _ in range(n)],
                   [collections.deque(maxlen=HISTORY) for _ in range(n)],
                   [None] * n, [0] * n, [0] * n, [0.0] * n, time.monotonic())


def _fmt(samples: collections.deque[float]) -> str:
    if not samples:
        return "-"
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(round((len(s) - 1) * 0.99)))]
    return f"{statistics.median(s):,.0f} / {p99:,.0f}"


def _state(vmm: Vmm, i: int, stats: LiveStats) -> str:
    t = vmm.vcpus[i]
    if not t.alive:
        err = t.error
        if isinstance(err, GuestCrashed):
            return f"crashed: KVM_EXIT_{ExitReason.name_of(err.exit_reason)}"
        return "stopped" if err is None else f"failed: {type(err).__name__}"
    if t.kvm_vcpu.arch.pause.load():
        return "paused"
    state = "halted" if t.state.halted else "running"
    if stats.lost[i]:
        state += f" ({stats.lost[i]} kick(s) lost)"
    return state


def table(vmm: Vmm, stats: LiveStats, elapsed: float, final: bool = False) -> Table:
    """The per-vCPU table (updates the exit rates when called)."""
    now = time.monotonic()
    dt = max(now - stats.last_time, 1e-9)
    title = (f"{len(vmm)} vCPU(s), variant {vmm.variant}, "
             f"{'ran' if final else 'running'} {elapsed:.1f} s")
    t = Table(title=title, header_style="bold")
    for col in ("vCPU", "guest", "state", "KVM_RUN", "exits", "exits/s", "-EINTR", "kicks",
                "requests handled", "sync PING us (median / p99)", "CALL us (median / p99)"):
        t.add_column(col, justify="left" if col in ("guest", "state", "exits",
                                                     "requests handled") else "right")
    for i, th in enumerate(vmm.vcpus):
        exits = sum(th.stats.exits.values())
        if not final:
            stats.rate[i] = (exits - stats.last_exits[i]) / dt
            stats.last_exits[i] = exits
        by_reason = ", ".join(f"{k} {v:,}" for k, v in th.stats.exits.most_common(3)) or "-"
        handled = ", ".join(f"{k} {v:,}" for k, v in sorted(th.state.handled.items())) or "-"
        t.add_row(str(i), th.guest.name, _state(vmm, i, stats), f"{th.stats.entries:,}",
                  by_reason, f"{stats.rate[i]:,.0f}", f"{th.stats.eintr:,}",
                  f"{th.stats.kicks_sent:,}", handled, _fmt(stats.ping_us[i]),
                  _fmt(stats.call_us[i]))
    if not final:
        stats.last_time = now
    return t


def _cpus() -> tuple[int | None, list[int] | None]:
    """(the driver's CPU, the vCPU threads' CPUs): the driver gets a CPU of its own, as a
    VMM's control thread would, the vCPU threads share the others (given two or more)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1:]


def run_live(nr_vcpus: int, seconds: float, guest: str, *, variant: str = "kvm-user",
             refresh: float = 0.25, console: Console | None = None,
             pin: bool = True) -> tuple[Vmm, LiveStats]:
    """Run the VM for ``seconds``, driving requests and showing the table; returns the
    (closed) Vmm and what was measured. ``pin``: driver on one CPU, vCPU threads on the
    others (without it, a spinning vCPU thread and the driver can end up sharing a CPU,
    and every request then waits for the scheduler: milliseconds)."""
    con = console or Console()
    driver_cpu, vcpu_cpus = _cpus() if pin else (None, None)
    before = os.sched_getaffinity(0)
    if driver_cpu is not None:
        os.sched_setaffinity(0, {driver_cpu})
    try:
        return _run_live(nr_vcpus, seconds, guest, variant, refresh, con, vcpu_cpus)
    finally:
        os.sched_setaffinity(0, before)


def _run_live(nr_vcpus: int, seconds: float, guest: str, variant: str, refresh: float,
              con: Console, vcpu_cpus: list[int] | None) -> tuple[Vmm, LiveStats]:
    params: dict[str, int] = {}
    if guest == "counter":
        params["k"] = 200
    elif guest == "halt":
        params["vector"] = IRQ_VECTOR
    g = guests.guest(guest, **params)
    memslots = []
    if guest == "critical-page":
        memslots.append((CRIT_GPA, 0x1000, guests.CRITICAL_MAGIC.to_bytes(2, "little")))
    # A short bound: with the racy variant a lost kick shows as a timed-out request.
    vmm = Vmm(g, nr_vcpus, variant=variant, memslots=memslots, timeout=1.0, pin=vcpu_cpus)
    stats = LiveStats.for_vcpus(nr_vcpus)
    start = time.monotonic()
    try:
        with Live(table(vmm, stats, 0.0), console=con, refresh_per_second=8,
                  transient=False) as live:
            next_refresh = start + refresh
            next_call = start
            next_irq = start
            i = 0
            while (now := time.monotonic()) - start < seconds:
                th = vmm.vcpus[i]
                if th.alive:
                    try:
                        t0 = time.perf_counter()
                        vmm.ping(i, sync=True)
                        stats.ping_us[i].append((time.perf_counter() - t0) * 1e6)
                        if now >= next_call:
                            t0 = time.perf_counter()
                            vmm.get_regs(i)
                            stats.call_us[i].append((time.perf_counter() - t0) * 1e6)
                        if guest == "halt" and now >= next_irq:
                            vmm.interrupt(i, IRQ_VECTOR)
                    except (VcpuStopped, VcpuError) as exc:
                        stats.errors[i] = str(exc)
                    except WaitTimeout:  # a lost kick (the racy variant): bounded
                        stats.lost[i] += 1
                # Between requests, let the vCPU threads have the interpreter lock: a
                # driver that never sleeps (a PING to a halted vCPU returns at once) would
                # hold it for the whole switch interval (5 ms) at a time.
                time.sleep(0.0002)
                i = (i + 1) % nr_vcpus
                if i == 0:
                    if now >= next_call:
                        next_call = now + 0.05
                    if now >= next_irq:
                        next_irq = now + 0.02
                if now >= next_refresh:
                    live.update(table(vmm, stats, now - start))
                    next_refresh = now + refresh
            live.update(table(vmm, stats, time.monotonic() - start))
    finally:
        elapsed = time.monotonic() - start
        vmm.close()
    con.print(table(vmm, stats, elapsed, final=True))
    return vmm, stats


def summary(vmm: Vmm, stats: LiveStats) -> dict[str, Any]:
    """Totals over the run, for JSON output."""
    return {
        "variant": vmm.variant,
        "vcpus": [
            {
                "guest": t.guest.name,
                "error": None if t.error is None else str(t.error),
                "entries": t.stats.entries,
                "exits": dict(t.stats.exits),
                "eintr": t.stats.eintr,
                "kicks": t.stats.kicks_sent,
                "requests": dict(t.state.handled),
                "lost_kicks": stats.lost[i],
                "ping_us": sorted(stats.ping_us[i]),
                "call_us": sorted(stats.call_us[i]),
            }
            for i, t in enumerate(vmm.vcpus)
        ],
    }
