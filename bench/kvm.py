"""What requests cost on real vCPUs: the kvm_user architecture on /dev/kvm (vcpureq.kvm.vmm).

    .venv/bin/python bench/kvm.py             # every table (about a minute)
    .venv/bin/python bench/kvm.py --quick     # fewer samples, sizes up to 8 vCPUs
    .venv/bin/python bench/kvm.py --json      # the same figures as JSON
    vcpureq kvm bench [--quick] [--json]      # the same, from the command line

Measured (figures and what they mean: docs/kvm.md, "Requests on real vCPUs"):

- **floor**: the C floor (bench/kick_floor.c, built with gcc at run time and run by
  vcpureq.kvm.floor) and Python's sync request (``set_sync_request`` of a request that
  does nothing, PING, to a vCPU spinning in the guest, timed by the requester until it
  returns), in alternating rounds of the same run, with the requester pinned to CPU 0 and
  the vCPU thread to CPU 1 and both polling hot before each kick, as the C program does;
  medians, p99, the ratio Python / C, and Python with ``spin_us=0`` (the requester only
  polls) for comparison.
- **breakdown**: where the Python sync request's time goes (timestamps at the kick's
  ``pthread_kill``, KVM_RUN's return, the vCPU thread's mode store, its requests, its next
  entry, the requester's spin and its return), and the same Python code run hot on one
  thread (CPU time), which tells what the two CPUs sharing objects cost.
- **latency**: an async kick (``set_request(PING)``: until the vCPU thread handled it,
  stamped by the ``on_request`` observer) and a sync request, per kick variant.
- **exits**: KVM_EXIT_IO per second of the counter guest with K = 1 (an exit per loop),
  each one handled by the Python vCPU thread, for 1, 2 and 4 vCPUs.
- **pause-all**: pausing every vCPU (PAUSE, a WAIT request) of a VM of 1 .. 16 spinning
  vCPUs, kick-all-then-wait-all (``make_all_cpus_request``, and
  ``set_sync_request_many``) against one ``set_sync_request`` after the other.

Tails (p99) depend on what else runs on the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vcpureq.arch import kvm_user as ku
from vcpureq.arch.kvm_user import PING
from vcpureq.common import set_request, set_sync_request
from vcpureq.kvm import guests, info, probe
from vcpureq.kvm import vmm as vmm_module
from vcpureq.kvm.floor import FloorError, measure_c
from vcpureq.kvm.vmm import PAUSE_METHODS, Vmm

SIZES = (1, 2, 4, 8, 16)


def summary(samples_us: list[float]) -> dict[str, float]:
    s = sorted(samples_us)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "min": s[0],
        "median": statistics.median(s),
        "p90": s[min(len(s) - 1, int(round((len(s) - 1) * 0.90)))],
        "p99": s[min(len(s) - 1, int(round((len(s) - 1) * 0.99)))],
        "max": s[-1],
    }


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the calling thread on ``cpu`` (if the machine has it), then restore."""
    if cpu is None or cpu >= (os.cpu_count() or 1):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _pins() -> tuple[int | None, list[int] | None]:
    """(requester CPU, vCPU CPUs) as kick_floor.c pins them: 0 and 1, given two CPUs."""
    return (0, [1]) if (os.cpu_count() or 1) >= 2 else (None, None)


def wait_moving(vmm: Vmm, i: int, timeout: float = 5.0) -> None:
    """Until vCPU i's spinner counts: it is in the guest. Polls without sleeping, as
    kick_floor.c does before each kick, so that both requesters start hot (a thread just
    woken from a sleep runs its first microseconds of Python about twice as slowly)."""
    t = vmm.vcpus[i]
    read = t.read_data
    p0 = read(guests.PROGRESS)
    deadline = time.monotonic() + timeout
    n = 0
    while read(guests.PROGRESS) == p0:
        n += 1
        if n % 1000 == 0:
            if time.monotonic() > deadline:
                vmm.check()
                raise RuntimeError(f"vCPU {i}'s spinner does not run")
            time.sleep(50e-6)  # let a vCPU thread outside the guest have the GIL


