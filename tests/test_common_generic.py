"""vcpureq.requests, vcpureq.common and the generic architecture, explored with the model.

Unit tests run one-thread programs (no vCPU threads: the test plays the vCPU by setting
its mode). Scenario tests explore every Mazurkiewicz trace (DPOR, SC) of the built-in
scenarios: the correct ``generic`` architecture passes them all, the deliberately broken
``generic-check-before-mode`` loses a request and the counterexample replays exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from vcpureq.arch import ARCHES, get_arch
from vcpureq.common import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    Kvm,
    check_request,
    clear_request,
    make_all_cpus_request,
    make_request,
    make_vcpus_request_mask,
    request_pending,
    set_request,
    vcpu_kick,
)
from vcpureq.common import test_request as kvm_test_request  # not a pytest test
from vcpureq.model import explore, replay, replay_execution
from vcpureq.model.kernel import READ_ONCE, WRITE_ONCE
from vcpureq.requests import (
    ARCH_REQUESTS,
    DISABLE_IBS,
    ENABLE_IBS,
    EVENT,
    IRQ_PENDING,
    KVM_REQUEST_MASK,
    KVM_REQUEST_NO_ACTION,
    KVM_REQUEST_NO_WAKEUP,
    KVM_REQUEST_WAIT,
    REFRESH_GUEST_PREFIX,
    REQ_OUTSIDE_GUEST_MODE,
    SLEEP,
    TLB_FLUSH,
    UNBLOCK,
    VM_DEAD,
    Request,
    from_number,
    lookup,
)
from vcpureq.scenarios import KICKED_OUT, SAW_BEFORE_ENTRY, SCENARIOS


def run_alone(program: Any) -> Any:
    """Explore a one-thread program and return its only outcome."""
    ex = explore(program)
    assert ex.complete and not ex.violations, [v.format() for v in ex.violations]
    (outcome,) = ex.outcomes
    return outcome


# --- requests -------------------------------------------------------------------------


def test_request_layout_matches_kvm_host_h() -> None:
    assert KVM_REQUEST_MASK == 0xFF
    assert int(KVM_REQUEST_NO_WAKEUP) == 1 << 8
    assert int(KVM_REQUEST_WAIT) == 1 << 9
    assert int(KVM_REQUEST_NO_ACTION) == 1 << 10
    assert TLB_FLUSH.value == 0 | (1 << 9) | (1 << 8)
    assert TLB_FLUSH.wait and TLB_FLUSH.no_wakeup and not TLB_FLUSH.no_action
    assert VM_DEAD.number == 1 and VM_DEAD.wait and VM_DEAD.no_wakeup
    assert UNBLOCK.value == 2 and not (UNBLOCK.wait or UNBLOCK.no_wakeup)
    assert REQ_OUTSIDE_GUEST_MODE.no_action and REQ_OUTSIDE_GUEST_MODE.wait
    assert int(TLB_FLUSH) & KVM_REQUEST_MASK == 0
    assert TLB_FLUSH & KVM_REQUEST_WAIT  # reads as in C


def test_arch_requests_start_at_bit_8() -> None:
    assert (ENABLE_IBS.number, DISABLE_IBS.number) == (8, 9)
    assert REFRESH_GUEST_PREFIX.number == 14
    assert REFRESH_GUEST_PREFIX.wait and REFRESH_GUEST_PREFIX.no_wakeup
    assert SLEEP.number == 8 and SLEEP.wait and SLEEP.no_wakeup
    assert IRQ_PENDING.number == 9 and not IRQ_PENDING.wait
    assert EVENT.number == 14 and EVENT.arch == "x86"
    for arch, table in ARCH_REQUESTS.items():
        assert all(r.number >= 8 and r.arch == arch for r in table.values())


def test_lookup_by_name_and_number() -> None:
    assert lookup("TLB_FLUSH") is TLB_FLUSH
    assert lookup("KVM_REQ_TLB_FLUSH") is TLB_FLUSH
    assert lookup("refresh_guest_prefix") is REFRESH_GUEST_PREFIX
    assert lookup("SLEEP", "arm64") is SLEEP
    with pytest.raises(KeyError, match="SLEEP"):
        lookup("SLEEP", "s390x")
    # The same bit is a different request on each architecture.
    assert from_number(14, "s390x") is REFRESH_GUEST_PREFIX
    assert from_number(14, "x86") is EVENT
    assert from_number(0) is TLB_FLUSH  # not the never-stored OUTSIDE_GUEST_MODE
    assert from_number(200).name == "REQ_200"
    with pytest.raises(ValueError):
        Request("TOO_BIG", 256)


# --- kvm_host.h request helpers ------------------------------------------------------


def test_make_check_test_clear_pending() -> None:
    def program() -> tuple[Any, ...]:
        vcpu = Kvm(get_arch("generic"), 1).vcpus[0]
        idle = request_pending(vcpu)
        make_request(TLB_FLUSH, vcpu)
        make_request(EVENT, vcpu)
        mask = READ_ONCE(vcpu.requests)
        tested = kvm_test_request(TLB_FLUSH, vcpu), kvm_test_request(UNBLOCK, vcpu)
        checked = check_request(TLB_FLUSH, vcpu), check_request(TLB_FLUSH, vcpu)
        clear_request(EVENT, vcpu)
        return idle, mask, tested, checked, request_pending(vcpu)

    assert run_alone(program) == (False, 1 | 1 << 14, (True, False), (True, False), False)


def test_make_request_refuses_no_action() -> None:
    def program() -> str:
        vcpu = Kvm(get_arch("generic"), 1).vcpus[0]
        try:
            make_request(REQ_OUTSIDE_GUEST_MODE, vcpu)
        except ValueError as e:
            return str(e)
        return "stored"

    assert "NO_ACTION" in run_alone(program)


# --- kvm_main.c kick and broadcast --------------------------------------------------


def test_vcpu_kick_ipis_only_a_vcpu_in_guest_mode_and_only_once() -> None:
    def program() -> tuple[Any, ...]:
        kvm = Kvm(get_arch("generic"), 1)
        vcpu, cpu = kvm.vcpus[0], kvm.host.cpus[0]
        vcpu_kick(vcpu)  # OUTSIDE_GUEST_MODE: the vCPU checks requests before entry
        outside = READ_ONCE(vcpu.mode), READ_ONCE(cpu.ipi_sent)
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)
        vcpu_kick(vcpu)  # the first kicker moves the mode to EXITING and sends the IPI
        vcpu_kick(vcpu)  # a later kick finds EXITING: no second IPI
        return outside, READ_ONCE(vcpu.mode), READ_ONCE(cpu.ipi_sent)

    assert run_alone(program) == ((OUTSIDE_GUEST_MODE, 0), EXITING_GUEST_MODE, 1)


def test_set_request_sets_and_kicks() -> None:
    def program() -> tuple[Any, ...]:
        kvm = Kvm(get_arch("generic"), 1)
        vcpu = kvm.vcpus[0]
        WRITE_ONCE(vcpu.mode, IN_GUEST_MODE)
        set_request(UNBLOCK, vcpu)
        return kvm_test_request(UNBLOCK, vcpu), READ_ONCE(kvm.host.cpus[0].ipi_sent)

    assert run_alone(program) == (True, 1)


def test_broadcast_ipis_the_cpus_that_need_it() -> None:
    def program() -> tuple[Any, ...]:
        kvm = Kvm(get_arch("generic"), 3)
        WRITE_ONCE(kvm.vcpus[0].mode, IN_GUEST_MODE)
        WRITE_ONCE(kvm.vcpus[2].mode, EXITING_GUEST_MODE)
        called = make_all_cpus_request(kvm, UNBLOCK)  # plain: only IN_GUEST_MODE needs it
        requests = tuple(READ_ONCE(v.requests) for v in kvm.vcpus)
        ipis = tuple(READ_ONCE(c.ipi_sent) for c in kvm.host.cpus)
        # NO_ACTION: nothing stored; vCPU 1 is outside guest mode, nothing to send.
        quiet = make_vcpus_request_mask(kvm, REQ_OUTSIDE_GUEST_MODE, [1])
        return called, requests, ipis, quiet, READ_ONCE(kvm.vcpus[1].requests)

    called, requests, ipis, quiet, untouched = run_alone(program)
    assert called and requests == (1 << 2,) * 3 and ipis == (1, 0, 0)
    assert not quiet and untouched == 1 << 2


def test_architecture_registry() -> None:
    assert {"generic", "generic-check-before-mode"} <= set(ARCHES)
    assert get_arch("generic").name == "generic"
    with pytest.raises(KeyError, match="unknown architecture"):
        get_arch("vax")


# --- scenarios, explored ----------------------------------------------------------------

CORRECT = ["async-request", "set-request", "sync-request", "payload"]
#: the catalogue's big set for the generic architecture (BIG_CASES): 10k-41k executions
#: each under SC, tens of seconds
BIG = ["async-request-2", "sync-request-2", "sync-request-many", "broadcast-wait"]


def explore_scenario(name: str, arch: str) -> Any:
    return explore(SCENARIOS[name].program(arch), strategy="dpor", memory_model="sc")


def assert_correct(name: str) -> None:
    ex = explore_scenario(name, "generic")
    assert ex.complete and not ex.violations, [v.format() for v in ex.violations]
    assert ex.executions > 1
    met = {how for outcome in ex.outcomes for how in outcome}
    assert met == {SAW_BEFORE_ENTRY, KICKED_OUT}, ex.outcomes


@pytest.mark.parametrize("name", CORRECT)
def test_generic_arch_passes(name: str) -> None:
    assert_correct(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_generic_arch_passes_the_big_scenarios(name: str) -> None:
    assert_correct(name)


def test_big_set_is_the_catalogues() -> None:
    from vcpureq.scenarios import BIG_CASES

    assert set(BIG) == set(BIG_CASES["generic"])
    assert set(CORRECT) | set(BIG) == {n for n, sc in SCENARIOS.items() if not sc.requires}


BROKEN = [
    ("async-request", "TLB_FLUSH pending and no IPI on its way: the request is lost"),
    ("async-request-2", "pending and no IPI on its way: the request is lost"),
    ("payload", "TLB_FLUSH pending and no IPI on its way: the request is lost"),
    ("sync-request", "entered the guest with TLB_FLUSH pending although "
                     "set_sync_request(TLB_FLUSH) had returned"),
    ("broadcast-wait", "make_all_cpus_request(TLB_FLUSH) returned but"),
]


@pytest.mark.parametrize(("name", "lost"), BROKEN, ids=[n for n, _ in BROKEN])
def test_check_before_mode_loses_a_request_and_replays(name: str, lost: str) -> None:
    program = SCENARIOS[name].program("generic-check-before-mode")
    ex = explore(program, strategy="dpor", memory_model="sc")
    assert ex.violations, "the broken variant was not caught"
    v = ex.violations[0]
    assert v.kind == "assertion" and lost in v.message, v.format()
    assert replay(program, v.schedule) == v.trace
    _trace, _ex, end = replay_execution(program, v.schedule)
    assert end == (v.kind, v.message)
