"""A live progress line for explorations that take longer than a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from .events import Exploration

ProgressArg = bool | None | Callable[[Exploration], Any]


class Progress:
    """Shows executions, executions/s, depth and violations; silent for short runs.

    ``progress`` is None (show on a terminal), True (always), False (never) or a callable
    that receives the running :class:`Exploration` a few times a second."""

    def __init__(self, progress: ProgressArg, label: str = "") -> None:
        self.callback = progress if callable(progress) else None
        self.enabled = bool(progress) if progress is not None else sys.stderr.isatty()
        self.label = label
        self.start = time.perf_counter()
        self.next_update = self.start + 1.0
        self.live: Any = None

    def tick(self, ex: Exploration) -> None:
        now = time.perf_counter()
        if now < self.next_update:
            return
        self.next_update = now + 0.25
        ex.elapsed = now - self.start
        if self.callback is not None:
            self.callback(ex)
            return
        if not self.enabled:
            return
        if self.live is None:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), transient=True,
                             refresh_per_second=4)
            self.live.start()
        self.live.update(self._render(ex))

    def _render(self, ex: Exploration) -> Any:
        from rich.text import Text

        rate = ex.executions / ex.elapsed if ex.elapsed else 0.0
        ev_rate = ex.events / ex.elapsed if ex.elapsed else 0.0
        bound = f"  k={ex.preemption_bound}" if ex.preemption_bound is not None else ""
        return Text.assemble(
            (f"{self.label} ", "bold"),
            f"{ex.strategy}/{ex.memory_model}{bound}  ",
            (f"{ex.executions:,}", "cyan"), " executions  ",
            f"{rate:,.0f}/s  {ev_rate:,.0f} events/s  depth {ex.max_depth}  ",
            (f"{len(ex.violations)} violations", "red" if ex.violations else "green"),
            f"  {ex.elapsed:.1f} s",
        )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