# --- sync requests and async kicks -----------------------------------------------------


def python_sync_requests(vmm: Vmm, iterations: int, index: int = 0) -> list[float]:
    """``set_sync_request(PING)`` (the common API) to a spinning vCPU, timed by the
    requester until the call returns, microseconds."""
    samples = []
    vcpu = vmm.kvm.vcpus[index]
    clock = time.perf_counter_ns
    for _ in range(iterations):
        wait_moving(vmm, index)
        t0 = clock()
        set_sync_request(PING, vcpu)
        samples.append((clock() - t0) / 1e3)
    return samples


def python_async_kicks(vmm: Vmm, iterations: int, index: int = 0) -> list[float]:
    """``set_request(PING)``; the sample ends when the vCPU thread handled it (stamped by
    the Kvm's on_request observer, on the vCPU thread)."""
    stamp: list[float] = []

    def on_request(vcpu: Any, req: Any) -> None:
        if req is PING:
            stamp.append(time.perf_counter())

    vmm.kvm.on_request = on_request
    samples = []
    try:
        for _ in range(iterations):
            wait_moving(vmm, index)
            stamp.clear()
            t0 = time.perf_counter()
            set_request(PING, vmm.kvm.vcpus[index])
            deadline = time.monotonic() + 5
            while not stamp:
                if time.monotonic() > deadline:
                    raise RuntimeError("an async kick was not handled within 5 s")
                time.sleep(20e-6)
            samples.append((stamp[0] - t0) * 1e6)
    finally:
        vmm.kvm.on_request = None
    return samples


