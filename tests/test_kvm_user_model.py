"""The kvm_user architecture in the model world: the userspace VMM's vCPU thread with
KVM_RUN, immediate_exit and signals modelled (vcpureq.arch.kvm_user.ModelBackend).

The catalogue's verdicts (scenarios/kvm_user.py): the default (immediate_exit) and the
signal-mask variants are verified, the empty-handler variant loses a kick; its
counterexample replays exactly and shows the race of PROTOCOL.md 7. The one expensive
exploration (kvm-user on async-request-2, about 7 minutes) is marked slow; by default it
is sampled with random schedules.
"""

from __future__ import annotations

from typing import Any

import pytest

from vcpureq.arch import ARCHES
from vcpureq.arch.kvm_user import (
    EXIT_EINTR,
    EXIT_IO,
    PAUSE,
    VARIANTS,
    KvmUserArch,
    KvmUserEmptyHandler,
    KvmUserSigmask,
    ModelBackend,
)
from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED, builtin_cases
from vcpureq.checking import run_case
from vcpureq.common import Kvm
from vcpureq.model import explore, replay
from vcpureq.model.kernel import READ_ONCE
from vcpureq.requests import from_number, lookup
from vcpureq.scenarios import SCENARIOS
from vcpureq.scenarios import kvm_user as kvm_user_scenarios
from vcpureq.scenarios.kvm_user import io_exit_sync

SLOW = {("kvm-user", "async-request-2")}


def _cases() -> list[Any]:
    return list(kvm_user_scenarios.cases())


def test_variants_are_registered_with_their_cases() -> None:
    assert {"kvm-user", "kvm-user-sigmask", "kvm-user-empty-handler"} <= set(ARCHES)
    names = {c.name for c in builtin_cases() if c.protocol in VARIANTS}
    for variant in VARIANTS:
        for scenario in ("async-request", "sync-request", "broadcast-wait", "payload",
                         "io-exit-sync", "halt-interrupt", "pause-all"):
            assert f"{variant}/{scenario}" in names
    assert lookup("PAUSE", "kvm_user") is PAUSE and PAUSE.wait
    assert from_number(PAUSE.number, "kvm_user") is PAUSE


@pytest.mark.parametrize(
    "case", [c for c in _cases() if (c.protocol, c.scenario) not in SLOW],
    ids=lambda c: c.name,
)
def test_catalogue_verdicts(case: Any) -> None:
    verdict = run_case(case)
    assert verdict.expected, (verdict.verdict, verdict.violation and verdict.violation.message)
    if case.expect == VERIFIED:
        assert verdict.exploration.complete and verdict.exploration.executions > 0
    else:
        assert verdict.verdict == COUNTEREXAMPLE


@pytest.mark.slow
def test_default_variant_two_requesters_exhaustively() -> None:
    """kvm-user on async-request-2: 335,298 traces under TSO, about 7 minutes here (since
    DPOR explores the daemon vCPU threads after main ends)."""
    (case,) = [c for c in _cases() if (c.protocol, c.scenario) in SLOW]
    verdict = run_case(case)
    assert verdict.expected and verdict.exploration.complete


def test_default_variant_two_requesters_sampled() -> None:
    program = SCENARIOS["async-request-2"].program(KvmUserArch, nr_vcpus=1)
    ex = explore(program, memory_model="tso", strategy="random", seed=5,
                 max_executions=1500)
    assert not ex.violations and ex.executions == 1500


@pytest.mark.parametrize("arch", [KvmUserArch, KvmUserSigmask])
def test_correct_variants_also_verified_under_sc(arch: type[KvmUserArch]) -> None:
    for name in ("async-request", "sync-request", "broadcast-wait"):
        ex = explore(SCENARIOS[name].program(arch, nr_vcpus=1), memory_model="sc")
        assert ex.ok, (name, [v.message for v in ex.violations])


