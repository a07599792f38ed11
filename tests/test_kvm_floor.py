"""The C kick-latency floor builds and runs (a few kicks; the figures go to bench/)."""

from __future__ import annotations

import shutil

import pytest
from kvm_support import NEEDS_KVM  # tests/ is on sys.path

from vcpureq.kvm.floor import SOURCE, measure_c, measure_python

pytestmark = NEEDS_KVM


@pytest.mark.skipif(shutil.which("gcc") is None or not SOURCE.exists(),
                    reason="needs gcc and bench/kick_floor.c")
def test_c_floor_reports_figures() -> None:
    result = measure_c(iterations=50, timeout=60)
    for key in ("exit_us", "reentry_us", "baseline_us"):
        figures = result[key]
        assert 0 < figures["min"] <= figures["median"] <= figures["p99"] <= figures["max"]
    assert result["exit_us"]["median"] <= result["reentry_us"]["median"]


def test_python_kick_latency_is_measured() -> None:
    result = measure_python(iterations=20)
    assert 0 < result["ack_us"]["median"] <= result["ack_us"]["max"]
