"""x86, arm64 and ppc64 on the simulated host: each correct architecture verified on
the scenarios that apply to it, each historical bug variant showing its counterexample
(replayed exactly), the kernel finding on kvm_make_request_and_kick and its fix, and a
user's variant through the CLI.

Every case is an exhaustive DPOR exploration under the architecture's default memory
model (x86: TSO, arm64 and ppc64: PSO) unless said otherwise. Only applicable
combinations are generated (no skips); the big generic scenarios (the catalogue's big
set, ``vcpureq.scenarios.BIG_CASES``, and x86's two biggest default ones) are marked
slow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import vcpureq.arch.arm64 as arm64_module
from vcpureq.arch import ARCHES, get_arch
from vcpureq.arch.kvm_run import RunLoopArch
from vcpureq.catalogue import COUNTEREXAMPLE, VERIFIED
from vcpureq.cli import main
from vcpureq.model import explore, replay, replay_execution
from vcpureq.scenarios import (
    BIG_CASES,
    KERNEL_FINDINGS,
    KICKED_OUT,
    KNOWN_BUGS,
    PROPOSALS,
    SCENARIOS,
    cases,
    cases_for_protocol,
)

REPO = Path(__file__).resolve().parent.parent
CORRECT = ("x86", "arm64", "ppc64")


def _explore(protocol: str, scenario: str, model: str | None = None):  # type: ignore[no-untyped-def]
    program = SCENARIOS[scenario].program(protocol)
    return program, explore(program, memory_model=model or ARCHES[protocol].memory_model)


def _verified(protocol: str, scenario: str, model: str | None = None) -> int:
    _, ex = _explore(protocol, scenario, model)
    assert ex.complete and not ex.violations, [v.format() for v in ex.violations]
    assert ex.executions > 1
    return ex.executions


# --- registry --------------------------------------------------------------------------------


def test_architectures_and_their_defaults() -> None:
    assert ARCHES["x86"].memory_model == "tso"
    assert ARCHES["arm64"].memory_model == "pso"
    assert ARCHES["ppc64"].memory_model == "pso"
    for name in CORRECT:
        assert issubclass(ARCHES[name], RunLoopArch)
        assert {"block", "interrupts", "migration"} <= ARCHES[name].features
    assert "lockless-walk" in ARCHES["x86"].features
    assert "pause" in ARCHES["arm64"].features
    assert get_arch("ppc64").should_kick(None)  # type: ignore[arg-type]  # always 1
    for variant in KNOWN_BUGS:
        assert variant in ARCHES, variant
    assert "PSO under-approximates" in (arm64_module.__doc__ or "")


def test_host_scenarios_run_only_where_their_features_are() -> None:
    assert not SCENARIOS["tlb-flush-walk"].applies_to("arm64")
    assert SCENARIOS["tlb-flush-walk"].applies_to("x86")
    assert SCENARIOS["pause-resume"].applies_to("arm64")
    assert not SCENARIOS["pause-resume"].applies_to("ppc64")
    assert not SCENARIOS["halt-wake"].applies_to("generic")
    assert SCENARIOS["async-request"].applies_to("ppc64")


def test_catalogue_expectations_for_the_host_architectures() -> None:
    default = {(c.protocol, c.scenario, c.memory_model): c for c in cases()}
    big = {(c.protocol, c.scenario, c.memory_model): c for c in cases(which="big")}
    assert not default.keys() & big.keys()
    for name in CORRECT:
        got = {c.scenario for k, c in (default | big).items() if c.protocol == name}
        assert got == {s for s, sc in SCENARIOS.items() if sc.applies_to(name)}
        for c in (default | big).values():
            if c.protocol == name:
                finding = c.scenario in KERNEL_FINDINGS.get(name, {})
                assert c.expect == (COUNTEREXAMPLE if finding else VERIFIED), c.name
        assert {c.scenario for c in big.values() if c.protocol == name} == set(
            BIG_CASES.get(name, ()))
    assert default[("x86-no-mb-after-mode", "async-request", "sc")].expect == VERIFIED
    assert default[("x86-no-mb-after-mode", "async-request", "tso")].expect == COUNTEREXAMPLE
    assert default[("arm64-swait-active", "pause-resume", "pso")].expect == COUNTEREXAMPLE
    assert default[("arm64-swait-active", "pause-resume", "sc")].expect == VERIFIED
    for proposal, scenarios in PROPOSALS.items():
        assert {c.scenario for c in (default | big).values()
                if c.protocol == proposal} == set(scenarios)


def test_user_variants_skip_the_kernel_findings_and_big_set_of_their_base() -> None:
    from vcpureq.arch.x86 import X86Arch

    class Mine(X86Arch):
        name = "mine"

    scenarios = {c.scenario for c in cases_for_protocol(Mine, "Mine")}
    assert "kick-wait-race" not in scenarios and "tlb-flush-walk" in scenarios
    assert not scenarios & set(BIG_CASES["x86"])
    assert all(c.memory_model == "tso" for c in cases_for_protocol(Mine, "Mine"))


# --- the correct architectures: only the applicable combinations ------------------------------

HOST_CASES = [
    (p, s) for p in CORRECT for s, sc in SCENARIOS.items()
    if sc.requires and sc.applies_to(p) and s not in KERNEL_FINDINGS.get(p, {})
]
#: generic scenarios of the default set that take several seconds each (10k+ executions)
#: run with the big set, marked slow
_SLOW_DEFAULT = {("x86", "async-request-2"), ("x86", "broadcast-wait")}
GENERIC_CASES = [
    (p, s) for p in CORRECT for s, sc in SCENARIOS.items()
    if not sc.requires and s not in BIG_CASES.get(p, ()) and (p, s) not in _SLOW_DEFAULT
]
BIG_GENERIC_CASES = sorted(_SLOW_DEFAULT) + [
    (p, s) for p in CORRECT for s in sorted(BIG_CASES.get(p, ())) if not SCENARIOS[s].requires]


@pytest.mark.parametrize(("protocol", "scenario"), HOST_CASES,
                         ids=[f"{p}/{s}" for p, s in HOST_CASES])
def test_correct_architecture_on_host_scenarios(protocol: str, scenario: str) -> None:
    _verified(protocol, scenario)


@pytest.mark.parametrize(("protocol", "scenario"), GENERIC_CASES,
                         ids=[f"{p}/{s}" for p, s in GENERIC_CASES])
def test_correct_architecture_on_generic_scenarios(protocol: str, scenario: str) -> None:
    _verified(protocol, scenario)


@pytest.mark.slow
@pytest.mark.parametrize(("protocol", "scenario"), BIG_GENERIC_CASES,
                         ids=[f"{p}/{s}" for p, s in BIG_GENERIC_CASES])
def test_correct_architecture_on_bigger_generic_scenarios(protocol: str, scenario: str) -> None:
    _verified(protocol, scenario)


def test_kicks_are_met_both_ways_on_x86() -> None:
    _, ex = _explore("x86", "async-request")
    met = {how for outcome in ex.outcomes for how in outcome}
    assert KICKED_OUT in met and len(met) == 2


def test_ppc64_keeps_in_guest_mode_between_exits_as_book3s_pr_does() -> None:
    """kvmppc_handle_exit_pr re-enters through kvmppc_prepare_to_enter without writing
    OUTSIDE_GUEST_MODE: after its first entry a ppc64 vCPU's mode never says OUTSIDE."""
    runs: list[list[object]] = []
    program = SCENARIOS["async-request"].program("ppc64")
    explore(program, memory_model="pso", on_execution=lambda o, events: runs.append(events))
    stores = [e.value for events in runs for e in events  # type: ignore[attr-defined]
              if e.op in ("store", "flush") and e.cell_names == ("vcpu0.mode",)]
    assert stores and set(stores) == {1}


