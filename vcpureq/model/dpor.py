"""Source-sets DPOR with sleep sets (Abdulla, Aronis, Jonsson, Sagonas, POPL 2014, Alg. 1).

Stateless: every execution re-runs the program from the start, replaying the decisions on
the stack up to the *branch point* and deciding freshly after it.  For each new event we
find the earlier events it races with (dependent, other thread, not ordered by
happens-before except by their direct conflict), and for each race we add a thread from
the *initials* of ``notdep(e, E).e'`` to the backtrack set of the state before ``e``.

Dependency rule (as in GenMC and Nidhugg): two events conflict when they access the same
Atomic and at least one writes it.  A failed ``compare_exchange`` is a read.  A fence has
no cell under SC.  A ``wait_until`` evaluation is a read of the cells its predicate loaded;
a false one leaves the thread disabled until one of those cells is written (the write is
then dependent with the next evaluation, so enabling is always a dependency).  A join is
enabled once its thread has finished and inherits that thread's clock.

Race detection keeps, per cell, the last write and the reads since it: earlier accesses
are ordered before the last write by happens-before, so they cannot race directly.

Sleep sets guarantee that no two *complete* executions are equivalent (Mazurkiewicz), so
``executions`` counts the traces exactly; executions whose every enabled thread sleeps are
abandoned and counted as ``blocked``.

Daemon threads: the program's outcome is fixed when the last non-daemon thread ends, but
an execution that stopped there would not be maximal, and the races of a daemon's next
events with it would never be reversed (``spawn(store x=1, daemon=True); return
x.load()`` would show only 0).  So enabled daemons run on in an *extension*, explored
like any suffix, until none is enabled or a step budget runs out (``extension_cuts``
counts those); tests/test_dpor_vs_naive.py checks the result against naive search.
"""

from __future__ import annotations

from typing import Any

from .runtime import Execution, _Stop

EVENT, CHOICE = 0, 1


class Node:
    """The state before one decision: which thread runs (EVENT) or which value a
    ``choose`` returns (CHOICE)."""

    __slots__ = ("kind", "cur", "backtrack", "done", "sleep", "enabled", "sigs", "n", "tid")

    def __init__(self, kind: int, cur: int, sleep: frozenset[int]) -> None:
        self.kind = kind
        self.cur = cur
        self.sleep = sleep
        self.backtrack: set[int] = {cur}
        self.done: set[int] = set()
        self.enabled: frozenset[int] = frozenset()
        self.sigs: dict[int, Any] = {}
        self.n = 0
        self.tid = -1


