"""The big set, and bigger configurations of the host scenarios than `vcpureq check` runs.

    .venv/bin/python bench/hosts.py                      # every row, 600 s per row at most
    .venv/bin/python bench/hosts.py --set big            # the catalogue's big set only
    .venv/bin/python bench/hosts.py --set configs --only kick-all
    .venv/bin/python bench/hosts.py --protocol my_variant.py:Mine   # a user's variant
    .venv/bin/python bench/hosts.py --json

Two kinds of rows:

- ``big``: the catalogue cases `vcpureq check` leaves out by default
  (``vcpureq.scenarios.BIG_CASES``: the two-requester and every-vCPU generic scenarios
  on x86, arm64, ppc64 and the generic run loop, and the proposed fix on x86's
  kick-wait-race; also kvm-user's two-requester case and s390x's bigger cases, as
  ``vcpureq check --set big``), with the verdict the catalogue expects; tens of seconds to minutes
  each. With ``--protocol FILE.py:NAME`` the rows are a user's variant on the big set of
  the built-in architecture it derives from.
- ``configs``: the host scenarios with more vCPUs, every vCPU running, two injectors,
  natural exits, two migrations.

Each row is an exhaustive DPOR exploration (a row that hits the time limit is reported
incomplete, with what it covered). Seconds depend on the machine; executions do not.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from vcpureq.arch import ARCHES, Arch
from vcpureq.catalogue import VERIFIED, load_object
from vcpureq.model import explore
from vcpureq.scenarios import BIG_CASES, SCENARIOS, cases, hosts

Row = tuple[str, str, str, Callable[[], Callable[[], Any]], str]  # name, protocol, model, ...

CONFIGS: list[tuple[str, str, Callable[[], Callable[[], Any]]]] = [
    ("kick-all-wait-all, 3 vCPUs (2 running)", "x86",
     lambda: hosts.kick_all_wait_all("x86", nr_vcpus=3)),
    ("kick-all-wait-all, 2 vCPUs running", "x86",
     lambda: hosts.kick_all_wait_all("x86", halted=())),
    ("kick-all-wait-all, 4 vCPUs (3 running)", "arm64",
     lambda: hosts.kick_all_wait_all("arm64", nr_vcpus=4)),
    ("kick-all-wait-all, natural exits", "ppc64",
     lambda: hosts.kick_all_wait_all("ppc64", natural_exits=1)),
    ("tlb-flush-walk, vCPU 1 running", "x86",
     lambda: hosts.tlb_flush_walk("x86", halted=())),
    ("halt-wake, two injectors", "x86",
     lambda: hosts.interrupt_delivery("x86", targets=(0, 1))),
    ("irq-inject, natural exits", "arm64",
     lambda: hosts.interrupt_delivery("arm64", halted=False, natural_exits=1)),
    ("pause-resume, both vCPUs running", "arm64",
     lambda: hosts.pause_resume("arm64", halted=())),
    ("migrate-kick, two migrations", "arm64",
     lambda: hosts.migrate_kick("arm64", migrations=2, halted=())),
]


def big_rows(protocol: str | None) -> list[Row]:
    """The big set: built-in cases, or a user's variant on its base's big set."""
    if protocol is None or ":" not in protocol:
        return [(c.scenario, c.protocol, c.memory_model, lambda c=c: c.program, c.expect)
                for c in cases(which="big") if protocol in (None, c.protocol)]
    obj = load_object(protocol)
    cls = obj if isinstance(obj, type) else type(obj)
    if not (isinstance(cls, type) and issubclass(cls, Arch)):
        raise SystemExit(f"{protocol}: not an architecture")
    label = protocol.rpartition(":")[2]
    big = {sc for base in cls.__mro__ for sc in BIG_CASES.get(vars(base).get("name", ""), ())}
    return [(name, label, cls.memory_model, lambda name=name: SCENARIOS[name].program(obj),
             VERIFIED) for name in SCENARIOS if name in big]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("all", "big", "configs"), default="all")
    ap.add_argument("--protocol", default=None,
                    help="only this protocol's big set (a built-in name or FILE.py:NAME)")
    ap.add_argument("--time-limit", type=float, default=600.0)
    ap.add_argument("--only", default="", help="rows whose name contains this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: list[Row] = []
    if args.set in ("all", "big"):
        rows += big_rows(args.protocol)
    if args.set in ("all", "configs") and args.protocol is None:
        rows += [(name, p, ARCHES[p].memory_model, make, VERIFIED)
                 for name, p, make in CONFIGS]
    out = []
    for name, protocol, model, make, expect in rows:
        if args.only not in name:
            continue
        t0 = time.perf_counter()
        ex = explore(make(), memory_model=model, time_limit=args.time_limit)
        verdict = ("counterexample" if ex.violations else
                   "verified" if ex.complete else "incomplete")
        row = {
            "row": name, "protocol": protocol, "model": model, "verdict": verdict,
            "expected": verdict == expect, "executions": ex.executions,
            "complete": ex.complete,
            "violation": ex.violations[0].message if ex.violations else None,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        out.append(row)
        if not args.json:
            mark = ("" if row["expected"] else
                    "  (time limit)" if verdict == "incomplete" else "  UNEXPECTED")
            print(f"{name:42s} {protocol:22s} {model:4s} {verdict:14s} "
                  f"{ex.executions:>9,} {row['seconds']:>8.1f} s{mark}", flush=True)
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