# --- historical bugs: each variant shows its counterexample, which replays exactly ----------

#: PROTOCOL.md section 9, and where each bug that applies to x86/arm64/ppc64 (or to the
#: generic run loop) is reproduced. s390 2015 belongs to vcpureq/arch/s390x.py, Cloud
#: Hypervisor's signal race to vcpureq/arch/kvm_user.py.
SECTION_9 = {
    "powerpc: mode set with only smp_wmb after the request check":
        ("ppc64-mode-after-check", "generic-check-before-mode"),
    "missing full barrier between IN_GUEST_MODE and reading requests":
        ("x86-no-mb-after-mode", "arm64-no-mb-after-mode", "ppc64-no-mb-after-mode",
         "generic-no-mb-after-mode"),
    "arm 2017: IRQ injection by a request-less kick": ("arm64-irq-kick-no-request",),
    "arm 2017: the pause flag set just as a vCPU entered the guest": ("arm64-pause-2017",),
    "swait_active without a barrier in the waker": ("arm64-swait-active",),
    "vcpu_kick not honouring WAIT (AMD SNP AP destroy, 2025)": ("x86-kick-no-wait",),
}

VARIANTS = [
    ("x86-no-mb-after-mode", "async-request", "tso", "the request is lost"),
    ("x86-no-mb-after-mode", "sync-request", "tso", "the request is lost"),
    ("x86-no-mb-after-mode", "payload", "tso", "the request is lost"),
    ("x86-kick-no-wait", "kick-wait", "tso",
     "sync: make_request_and_kick(UPDATE_PROTECTED_GUEST_STATE) returned but vCPU 0 is "
     "running the guest with UPDATE_PROTECTED_GUEST_STATE not handled"),
    ("x86-walk-ipi-in-guest-only", "tlb-flush-walk", "tso",
     "vCPU 0's lockless walk read shadow page 1 after it was freed"),
    ("arm64-irq-kick-no-request", "irq-inject", "pso",
     "no lost interrupt: vCPU 0 runs the guest with an interrupt queued that it was never "
     "given"),
    ("arm64-irq-kick-no-request", "irq-inject", "sc", "the interrupt is lost"),
    ("arm64-pause-2017", "pause-resume", "pso",
     "pause: kvm_arm_halt_guest returned but vCPU 0 is running the guest"),
    ("arm64-swait-active", "pause-resume", "pso",
     "no lost wakeup: vCPU 0 sleeps in kvm_vcpu_sleep although its wake-up condition holds"),
    ("arm64-no-mb-after-mode", "async-request", "pso", "the request is lost"),
    ("arm64-no-mb-after-mode", "sync-request", "pso", "the request is lost"),
    ("ppc64-mode-after-check", "broadcast-wait", "pso",
     "TLB_FLUSH pending and no IPI on its way"),
    ("ppc64-mode-after-check", "kick-all-wait-all", "sc", "TLB_FLUSH"),
    ("ppc64-mode-after-check", "kick-all-wait-all", "pso", "TLB_FLUSH"),
    ("ppc64-no-mb-after-mode", "broadcast-wait", "pso", "the request is lost"),
    ("ppc64-no-mb-after-mode", "kick-all-wait-all", "pso", "the request is lost"),
]


