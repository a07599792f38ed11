"""The native helpers of the real world's hot path (vcpureq.kvm.native) and the requester's
spin (RealBackend.await_exit): bounded, and invisible to what the protocol concludes. The
same requests work with the helpers missing (libc ioctl, plain polling). Skipped, with the
reason, where /dev/kvm or the assembler is unusable. No timed assertions."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Iterator

import pytest
from kvm_support import NEEDS_KVM  # tests/ is on sys.path

from vcpureq.arch.kvm_user import PAUSE, PING, pause_vcpus, resume_vcpus
from vcpureq.common import (
    OUTSIDE_GUEST_MODE,
    make_all_cpus_request,
    set_sync_request,
    set_sync_request_many,
)
from vcpureq.common import test_request as kvm_test_request  # not a pytest test
from vcpureq.kvm import guests, native
from vcpureq.kvm import vmm as vmm_module
from vcpureq.kvm.vmm import Vmm
from vcpureq.model.kernel import READ_ONCE

pytestmark = NEEDS_KVM


@pytest.fixture(autouse=True)
def nothing_leaks() -> Iterator[None]:
    fds, threads = len(os.listdir("/proc/self/fd")), set(threading.enumerate())
    yield
    assert set(threading.enumerate()) == threads
    assert len(os.listdir("/proc/self/fd")) == fds


def _helpers() -> native.Helpers:
    h = native.helpers()
    if h is None:
        pytest.skip(f"native helpers unavailable: {native.unavailable()}")
    return h


def test_spin_while_returns_on_change_and_on_deadline() -> None:
    h = _helpers()
    word = ctypes.c_uint32(7)
    addr = ctypes.addressof(word)
    assert h.spin_while(addr, 6, h.deadline(10_000)) == 7  # differs already: at once
    assert h.spin_while(addr, 7, h.deadline(200)) == 7  # unchanged: the deadline ends it

    def bump() -> None:
        time.sleep(0.01)
        word.value = 8

    t = threading.Thread(target=bump)
    t.start()  # the spin runs without the GIL, so the bumping thread can run
    assert h.spin_while(addr, 7, h.deadline(5_000_000)) == 8
    t.join()
    assert h.tsc_per_us > 0


def test_kvm_run_stub_rings_the_doorbell_and_returns_minus_errno() -> None:
    h = _helpers()
    bell = ctypes.c_uint32(0)
    r, w = os.pipe()
    os.close(w)
    try:
        # A pipe is no vCPU fd: the raw system call answers -ENOTTY, no libc errno involved.
        assert h.kvm_run(r, ctypes.addressof(bell)) == -errno.ENOTTY
    finally:
        os.close(r)
    assert h.kvm_run(-1, ctypes.addressof(bell)) == -errno.EBADF
    assert bell.value == 2


@pytest.mark.parametrize("spin_us", [0.0, 100.0])
def test_sync_requests_with_and_without_the_spin(spin_us: float) -> None:
    """spin_us = 0: requesters only poll. Either way the common API's guarantees hold."""
    with Vmm(guests.spinner(), 2, spin_us=spin_us) as vmm:
        vcpus = vmm.kvm.vcpus
        if spin_us == 0:
            assert vmm.backend.helpers is None
        for _ in range(20):
            set_sync_request(PING, vcpus[0])
            assert READ_ONCE(vcpus[0].mode) == OUTSIDE_GUEST_MODE or not kvm_test_request(
                PING, vcpus[0])
        pause_vcpus(vcpus)
        set_sync_request_many(PAUSE, vcpus)
        assert all(v.arch.pause.load() for v in vcpus)
        resume_vcpus(vcpus)
        pause_vcpus(vcpus)
        make_all_cpus_request(vmm.kvm, PAUSE)
        resume_vcpus(vcpus)
        assert vmm.call(1, lambda t: t.index) == 1
        assert vmm.vcpus[0].doorbell.value > 20  # rung at every KVM_RUN
        vmm.check()


def test_without_native_helpers_libc_and_polling_do_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmm_module.native, "helpers", lambda: None)
    with Vmm([guests.spinner(), guests.counter(k=50)]) as vmm:
        assert vmm.kvm_run_call is vmm_module._libc_kvm_run and vmm.backend.helpers is None
        vmm.vcpus[1].wait_for_report(guests.PORT_REPORT, timeout=10)
        for i in (0, 1):
            vmm.ping(i)
            assert vmm.call(i, lambda t: t.index) == i
        with vmm.paused():
            pass
        vmm.check()


def test_a_spin_window_never_outlives_its_bound() -> None:
    """A requester that looks at a vCPU it signalled, whose thread never rings (held before
    KVM_RUN by a hook), spins at most spin_us per look and then polls as usual; the
    request completes once the thread goes on."""
    release = threading.Event()
    held = threading.Event()

    def hold(t):  # type: ignore[no-untyped-def]
        if not held.is_set():
            held.set()
            release.wait(5)

    with Vmm([guests.spinner()], spin_us=200.0) as vmm:
        t = vmm.vcpus[0]
        t.before_entry = hold
        vmm.ping(0, sync=False)  # the next entry holds, IN_GUEST_MODE published
        assert held.wait(5)
        done = threading.Event()

        def requester() -> None:
            set_sync_request(PING, vmm.kvm.vcpus[0])
            done.set()

        r = threading.Thread(target=requester)
        r.start()
        for _ in range(50):  # many looks, each bounded by the window, then plain polls
            if not r.is_alive():
                break
            time.sleep(0.002)
        assert not done.is_set()  # still in the guest (about to be): not done
        t.before_entry = None
        release.set()
        r.join(5)
        assert done.is_set()
        vmm.check()
