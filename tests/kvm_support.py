"""What every test module on real /dev/kvm shares: its pytest marks.

``pytestmark = NEEDS_KVM`` marks the module ``kvm`` and skips it, with the reason shown,
where /dev/kvm or the assembler is not usable."""

from __future__ import annotations

import pytest

from vcpureq.kvm import asm, probe

UNUSABLE = probe() or asm.available()
NEEDS_KVM = [
    pytest.mark.kvm,
    pytest.mark.skipif(UNUSABLE is not None, reason=f"KVM tests need /dev/kvm: {UNUSABLE}"),
]