def test_every_host_variant_and_section_9_bug_is_covered() -> None:
    host_variants = {n for n, c in ARCHES.items()
                     if issubclass(c, RunLoopArch) and n not in CORRECT
                     and n not in PROPOSALS}
    tested = {p for p, *_ in VARIANTS}
    assert host_variants == tested
    for bug, variants in SECTION_9.items():
        assert all(v in KNOWN_BUGS for v in variants), bug
    for p, s, model, _ in VARIANTS:  # the catalogue expects the counterexample too
        buggy = ARCHES[p].buggy_under
        assert s in KNOWN_BUGS[p] and (buggy is None or model in buggy), (p, s)


@pytest.mark.parametrize(("protocol", "scenario", "model", "words"), VARIANTS,
                         ids=[f"{p}/{s}/{m}" for p, s, m, _ in VARIANTS])
def test_variant_shows_its_counterexample_and_replays(protocol: str, scenario: str,
                                                       model: str, words: str) -> None:
    program, ex = _explore(protocol, scenario, model)
    assert ex.violations, f"{protocol} on {scenario} under {model}: bug not found"
    v = ex.violations[0]
    assert v.kind == "assertion" and words in v.message, v.format()
    assert "; how: " in v.message and "step " in v.message  # how it broke, with steps
    assert replay(program, v.schedule) == v.trace
    _trace, _ex, end = replay_execution(program, v.schedule)
    assert end == (v.kind, v.message)


