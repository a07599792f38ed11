"""The model world: run protocol code under every schedule that matters.

See docs/model-api.md for the contract.  Programs use :func:`spawn`, :class:`Atomic`,
:func:`fence`, :func:`wait_until`, :func:`choose` and :func:`check`; :func:`explore` runs
them under a strategy and a memory model, :func:`replay` reproduces one execution.
"""

from .events import Event, Exploration, Violation
from .explorer import (
    MEMORY_MODELS,
    STRATEGIES,
    ReplayError,
    explore,
    replay,
    replay_execution,
)
from .real import CheckFailed, WaitTimeout, real_world
from .runtime import (
    FENCES,
    ORDERS,
    Atomic,
    ModelUsageError,
    Thread,
    check,
    choose,
    current_step,
    fence,
    spawn,
    wait_until,
)
from .schedule import ScheduleError

__all__ = [
    "Atomic",
    "CheckFailed",
    "WaitTimeout",
    "real_world",
    "Event",
    "Exploration",
    "FENCES",
    "MEMORY_MODELS",
    "ModelUsageError",
    "ORDERS",
    "ReplayError",
    "STRATEGIES",
    "ScheduleError",
    "Thread",
    "Violation",
    "check",
    "choose",
    "current_step",
    "explore",
    "fence",
    "replay",
    "replay_execution",
    "spawn",
    "wait_until",
]
