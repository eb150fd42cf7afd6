"""keep_freed_memory raises glibc's thresholds for real (this suite runs on glibc Linux)."""

from __future__ import annotations

import platform

import pytest

from batchcli.engine.host_memory import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_both_thresholds():
    assert keep_freed_memory() is True