def measure_floor(rounds: int = 3, c_iterations: int = 1000,
                  py_iterations: int = 300) -> dict[str, Any]:
    """C floor and Python sync request, alternating rounds of the same run. Python twice:
    as configured (the requester spins for the vCPU thread without the GIL,
    ``Vmm.spin_us``) and with ``spin_us=0`` (it only polls, sleeping between polls)."""
    cpu, pin = _pins()
    out: dict[str, Any] = {"rounds": []}
    c_exit, c_reentry, py, py_poll = [], [], [], []
    for _ in range(rounds):
        try:
            c = measure_c(c_iterations, baseline=False)
        except FloorError as exc:
            out["c_error"] = str(exc)
            c = None
        with pinned(cpu), Vmm(guests.spinner(), 1, pin=pin) as vmm:
            samples = python_sync_requests(vmm, py_iterations)
        with pinned(cpu), Vmm(guests.spinner(), 1, pin=pin, spin_us=0) as vmm:
            polled = python_sync_requests(vmm, py_iterations // 2)
        row = {"python_us": summary(samples), "python_poll_us": summary(polled)}
        py += samples
        py_poll += polled
        if c is not None:
            row["c_exit_us"] = c["exit_us"]
            row["c_reentry_us"] = c["reentry_us"]
            c_exit.append(c["exit_us"]["median"])
            c_reentry.append(c["reentry_us"]["median"])
        out["rounds"].append(row)
    out["python_us"] = summary(py)
    out["python_poll_us"] = summary(py_poll)
    if c_exit:
        out["c_exit_median_us"] = statistics.median(c_exit)
        out["c_reentry_median_us"] = statistics.median(c_reentry)
        out["ratio"] = out["python_us"]["median"] / out["c_reentry_median_us"]
        out["ratio_to_exit"] = out["python_us"]["median"] / out["c_exit_median_us"]
    return out


def measure_breakdown(iterations: int = 300) -> dict[str, Any]:
    """Where the time of a Python sync request goes, from timestamps around the real
    backend's calls (wrappers installed for this measurement only; they add about a
    microsecond per step)."""
    marks: dict[str, float] = {}
    clock = time.perf_counter_ns
    real_kill = vmm_module.signal.pthread_kill
    real_kvm_run = vmm_module.RealBackend.kvm_run
    real_await = vmm_module.RealBackend.await_exit
    real_after = ku.KvmUserArch.after_eintr
    real_handle = ku.KvmUserArch.handle_requests

    def kill(*args: Any) -> None:
        marks["kill"] = clock()
        real_kill(*args)
        marks["killed"] = clock()

    def kvm_run(self: Any, vcpu: Any) -> str:
        if "handled" in marks:
            marks.setdefault("reenter", clock())
        r = real_kvm_run(self, vcpu)
        if r == ku.EXIT_EINTR and "killed" in marks:
            marks.setdefault("eintr", clock())
        return r  # type: ignore[no-any-return]

    def after_eintr(self: Any, vcpu: Any) -> None:
        marks.setdefault("out", clock())  # mode = OUTSIDE stored, kicks acknowledged
        real_after(self, vcpu)

    def handle_requests(self: Any, vcpu: Any) -> bool:
        r = real_handle(self, vcpu)
        if "out" in marks:
            marks.setdefault("handled", clock())
        return r  # type: ignore[no-any-return]

    def await_exit(self: Any, vcpu: Any) -> None:
        real_await(self, vcpu)
        if "reenter" in marks:
            marks.setdefault("seen", clock())

    vmm_module.signal.pthread_kill = kill  # type: ignore[assignment]
    vmm_module.RealBackend.kvm_run = kvm_run  # type: ignore[method-assign]
    vmm_module.RealBackend.await_exit = await_exit  # type: ignore[method-assign]
    ku.KvmUserArch.after_eintr = after_eintr  # type: ignore[method-assign]
    ku.KvmUserArch.handle_requests = handle_requests  # type: ignore[method-assign]
    steps = ["kill", "killed", "eintr", "out", "handled", "reenter", "seen", "returned"]
    rows: dict[str, list[float]] = {k: [] for k in steps}
    cpu, pin = _pins()
    try:
        with pinned(cpu), Vmm(guests.spinner(), 1, pin=pin) as vmm:
            vcpu = vmm.kvm.vcpus[0]
            for _ in range(iterations):
                wait_moving(vmm, 0)
                marks.clear()
                t0 = clock()
                set_sync_request(PING, vcpu)
                marks["returned"] = clock()
                if all(k in marks for k in steps):
                    for k in steps:
                        rows[k].append((marks[k] - t0) / 1e3)
    finally:
        vmm_module.signal.pthread_kill = real_kill
        vmm_module.RealBackend.kvm_run = real_kvm_run  # type: ignore[method-assign]
        vmm_module.RealBackend.await_exit = real_await  # type: ignore[method-assign]
        ku.KvmUserArch.after_eintr = real_after  # type: ignore[method-assign]
        ku.KvmUserArch.handle_requests = real_handle  # type: ignore[method-assign]
    medians = {k: statistics.median(v) for k, v in rows.items() if v}
    labels = {
        "kill": "requester: make_request, cmpxchg IN_GUEST->EXITING, immediate_exit = 1",
        "killed": "pthread_kill (the system call)",
        "eintr": "signal -> KVM_RUN returns -EINTR to Python (GIL taken)",
        "out": "vCPU thread: mode = OUTSIDE_GUEST_MODE, smp_wmb, kicks acknowledged",
        "handled": "vCPU thread: immediate_exit = 0, PING consumed (check_request)",
        "reenter": "vCPU thread: Dekker entry (IN_GUEST_MODE, mb, re-check) -> KVM_RUN",
        "seen": "requester: its native spin sees the doorbell, takes the GIL",
        "returned": "requester: reads mode/requests, returns from set_sync_request",
    }
    steps_out = []
    prev = 0.0
    for k in steps:
        if k in medians:
            steps_out.append({"step": labels[k], "at_us": medians[k],
                              "delta_us": medians[k] - prev})
            prev = medians[k]
    return {"samples": len(rows["returned"]), "steps": steps_out,
            "hot": measure_hot_paths()}


def measure_hot_paths(iterations: int = 20000) -> dict[str, float]:
    """The same Python code as the two halves of a sync request, run hot on one thread:
    the requester's part up to the signal (set_request with a backend that sends none)
    and the vCPU thread's part (an -EINTR exit, PING handled, the entry up to KVM_RUN).
    Median over batches of this thread's CPU time (other processes on the machine do
    not count), microseconds per operation. In a real request the two threads
    run on two CPUs and each touches objects the other just wrote (reference counts,
    the GIL, the Atomics): the difference to the breakdown above is that cost."""
    from vcpureq.common import EXITING_GUEST_MODE, IN_GUEST_MODE, Kvm
    from vcpureq.model import real_world

    class _Quiet(ku.VcpuBackend):
        def set_immediate_exit(self, vcpu: Any, value: int) -> None:
            pass

        def send_signal(self, vcpu: Any) -> None:
            pass

        def kvm_run(self, vcpu: Any) -> str:
            return ku.EXIT_EINTR

    bit = 1 << PING.number
    out: dict[str, float] = {}
    with real_world():
        arch = ku.KvmUserArch(backend=_Quiet())
        kvm = Kvm(arch, 1)
        vcpu = kvm.vcpus[0]
        cpu = kvm.host.cpus[0]
        batch = 1000
        req_t: list[float] = []
        vcpu_t: list[float] = []
        for _ in range(max(1, iterations // batch)):
            t0 = time.thread_time_ns()
            for _ in range(batch):
                vcpu.mode.value = IN_GUEST_MODE
                vcpu.requests.value = 0
                set_request(PING, vcpu)
            req_t.append((time.thread_time_ns() - t0) / batch / 1e3)
            t0 = time.thread_time_ns()
            for _ in range(batch):
                vcpu.requests.value = bit
                vcpu.mode.value = EXITING_GUEST_MODE
                arch.vcpu_enter_guest(vcpu, cpu)  # type: ignore[arg-type]
            vcpu_t.append((time.thread_time_ns() - t0) / batch / 1e3)
        out["requester_us"] = statistics.median(req_t)
        out["vcpu_round_us"] = statistics.median(vcpu_t)
    return out


def measure_latency(iterations: int = 300) -> dict[str, Any]:
    """Async kick and sync request latency per kick variant (the correct two)."""
    cpu, pin = _pins()
    out = {}
    for variant in ("kvm-user", "kvm-user-sigmask"):
        with pinned(cpu), Vmm(guests.spinner(), 1, variant=variant, pin=pin) as vmm:
            out[variant] = {
                "async_kick_us": summary(python_async_kicks(vmm, iterations)),
                "sync_request_us": summary(python_sync_requests(vmm, iterations)),
            }
    return out


# --- exits -------------------------------------------------------------------------------


def measure_exits(seconds: float = 1.0, sizes: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    """KVM_EXIT_IO per second with the counter guest, K = 1 (an exit per loop)."""
    out = {}
    for n in sizes:
        with Vmm(guests.counter(k=1), n) as vmm:
            vmm.vcpus[0].wait_for_report(guests.PORT_REPORT, timeout=10)
            before = [t.stats.exits["IO"] for t in vmm.vcpus]
            t0 = time.perf_counter()
            time.sleep(seconds)
            elapsed = time.perf_counter() - t0
            after = [t.stats.exits["IO"] for t in vmm.vcpus]
            vmm.check()
        per = [(a - b) / elapsed for a, b in zip(after, before, strict=True)]
        out[str(n)] = {"per_vcpu": per, "total": sum(per)}
    return out


# --- pause-all ------------------------------------------------------------------------------


def try_vcpus(n: int) -> tuple[int, str | None]:
    """Can a VM of ``n`` vCPUs be created here? (how many, and the error if not)."""
    try:
        with Vmm(guests.spinner(), n) as vmm:
            return len(vmm.vcpus), None
    except Exception as exc:  # noqa: BLE001 - reported
        return 0, f"{type(exc).__name__}: {exc}"


def measure_pause_all(sizes: tuple[int, ...] = SIZES, repeats: int = 20) -> dict[str, Any]:
    """Pause every spinning vCPU and time it until the call returns; per method. The
    requester has a CPU of its own, the vCPU threads share the others (with two CPUs,
    all of them share one: a kicked thread may first have to wait for its turn)."""
    out: dict[str, Any] = {}
    cpu, _ = _pins()
    others = sorted(os.sched_getaffinity(0) - {cpu}) if cpu is not None else None
    for n in sizes:
        made, error = try_vcpus(n)
        if error is not None:
            out[str(n)] = {"error": error}
            continue
        row: dict[str, Any] = {}
        with pinned(cpu), Vmm(guests.spinner(), n, pin=others) as vmm:
            samples: dict[str, list[float]] = {m: [] for m in PAUSE_METHODS}
            for r in range(repeats * len(PAUSE_METHODS)):
                method = PAUSE_METHODS[r % len(PAUSE_METHODS)]
                for i in range(n):
                    wait_moving(vmm, i, timeout=10)
                t0 = time.perf_counter()
                vmm.pause_all(method)
                samples[method].append((time.perf_counter() - t0) * 1e6)
                vmm.resume_all()
            for m in PAUSE_METHODS:
                row[m] = summary(samples[m])
            row["signals"] = sum(t.stats.kicks_sent for t in vmm.vcpus)
        out[str(n)] = row
    return out


# --- all --------------------------------------------------------------------------------------


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    data = info()
    caps = data.get("capabilities", {})
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "backends": data.get("backends"),
            "KVM_CAP_NR_VCPUS": caps.get("KVM_CAP_NR_VCPUS"),
            "KVM_CAP_MAX_VCPUS": caps.get("KVM_CAP_MAX_VCPUS"),
            "python": sys.version.split()[0],
            "load_before": os.getloadavg()[0],
        },
    }
    say("floor: C and Python sync request, alternating rounds")
    results["floor"] = measure_floor(rounds=2 if quick else 3,
                                     c_iterations=500 if quick else 1000,
                                     py_iterations=150 if quick else 300)
    say("breakdown of a Python sync request")
    results["breakdown"] = measure_breakdown(100 if quick else 300)
    say("async kick and sync request latency, per variant")
    results["latency"] = measure_latency(100 if quick else 300)
    say("exits per second")
    results["exits"] = measure_exits(0.5 if quick else 1.0)
    say("pause-all")
    results["pause_all"] = measure_pause_all(SIZES[:-1] if quick else SIZES,
                                             repeats=5 if quick else 20)
    results["machine"]["load_after"] = os.getloadavg()[0]
    return results


def report(results: dict[str, Any], console: Any = None) -> None:
    """Print ``results`` as tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    m = results["machine"]
    con.print(f"{m['cpus']} CPUs, KVM backend {', '.join(m['backends'] or []) or '?'}, "
              f"KVM_CAP_NR_VCPUS {m['KVM_CAP_NR_VCPUS']}, KVM_CAP_MAX_VCPUS "
              f"{m['KVM_CAP_MAX_VCPUS']}, Python {m['python']}, load average "
              f"{m['load_before']:.2f} before / {m.get('load_after', 0):.2f} after",
              highlight=False)

    f = results["floor"]
    t = Table(title="sync request to a spinning vCPU: Python vs the C floor (same run, "
              "requester on CPU 0, vCPU thread on CPU 1)", header_style="bold")
    for col in ("round", "Python median us", "Python p99 us", "polling only median us",
                "C kick->exit us", "C kick->re-entry us"):
        t.add_column(col, justify="right")
    for i, row in enumerate(f["rounds"], 1):
        c_exit = row.get("c_exit_us", {}).get("median")
        c_re = row.get("c_reentry_us", {}).get("median")
        t.add_row(str(i), f"{row['python_us']['median']:.1f}", f"{row['python_us']['p99']:.0f}",
                  f"{row['python_poll_us']['median']:.1f}",
                  "-" if c_exit is None else f"{c_exit:.1f}",
                  "-" if c_re is None else f"{c_re:.1f}")
    con.print(t)
    if "ratio" in f:
        con.print(f"Python sync request median {f['python_us']['median']:.1f} us (p99 "
                  f"{f['python_us']['p99']:.0f} us); C floor median {f['c_reentry_median_us']:.1f}"
                  f" us (kick -> the kicker sees the vCPU back at KVM_RUN; kick -> -EINTR "
                  f"{f['c_exit_median_us']:.1f} us); ratio {f['ratio']:.2f} "
                  f"({f['ratio_to_exit']:.2f} to kick -> -EINTR). Goal: within 2x. "
                  f"Polling only (spin_us=0): {f['python_poll_us']['median']:.1f} us.",
                  highlight=False)
    else:
        con.print(f"C floor unavailable: {f.get('c_error')}")

    b = results["breakdown"]
    t = Table(title=f"where a Python sync request's time goes (medians of {b['samples']})",
              header_style="bold")
    t.add_column("step")
    t.add_column("+us", justify="right")
    t.add_column("at us", justify="right")
    for s in b["steps"]:
        t.add_row(s["step"], f"{s['delta_us']:.1f}", f"{s['at_us']:.1f}")
    con.print(t)
    hot = b.get("hot")
    if hot:
        con.print(f"The same Python run hot on one thread (CPU time): requester up to the signal "
                  f"{hot['requester_us']:.1f} us, vCPU thread's exit + PING + entry "
                  f"{hot['vcpu_round_us']:.1f} us.", highlight=False)

    t = Table(title="latency to a spinning vCPU (us)", header_style="bold")
    for col in ("variant", "async kick median", "async p99", "sync request median",
                "sync p99"):
        t.add_column(col, justify="right" if col != "variant" else "left")
    for variant, row in results["latency"].items():
        a, s = row["async_kick_us"], row["sync_request_us"]
        t.add_row(variant, f"{a['median']:.1f}", f"{a['p99']:.0f}", f"{s['median']:.1f}",
                  f"{s['p99']:.0f}")
    con.print(t)

    t = Table(title="KVM_EXIT_IO per second (counter guest, K = 1)", header_style="bold")
    t.add_column("vCPUs", justify="right")
    t.add_column("total exits/s", justify="right")
    t.add_column("per vCPU", justify="right")
    for n, row in results["exits"].items():
        t.add_row(n, f"{row['total']:,.0f}", ", ".join(f"{x:,.0f}" for x in row["per_vcpu"]))
    con.print(t)

    t = Table(title="pause every vCPU (PAUSE, WAIT): until the call returns, us",
              header_style="bold")
    t.add_column("vCPUs", justify="right")
    for method in PAUSE_METHODS:
        t.add_column(f"{method} median", justify="right")
        t.add_column("p90", justify="right")
    for n, row in results["pause_all"].items():
        if "error" in row:
            t.add_row(n, *(["-"] * (2 * len(PAUSE_METHODS) - 1)), row["error"][:60])
            continue
        cells = []
        for method in PAUSE_METHODS:
            cells += [f"{row[method]['median']:,.0f}", f"{row[method]['p90']:,.0f}"]
        t.add_row(n, *cells)
    con.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, up to 8 vCPUs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    reason = probe()
    if reason is not None:
        print(f"/dev/kvm is not usable: {reason}", file=sys.stderr)
        return 1
    results = run(args.quick, None if args.json else
                  (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
