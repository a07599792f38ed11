"""Requests on real vCPUs: the kvm_user architecture's protocol code and vcpureq.common,
unchanged, on /dev/kvm threads (vcpureq.kvm.vmm). Skipped, with the reason, where
/dev/kvm or the assembler is unusable. No timed assertions: every wait is bounded and a
failure names what did not happen."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from kvm_support import NEEDS_KVM  # tests/ is on sys.path

from vcpureq.arch.kvm_user import PAUSE, PING, VARIANTS, pause_vcpus, resume_vcpus
from vcpureq.common import (
    OUTSIDE_GUEST_MODE,
    make_all_cpus_request,
    set_request,
    set_sync_request,
    set_sync_request_many,
)
from vcpureq.common import test_request as kvm_test_request  # not a pytest test
from vcpureq.kvm import GuestCrashed, guests
from vcpureq.kvm.ioctls import ExitReason
from vcpureq.kvm.vmm import CallHandle, VcpuStopped, Vmm
from vcpureq.model import WaitTimeout
from vcpureq.model.kernel import READ_ONCE
from vcpureq.requests import TLB_FLUSH

pytestmark = NEEDS_KVM

CORRECT = ("kvm-user", "kvm-user-sigmask")
CRIT_GPA = guests.CRITICAL_SEGMENT << 4
MAGIC = guests.CRITICAL_MAGIC.to_bytes(2, "little")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def nothing_leaks() -> Iterator[None]:
    """Every test leaves the fds and threads it found: each VM closed its vCPU, VM and
    /dev/kvm fds and joined its vCPU threads, whatever went wrong inside."""
    fds, threads = _fds(), set(threading.enumerate())
    yield
    assert set(threading.enumerate()) == threads
    assert _fds() == fds


def progress(vmm: Vmm, i: int) -> int:
    return vmm.vcpus[i].read_data(guests.PROGRESS)


def wait_moving(vmm: Vmm, i: int, timeout: float = 5.0) -> None:
    """Wait until vCPU i's spinner counts (it is in the guest)."""
    p0 = progress(vmm, i)
    deadline = time.monotonic() + timeout
    while progress(vmm, i) == p0:
        vmm.check()
        assert time.monotonic() < deadline, f"vCPU {i}'s spinner does not run"
        time.sleep(0.0005)