def _dependent(a: tuple[tuple[int, ...], tuple[int, ...]],
               b: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    ar, aw = a
    br, bw = b
    for c in aw:
        if c in br or c in bw:
            return True
    for c in bw:
        if c in ar:
            return True
    return False


class Dpor:
    """Drives executions of one program; ``run_one`` then ``backtrack`` until exhausted."""

    def __init__(self, make_execution: Any) -> None:
        self.make_execution = make_execution
        self.nodes: list[Node] = []
        self.branch = 0
        #: executions whose daemon extension was cut by its step budget (a daemon that
        #: never blocks): the exploration is exhaustive only up to that bound
        self.extension_cuts = 0

    # ------------------------------------------------------------------ one execution
    def run_one(self) -> tuple[Execution, str]:
        """Run one execution.  Returns it and how it ended: "done", "stuck", "blocked",
        "failed"."""
        nodes = self.nodes
        branch = self.branch
        self.pos = 0
        self.cur_sleep: frozenset[int] = frozenset()
        # Happens-before bookkeeping: per event (tid, index in thread, clock, node index).
        events: list[tuple[int, int, list[int], int]] = []
        thread_vc: list[list[int]] = [[0]]
        last_write: dict[int, int] = {}
        reads_since: dict[int, list[int]] = {}

        def on_spawn(parent: int, child: int) -> None:
            vc = list(thread_vc[parent])
            while len(thread_vc) <= child:
                thread_vc.append([])
            thread_vc[child] = vc

        ex: Execution = self.make_execution(self._choice, on_spawn)
        self.ex = ex
        ex.start()
        last_tid = 0
        # After the last non-daemon thread ends, enabled daemon threads run on in an
        # *extension*: the outcome is already fixed, but their later events may race with
        # events before the end, and source-DPOR needs those races (next[E](p) and beyond)
        # to try the orders where a daemon runs earlier.  The extension is explored like
        # any suffix (its own races are reversed too, or a daemon's race with the prefix
        # can hide behind another daemon's event), until no daemon is enabled or a budget
        # of steps is used up.  A daemon's failure in the extension is not a violation.
        extension = 0
        saved: tuple[Any, ...] = ()
        while True:
            en = ex.enabled()
            if ex.done:
                if not saved:
                    if ex.failure is not None:
                        break
                    saved = (ex.failure, ex.steps, len(ex.trace))
                    extension = max(64, 2 * len(events))
                if not en or ex.failure is not None or extension == 0:
                    if en and extension == 0 and ex.failure is None:
                        self.extension_cuts += 1
                    break
                extension -= 1
            elif not en:
                return ex, "stuck"
            pos = self.pos
            if pos < len(nodes):
                node = nodes[pos]
                self.cur_sleep = node.sleep
                if node.kind != EVENT:
                    self._nondeterminism(
                        pos, "a choose() was made here in an earlier run, now "
                        f"threads {en} are scheduled instead")
                    return ex, "failed"
                tid = node.cur
                if pos < branch and frozenset(en) != node.enabled:
                    self._nondeterminism(
                        pos, f"threads {sorted(node.enabled)} could run here in an earlier "
                        f"run, now {sorted(en)}")
                    return ex, "failed"
                sig = ex.signature(tid)
                old = node.sigs.get(tid)
                if old is not None and old != sig:
                    self._nondeterminism(
                        pos, f"thread {ex.threads[tid].name} was about to do "
                        f"{ex.describe_signature(old)} in an "
                        f"earlier run, now {ex.describe_pending(tid)} "
                        f"at {ex.pending_source(tid)}")
                    return ex, "failed"
                node.sigs[tid] = sig
                if pos >= branch:
                    fp = ex.footprint(tid)
                    self.cur_sleep = frozenset(
                        r for r in node.sleep | node.done
                        if r != tid and not _dependent(ex.footprint(r), fp))
                else:
                    self.cur_sleep = frozenset()  # the next stored node carries its own
            else:
                sleep = self.cur_sleep
                awake = [t for t in en if t not in sleep]
                if not awake:
                    return ex, "blocked"
                tid = last_tid if last_tid in awake else awake[0]
                node = Node(EVENT, tid, sleep)
                node.enabled = frozenset(en)
                # What every enabled thread is about to do here: a later run that picks
                # another thread at this node must find it about to do the same.
                sigs = node.sigs
                for t in en:
                    sigs[t] = ex.signature(t)
                nodes.append(node)
                if sleep:
                    fp = ex.footprint(tid)
                    self.cur_sleep = frozenset(
                        r for r in sleep if not _dependent(ex.footprint(r), fp))
            self.pos = pos + 1
            last_tid = tid
            reads, writes, joined, after = ex.step(tid)
            # A step that ends in a violation still happened: its races are analysed
            # below, so that with stop_on_violation=False nothing is missed.
            # ---- happens-before and races of the new event
            vc = thread_vc[tid]
            running = list(vc)
            for a in joined:
                running = _join(running, thread_vc[a])
            for i in after:
                running = _join(running, events[i][2])
            cands: list[int] = []
            for c in reads:
                lw = last_write.get(c)
                if lw is not None:
                    cands.append(lw)
            for c in writes:
                lw = last_write.get(c)
                if lw is not None and lw not in cands:
                    cands.append(lw)
                rs = reads_since.get(c)
                if rs:
                    cands.extend(r for r in rs if r not in cands)
            analyse = pos >= branch
            if cands:
                cands.sort(reverse=True)
                races = []
                for e in cands:
                    et, eidx, evc, _enode = events[e]
                    if analyse and et != tid and (running[et] if et < len(running) else 0) < eidx:
                        races.append(e)
                    running = _join(running, evc)
            else:
                races = []
            while len(running) <= tid:
                running.append(0)
            running[tid] += 1
            ev_index = len(events)
            events.append((tid, running[tid], running, pos))
            thread_vc[tid] = running
            for c in writes:
                last_write[c] = ev_index
                reads_since[c] = []
            for c in reads:
                if c not in writes:
                    reads_since.setdefault(c, []).append(ev_index)
            for e in races:
                self._reverse(events, e, ev_index)
            if ex.failure is not None and not saved:
                return ex, "failed"
        if saved:
            # A daemon's failure after the end is not part of this execution.
            ex.failure, ex.steps, n = saved
            del ex.trace[n:]
        return ex, "done"

    def _reverse(self, events: list[tuple[int, int, list[int], int]], e: int,
                 e2: int) -> None:
        """Race e -> e2: make sure some initial of notdep(e).e2 is tried before e."""
        et, eidx, _evc, enode = events[e]
        first_in_v: dict[int, int] = {}
        initials: list[int] = []
        for j in range(e + 1, e2 + 1):
            jt, jidx, jvc, _ = events[j]
            if j != e2 and (jvc[et] if et < len(jvc) else 0) >= eidx:
                continue  # happens after e: not in notdep(e)
            if jt in first_in_v:
                continue
            after = False
            for t2, fi in first_in_v.items():
                if (jvc[t2] if t2 < len(jvc) else 0) >= fi:
                    after = True
                    break
            first_in_v[jt] = jidx
            if not after:
                initials.append(jt)
        node = self.nodes[enode]
        bt = node.backtrack
        for q in initials:
            if q in bt:
                return
        feasible = [q for q in initials if q in node.enabled]
        if not feasible:
            return  # e.g. a wait evaluation that e itself enabled: not reversible
        awake = [q for q in feasible if q not in node.sleep]
        bt.add(awake[0] if awake else feasible[0])

    def _choice(self, tid: int, n: int) -> int:
        nodes = self.nodes
        pos = self.pos
        if pos < len(nodes):
            node = nodes[pos]
            if node.kind != CHOICE or node.n != n or node.tid != tid:
                raise _Stop(
                    "nondeterminism",
                    f"step {pos}: thread {self.ex.threads[tid].name} called choose({n}) "
                    "where an earlier run of the same schedule did something else",
                )
            value = node.cur
            self.cur_sleep = node.sleep
        else:
            node = Node(CHOICE, 0, self.cur_sleep)
            node.n = n
            node.tid = tid
            nodes.append(node)
            value = 0
        self.pos = pos + 1
        return value

    def _nondeterminism(self, pos: int, what: str) -> None:
        self.ex._fail(_Stop(
            "nondeterminism",
            f"decision {pos}: the program is not deterministic: {what} "
            "(does it use random numbers, time, or state kept across runs?)",
        ))

    # ------------------------------------------------------------------ the tree
    def decisions(self) -> list[tuple[str, int]]:
        return [("t" if n.kind == EVENT else "c", n.cur) for n in self.nodes[: self.pos]]

    def backtrack(self) -> bool:
        """Move to the next unexplored branch; False when the tree is exhausted."""
        nodes = self.nodes
        del nodes[self.pos:]
        while nodes:
            node = nodes[-1]
            if node.kind == CHOICE:
                if node.cur + 1 < node.n:
                    node.cur += 1
                    self.branch = len(nodes) - 1
                    return True
            else:
                node.done.add(node.cur)
                cands = [
                    t for t in node.backtrack
                    if t not in node.done and t not in node.sleep and t in node.enabled
                ]
                if cands:
                    node.cur = min(cands)
                    self.branch = len(nodes) - 1
                    return True
            nodes.pop()
        return False


def _join(a: list[int], b: list[int]) -> list[int]:
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    for i, v in enumerate(b):
        if v > out[i]:
            out[i] = v
    return out