@pytest.mark.parametrize(("protocol", "scenario", "model"), [
    ("x86-no-mb-after-mode", "async-request", "sc"),
    ("x86-no-mb-after-mode", "sync-request", "sc"),
    ("arm64-no-mb-after-mode", "async-request", "sc"),
    ("ppc64-no-mb-after-mode", "kick-all-wait-all", "sc"),
    ("arm64-swait-active", "pause-resume", "sc"),
])
def test_store_buffering_bugs_are_invisible_under_sc(protocol: str, scenario: str,
                                                     model: str) -> None:
    _verified(protocol, scenario, model)


def test_ppc64_kick_alone_is_never_lost_even_without_the_barriers() -> None:
    """should_kick is always 1: kvm_vcpu_kick IPIs whatever the mode, so only the
    mode-based broadcast shows the powerpc barrier bugs."""
    _verified("ppc64-mode-after-check", "async-request")
    _verified("ppc64-no-mb-after-mode", "async-request")


def test_missing_mb_counterexample_needs_the_store_buffer() -> None:
    _, ex = _explore("x86-no-mb-after-mode", "async-request", "tso")
    ops = [(e.op, e.cell_names) for e in ex.violations[0].trace]
    assert ops.index(("cas", ("vcpu0.mode",))) < ops.index(("flush", ("vcpu0.mode",)))


def test_counterexample_steps_name_the_trace_events() -> None:
    """The steps a message cites are the trace's: "made at step N" is the set_bit of
    the request, "went into the guest after step M" the vCPU's last check."""
    _, ex = _explore("x86-no-mb-after-mode", "async-request", "tso")
    v = ex.violations[0]
    made = int(v.message.split(" was made at step ")[1].split(",")[0])
    entry = int(v.message.split("went into the guest after step ")[1].split(")")[0])
    assert v.trace[made].op == "fetch_or" and v.trace[made].cell_names == ("vcpu0.requests",)
    assert v.trace[entry].thread_name == "vcpu0" and v.trace[entry].op == "load"
    assert v.trace[entry].cell_names == ("vcpu0.requests",) and v.trace[entry].value == 0


# --- the kernel finding: kvm_make_request_and_kick does not wait if another kick won ---------


@pytest.mark.parametrize("protocol", ["x86", "arm64"])
def test_make_request_and_kick_does_not_wait_when_another_kick_won(protocol: str) -> None:
    """kvm_make_request_and_kick(WAIT) waits only when its own cmpxchg saw
    IN_GUEST_MODE; after a concurrent kvm_vcpu_kick moved the vCPU to
    EXITING_GUEST_MODE it sends no IPI and returns while the vCPU is still in the guest
    with the request pending (the other kicker's IPI not yet taken)."""
    program, ex = _explore(protocol, "kick-wait-race")
    assert ex.violations
    v = ex.violations[0]
    assert v.message.startswith("sync: make_request_and_kick(")
    assert KERNEL_FINDINGS[protocol]["kick-wait-race"] in v.message
    trace = v.trace
    kicker_cas = next(e for e in trace if e.thread_name == "kicker" and e.op == "cas")
    requester_cas = next(e for e in trace if e.thread_name == "requester" and e.op == "cas"
                         and e.cell_names == ("vcpu0.mode",))
    assert kicker_cas.value == (1, 2), "the other kicker moved IN_GUEST -> EXITING"
    assert requester_cas.step > kicker_cas.step and requester_cas.value == (2, 2)
    # the requester sent no IPI of its own: the only IPI to CPU 0 is the kicker's
    sends = [e for e in trace if e.op == "fetch_add" and e.cell_names == ("cpu0.ipi_sent",)]
    assert [e.thread_name for e in sends] == ["kicker"]
    assert "not taken" in v.message  # the kicker's IPI is still pending at the return
    assert replay(program, v.schedule) == trace
    assert replay_execution(program, v.schedule)[2] == (v.kind, v.message)


