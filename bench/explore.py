"""How fast does the explorer go?  DPOR over the named programs of vcpureq.examples.

    .venv/bin/python bench/explore.py              # the tables
    .venv/bin/python bench/explore.py --json       # the same figures as JSON
    .venv/bin/python bench/explore.py --profile    # + where the time goes (cProfile)
    .venv/bin/python bench/explore.py --quick      # smaller sizes only
    .venv/bin/python bench/explore.py --no-weak    # only the SC table
    .venv/bin/python bench/explore.py --weak-only  # only the SC/TSO/PSO table

For each program and size: a complete exploration with strategy "dpor" (stop_on_violation
False, so programs with bugs are explored to the end too), repeated until it has taken at
least ``--min-time`` seconds; the rates are totals over the repetitions.  See bench/README.md
for what each column means.  The goal checked at the end: >= 50,000 visible events per
second on one core for a 3-thread program.

The second table runs programs whose stores are relaxed (so that store buffers matter)
under memory_model "sc", "tso" and "pso", with executions, events/s and the ratios to SC:
the weak variants of classic programs defined below (WEAK_SUITE; variants live here, not
in vcpureq/) and the request scenarios of vcpureq.scenarios.generic.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from vcpureq.examples import REGISTRY, make
from vcpureq.model import Atomic, Event, check, explore, fence, spawn, wait_until
from vcpureq.scenarios.generic import async_request, payload, sync_request

# (name, sizes): every program of the registry, at a few sizes.
SUITE: list[tuple[str, tuple[int, ...]]] = [
    ("store-buffering", ()),
    ("lost-update", ()),
    ("peterson", ()),
    ("peterson-broken", ()),
    ("philosophers", (3,)),
    ("philosophers-ordered", (3,)),
    ("philosophers-ordered", (4,)),
    ("lastzero", (5,)),
    ("lastzero", (8,)),
    ("lastzero", (10,)),
    ("readers", (4,)),
    ("readers", (8,)),
    ("indexer", (12,)),
    ("indexer", (13,)),
    ("indexer", (14,)),
    ("filesystem", (14,)),
    ("filesystem", (16,)),
]
QUICK = {("lastzero", (10,)), ("indexer", (14,)), ("philosophers-ordered", (4,)),
         ("lastzero", (8,))}

# The program the goal is measured on: 3 threads (plus main, which only spawns and joins).
GOAL_PROGRAM = ("philosophers-ordered", (3,))
GOAL_EVENTS_PER_S = 50_000
PROFILE_PROGRAM = ("philosophers-ordered", (3,))

# --------------------------------------------------------------------------- weak memory
# Variants of the classic programs with relaxed accesses (WRITE_ONCE / READ_ONCE), so that
# under "tso" and "pso" stores sit in store buffers and may be seen late; with the
# barriers named in the label they are fixed again.  They are bench-only programs.

MODELS = ("sc", "tso", "pso")
Program = Callable[[], Any]


def _named(program: Program, name: str) -> Program:
    program.__name__ = program.__qualname__ = name
    return program


def sb(barrier: bool = False) -> Program:
    """Store buffering: x = 1; [mb]; r1 = y  ||  y = 1; [mb]; r2 = x.  (0, 0) is the
    failure: impossible under SC, allowed by TSO and PSO unless both mbs are there."""

    def program() -> tuple[int, int]:
        x, y = Atomic(0, "x"), Atomic(0, "y")

        def side(mine: Atomic, theirs: Atomic) -> int:
            mine.store(1, order="relaxed")
            if barrier:
                fence("mb")
            return int(theirs.load(order="relaxed"))

        a = spawn(side, x, y, name="left")
        b = spawn(side, y, x, name="right")
        r1, r2 = a.join(), b.join()
        check((r1, r2) != (0, 0), "store buffering: both loads read 0")
        return r1, r2

    return _named(program, "sb+mb" if barrier else "sb")


def mp(wmb: bool = False) -> Program:
    """Message passing: data = 1; [wmb]; flag = 1  ||  r1 = flag; r2 = data.  Seeing the
    flag but not the data is the failure: PSO reorders the two stores, TSO does not (and
    both keep loads in order, so the reader needs no rmb here)."""

    def program() -> tuple[int, int]:
        data, flag = Atomic(0, "data"), Atomic(0, "flag")

        def writer() -> None:
            data.store(1, order="relaxed")
            if wmb:
                fence("wmb")
            flag.store(1, order="relaxed")

        def reader() -> tuple[int, int]:
            r1 = int(flag.load(order="relaxed"))
            return r1, int(data.load(order="relaxed"))

        w = spawn(writer, name="writer")
        rd = spawn(reader, name="reader")
        w.join()
        r1, r2 = rd.join()
        check((r1, r2) != (1, 0), "message passing: flag seen without the data")
        return r1, r2

    return _named(program, "mp+wmb" if wmb else "mp")


def peterson_relaxed(barriers: str = "") -> Program:
    """Peterson's lock (vcpureq.examples.classic.peterson) with WRITE_ONCE/READ_ONCE.
    ``barriers``: "" (none: TSO lets each thread read the other's flag before its own
    store is visible), "mb" (smp_mb before the wait: enough for TSO, not for PSO, where
    the turn store may reach memory before the flag store -- peterson-broken's order),
    "wmb+mb" (smp_wmb between the two stores as well: correct under both)."""

    def program() -> int:
        flag = [Atomic(0, "flag0"), Atomic(0, "flag1")]
        turn = Atomic(0, "turn")
        inside = Atomic(0, "inside")

        def proc(me: int) -> int:
            other = 1 - me
            flag[me].store(1, order="relaxed")
            if "wmb" in barriers:
                fence("wmb")
            turn.store(other, order="relaxed")
            if "mb" in barriers.replace("wmb", ""):
                fence("mb")
            wait_until(lambda: flag[other].load(order="relaxed") == 0
                       or turn.load(order="relaxed") == me)
            n = inside.fetch_add(1)
            check(n == 0, f"mutual exclusion: p{me} entered while p{other} was inside")
            inside.fetch_add(-1)
            flag[me].store(0, order="release")  # spin_unlock: a release store
            return me

        threads = [spawn(proc, i, name=f"p{i}") for i in range(2)]
        return sum(t.join() for t in threads)

    return _named(program, f"peterson-relaxed{'+' + barriers if barriers else ''}")


def lastzero_relaxed(n: int = 5) -> Program:
    """lastzero(n) (vcpureq.examples.classic.lastzero) with relaxed loads and stores."""

    def program() -> int:
        array = [Atomic(0, f"array{i}") for i in range(n + 1)]

        def reader() -> int:
            i = n
            while array[i].load(order="relaxed") != 0:
                i -= 1
            return i

        def writer(j: int) -> None:
            array[j].store(array[j - 1].load(order="relaxed") + 1, order="relaxed")

        r = spawn(reader, name="reader")
        writers = [spawn(writer, j, name=f"writer{j}") for j in range(1, n + 1)]
        found = r.join()
        for w in writers:
            w.join()
        return int(found)

    return _named(program, f"lastzero-relaxed({n})")


def readers_relaxed(n: int = 4) -> Program:
    """readers(n) (vcpureq.examples.classic.readers) with a relaxed store and loads."""

    def program() -> tuple[int, ...]:
        x = Atomic(0, "x")

        def writer() -> None:
            x.store(42, order="relaxed")

        def reader() -> int:
            return int(x.load(order="relaxed"))

        w = spawn(writer, name="writer")
        rs = [spawn(reader, name=f"reader{i}") for i in range(1, n + 1)]
        w.join()
        return tuple(r.join() for r in rs)

    return _named(program, f"readers-relaxed({n})")


TWO_REQUESTS = [(0, "TLB_FLUSH"), (1, "TLB_FLUSH")]

# (label, factory, in --quick): the registry's store-buffering is
# relaxed already; the rest are the variants above and the generic request scenarios
# (vcpureq.scenarios.generic; "2 vCPUs" is the scenarios' default nr_vcpus, every vCPU
# a daemon thread that keeps entering the guest).
WEAK_SUITE: list[tuple[str, Callable[[], Program], bool]] = [
    ("store-buffering", lambda: make("store-buffering"), True),
    ("sb+mb", lambda: sb(True), True),
    ("mp", lambda: mp(False), True),
    ("mp+wmb", lambda: mp(True), True),
    ("peterson-relaxed", lambda: peterson_relaxed(""), True),
    ("peterson-relaxed+mb", lambda: peterson_relaxed("mb"), True),
    ("peterson-relaxed+wmb+mb", lambda: peterson_relaxed("wmb+mb"), True),
    ("lastzero-relaxed(5)", lambda: lastzero_relaxed(5), True),
    ("lastzero-relaxed(8)", lambda: lastzero_relaxed(8), False),
    ("readers-relaxed(4)", lambda: readers_relaxed(4), True),
    ("readers-relaxed(8)", lambda: readers_relaxed(8), False),
    ("async_request[generic] 2 vCPUs, 1 request",
     lambda: async_request("generic"), True),
    ("async_request[generic-check-before-mode] 2 vCPUs, 1 request",
     lambda: async_request("generic-check-before-mode"), True),
    ("async_request[generic] 2 vCPUs, 2 requests",
     lambda: async_request("generic", targets=TWO_REQUESTS), False),
    ("sync_request[generic, set_sync_request] 2 vCPUs, 1 request",
     lambda: sync_request("generic"), True),
    ("sync_request[generic, make_all_cpus_request] 2 vCPUs",
     lambda: sync_request("generic", via="make_all_cpus_request"), False),
    ("payload[generic] 2 vCPUs, 1 request", lambda: payload("generic"), True),
]


@dataclass
class WeakRow:
    program: str
    memory_model: str
    verdict: str
    executions: int
    blocked: int
    events: int
    seconds: float  # mean wall time of one exploration over the repetitions
    events_per_s: float
    threads: int
    executions_vs_sc: float  # executions / SC executions
    seconds_vs_sc: float  # seconds / SC seconds


def measure_weak(min_time: float, quick: bool, only: list[str] | None,
                 models: tuple[str, ...] = MODELS) -> list[WeakRow]:
    rows: list[WeakRow] = []
    for name, factory, in_quick in WEAK_SUITE:
        if (quick and not in_quick) or (only and not any(o in name for o in only)):
            continue
        base: Row | None = None
        threads = thread_count(factory())
        for mm in models:
            r = measure_program(name, factory(), min_time, memory_model=mm, threads=threads)
            # Every repetition explores the same events, so events / (events/s) is the mean
            # time of one exploration: steadier than one run's elapsed for tiny programs.
            r.seconds = r.events / r.events_per_s if r.events_per_s else r.seconds
            if base is None:
                base = r  # the first model ("sc" unless --models says otherwise)
            rows.append(WeakRow(
                program=name, memory_model=mm, verdict=r.verdict, threads=r.threads,
                executions=r.executions,
                blocked=r.blocked, events=r.events, seconds=r.seconds,
                events_per_s=r.events_per_s,
                executions_vs_sc=r.executions / base.executions if base.executions else 0.0,
                seconds_vs_sc=r.seconds / base.seconds if base.seconds else 0.0))
    return rows


@dataclass
class Row:
    program: str
    threads: int
    verdict: str
    executions: int
    blocked: int
    events: int
    seconds: float
    runs: int
    executions_per_s: float
    events_per_s: float
    events_per_execution: float


def label(name: str, sizes: tuple[int, ...]) -> str:
    return f"{name}({', '.join(map(str, sizes))})" if sizes else name


def thread_count(program: Any) -> int:
    """Threads other than main that do a visible event, from one execution."""
    seen: set[int] = set()

    def on_execution(outcome: Any, events: list[Event]) -> None:
        seen.update(e.thread for e in events)

    explore(program, max_executions=1, on_execution=on_execution, progress=False)
    return len(seen - {0})


def measure(name: str, sizes: tuple[int, ...], min_time: float) -> Row:
    return measure_program(label(name, sizes), make(name, *sizes), min_time)


def measure_program(name: str, program: Any, min_time: float, memory_model: str = "sc",
                    threads: int | None = None) -> Row:
    runs = 0
    total_s = 0.0
    total_events = 0
    total_execs = 0
    while True:
        r = explore(program, strategy="dpor", stop_on_violation=False, progress=False,
                    memory_model=memory_model)
        runs += 1
        total_s += r.elapsed
        total_events += r.events
        total_execs += r.executions + r.blocked
        if total_s >= min_time:
            break
    kinds = sorted({v.kind for v in r.violations})
    verdict = "verified" if r.ok else ",".join(kinds) if kinds else "incomplete"
    return Row(
        program=name,
        threads=thread_count(program) if threads is None else threads,
        verdict=verdict,
        executions=r.executions,
        blocked=r.blocked,
        events=r.events,
        seconds=r.elapsed,
        runs=runs,
        executions_per_s=total_execs / total_s if total_s else 0.0,
        events_per_s=total_events / total_s if total_s else 0.0,
        events_per_execution=r.events / max(1, r.executions + r.blocked),
    )


def profile(name: str, sizes: tuple[int, ...], top: int = 10) -> dict[str, Any]:
    """cProfile one exploration; the ``top`` functions by own time (tottime)."""
    program = make(name, *sizes)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    r = explore(program, strategy="dpor", stop_on_violation=False, progress=False)
    prof.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof)
    entries = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{os.path.relpath(filename)}:{line}" if line else filename
        entries.append({"function": f"{func} ({where})", "calls": ncalls,
                        "tottime": tottime, "cumtime": cumtime})
    entries.sort(key=lambda e: e["tottime"], reverse=True)
    total = sum(e["tottime"] for e in entries)
    for e in entries:
        e["share"] = e["tottime"] / total if total else 0.0
    return {"program": label(name, sizes), "executions": r.executions, "events": r.events,
            "seconds_profiled": wall, "top": entries[:top]}


def sample(name: str, sizes: tuple[int, ...], seconds: float = 2.0,
           top: int = 10) -> dict[str, Any]:
    """A statistical profile: where the CPU is when SIGPROF fires, repeating the
    exploration for ``seconds``.  Unlike cProfile's, this attribution is not confused by
    greenlet switches (cProfile sees a switch as a call that returns in another greenlet).
    "Self" includes the C functions (greenlet.switch, list methods, ...) a function calls."""
    import signal
    from collections import Counter

    program = make(name, *sizes)
    counts: Counter[tuple[str, int, str]] = Counter()

    def on_sigprof(signum: int, frame: Any) -> None:
        code = frame.f_code
        counts[(os.path.relpath(code.co_filename), code.co_firstlineno, code.co_name)] += 1

    old = signal.signal(signal.SIGPROF, on_sigprof)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    start = time.perf_counter()
    runs = 0
    try:
        while time.perf_counter() - start < seconds:
            explore(program, strategy="dpor", stop_on_violation=False, progress=False)
            runs += 1
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, old)
    total = sum(counts.values())
    rows = [{"function": f"{func} ({path}:{line})", "samples": n,
             "share": n / total if total else 0.0}
            for (path, line, func), n in counts.most_common(top)]
    return {"program": label(name, sizes), "runs": runs, "samples": total, "top": rows}


def environment() -> dict[str, Any]:
    import greenlet

    return {"python": platform.python_version(), "implementation":
            platform.python_implementation(), "greenlet": greenlet.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--profile", action="store_true",
                    help=f"also profile {label(*PROFILE_PROGRAM)}: the top 10 functions by "
                         "own time, from cProfile (tottime) and from SIGPROF sampling")
    ap.add_argument("--quick", action="store_true", help="skip the largest sizes")
    ap.add_argument("--min-time", type=float, default=0.5, metavar="S",
                    help="repeat each exploration until it took S seconds (default 0.5)")
    ap.add_argument("--only", metavar="NAME", action="append",
                    help=f"only these programs (of: {', '.join(REGISTRY)}); in the "
                         "SC/TSO/PSO table, programs whose label contains NAME")
    weak = ap.add_mutually_exclusive_group()
    weak.add_argument("--no-weak", action="store_true",
                      help="skip the SC/TSO/PSO table")
    weak.add_argument("--weak-only", action="store_true",
                      help="only the SC/TSO/PSO table (no SC table, no goal)")
    ap.add_argument("--models", default=",".join(MODELS), metavar="M,M,...",
                    help="memory models of the second table, the first being the base of "
                         f"the ratios (default {','.join(MODELS)})")
    args = ap.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())

    rows: list[Row] = []
    goal: dict[str, Any] | None = None
    if not args.weak_only:
        suite = [(n, s) for n, s in SUITE if (not args.quick or (n, s) not in QUICK)
                 and (not args.only or n in args.only)]
        if GOAL_PROGRAM not in suite:
            suite.append(GOAL_PROGRAM)
        rows = [measure(n, s, args.min_time) for n, s in suite]
        goal_row = next(r for r in rows if r.program == label(*GOAL_PROGRAM))
        goal = {"program": goal_row.program, "threads": goal_row.threads,
                "events_per_s": goal_row.events_per_s, "target": GOAL_EVENTS_PER_S,
                "met": goal_row.events_per_s >= GOAL_EVENTS_PER_S}
    weak_rows = ([] if args.no_weak else
                 measure_weak(args.min_time, args.quick, args.only, models))
    prof = profile(*PROFILE_PROGRAM) if args.profile else None
    sampled = sample(*PROFILE_PROGRAM) if args.profile else None

    if args.json:
        out: dict[str, Any] = {"environment": environment(), "strategy": "dpor",
                               "rows": [asdict(r) for r in rows], "goal": goal,
                               "weak_rows": [asdict(r) for r in weak_rows]}
        if prof is not None:
            out["profile"] = prof
            out["sampled_profile"] = sampled
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Piped output gets rich's default 80 columns, too narrow for these tables.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if rows:
        table = Table(title="DPOR (source sets + sleep sets), sequential consistency, "
                            "one core",
                      caption=f"rates over >= {args.min_time:g} s of repeated runs")
        for col, just in [("program", "left"), ("threads", "right"), ("verdict", "left"),
                          ("executions", "right"), ("blocked", "right"),
                          ("visible events", "right"), ("ev/exec", "right"),
                          ("seconds", "right"), ("executions/s", "right"),
                          ("visible events/s", "right")]:
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in rows:
            table.add_row(r.program, str(r.threads), r.verdict, f"{r.executions:,}",
                          f"{r.blocked:,}", f"{r.events:,}", f"{r.events_per_execution:.1f}",
                          f"{r.seconds:.3f}", f"{r.executions_per_s:,.0f}",
                          f"{r.events_per_s:,.0f}")
        console.print(table)
    if weak_rows:
        base = models[0]
        wt = Table(title=f"DPOR under {' / '.join(m.upper() for m in models)}: relaxed "
                         "accesses, store buffers, one core",
                   caption=f"x {base.upper()}: executions and seconds relative to the same "
                           f"program under {base.upper()}; events include flushes (one "
                           f"per buffered store); rates over >= {args.min_time:g} s of "
                           "repeated runs")
        for col, just in [("program", "left"), ("threads", "right"), ("model", "left"),
                          ("verdict", "left"), ("executions", "right"),
                          ("blocked", "right"), ("visible events", "right"),
                          ("seconds", "right"), ("visible events/s", "right"),
                          (f"executions x {base.upper()}", "right"),
                          (f"seconds x {base.upper()}", "right")]:
            wt.add_column(col, justify=just,  # type: ignore[arg-type]
                          overflow="fold", max_width=34 if col == "program" else None)
        last = None
        for w in weak_rows:
            if last is not None and w.program != last:
                wt.add_section()
            wt.add_row(escape(w.program) if w.program != last else "",
                       str(w.threads) if w.program != last else "", w.memory_model,
                       w.verdict, f"{w.executions:,}", f"{w.blocked:,}", f"{w.events:,}",
                       f"{w.seconds:.4f}", f"{w.events_per_s:,.0f}",
                       f"{w.executions_vs_sc:.2f}", f"{w.seconds_vs_sc:.2f}")
            last = w.program
        console.print(wt)
    env = environment()
    console.print(f"Python {env['python']} ({env['implementation']}), greenlet "
                  f"{env['greenlet']}, {env['machine']}")
    if goal is not None:
        mark = "[green]met[/green]" if goal["met"] else "[red]NOT met[/red]"
        console.print(f"Goal: >= {GOAL_EVENTS_PER_S:,} visible events/s on a 3-thread "
                      f"program: {goal['program']} ({goal['threads']} threads) runs "
                      f"{goal['events_per_s']:,.0f} events/s: {mark}")
    if prof is not None:
        pt = Table(title=f"cProfile of {prof['program']}: {prof['executions']:,} executions, "
                         f"{prof['events']:,} events, {prof['seconds_profiled']:.2f} s "
                         "under the profiler; top 10 by own time")
        for col in ("function", "calls", "tottime s", "share", "cumtime s"):
            pt.add_column(col, justify="left" if col == "function" else "right")
        for e in prof["top"]:
            pt.add_row(e["function"], f"{e['calls']:,}", f"{e['tottime']:.3f}",
                       f"{e['share']:.0%}", f"{e['cumtime']:.3f}")
        console.print(pt)
        console.print("(cumtime, and the split of time between the scheduler and the "
                      "threads, are unreliable under greenlets: see bench/README.md)")
    if sampled is not None:
        st = Table(title=f"Sampled (SIGPROF) profile of {sampled['program']}: "
                         f"{sampled['samples']:,} samples over {sampled['runs']} runs; "
                         "top 10 by self time")
        for col in ("function", "samples", "share"):
            st.add_column(col, justify="left" if col == "function" else "right")
        for e in sampled["top"]:
            st.add_row(e["function"], f"{e['samples']:,}", f"{e['share']:.0%}")
        console.print(st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
