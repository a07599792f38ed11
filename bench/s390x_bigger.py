"""The bigger s390x configurations (``BIGGER`` in vcpureq/scenarios/s390x.py): two
requesters on one vCPU, two unmappers, a vCPU that starts and then stops itself, a sync
broadcast over three running vCPUs, the common broadcast on the corrected common-kick
protocol. The default ``vcpureq check`` leaves them out (minutes each).

    .venv/bin/python bench/s390x_bigger.py                    # every row, markdown table
    .venv/bin/python bench/s390x_bigger.py --only sync-broadcast-3 --time-limit 60
    .venv/bin/python bench/s390x_bigger.py --json
    .venv/bin/python bench/s390x_bigger.py --default         # the default catalogue's
                                                              # s390x cases, with the total
    .venv/bin/python bench/s390x_bigger.py --long --time-limit 7200   # LONG: one page-table
                                                              # lock for two unmappers

Each row is an exhaustive DPOR exploration under the protocol's default memory model
(TSO); a row that hits the time limit is reported "incomplete" with the executions it
covered. The table is what docs/s390x.md section 4 quotes.
"""

from __future__ import annotations

import argparse
import json

from vcpureq.checking import run_case
from vcpureq.scenarios.s390x import BIGGER, LONG, cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per row")
    ap.add_argument("--only", default="", help="rows whose protocol/scenario contains this")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--default", action="store_true",
                    help="the s390x cases of the default `vcpureq check` instead")
    ap.add_argument("--long", action="store_true",
                    help="the LONG cases instead (tens of minutes; raise --time-limit)")
    args = ap.parse_args()
    if args.default:
        rows = [c for c in cases() if args.only in c.name]
    else:
        table = LONG if args.long else BIGGER
        rows = [c for c in cases(bigger=True, long=True)
                if c.scenario in table.get(c.protocol, {}) and args.only in c.name]
    out = []
    if not args.json:
        print("| protocol | scenario | vCPUs | model | verdict | executions | seconds |")
        print("| --- | --- | ---: | --- | --- | ---: | ---: |")
    for case in rows:
        v = run_case(case, time_limit=args.time_limit)
        e = v.exploration
        verdict = v.verdict
        if v.violation is not None:
            verdict += f" ({v.violation.kind})"
        if not v.expected:
            verdict += " UNEXPECTED"
        row = {"protocol": case.protocol, "scenario": case.scenario, "vcpus": case.vcpus,
               "model": e.memory_model, "verdict": verdict, "as_expected": v.expected,
               "executions": e.executions, "seconds": round(e.elapsed, 2)}
        out.append(row)
        if not args.json:
            print(f"| `{case.protocol}` | {case.scenario} | {case.vcpus} | {e.memory_model} "
                  f"| {verdict} | {e.executions:,} | {e.elapsed:.2f} |", flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        total = sum(float(r["seconds"]) for r in out)
        print(f"\n{len(out)} cases, {total:.1f} s in all")


if __name__ == "__main__":
    main()
