"""Run one peer problem under frontrun's DPOR and print one JSON line.

    frontrun python bench/peers/frontrun/run.py PROBLEM [ARG ...] [--timeout S]

(``frontrun`` is the command of the frontrun package, which sets LD_PRELOAD and
FRONTRUN_ACTIVE; ``frontrun.explore`` refuses to run without it.)  PROBLEM is a key of
``models.PROBLEMS``; ARGs are its integer parameters.  The exploration is exhaustive
(``preemption_bound=None``: frontrun's default bound of 2 would not be) and does not stop
at the first failure (``stop_on_first=False``), like vcpureq's ``stop_on_violation=False``;
I/O detection is off (the programs do none).  ``seconds`` is the time of the
``frontrun.explore`` call alone, measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frontrun  # noqa: E402
from models import PROBLEMS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("problem", choices=sorted(PROBLEMS))
    ap.add_argument("args", nargs="*", type=int)
    ap.add_argument("--timeout", type=float, default=300.0, help="total_timeout (s)")
    ap.add_argument("--max-executions", type=int, default=10_000_000)
    a = ap.parse_args()
    setup, workers, invariant = PROBLEMS[a.problem](*a.args)
    start = time.perf_counter()
    r = frontrun.explore(
        setup=setup,
        workers=workers,
        invariant=invariant,
        preemption_bound=None,
        stop_on_first=False,
        reproduce_on_failure=0,
        detect_io=False,
        max_executions=a.max_executions,
        total_timeout=a.timeout,
        deadlock_timeout=5.0,
    )
    seconds = time.perf_counter() - start
    if r.property_holds is True:
        verdict = "verified"
    elif r.property_holds is False:
        verdict = "bug found"
    else:
        verdict = "inconclusive"
    out = {
        "problem": a.problem,
        "args": a.args,
        "executions": r.num_explored,
        "failing_executions": len(r.failures),
        "seconds": seconds,
        "verdict": verdict,
        "reason": r.inconclusive_reason,
        "frontrun": getattr(frontrun, "__version__", "?"),
    }
    print("FRONTRUN-RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
