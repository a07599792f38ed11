"""Schedule tokens: a printable, exact record of the decisions of one execution.

A token is ``MODEL:DECISIONS``.  Decisions are separated by dots: ``N`` runs thread N's
pending operation, ``N*k`` does that k times in a row, ``cV`` answers a ``choose`` with V.
Example: ``sc:0*3.1.c1.0*2``.
"""

from __future__ import annotations

import re

# A decision: ("t", tid) or ("c", value).
Decision = tuple[str, int]

_ITEM = re.compile(r"^(?:(\d+)(?:\*(\d+))?|c(\d+))$")


class ScheduleError(ValueError):
    """A malformed schedule token."""


def encode(memory_model: str, decisions: list[Decision]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(decisions):
        kind, value = decisions[i]
        if kind == "c":
            parts.append(f"c{value}")
            i += 1
            continue
        j = i
        while j < len(decisions) and decisions[j] == ("t", value):
            j += 1
        parts.append(str(value) if j - i == 1 else f"{value}*{j - i}")
        i = j
    return f"{memory_model}:{'.'.join(parts)}"


def decode(token: str) -> tuple[str, list[Decision]]:
    model, sep, body = token.strip().partition(":")
    if not sep or not model:
        raise ScheduleError(
            f"schedule token {token!r} has no memory model prefix (expected e.g. 'sc:0*3.1')"
        )
    decisions: list[Decision] = []
    for item in filter(None, body.split(".")):
        m = _ITEM.match(item)
        if m is None:
            raise ScheduleError(f"schedule token {token!r}: cannot read item {item!r}")
        if m.group(3) is not None:
            decisions.append(("c", int(m.group(3))))
        else:
            decisions.extend([("t", int(m.group(1)))] * int(m.group(2) or 1))
    return model, decisions
