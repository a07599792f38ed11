"""Step numbers for scenario messages: when did what happen, in the counterexample's trace.

A counterexample's trace numbers its events from 0 (``Event.step``). Scenario checks
and the simulated host note the step of the operations they care about (a request made,
an IPI sent or taken, a guest entry, a sleep), so that a violation message can say *how*
the property broke, with the step numbers of the trace printed under it ("TLB_FLUSH was
set at step 9, after vCPU 0's last check at step 7; no IPI was sent to CPU 0 after
it").

Noting a step is plain Python bookkeeping, not a visible operation: it adds no
scheduling point and does not change the explored space. The numbers are those of the
execution being run, so a replay of the schedule prints the same message.
"""

from __future__ import annotations

from vcpureq.model import current_step

__all__ = ["current_step", "step_text"]


def step_text(step: int | None) -> str:
    """``"step N"``, or ``"?"`` where no step is known."""
    return "?" if step is None else f"step {step}"