def test_empty_handler_race_replays_exactly() -> None:
    """The counterexample: the vCPU passed its last check with IN_GUEST_MODE published;
    the requester sets TLB_FLUSH, moves the mode to EXITING and signals; the signal is
    delivered in userspace (the empty handler runs: ``sig := 0``), KVM_RUN then reads
    immediate_exit 0 and runs the guest, which nothing will interrupt any more."""
    program = SCENARIOS["async-request"].program(KvmUserEmptyHandler, nr_vcpus=1)
    ex = explore(program)
    (violation,) = ex.violations
    assert violation.kind == "assertion" and "the request is lost" in violation.message
    trace = replay(program, violation.schedule)
    assert [e.describe() for e in trace] == [e.describe() for e in violation.trace]
    ops = [(e.thread_name, e.op, e.cell_names, e.value) for e in trace]

    def at(pred: Any) -> int:
        return next(i for i, op in enumerate(ops) if pred(op))

    published = at(lambda o: o[0] == "vcpu0" and o[1] == "store"
                   and o[2] == ("vcpu0.mode",) and o[3] == 1)
    kicked = at(lambda o: o[0] == "requester0" and o[1] == "cas" and o[3] == (1, 2))
    signalled = at(lambda o: o[0] == "requester0" and o[2] == ("thread0.sig",))
    delivered = at(lambda o: o[0] == "vcpu0" and o[1] == "store"
                   and o[2] == ("thread0.sig",) and o[3] == 0)
    entered = at(lambda o: o[0] == "vcpu0" and o[2] == ("cpu0.guest_running",)
                 and o[3] == 1 and o[1] == "store")
    assert published < kicked < signalled < delivered < entered
    ie = at(lambda o: o[2] == ("vcpu0.kvm_run.immediate_exit",))
    assert delivered < ie < entered and ops[ie][3] == 0


@pytest.mark.parametrize("arch", [KvmUserArch, KvmUserSigmask])
def test_the_same_window_is_closed_by_the_correct_variants(arch: type[KvmUserArch]) -> None:
    """Every execution of the correct variants in which a signal reached the thread in
    userspace before KVM_RUN still ends with the request handled."""
    program = SCENARIOS["async-request"].program(arch, nr_vcpus=1)
    windows = []
    line = _line_of("delivered in userspace just before the syscall")

    def on_execution(outcome: Any, events: Any) -> None:
        if any(e.source and e.source.endswith(f"kvm_user.py:{line}") for e in events):
            windows.append(outcome)

    ex = explore(program, on_execution=on_execution)
    assert ex.ok
    if arch is KvmUserArch:
        assert windows  # the handler ran in the window, immediate_exit still kicked it
    else:
        assert not windows  # blocked outside KVM_RUN: never taken in userspace


def _line_of(text: str) -> int:
    import inspect

    import vcpureq.arch.kvm_user as module

    lines = inspect.getsource(module).splitlines()
    return next(i for i, source in enumerate(lines, 1) if text in source)


class _NoCompletion(KvmUserArch):
    """Broken on purpose: handles requests right after an I/O exit, without the
    immediate_exit re-entry that completes the access."""

    name = "kvm-user-no-io-completion"

    def complete_io(self, vcpu: Any) -> None:
        vcpu.arch.io_pending = False


def test_requests_after_an_io_exit_need_the_completion_reentry() -> None:
    ex = explore(io_exit_sync(KvmUserArch))
    assert ex.ok
    ex = explore(io_exit_sync(_NoCompletion))
    assert ex.violations
    assert "I/O exit not completed" in ex.violations[0].message


def _one_vcpu(arch: KvmUserArch, body: Any) -> Any:
    def program() -> Any:
        kvm = Kvm(arch, 1)
        return body(kvm, kvm.vcpus[0])

    ex = explore(program)
    assert ex.ok, [v.message for v in ex.violations]
    return ex.outcomes


def test_model_kvm_run_reads_immediate_exit_once_and_completes_io() -> None:
    backend = ModelBackend(guest=("io", "spin"))

    def body(kvm: Kvm, vcpu: Any) -> Any:
        first = backend.kvm_run(vcpu)  # the guest's I/O exit
        backend.set_immediate_exit(vcpu, 1)
        second = backend.kvm_run(vcpu)  # completes it, returns -EINTR, no guest
        state = vcpu.arch.backend_state
        return first, second, state.io_incomplete, READ_ONCE(kvm.host.cpus[0].guest_running)

    outcomes = _one_vcpu(KvmUserArch(backend=backend), body)
    assert set(outcomes) == {(EXIT_IO, EXIT_EINTR, False, 0)}


def test_model_signal_mask_keeps_the_kick_pending_until_eaten() -> None:
    arch = KvmUserSigmask()

    def body(kvm: Kvm, vcpu: Any) -> Any:
        arch.thread_setup(vcpu)
        arch.backend.send_signal(vcpu)  # outside KVM_RUN: blocked, stays pending
        r = arch.backend.kvm_run(vcpu)  # KVM_SET_SIGNAL_MASK unblocks it: -EINTR
        pending_after = arch.backend.signal_pending(vcpu)
        arch.after_eintr(vcpu)  # kvm_eat_signals
        return r, pending_after, arch.backend.signal_pending(vcpu)

    assert set(_one_vcpu(arch, body)) == {(EXIT_EINTR, True, False)}
