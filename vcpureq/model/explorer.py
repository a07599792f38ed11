"""``explore`` and ``replay``: run a program under many schedules and report what broke.

Strategies:

- ``"dpor"``: exhaustive, with source-sets DPOR and sleep sets (:mod:`.dpor`): one
  execution per Mazurkiewicz trace.
- ``"bounded"``: every schedule with at most k preemptions, for k = 0, 1, 2, ... up to
  ``preemption_bound`` (or until no schedule was cut by the bound, which makes the search
  complete).  The first counterexample found has the fewest preemptions.
- ``"random"``: ``max_executions`` (default 1000) runs with uniformly random decisions,
  reproducible from ``seed``.
- ``"naive"``: every interleaving, no reduction; the reference the tests compare with.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from typing import Any

from .dpor import Dpor
from .events import Event, Exploration, Violation
from .memory import BufferedExecution
from .progress import Progress, ProgressArg
from .runtime import Execution, ModelUsageError, _Stop, install_loop_watchdog
from .schedule import Decision, ScheduleError, decode, encode

MEMORY_MODELS = ("sc", "tso", "pso")
PLANNED_MODELS = ("relaxed",)
STRATEGIES = ("dpor", "bounded", "random", "naive")

Program = Callable[[], Any]


def _check_model(memory_model: str) -> None:
    if memory_model in MEMORY_MODELS:
        return
    if memory_model in PLANNED_MODELS:
        raise NotImplementedError(
            f"memory model {memory_model!r} (load-load and load-store reordering, as on "
            f"ARM and POWER) is not implemented yet; available: {', '.join(MEMORY_MODELS)}"
        )
    raise ValueError(
        f"unknown memory model {memory_model!r}; available: {', '.join(MEMORY_MODELS)}"
    )


def new_execution(memory_model: str, program: Program, choice: Callable[[int, int], int],
                  on_spawn: Callable[[int, int], None] | None, *, tracing: bool,
                  max_steps: int) -> Execution:
    """An execution of ``program`` under ``memory_model``."""
    if memory_model == "sc":
        return Execution(program, choice, on_spawn, tracing=tracing, max_steps=max_steps)
    return BufferedExecution(program, choice, on_spawn, tracing=tracing, max_steps=max_steps,
                             memory_model=memory_model)


def explore(
    program: Program,
    *,
    memory_model: str = "sc",
    strategy: str = "dpor",
    max_steps: int = 10_000,
    max_executions: int | None = None,
    time_limit: float | None = None,
    seed: int | None = None,
    stop_on_violation: bool = True,
    progress: ProgressArg = None,
    preemption_bound: int | None = None,
    on_execution: Callable[[Any, list[Event]], Any] | None = None,
    local_timeout: float = 10.0,
    label: str = "",
) -> Exploration:
    """Run ``program`` under the schedules ``strategy`` chooses; see the module docstring."""
    _check_model(memory_model)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    if not callable(program):
        raise TypeError(f"program must be a zero-argument callable, not {program!r}")
    result = Exploration(memory_model=memory_model, strategy=strategy)
    search = _Search(program, result, memory_model, max_steps, max_executions, time_limit,
                     stop_on_violation, Progress(progress, label), on_execution)
    uninstall = install_loop_watchdog(local_timeout)
    try:
        if strategy == "dpor":
            search.dpor()
        elif strategy == "naive":
            search.dfs(bound=None)
        elif strategy == "bounded":
            search.bounded(preemption_bound)
        else:
            search.random(seed, max_executions if max_executions is not None else 1000)
    finally:
        uninstall()
        search.progress.close()
    result.elapsed = time.perf_counter() - search.start
    for v in result.violations:
        if v.kind == "nondeterminism":
            continue  # by definition it does not replay; the message says where it diverged
        v.trace = replay(program, v.schedule, max_steps=max_steps)
    return result


class _Search:
    def __init__(self, program: Program, result: Exploration, memory_model: str,
                 max_steps: int, max_executions: int | None, time_limit: float | None,
                 stop_on_violation: bool, progress: Progress,
                 on_execution: Callable[[Any, list[Event]], Any] | None) -> None:
        self.program = program
        self.result = result
        self.memory_model = memory_model
        self.max_steps = max_steps
        self.max_executions = max_executions
        self.time_limit = time_limit
        self.stop_on_violation = stop_on_violation
        self.progress = progress
        self.on_execution = on_execution
        self.start = time.perf_counter()
        self.seen: set[tuple[str, str]] = set()

    def make_execution(self, choice: Callable[[int, int], int],
                       on_spawn: Callable[[int, int], None] | None = None) -> Execution:
        return new_execution(self.memory_model, self.program, choice, on_spawn,
                             tracing=self.on_execution is not None, max_steps=self.max_steps)

    # ------------------------------------------------------------------ bookkeeping
    def finish(self, ex: Execution, how: str, decisions: list[Decision]) -> bool:
        """Account for one execution; False when the search must stop."""
        r = self.result
        r.events += ex.steps
        r.max_depth = max(r.max_depth, len(decisions))
        if how == "blocked":
            r.blocked += 1
        else:
            r.executions += 1
            violation: tuple[str, str] | None = None
            if ex.failure is not None:
                violation = (ex.failure.kind, ex.failure.message)
            elif how == "stuck":
                violation = ex.stuck_report()
            if violation is not None:
                self.report(violation, decisions, ex.outcome)
            else:
                r.outcomes[ex.outcome] += 1
            if self.on_execution is not None:
                self.on_execution(ex.outcome, list(ex.trace))
        ex.close()
        self.progress.tick(r)
        if r.violations and self.stop_on_violation:
            r.stopped_because = "violation"
            return False
        if self.max_executions is not None and r.executions >= self.max_executions:
            r.stopped_because = "max_executions"
            return False
        if self.time_limit is not None and time.perf_counter() - self.start > self.time_limit:
            r.stopped_because = "time_limit"
            return False
        return True

    def report(self, violation: tuple[str, str], decisions: list[Decision],
               outcome: Any) -> None:
        kind, message = violation
        if (kind, message) in self.seen:
            return
        self.seen.add((kind, message))
        self.result.violations.append(
            Violation(kind, message, encode(self.memory_model, decisions), outcome=outcome)
        )

    # ------------------------------------------------------------------ strategies
    def dpor(self) -> None:
        d = Dpor(self.make_execution)
        while True:
            ex, how = d.run_one()
            self.result.extension_cuts = d.extension_cuts
            if not self.finish(ex, how, d.decisions()):
                return
            if not d.backtrack():
                self.result.complete = True
                return

    def dfs(self, bound: int | None) -> bool:
        """Every interleaving (with at most ``bound`` preemptions).  Returns whether some
        schedule was cut by the bound; sets ``complete`` when the tree was exhausted."""
        # A node: [alternatives, index, is_choice, {tid: signature seen}]
        stack: list[list[Any]] = []
        cut = False
        decisions: list[Decision] = []
        while True:
            pos = 0
            decisions.clear()

            def choice(tid: int, n: int) -> int:
                nonlocal pos
                if pos == len(stack):
                    stack.append([list(range(n)), 0, True, {}])
                value = stack[pos][0][stack[pos][1]]
                decisions.append(("c", value))
                pos += 1
                return value

            ex = self.make_execution(choice)
            ex.start()
            last = 0
            preemptions = 0
            how = "done"
            while not ex.done:
                en = ex.enabled()
                if not en:
                    how = "stuck"
                    break
                if pos == len(stack):
                    if bound is not None and last in en:
                        alts = [last]
                        if preemptions < bound:
                            alts += [t for t in en if t != last]
                        elif len(en) > 1:
                            cut = True
                    else:
                        alts = list(en)
                    # what each enabled thread is about to do here (see Dpor.run_one)
                    stack.append([alts, 0, False, {t: ex.signature(t) for t in en}])
                node = stack[pos]
                tid = node[0][node[1]]
                sig = ex.signature(tid) if tid in en else None
                old = node[3].setdefault(tid, sig)
                if sig is None or old != sig:
                    before = ex.describe_signature(old) if old is not None else "something"
                    now = ex.describe_pending(tid) if sig else "nothing runnable"
                    ex._fail(_Stop(
                        "nondeterminism",
                        f"decision {pos}: the program is not deterministic: thread "
                        f"{ex.threads[tid].name} was about to do {before} in an earlier run "
                        f"of the same schedule, now {now} (does the program use random "
                        "numbers, time, or state kept across runs?)"))
                    break
                if last in en and tid != last:
                    preemptions += 1
                decisions.append(("t", tid))
                pos += 1
                last = tid
                ex.step(tid)
            if ex.failure is not None:
                how = "failed"
            if not self.finish(ex, how, decisions):
                return cut
            del stack[pos:]
            while stack and stack[-1][1] + 1 >= len(stack[-1][0]):
                stack.pop()
            if not stack:
                self.result.complete = True
                return cut
            stack[-1][1] += 1

    def bounded(self, limit: int | None) -> None:
        k = 0
        while True:
            self.result.preemption_bound = k
            self.result.executions = 0
            self.result.blocked = 0
            self.result.outcomes.clear()
            self.result.complete = False
            cut = self.dfs(bound=k)
            if self.result.stopped_because is not None:
                return
            if not cut:
                return  # nothing was cut by the bound: the whole space is covered
            self.result.complete = False
            if limit is not None and k >= limit:
                self.result.stopped_because = f"preemption bound {limit}"
                return
            k += 1

    def random(self, seed: int | None, runs: int) -> None:
        rng = _random.Random(seed)
        self.max_executions = runs
        decisions: list[Decision] = []
        while True:
            decisions.clear()

            def choice(tid: int, n: int) -> int:
                v = rng.randrange(n)
                decisions.append(("c", v))
                return v

            ex = self.make_execution(choice)
            ex.start()
            how = "done"
            while not ex.done:
                en = ex.enabled()
                if not en:
                    how = "stuck"
                    break
                tid = rng.choice(en)
                decisions.append(("t", tid))
                ex.step(tid)
            if ex.failure is not None:
                how = "failed"
            if not self.finish(ex, how, decisions):
                self.result.complete = False
                return


# ---------------------------------------------------------------------- replay


class ReplayError(RuntimeError):
    """A schedule that does not fit the program (or a program that is not deterministic)."""


def replay(program: Program, schedule: str, memory_model: str | None = None,
           max_steps: int = 10_000) -> list[Event]:
    """Re-run ``program`` under ``schedule`` exactly and return the trace of its events.

    The trace ends with the violation, if the schedule leads to one: its last event is
    where it happened, and :func:`replay_execution` gives the violation itself."""
    trace, _ex, _end = replay_execution(program, schedule, memory_model, max_steps)
    return trace


def replay_execution(program: Program, schedule: str, memory_model: str | None = None,
                     max_steps: int = 10_000) -> tuple[list[Event], Execution,
                                                       tuple[str, str] | None]:
    """Like :func:`replay`, also returning the execution and (kind, message) of the
    violation the schedule ends in, or None."""
    try:
        model, decisions = decode(schedule)
    except ScheduleError as e:
        raise ReplayError(str(e)) from None
    if memory_model is not None and memory_model != model:
        raise ReplayError(
            f"schedule {schedule!r} was recorded under {model!r}, not {memory_model!r}"
        )
    _check_model(model)
    it = iter(enumerate(decisions))

    def next_decision(kind: str) -> int:
        try:
            i, (k, v) = next(it)
        except StopIteration:
            raise ReplayError(f"schedule {schedule!r} ends before the execution does") from None
        if k != kind:
            raise ReplayError(
                f"schedule {schedule!r}, decision {i}: expected "
                f"{'a choice' if kind == 'c' else 'a thread'}, the token has {k}{v}"
            )
        return v

    errors: list[str] = []

    def choice(tid: int, n: int) -> int:
        # Runs inside the program's thread: a mismatch stops the execution, and is
        # raised as a ReplayError below.
        try:
            v = next_decision("c")
        except ReplayError as e:
            errors.append(str(e))
            raise _Stop("nondeterminism", str(e)) from None
        if not 0 <= v < n:
            errors.append(f"schedule {schedule!r}: choose({n}) cannot return {v}")
            raise _Stop("nondeterminism", errors[-1])
        return v

    ex = new_execution(model, program, choice, None, tracing=True, max_steps=max_steps)
    try:
        ex.start()
        end: tuple[str, str] | None = None
        while not ex.done:
            en = ex.enabled()
            if not en:
                end = ex.stuck_report()
                break
            tid = next_decision("t")
            if tid not in en:
                raise ReplayError(
                    f"schedule {schedule!r}: thread {tid} cannot run at step {ex.steps} "
                    f"(runnable: {en}); the program is not the one the schedule was recorded "
                    "for, or it is not deterministic"
                )
            ex.step(tid)
        if errors:
            raise ReplayError(errors[0])
        if ex.failure is not None:
            end = (ex.failure.kind, ex.failure.message)
        return list(ex.trace), ex, end
    finally:
        ex.close()


__all__ = ["explore", "replay", "replay_execution", "ReplayError", "ModelUsageError",
           "MEMORY_MODELS", "STRATEGIES"]