def test_ppc64_always_waits_since_should_kick_is_always_true() -> None:
    _verified("ppc64", "kick-wait-race")


def test_proposed_fix_waits_for_exiting_vcpus_on_arm64() -> None:
    _verified("arm64-kick-wait-exiting", "kick-wait-race")


@pytest.mark.slow
def test_proposed_fix_waits_for_exiting_vcpus_on_x86() -> None:
    _verified("x86-kick-wait-exiting", "kick-wait-race")


# --- a user's variant in their own file, through the CLI --------------------------------------

EXAMPLE = REPO / "examples" / "user_variant.py"


def test_user_variant_file_gives_a_counterexample_and_exit_status_1() -> None:
    spec = f"{EXAMPLE}:X86NoMbBeforeRequestCheck"
    result = CliRunner().invoke(
        main, ["check", "--protocol", spec, "--scenario", "async-request"]
    )
    assert result.exit_code == 1, result.output
    assert "counterexample" in result.output
    assert "TLB_FLUSH pending and no IPI on its way: the request is lost" in result.output


def test_user_variant_is_verified_under_sc() -> None:
    spec = f"{EXAMPLE}:X86NoMbBeforeRequestCheck"
    result = CliRunner().invoke(
        main, ["check", "--protocol", spec, "--scenario", "async-request",
               "--memory-model", "sc"]
    )
    assert result.exit_code == 0, result.output


def test_user_variant_that_keeps_the_protocol_is_verified() -> None:
    spec = f"{EXAMPLE}:Ppc64PlainKick"
    result = CliRunner().invoke(
        main, ["check", "--protocol", spec, "--scenario", "sync-request",
               "--scenario", "kick-all-wait-all"]
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output


def test_vcpureq_command_end_to_end_exit_status() -> None:
    """The installed console script, in its own process: a user's broken variant makes
    `vcpureq check` exit non-zero and print what broke."""
    exe = Path(sys.executable).parent / "vcpureq"
    spec = f"{EXAMPLE}:X86NoMbBeforeRequestCheck"
    run = subprocess.run([str(exe), "check", "--protocol", spec, "--scenario", "payload"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "no lost request" in run.stdout and "how:" in run.stdout


def test_user_variant_counterexample_replays_through_the_cli() -> None:
    from vcpureq.catalogue import load_object

    program = load_object(f"{EXAMPLE}:async_request_program")
    v = explore(program, memory_model="tso").violations[0]
    result = CliRunner().invoke(
        main, ["replay", f"{EXAMPLE}:async_request_program", v.schedule])
    assert result.exit_code == 1, result.output
    assert " ".join(v.message.split()) in " ".join(result.output.split())


def test_swait_active_is_harmless_after_an_atomic_rmw() -> None:
    """The barrier-free waker check loses a wakeup only after a plain store (arm64's
    ``pause = false``): interrupt injection sets its bits with atomic RMWs (x86: LOCKed
    instructions, full barriers under TSO), so halt-wake verifies with the knockout."""
    from vcpureq.arch.x86 import X86Arch

    class X86SwaitActive(X86Arch):
        name = "x86-swait-active"
        knockouts = frozenset({"vcpu_wake_up:smp_mb"})

    ex = explore(SCENARIOS["halt-wake"].program(X86SwaitActive), memory_model="tso")
    assert ex.ok, [v.format() for v in ex.violations]