def eventually(predicate, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def assert_still(vmm: Vmm, settle: float = 0.03) -> None:
    """No spinner moves (every vCPU is out of the guest)."""
    before = [progress(vmm, i) for i in range(len(vmm))]
    time.sleep(settle)
    assert [progress(vmm, i) for i in range(len(vmm))] == before


# --- the common API on real vCPUs ---------------------------------------------------------


@pytest.mark.parametrize("variant", CORRECT)
def test_common_api_works_unchanged_on_real_vcpus(variant: str) -> None:
    with Vmm(guests.spinner(), 3, variant=variant) as vmm:
        vcpus = vmm.kvm.vcpus
        for i in range(3):
            wait_moving(vmm, i)
        # set_request: returns at once; the request is handled soon after.
        set_request(PING, vcpus[0])
        eventually(lambda: vmm.vcpus[0].state.handled["PING"] == 1, "PING handled")
        # set_sync_request: on return vCPU 1 is out of the guest or already handled it.
        set_sync_request(PING, vcpus[1])
        assert READ_ONCE(vcpus[1].mode) == OUTSIDE_GUEST_MODE or not kvm_test_request(
            PING, vcpus[1])
        # set_sync_request_many and make_all_cpus_request(WAIT): kick all, wait all.
        chosen = pause_vcpus(vcpus)
        set_sync_request_many(PAUSE, chosen)
        assert_still(vmm)
        resume_vcpus(vcpus)
        for i in range(3):
            wait_moving(vmm, i)
        pause_vcpus(vcpus)
        assert make_all_cpus_request(vmm.kvm, PAUSE)  # IPIs (signals) were sent
        assert_still(vmm)
        resume_vcpus(vcpus)
        make_all_cpus_request(vmm.kvm, TLB_FLUSH)  # WAIT|NO_WAKEUP, handled as a no-op
        for i in range(3):
            wait_moving(vmm, i)
        handled = [vmm.call(i, lambda t: dict(t.state.handled)) for i in range(3)]
        assert all(h.get("PAUSE", 0) >= 2 and h.get("TLB_FLUSH", 0) == 1 for h in handled)
        vmm.check()


# --- running a function on a vCPU's thread ------------------------------------------------


@pytest.mark.parametrize("variant", CORRECT)
def test_call_reads_registers_coherently_while_the_guest_runs(variant: str) -> None:
    """The counter guest copies ECX to EAX and reports it on port 0x10 every K
    increments (an I/O exit). Read on the vCPU thread, with the I/O completed, the
    registers always agree with the last report: ECX in [last, last + K] and EAX either
    the last report or ECX (between the copy and the out)."""
    k = 20

    def snapshot(t):  # type: ignore[no-untyped-def]
        regs = t._get_regs()
        reports = t.reports(guests.PORT_REPORT)
        return regs.rcx & 0xFFFFFFFF, regs.rax & 0xFFFFFFFF, reports[-1] if reports else 0

    with Vmm(guests.counter(k=k), 1, variant=variant) as vmm:
        vmm.vcpus[0].wait_for_report(guests.PORT_REPORT, count=3, timeout=10)
        for n in range(60):
            if n % 2:
                ecx, eax, last = vmm.call(0, snapshot)  # sync: set_sync_request(CALL)
            else:
                ecx, eax, last = vmm.call_async(0, snapshot).wait(5)  # set_request(CALL)
            assert last <= ecx <= last + k, (ecx, last)
            assert eax in (last, ecx), (eax, ecx, last)
        state = vmm.vcpus[0].state
        assert state.handled["CALL"] >= 1 and state.completions >= 1  # I/O completed first


def test_call_after_an_mmio_exit_sees_the_access_completed() -> None:
    """api.rst 5: an MMIO read completes only when KVM_RUN is entered again. Without a
    memslot behind the critical page every read is an MMIO exit; a call (CALL request)
    made then finds RIP past the load and AX holding the all-ones the VMM supplied,
    because the vCPU thread re-entered KVM_RUN once with immediate_exit first."""
    code = guests.critical_page().code
    after_load = code.index(bytes.fromhex("26a10000")) + 4  # movw %es:0, %ax
    with Vmm(guests.critical_page(), 1) as vmm:
        t = vmm.vcpus[0]
        t.wait_until(lambda v: v.mmio_count >= 1, 5, "the first MMIO exit")
        regs = vmm.get_regs(0)
        assert regs.rip >= after_load and regs.rax & 0xFFFF in (0xFFFF, 0)
        assert t.state.completions >= 1


def test_call_errors_reach_the_caller_and_the_vcpu_goes_on() -> None:
    with Vmm(guests.spinner(), 1) as vmm:
        with pytest.raises(ZeroDivisionError):
            vmm.call(0, lambda t: 1 // 0)
        handle = vmm.call_async(0, lambda t: [][1])
        with pytest.raises(IndexError):
            handle.wait(5)
        wait_moving(vmm, 0)
        assert vmm.call(0, lambda t: t.index) == 0


# --- pause, interrupts, memslots, stop -----------------------------------------------------


@pytest.mark.parametrize("method", ["broadcast", "many", "one-by-one"])
def test_pause_and_resume_all(method: str) -> None:
    with Vmm(guests.spinner(), 4) as vmm:
        for _ in range(3):
            for i in range(4):
                wait_moving(vmm, i)
            with vmm.paused(method):
                assert all(READ_ONCE(v.mode) == OUTSIDE_GUEST_MODE or v.arch.pause.load()
                           for v in vmm.kvm.vcpus)
                assert_still(vmm)
                assert vmm.call(2, lambda t: t.index) == 2  # served while paused
                assert_still(vmm, 0.01)
        for i in range(4):
            wait_moving(vmm, i)


@pytest.mark.parametrize("variant", CORRECT)
def test_interrupt_wakes_a_halted_vcpu(variant: str) -> None:
    with Vmm([guests.halt(0x20), guests.spinner()], variant=variant) as vmm:
        t = vmm.vcpus[0]
        t.wait_until(lambda v: v.report_count(guests.PORT_READY) >= 1, 10, "the guest ready")
        for n in range(1, 6):
            t.wait_halted(5)
            vmm.interrupt(0, 0x20)
            assert t.wait_for_report(guests.PORT_IRQ, timeout=5) == [n]
        assert t.stats.irqs_injected == 5 and t.state.blocks >= 5
        # A call to a halted vCPU wakes it, runs, and leaves it halted.
        t.wait_halted(5)
        assert vmm.call(0, lambda v: v.state.halted) is True
        assert t.read_data(guests.IRQ_COUNT) == 5


def _start_critical() -> Vmm:
    """Two critical-page vCPUs whose page (memslot 1) is there before they start."""
    vmm = Vmm([guests.critical_page(k=50), guests.critical_page(k=50)],
              memslots=[(CRIT_GPA, 0x1000, MAGIC)])
    for t in vmm.vcpus:
        t.wait_for_report(guests.PORT_REPORT, timeout=10)
    return vmm


def test_remap_with_a_sync_request_is_never_seen_by_the_guest() -> None:
    """Each remap leaves the page missing for 2 ms, but inside vmm.paused(): every vCPU is
    out of the guest (make_all_cpus_request(PAUSE), a WAIT broadcast) and stays out."""
    vmm = _start_critical()
    try:
        for n in range(20):
            vmm.remap_memslot(1, sync=True, hold=0.002)
            vmm.vcpus[n % 2].wait_for_report(guests.PORT_REPORT, timeout=5)
        for t in vmm.vcpus:
            assert t.mmio_count == 0 and t.report_count(guests.PORT_MISSING) == 0
    finally:
        vmm.close()


def test_remap_without_sync_is_seen_by_the_guest() -> None:
    """The same remap without holding the vCPUs out: a running guest finds its page
    missing (an MMIO exit, reported on port 0x11). Repeated until seen, at most 200."""
    vmm = _start_critical()
    try:
        for _ in range(200):
            vmm.remap_memslot(1, sync=False, hold=0.002)
            if any(t.mmio_count for t in vmm.vcpus):
                break
            vmm.vcpus[0].wait_for_report(guests.PORT_REPORT, timeout=5)
        seen = [t for t in vmm.vcpus if t.mmio_count]
        assert seen, "200 unsynchronised remaps and no guest saw its page missing"
        access = seen[0].mmio_accesses()[0]
        assert (access.phys_addr, access.is_write) == (CRIT_GPA, False)
        seen[0].wait_until(lambda v: v.report_count(guests.PORT_MISSING) >= 1, 5,
                           "the guest to report its page missing")  # it read 0xffff
    finally:
        vmm.close()


def test_stop_ends_every_thread_and_later_requests_fail() -> None:
    with Vmm([guests.spinner(), guests.halt(0x21), guests.counter(k=100)]) as vmm:
        vmm.vcpus[1].wait_halted(10)
        vmm.pause_all()
        vmm.stop()
        assert not any(t.alive for t in vmm.vcpus)
        with pytest.raises(VcpuStopped, match="vCPU 0 has stopped"):
            set_sync_request(PING, vmm.kvm.vcpus[0])
        with pytest.raises(VcpuStopped):
            vmm.call(2, lambda t: 0)


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("guest, reasons", [
    (guests.triple_fault(), {ExitReason.SHUTDOWN}),
    (guests.invalid_instruction(), {ExitReason.SHUTDOWN, ExitReason.INTERNAL_ERROR}),
])
def test_crashed_guest_fails_requests_with_the_exit_reason(guest, reasons) -> None:  # type: ignore[no-untyped-def]
    with Vmm([guests.spinner(), guest]) as vmm:
        crashed = vmm.vcpus[1]
        crashed.thread.join(10)
        assert not crashed.alive
        with pytest.raises(VcpuStopped, match="vCPU 1 has stopped") as info:
            vmm.call(1, lambda t: t._get_regs())
        cause = info.value.__cause__
        assert isinstance(cause, GuestCrashed) and cause.exit_reason in reasons
        with pytest.raises(VcpuStopped):
            set_sync_request(PING, vmm.kvm.vcpus[1])
        with pytest.raises(GuestCrashed):
            vmm.check()
        assert vmm.call(0, lambda t: t.index) == 0  # the other vCPU is unaffected
        with pytest.raises(GuestCrashed):  # pausing the VM reports the stopped vCPU
            vmm.pause_all()
        vmm.resume_all()


def test_vcpu_thread_that_raises_fails_its_requesters() -> None:
    def bad_io(vcpu, port, is_out, size, data):  # type: ignore[no-untyped-def]
        if port == guests.PORT_REPORT and int.from_bytes(data, "little") >= 300:
            raise RuntimeError("device model bug")
        return None

    with Vmm([guests.counter(k=100)], on_io=bad_io) as vmm:
        vmm.vcpus[0].thread.join(10)
        assert not vmm.vcpus[0].alive
        with pytest.raises(VcpuStopped, match="device model bug"):
            vmm.ping(0)
        handle = CallHandle(vmm, 0, lambda t: 0)
        with pytest.raises(VcpuStopped):
            handle.wait(1)


def test_sync_request_to_a_vcpu_that_has_stopped_fails() -> None:
    """A call's exception, even SystemExit, is the caller's and the vCPU goes on; once
    the VM is stopped, a sync request (and a call) fails with VcpuStopped at once."""
    with Vmm([guests.spinner()]) as vmm:
        wait_moving(vmm, 0)
        handle = vmm.call_async(0, lambda t: (_ for _ in ()).throw(SystemExit("gone")))
        with pytest.raises(SystemExit):
            handle.wait(5)
        assert vmm.vcpus[0].alive
        vmm.stop()
        with pytest.raises(VcpuStopped, match="the VM was stopped"):
            set_sync_request(PING, vmm.kvm.vcpus[0])
        with pytest.raises(VcpuStopped):
            vmm.call(0, lambda t: 0, timeout=1)


# --- the three variants on real vCPUs: the window before KVM_RUN -------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kick_in_the_window_before_kvm_run(variant: str) -> None:
    """Hold the vCPU thread after its last check, with IN_GUEST_MODE published, kick it
    there (set_sync_request), then let it enter KVM_RUN. immediate_exit and the signal
    mask make that KVM_RUN return at once; with the empty handler the signal was taken
    in userspace and the sync request waits in vain (until its bound)."""
    entered = threading.Event()
    release = threading.Event()
    armed = [True]

    def hold(t):  # type: ignore[no-untyped-def]
        if armed[0]:
            armed[0] = False
            entered.set()
            release.wait(5)

    with Vmm([guests.spinner()], variant=variant, timeout=1.0) as vmm:
        t = vmm.vcpus[0]
        wait_moving(vmm, 0)
        t.before_entry = hold
        vmm.ping(0)  # the next entry holds
        assert entered.wait(5)
        errors: list[BaseException] = []

        def requester() -> None:
            try:
                set_sync_request(PING, vmm.kvm.vcpus[0])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        kicks = t.stats.kicks_sent
        r = threading.Thread(target=requester)
        r.start()
        deadline = time.monotonic() + 5
        while t.stats.kicks_sent == kicks and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert t.stats.kicks_sent > kicks, "the requester did not signal the vCPU"
        release.set()
        r.join(5)
        t.before_entry = None
        if variant == "kvm-user-empty-handler":
            assert errors and isinstance(errors[0], WaitTimeout)  # the kick was lost
            wait_moving(vmm, 0)  # and the guest kept running with PING pending
            assert kvm_test_request(PING, vmm.kvm.vcpus[0])
        else:
            assert not errors
