"""s390x: SIE, kvm-s390's sync requests, and the seed thread's proposals (issue 4).

Unit tests run one-thread programs (the test plays the vCPU or the requester). Scenario
tests explore every Mazurkiewicz trace (DPOR) under TSO, s390's model: the kernel's
protocol keeps every property on its scenarios, each variant shows its expected verdict,
and counterexamples replay exactly. The bigger sizes are marked slow.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from vcpureq.arch import ARCHES, get_arch
from vcpureq.arch.s390x import (
    CPUSTAT_IBS,
    CPUSTAT_STOP_INT,
    EXIT_SKIPPED,
    PAGE_PROTECTED,
    PROG_BLOCK_SIE,
    PROG_IN_SIE,
    PROG_REQUEST,
    S390xArch,
)
from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED, builtin_cases
from vcpureq.checking import run_case
from vcpureq.common import Kvm, KvmVcpu, check_request, make_request
from vcpureq.model import explore, replay_execution
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE
from vcpureq.requests import DISABLE_IBS, ENABLE_IBS, REFRESH_GUEST_PREFIX, TLB_FLUSH
from vcpureq.scenarios.s390x import (
    BIGGER,
    EXPECTED,
    PROTOCOLS,
    S390_SCENARIOS,
    cases,
    property_broken,
    summarize,
)


def run_alone(program: Any, memory_model: str = "tso") -> Any:
    ex = explore(program, memory_model=memory_model)
    assert ex.complete and not ex.violations, [v.format() for v in ex.violations]
    (outcome,) = ex.outcomes
    return outcome


def vm(name: str = "s390x", nr_vcpus: int = 1, **setup: Any) -> Kvm:
    arch = get_arch(name)
    for key, value in setup.items():
        setattr(arch, key, value)
    return Kvm(arch, nr_vcpus)


# --- the SIE control block and the kernel's helpers ------------------------------------


def test_sie_block_bits_match_kvm_host_h() -> None:
    assert PROG_IN_SIE == 1 and PROG_BLOCK_SIE == 1 and PROG_REQUEST == 2
    assert CPUSTAT_STOP_INT == 0x04000000 and CPUSTAT_IBS == 0x40
    assert get_arch("s390x").memory_model == "tso"
    assert REFRESH_GUEST_PREFIX.wait and REFRESH_GUEST_PREFIX.no_wakeup


def test_sync_request_makes_the_request_then_pre_announces_and_kicks() -> None:
    def program() -> tuple[int, int, int, int]:
        kvm = vm()
        vcpu = kvm.vcpus[0]
        sie = vcpu.arch.sie_block
        kvm.arch.sync_request(DISABLE_IBS, vcpu)  # not in SIE: exit_sie returns at once
        return (READ_ONCE(vcpu.requests), READ_ONCE(sie.prog20), READ_ONCE(sie.cpuflags),
                READ_ONCE(sie.prog0c))

    assert run_alone(program) == (1 << DISABLE_IBS.number, PROG_REQUEST, CPUSTAT_STOP_INT, 0)


def test_request_handling_clears_prog_request_first_then_handles() -> None:
    def program() -> tuple[Any, ...]:
        kvm = vm(initial_flags={0: CPUSTAT_IBS})
        vcpu = kvm.vcpus[0]
        s390: S390xArch = kvm.arch
        s390.sync_request(TLB_FLUSH, vcpu)
        s390.sync_request(DISABLE_IBS, vcpu)
        stop_int_set = bool(READ_ONCE(vcpu.arch.sie_block.cpuflags) & CPUSTAT_STOP_INT)
        rc = s390.vcpu_pre_run(vcpu)  # clears STOP_INT, then kvm_s390_handle_requests
        sie = vcpu.arch.sie_block
        return (stop_int_set, rc, READ_ONCE(vcpu.requests), READ_ONCE(sie.prog20),
                READ_ONCE(sie.cpuflags), sie.ihcpu)

    assert run_alone(program) == (True, 0, 0, 0, 0, 0xFFFF)


def test_sie64a_skips_sie_while_a_request_is_announced() -> None:
    def program() -> tuple[str, int, int]:
        kvm = vm()
        vcpu = kvm.vcpus[0]
        kvm.arch.pre_announce(vcpu, TLB_FLUSH)
        exit_reason = kvm.arch.sie64a(vcpu)
        return exit_reason, vcpu.arch.sie_running.load(), READ_ONCE(vcpu.arch.sie_block.prog0c)

    assert run_alone(program) == (EXIT_SKIPPED, 0, 0)


def test_set_prefix_makes_local_requests_without_a_kick() -> None:
    def program() -> tuple[int, int, int, int]:
        kvm = vm(nr_pages=2)
        vcpu = kvm.vcpus[0]
        kvm.arch.set_prefix(vcpu, 1)
        sie = vcpu.arch.sie_block
        return (READ_ONCE(sie.prefix), READ_ONCE(vcpu.requests), READ_ONCE(sie.prog20),
                READ_ONCE(sie.cpuflags))

    mask = 1 << TLB_FLUSH.number | 1 << REFRESH_GUEST_PREFIX.number
    assert run_alone(program) == (1, mask, 0, 0)


def test_failed_prefix_rearm_makes_the_request_again() -> None:
    def program() -> tuple[int, bool, int]:
        kvm = vm(mprotect_failures=1, initial_pages={0: 0})
        vcpu = kvm.vcpus[0]
        kvm.arch.set_prefix(vcpu, 0)
        rc = kvm.arch.handle_requests(vcpu)
        pending = bool(READ_ONCE(vcpu.requests) & 1 << REFRESH_GUEST_PREFIX.number)
        return rc, pending, READ_ONCE(kvm.arch.gmap.pages[0])

    ex = explore(program, memory_model="tso")
    assert ex.ok
    assert set(ex.outcomes) == {(-11, True, 0), (0, False, PAGE_PROTECTED)}


def test_ibs_start_disables_ibs_everywhere_and_stop_gives_it_back() -> None:
    def program() -> tuple[int, int, int]:
        kvm = vm(nr_vcpus=2, initial_flags={0: CPUSTAT_IBS, 1: 0x80000000})
        s390: S390xArch = kvm.arch
        v0, v1 = kvm.vcpus
        s390.vcpu_start(v1)  # a second started vCPU: DISABLE_IBS on both
        after_start = READ_ONCE(v0.requests)
        s390.vcpu_pre_run(v0)  # vCPU 0 handles it
        ibs_after_start = READ_ONCE(v0.arch.sie_block.cpuflags) & CPUSTAT_IBS
        s390.vcpu_stop(v1)  # vCPU 0 is alone again: ENABLE_IBS
        return after_start, ibs_after_start, READ_ONCE(v0.requests)

    assert run_alone(program) == (1 << DISABLE_IBS.number, 0, 1 << ENABLE_IBS.number)


def test_common_kick_is_a_bug_on_s390() -> None:
    """kvm_arch_vcpu_should_kick is BUG() on s390: common kvm_vcpu_kick must not run."""

    def program() -> None:
        kvm = vm()
        kvm.arch.async_request(TLB_FLUSH, kvm.vcpus[0])

    (v,) = explore(program, memory_model="tso").violations
    assert v.kind == "exception" and "BUG()" in v.message


# --- the kernel's protocol on its scenarios ---------------------------------------------


def _explore(protocol: str, scenario: str, model: str = "tso", **kw: Any) -> Any:
    program = S390_SCENARIOS[scenario].program(protocol, **kw)
    return program, explore(program, memory_model=model, max_steps=20_000)


@pytest.mark.parametrize(
    "scenario", ["prefix-unmap", "prefix-unmap-retry", "set-prefix", "ibs", "sync-request"]
)
def test_s390x_keeps_every_property(scenario: str) -> None:
    _, r = _explore("s390x", scenario)
    assert r.ok, [v.format() for v in r.violations]
    assert r.executions > 100  # a real space, not a single schedule


@pytest.mark.parametrize("scenario", ["prefix-unmap", "sync-request", "async-kick", "ibs"])
def test_unified_interface_keeps_every_property(scenario: str) -> None:
    _, r = _explore("s390x-unified", scenario)
    assert r.ok, [v.format() for v in r.violations]


def test_guest_mode_at_entry_makes_common_kicks_correct() -> None:
    _, r = _explore("s390x-guest-mode-at-entry", "async-kick")
    assert r.ok, [v.format() for v in r.violations]


# --- variants: the seed's proposals and the historical bugs -------------------------------


def _counterexample(protocol: str, scenario: str, words: str, model: str = "tso") -> Any:
    program, r = _explore(protocol, scenario, model)
    assert r.violations, f"{protocol}/{scenario}: no counterexample"
    v = r.violations[0]
    assert words in f"{v.kind}: {v.message}", v.format()
    trace, _ex, end = replay_execution(program, v.schedule)
    assert end == (v.kind, v.message)
    assert trace == v.trace
    return v


def test_request_after_block_runs_sie_with_the_request_pending() -> None:
    """s390 2015: the request is set after the vCPU was kicked out with PROG_REQUEST;
    it cleared PROG_REQUEST, found nothing and entered SIE again."""
    v = _counterexample("s390x-request-after-block", "sync-request",
                        "with TLB_FLUSH pending although")
    assert "returned at step" in summarize(v)
    v = _counterexample("s390x-request-after-block", "prefix-unmap",
                        "with its prefix page 0 unmapped")
    text = summarize(v)
    assert "page 0 was unmapped at step" in text
    assert "vCPU 0 entered SIE at step" in text and "REFRESH_GUEST_PREFIX pending" in text


def test_a_plain_kick_is_too_late_for_the_prefix_page() -> None:
    v = _counterexample("s390x-async-prefix", "prefix-unmap",
                        "while vCPU 0 runs SIE with it as its prefix page")
    facts = summarize(v)
    entered = facts.index("vCPU 0 entered SIE at step")
    unmapped = facts.index("page 0 was unmapped at step")
    assert entered < unmapped  # the guest ran first, then the page went away


def test_common_kick_with_mode_for_the_whole_loop_loses_a_request() -> None:
    """Seed proposal 2 as written: the kick's IPI is taken between the request check and
    SIE entry (interrupts are on there) and does not keep the vCPU out of SIE."""
    v = _counterexample("s390x-common-kick", "async-kick", "the request is lost")
    assert ".c0." in v.schedule  # not even a preemption is needed
    ops = [(e.thread_name, e.op, e.cell_names) for e in v.trace]
    ack = ops.index(("vcpu0", "store", ("cpu0.ipi_acked",)))
    entry = ops.index(("vcpu0", "store", ("vcpu0.sie_running",)))
    assert ack < entry  # the IPI was taken before SIE was entered


def test_common_kick_with_a_last_check_still_needs_the_barrier_after_migration() -> None:
    """Interrupts off for the last check is not enough while IN_GUEST_MODE covers the
    whole loop: after a preemption the vCPU's new vcpu->cpu can still sit in its store
    buffer when the kicker reads it (TSO); SC cannot show it."""
    _, r = _explore("s390x-common-kick-irqoff", "async-kick", "sc")
    assert r.ok
    v = _counterexample("s390x-common-kick-irqoff", "async-kick", "the request is lost")
    assert ".c1." in v.schedule  # preempted and migrated
    stale = [e for e in v.trace if e.thread_name == "requester0" and e.op == "load"
             and e.cell_names == ("vcpu0.cpu",)]
    assert stale and stale[0].value == 0  # the CPU it left
    flush = [e for e in v.trace if e.op == "flush" and e.cell_names == ("vcpu0.cpu",)]
    assert flush and flush[0].step > stale[0].step


def test_make_all_cpus_request_gives_no_sync_on_s390() -> None:
    _counterexample("s390x-make-all-cpus-request", "sync-broadcast", "TLB_FLUSH not handled")


def test_exit_sie_spins_without_host_timer_interrupts() -> None:
    v = _counterexample("s390x-no-host-tick", "sync-request", "hang")
    assert "requester0 blocked in wait_until" in v.message


def test_the_protocol_relies_on_sie_serializing_under_tso() -> None:
    _, r = _explore("s390x-sie-not-serializing", "sync-request", "sc")
    assert r.ok
    v = _counterexample("s390x-sie-not-serializing", "sync-request", "had returned")
    assert any(e.op == "flush" for e in v.trace)  # the store buffer is part of it


def _steps(text: str, fact: str) -> list[int]:
    """The steps at which ``fact`` (a phrase of summarize's "how" line) happened."""
    return [int(m) for m in re.findall(re.escape(fact) + r"[^;]*? at step (\d+)", text)]


def test_the_2015_order_loses_the_sync_where_the_kernel_order_keeps_it() -> None:
    """PROTOCOL.md section 9, s390 2015, beside today's order: request first, then
    PROG_REQUEST + exit_sie (verified) vs PROG_REQUEST + exit_sie, then the request."""
    _, kernel = _explore("s390x", "sync-request")
    assert kernel.ok and kernel.executions > 100
    v = _counterexample("s390x-request-after-block", "sync-request",
                        "with TLB_FLUSH pending although")
    text = summarize(v)
    assert "property: sync" in text
    # the story, in order: the vCPU consumed PROG_REQUEST, found no request, and the
    # request came only after it had re-checked prog20
    (cleared,) = _steps(text, "vCPU 0 cleared its PROG_REQUEST")
    empty = [s for s in _steps(text, "vCPU 0 found no request pending") if s > cleared]
    (made,) = _steps(text, "requester0 made TLB_FLUSH for vCPU 0")
    (returned,) = _steps(text, "requester0 returned")
    entered = _steps(text, "vCPU 0 entered SIE")
    assert empty and cleared < empty[0] < made < returned < entered[-1]


class _SetPrefixWithoutFlush(S390xArch):
    """kvm_s390_set_prefix without its local TLB_FLUSH request."""

    name = "test-set-prefix-without-flush"

    def set_prefix(self, vcpu: KvmVcpu, page: int) -> None:
        WRITE_ONCE(vcpu.arch.sie_block.prefix, page)
        vcpu.arch.tlb_stale = True  # hardware: the guest TLB may map the old prefix
        make_request(REFRESH_GUEST_PREFIX, vcpu)


def test_set_prefix_needs_its_local_tlb_flush() -> None:
    _, kernel = _explore("s390x", "set-prefix")
    assert kernel.ok
    r = explore(S390_SCENARIOS["set-prefix"].program(_SetPrefixWithoutFlush),
                memory_model="tso", max_steps=20_000)
    (v,) = r.violations
    assert "after SET PREFIX without the TLB flush" in v.message
    assert property_broken(v).startswith("tlb")


class _DisableIbsWithoutSync(S390xArch):
    """__disable_ibs_on_vcpu with a plain request: no PROG_REQUEST, no exit_sie."""

    name = "test-disable-ibs-without-sync"

    def disable_ibs_on_vcpu(self, vcpu: KvmVcpu) -> None:
        check_request(ENABLE_IBS, vcpu)
        make_request(DISABLE_IBS, vcpu)


class _EnableIbsBeforeStopped(S390xArch):
    """kvm_s390_vcpu_stop giving IBS to the last started vCPU before it is STOPPED."""

    name = "test-enable-ibs-before-stopped"

    def vcpu_stop(self, vcpu: KvmVcpu) -> None:
        from vcpureq.arch.s390x import CPUSTAT_STOPPED, spin_lock, spin_unlock
        from vcpureq.model.kernel import atomic_or

        if self.is_vcpu_stopped(vcpu):
            return
        spin_lock(self.start_stop_lock)
        others = [v for v in vcpu.kvm.vcpus if v is not vcpu and not self.is_vcpu_stopped(v)]
        if len(others) == 1:
            self.enable_ibs_on_vcpu(others[0])
        atomic_or(CPUSTAT_STOPPED, vcpu.arch.sie_block.cpuflags)
        self.disable_ibs_on_vcpu(vcpu)
        spin_unlock(self.start_stop_lock)


def test_ibs_is_only_on_while_a_vcpu_is_alone() -> None:
    """Starting a second vCPU must sync DISABLE_IBS on the running one; stopping must
    give IBS back only once the stopping vCPU is STOPPED."""
    _, kernel = _explore("s390x", "ibs")
    assert kernel.ok
    r = explore(S390_SCENARIOS["ibs"].program(_DisableIbsWithoutSync), memory_model="tso",
                max_steps=20_000)
    (v,) = r.violations
    assert "runs SIE with IBS on" in v.message, v.format()
    assert property_broken(v).startswith("ibs")
    r = explore(S390_SCENARIOS["ibs-start-stop"].program(_EnableIbsBeforeStopped),
                memory_model="tso", max_steps=20_000)
    (v,) = r.violations
    assert "with IBS on although vCPU 1 is started" in v.message, v.format()


def _kicks_then_polls(protocol: str) -> list[bool]:
    """sync-broadcast on 2 running vCPUs, the first executions: did the requester set
    CPUSTAT_STOP_INT on every vCPU before its first poll of PROG_IN_SIE? (Its own
    program order, so a few executions show it.)"""
    seen: list[bool] = []

    def on_execution(_outcome: Any, trace: list[Any]) -> None:
        kicks = [e.step for e in trace if e.thread_name == "requester0"
                 and e.op == "fetch_or" and e.cell_names[0].endswith(".cpuflags")]
        polls = [e.step for e in trace if e.thread_name == "requester0"
                 and e.op == "wait" and any(c.endswith(".prog0c") for c in e.cell_names)]
        assert len(kicks) == 2 and polls
        seen.append(max(kicks) < min(polls))

    program = S390_SCENARIOS["sync-broadcast"].program(protocol)
    r = explore(program, memory_model="tso", max_steps=20_000, max_executions=20,
                on_execution=on_execution)
    assert not r.violations
    return seen


def test_unified_broadcast_kicks_all_then_waits_for_all() -> None:
    """The seed's set_sync_request_many kicks every vCPU before the first wait, and keeps
    the sync property on every running vCPU (exhaustive, 2 vCPUs; 3 vCPUs is the bigger
    case sync-broadcast-3); the kernel's kvm_s390_sync_request_broadcast syncs one vCPU
    after the other."""
    seen = _kicks_then_polls("s390x-unified")
    assert len(seen) == 20 and all(seen)
    seen = _kicks_then_polls("s390x")
    assert len(seen) == 20 and not any(seen)
    _, r = _explore("s390x-unified", "sync-broadcast")
    assert r.ok and r.executions > 1000, [v.format() for v in r.violations]


# --- the catalogue --------------------------------------------------------------------------


def test_every_s390x_protocol_is_registered_with_its_expected_verdicts() -> None:
    assert set(PROTOCOLS) <= set(ARCHES)
    assert set(EXPECTED) == set(PROTOCOLS)
    built = [c for c in builtin_cases() if "s390x" in c.tags]
    assert {c.protocol for c in built} == set(PROTOCOLS)
    assert {c.name for c in built} == {c.name for c in cases()}
    for c in built:
        words = EXPECTED[c.protocol][c.scenario]
        assert c.expect == (COUNTEREXAMPLE if words and c.memory_model != "sc" else VERIFIED)
    assert all(p in PROTOCOLS for p in BIGGER)


@pytest.mark.parametrize("name", [
    "s390x-request-after-block/sync-request",
    "s390x-async-prefix/prefix-unmap",
    "s390x-no-host-tick/sync-request",
])
def test_catalogue_counterexamples_are_as_expected(name: str) -> None:
    (case,) = [c for c in cases() if c.name == name]
    v = run_case(case)
    assert v.verdict == COUNTEREXAMPLE and v.expected


@pytest.mark.parametrize("name,prop", [
    ("s390x-request-after-block/sync-request", "sync"),
    ("s390x-request-after-block/prefix-unmap", "prefix"),
    ("s390x-async-prefix/prefix-unmap", "prefix"),
    ("s390x-no-host-tick/sync-request", "no hang"),
    ("s390x-common-kick/async-kick", "no lost request"),
    ("s390x-common-kick-irqoff/async-kick", "no lost request"),
    ("s390x-sie-not-serializing/sync-request", "sync"),
    ("s390x-make-all-cpus-request/sync-broadcast", "sync"),
])
def test_every_counterexample_says_which_property_broke_and_how(name: str, prop: str) -> None:
    (case,) = [c for c in cases() if c.name == name and c.expect == COUNTEREXAMPLE]
    v = run_case(case).violation
    assert v is not None
    kind_line, prop_line, how = summarize(v).split("\n")
    assert kind_line == f"{v.kind}: {v.message}"
    assert prop_line.startswith(f"property: {prop} -- ")
    assert how.startswith("how: ") and " at step " in how


def test_a_users_s390x_variant_runs_on_the_s390x_scenarios() -> None:
    from vcpureq.arch.s390x import S390xRequestAfterBlock
    from vcpureq.scenarios import cases_for_protocol

    class Mine(S390xRequestAfterBlock):
        name = "mine"

    found = cases_for_protocol(Mine, "Mine")
    assert [c.scenario for c in found] == list(EXPECTED["s390x"])  # no async-kick: BUG()
    (case,) = [c for c in found if c.scenario == "sync-request"]
    v = run_case(case, user=True)
    assert v.verdict == COUNTEREXAMPLE and not v.expected


# --- bigger sizes -------------------------------------------------------------------------


_BIGGER_CASES = [c for c in cases(bigger=True) if c.scenario in BIGGER.get(c.protocol, {})]


@pytest.mark.slow
@pytest.mark.parametrize("case", _BIGGER_CASES, ids=lambda c: c.name)
def test_bigger_case(case: Any) -> None:
    """Up to a few minutes each (bench/s390x_bigger.py prints them: sync-request-2 280,600
    executions on s390x, sync-broadcast-3 216,000, ibs-start-stop 130,560)."""
    v = run_case(case)
    assert v.verdict == VERIFIED and v.expected, v.as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in cases() if c.expect == VERIFIED],
                         ids=lambda c: f"{c.name}[{c.memory_model}]")
def test_default_verified_case(case: Any) -> None:
    v = run_case(case)
    assert v.verdict == VERIFIED, v.as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["s390x", "s390x-unified"])
@pytest.mark.parametrize("model", ["sc", "pso"])
def test_kernel_and_unified_under_other_models(protocol: str, model: str) -> None:
    for scenario in EXPECTED[protocol]:
        _, r = _explore(protocol, scenario, model)
        assert r.ok, (scenario, [v.format() for v in r.violations])


def test_reports_tell_an_s390x_counterexample_in_words(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`vcpureq check --report` prints summarize()'s account under the violation."""
    from click.testing import CliRunner

    from vcpureq.cli import main

    r = CliRunner().invoke(main, ["check", "--protocol", "s390x-async-prefix",
                                  "--scenario", "prefix-unmap", "--report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    text = next(tmp_path.glob("*.txt")).read_text()
    assert "in words:" in text and "property: prefix" in text
    assert "entered SIE at step" in text and "unmapped at step" in text
    assert "class='words'" in next(tmp_path.glob("*.html")).read_text()
