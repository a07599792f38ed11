"""Real vCPUs on /dev/kvm: guests run, kicks land, interrupts wake, memslots vanish under a
running guest, crashes are errors, and nothing leaks. Skipped (with the reason) where
/dev/kvm or the assembler is unusable."""

from __future__ import annotations

import os
import threading
import time

import pytest
from kvm_support import NEEDS_KVM  # tests/ is on sys.path

from vcpureq.kvm import (
    Cap,
    ExitReason,
    GuestCrashed,
    KickMode,
    Kvm,
    KvmUnavailable,
    VcpuError,
    VcpuTimeout,
    Vm,
    guests,
    info,
)
from vcpureq.kvm.ioctls import REQUIRED_CAPS

pytestmark = NEEDS_KVM

CRIT_GPA = guests.CRITICAL_SEGMENT << 4
MAGIC = guests.CRITICAL_MAGIC.to_bytes(2, "little")


def resend(mode: KickMode) -> float | None:
    """The racy variant needs Cloud Hypervisor's re-signal workaround to be reliable."""
    return 0.01 if mode is KickMode.EMPTY_HANDLER else None


def wait_progress(vcpu, timeout: float = 5.0) -> int:  # type: ignore[no-untyped-def]
    """Wait until the spinner's counter moves (the vCPU is in guest mode); return it."""
    p0 = vcpu.read_data(guests.PROGRESS)
    deadline = time.monotonic() + timeout
    while (p := vcpu.read_data(guests.PROGRESS)) == p0:
        vcpu.check()
        assert time.monotonic() < deadline, "the spinner does not run"
        time.sleep(0.001)
    return p


def test_api_version_and_capabilities() -> None:
    with Kvm() as kvm:
        assert kvm.api_version == 12
        for cap in REQUIRED_CAPS:
            assert kvm.check_extension(cap) > 0, cap
        assert kvm.vcpu_mmap_size >= 4096
    report = info()
    assert report["available"] is True and report["api_version"] == 12
    assert report["capabilities"]["KVM_CAP_IMMEDIATE_EXIT"] > 0
    assert report["capabilities"]["KVM_CAP_NR_MEMSLOTS"] > 2


def test_missing_capability_is_named() -> None:
    with Kvm() as kvm:
        absent = [c for c in Cap if kvm.check_extension(c) == 0]
    if not absent:
        pytest.skip("this kernel has every capability we know of")
    with pytest.raises(KvmUnavailable, match=f"KVM_CAP_{absent[0].name}"):
        Kvm(required=(absent[0],))


def test_counter_reports_increasing_values() -> None:
    with Vm() as vm:
        vcpu = vm.add_vcpu(guests.counter(k=500))
        values = vcpu.wait_for_report(guests.PORT_REPORT, count=6, timeout=10)
        assert all(v % 500 == 0 for v in values)
        assert all(b - a == 500 for a, b in zip(values, values[1:], strict=False))
        assert vcpu.stats.exits["IO"] >= 6


@pytest.mark.parametrize("mode", list(KickMode))
def test_spinner_is_kicked_out_by_each_variant(mode: KickMode) -> None:
    with Vm(kick_mode=mode) as vm:
        vcpu = vm.add_vcpu(guests.spinner())
        for _ in range(5):
            wait_progress(vcpu)  # in guest mode
            vcpu.kick(wait=True, timeout=5, resend_every=resend(mode))
        assert vcpu.stats.eintr >= 5  # KVM_RUN returned -EINTR: the kick, decided on errno
        assert sum(vcpu.stats.exits.values()) == 0  # the spinner itself never exits
        wait_progress(vcpu)  # and it runs on after the kicks


@pytest.mark.parametrize("mode", list(KickMode))
def test_kick_in_the_window_before_kvm_run(mode: KickMode) -> None:
    """Hold the vCPU thread after its request check, just before KVM_RUN, kick it there,
    then let it enter: immediate_exit and the signal mask keep the kick; the empty handler
    loses it (the vCPU stays in the guest until another kick)."""
    in_window, release = threading.Event(), threading.Event()
    armed = [True]

    def hook(vcpu) -> None:  # type: ignore[no-untyped-def]
        if armed[0]:
            armed[0] = False
            in_window.set()
            release.wait(5)

    with Vm(kick_mode=mode) as vm:
        vcpu = vm.add_vcpu(guests.spinner(), start=False)
        vcpu.before_entry = hook
        vcpu.start()
        assert in_window.wait(5)
        seq = vcpu.kick()  # lands while the thread is outside KVM_RUN, past its checks
        release.set()
        if mode is KickMode.EMPTY_HANDLER:
            with pytest.raises(VcpuTimeout, match="not acknowledged"):
                vcpu.wait_kick(seq, timeout=0.3)
            wait_progress(vcpu)  # the kick was lost: the guest is running
            vcpu.kick(wait=True, timeout=5)  # a kick sent while in KVM_RUN still works
        else:
            vcpu.wait_kick(seq, timeout=5)
            assert vcpu.stats.eintr >= 1


