"""The kick-latency floor: build and run ``bench/kick_floor.c``, and the same measurement
through this package's Python vCPU threads for comparison.

``measure_c()`` compiles the C program with ``gcc -O2 -pthread`` into a temporary
directory, writes the spinner guest assembled by :mod:`vcpureq.kvm.guests` next to it, runs
it and returns its figures (microseconds). ``measure_python()`` kicks a spinner vCPU of a
:class:`~vcpureq.kvm.vm.Vm` with ``kick(wait=True)`` and times each kick until the vCPU
thread acknowledged it from outside KVM_RUN.

Run ``python -m vcpureq.kvm.floor [ITERATIONS]`` to print both.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import guests

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "kick_floor.c"


class FloorError(RuntimeError):
    pass


def _summary(samples_us: list[float]) -> dict[str, float]:
    s = sorted(samples_us)
    p99 = s[min(len(s) - 1, int(round((len(s) - 1) * 0.99)))]
    return {
        "min": s[0],
        "median": statistics.median(s),
        "p99": p99,
        "mean": statistics.fmean(s),
        "max": s[-1],
    }


def build(source: Path = SOURCE, outdir: str | None = None) -> Path:
    """Compile the C floor benchmark; returns the executable's path."""
    if not source.is_file():
        raise FloorError(f"{source} not found (run from a checkout of the repository)")
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise FloorError("no C compiler (gcc) on PATH; Debian: apt-get install gcc")
    out = Path(outdir or tempfile.mkdtemp(prefix="vcpureq-floor-")) / "kick_floor"
    res = subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(source)],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise FloorError(f"compiling {source} failed:\n{res.stderr.strip()}")
    return out


def measure_c(iterations: int = 2000, source: Path = SOURCE, timeout: float = 120.0,
              baseline: bool = True) -> dict[str, Any]:
    """Build and run the C benchmark; returns its JSON (``exit_us``, ``reentry_us`` and,
    with ``baseline``, ``baseline_us``: min, median, p99, mean, max in microseconds)."""
    with tempfile.TemporaryDirectory(prefix="vcpureq-floor-") as tmp:
        exe = build(source, tmp)
        guest = Path(tmp) / "spinner.bin"
        guest.write_bytes(guests.spinner().code)
        try:
            cmd = [str(exe), str(guest), str(iterations), "--json"]
            if baseline:
                cmd.append("--baseline")
            res = subprocess.run(cmd,
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FloorError(f"kick_floor did not finish within {timeout}s") from exc
        if res.returncode != 0:
            raise FloorError(f"kick_floor failed (exit {res.returncode}): "
                             f"{res.stderr.strip()}")
        result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    result["implementation"] = "C (bench/kick_floor.c)"
    return result


def measure_python(iterations: int = 500, kick_mode: str = "immediate-exit",
                   timeout: float = 60.0) -> dict[str, Any]:
    """Kick a spinner vCPU ``iterations`` times through :meth:`Vcpu.kick` (wait=True):
    kick -> the vCPU thread acknowledged it from outside KVM_RUN. Microseconds."""
    from .vm import Vm

    samples: list[float] = []
    deadline = time.monotonic() + timeout
    with Vm(kick_mode=kick_mode) as vm:
        vcpu = vm.add_vcpu(guests.spinner())
        resend = 0.01 if kick_mode == "empty-handler" else None
        for _ in range(iterations):
            p0 = vcpu.read_data(guests.PROGRESS)
            while vcpu.read_data(guests.PROGRESS) == p0:  # in guest mode
                vcpu.check()
                if time.monotonic() > deadline:
                    raise FloorError("the spinner guest does not run")
            t0 = time.perf_counter()
            vcpu.kick(wait=True, timeout=5.0, resend_every=resend)
            samples.append((time.perf_counter() - t0) * 1e6)
    return {"iterations": iterations, "implementation": f"Python ({kick_mode})",
            "ack_us": _summary(samples)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 2000
    c = measure_c(n)
    print(f"C floor, {n} kicks: kick -> -EINTR median {c['exit_us']['median']:.2f} us, "
          f"p99 {c['exit_us']['p99']:.2f} us; kick -> re-entry median "
          f"{c['reentry_us']['median']:.2f} us, p99 {c['reentry_us']['p99']:.2f} us")
    b = c["baseline_us"]
    print(f"Baseline, the same signal to a thread spinning in userspace: median "
          f"{b['median']:.2f} us, p99 {b['p99']:.2f} us")
    py = measure_python(max(1, n // 4))
    print(f"Python vCPU thread, {py['iterations']} kicks: kick -> acknowledged median "
          f"{py['ack_us']['median']:.2f} us, p99 {py['ack_us']['p99']:.2f} us")
    print(f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: p99 depends on "
          "what else runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