def test_python_level_handler_also_interrupts_kvm_run() -> None:
    """signal.signal's C handler (main thread only) also makes KVM_RUN return -EINTR."""
    import signal

    sig = int(signal.SIGRTMIN) + 3
    with Vm(kick_signal=sig, handler_impl="python") as vm:
        assert vm.handler_impl == "python"
        vcpu = vm.add_vcpu(guests.spinner())
        wait_progress(vcpu)
        vcpu.kick(wait=True, timeout=5)
        assert vcpu.stats.eintr >= 1


def test_halt_guest_wakes_on_injected_interrupt() -> None:
    vector = 0x21
    with Vm() as vm:
        vcpu = vm.add_vcpu(guests.halt(vector))
        vcpu.wait_halted(5)
        entries = vcpu.stats.entries
        time.sleep(0.1)
        assert vcpu.halted and vcpu.stats.entries == entries  # blocked in the VMM, not spinning
        assert vcpu.report_count(guests.PORT_READY) == 1
        for n in (1, 2, 3):
            vcpu.interrupt(vector)
            assert vcpu.wait_for_report(guests.PORT_IRQ, timeout=5) == [n]
            vcpu.wait_halted(5)
        assert vcpu.read_data(guests.IRQ_COUNT) == 3
        assert vcpu.stats.irqs_injected == 3
        assert vcpu.stats.exits["HLT"] == 4


def test_deleted_memslot_is_seen_as_mmio_by_a_running_guest() -> None:
    with Vm() as vm:
        crit = vm.add_memslot(CRIT_GPA, 0x1000)
        vm.write(CRIT_GPA, MAGIC)
        vcpu = vm.add_vcpu(guests.critical_page(k=200))
        vcpu.wait_for_report(guests.PORT_REPORT, count=2, timeout=10)  # page present
        assert vcpu.mmio_count == 0 and vcpu.report_count(guests.PORT_MISSING) == 0
        vm.delete_memslot(crit.slot)  # while the guest runs
        assert vcpu.wait_for_report(guests.PORT_MISSING, timeout=5) == [0xFFFF]
        access = vcpu.mmio_accesses()[0]  # the VMM saw the page missing: an MMIO exit
        assert (access.phys_addr, access.length, access.is_write) == (CRIT_GPA, 2, False)


def test_moved_memslot_goes_missing_and_comes_back() -> None:
    with Vm() as vm:
        crit = vm.add_memslot(CRIT_GPA, 0x1000)
        vm.write(CRIT_GPA, MAGIC)
        vcpu = vm.add_vcpu(guests.critical_page(k=200))
        vcpu.wait_for_report(guests.PORT_REPORT, timeout=10)
        vm.move_memslot(crit.slot, CRIT_GPA + 0x10000)
        vcpu.wait_for_report(guests.PORT_MISSING, timeout=5)
        assert vm.read(CRIT_GPA + 0x10000, 2) == MAGIC  # same memory, new address
        vm.move_memslot(crit.slot, CRIT_GPA)
        vcpu.wait_for_report(guests.PORT_REPORT, timeout=5)  # a whole good round
        missing = vcpu.report_count(guests.PORT_MISSING)
        vcpu.wait_for_report(guests.PORT_REPORT, count=2, timeout=5)
        assert vcpu.report_count(guests.PORT_MISSING) == missing


def test_mmio_read_completes_only_on_reentry() -> None:
    """api.rst: after an MMIO exit the access completes in the next KVM_RUN; the VMM
    re-enters with immediate_exit set before it touches the vCPU's state."""
    code = guests.critical_page().code
    load = code.index(bytes.fromhex("26a10000"))  # movw %es:0, %ax
    seen: dict[str, int] = {}

    def on_mmio(vcpu, addr, is_write, length, data):  # type: ignore[no-untyped-def]
        if not seen:
            regs = vcpu.get_regs()  # in the vCPU thread, before completion
            seen["rip"], seen["ax"] = regs.rip, regs.rax & 0xFFFF
            vcpu.pause(wait=False)
        return b"\xad\xde"

    with Vm() as vm:  # no critical memslot at all: every read is MMIO
        vcpu = vm.add_vcpu(guests.critical_page(), on_mmio=on_mmio)
        vcpu.wait_until(lambda v: v.mmio_count >= 1, 5, "the first MMIO exit")
        vcpu.pause(timeout=5)  # already requested by on_mmio: wait until it took effect
        regs = vcpu.get_regs()
        assert seen["rip"] == load  # the load has not happened yet
        assert regs.rip == load + 4 and regs.rax & 0xFFFF == 0xDEAD  # now it has
        assert vcpu.stats.completions >= 1
        vcpu.resume()
        assert vcpu.wait_for_report(guests.PORT_MISSING, timeout=5) == [0xDEAD]


def test_triple_fault_is_an_error_with_the_exit_reason() -> None:
    with Vm() as vm:
        vcpu = vm.add_vcpu(guests.triple_fault())
        with pytest.raises(GuestCrashed, match="KVM_EXIT_SHUTDOWN") as crash:
            vcpu.wait_for_report(guests.PORT_REPORT, timeout=5)  # propagates, no timeout
        assert crash.value.exit_reason == ExitReason.SHUTDOWN
        assert "rip" in crash.value.details
        with pytest.raises(GuestCrashed):
            vcpu.wait(1)
        with pytest.raises(VcpuError):
            vcpu.get_regs(timeout=1)


def test_invalid_instruction_is_an_error_with_the_exit_reason() -> None:
    with Vm() as vm:
        vcpu = vm.add_vcpu(guests.invalid_instruction())
        with pytest.raises(GuestCrashed, match="invalid-instruction.*KVM_EXIT_") as crash:
            vcpu.wait(5)
        # Hardware: #UD with no IDT -> triple fault. Where KVM emulates the mode: ud2
        # cannot be emulated -> internal error.
        assert crash.value.exit_reason in (ExitReason.SHUTDOWN, ExitReason.INTERNAL_ERROR)


def test_waits_time_out_with_a_clear_error() -> None:
    with Vm() as vm:
        vcpu = vm.add_vcpu(guests.spinner())
        t0 = time.monotonic()
        with pytest.raises(VcpuTimeout, match="report"):
            vcpu.wait_for_report(guests.PORT_REPORT, timeout=0.2)
        assert time.monotonic() - t0 < 2
        with pytest.raises(VcpuTimeout, match="still running"):
            vcpu.wait(0.1)


def test_vcpus_run_on_their_own_threads_and_pause_together() -> None:
    with Vm() as vm:
        counters = [vm.add_vcpu(guests.counter(k=300)) for _ in range(2)]
        spin = vm.add_vcpu(guests.spinner())
        idents = {v.thread.ident for v in vm.vcpus}
        assert len(idents) == 3 and threading.get_ident() not in idents
        for v in counters:
            v.wait_for_report(guests.PORT_REPORT, timeout=10)
        vm.pause_all(timeout=5)
        assert all(v.paused for v in vm.vcpus)
        frozen = [v.report_count(guests.PORT_REPORT) for v in counters]
        p = spin.read_data(guests.PROGRESS)
        time.sleep(0.05)
        assert [v.report_count(guests.PORT_REPORT) for v in counters] == frozen
        assert spin.read_data(guests.PROGRESS) == p
        vm.resume_all()
        for v in counters:
            v.wait_for_report(guests.PORT_REPORT, timeout=10)
        vm.kick_all(timeout=5)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _kvm_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("kvm" in line for line in f)


def test_close_leaks_no_fd_mapping_or_thread() -> None:
    Vm().close()  # warm-up: handler, assembler cache, libc handles
    fds, threads, maps = _open_fds(), threading.active_count(), _kvm_mappings()
    for mode in KickMode:
        with Vm(kick_mode=mode) as vm:
            vm.add_vcpu(guests.spinner())
            vm.add_vcpu(guests.halt(0x22))
            vm.add_vcpu(guests.triple_fault())
            crit = vm.add_memslot(CRIT_GPA, 0x1000)
            vm.add_vcpu(guests.critical_page())
            vm.delete_memslot(crit.slot)
            vm.vcpus[0].kick(wait=True, timeout=5, resend_every=resend(mode))
            assert _kvm_mappings() > maps
    assert threading.active_count() == threads
    assert _open_fds() == fds
    assert _kvm_mappings() == maps
