"""Real-kernel fixtures. These tests need root and dm-thin: run them through rig/run.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .lvmrig import IMAGES, LoopVG, new_vg_name


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0 or not IMAGES.is_dir() or not Path("/sys/module/dm_thin_pool").exists():
        raise pytest.UsageError(
            "real-kernel tests need root, dm-thin-pool and the rig's private LVM setup: "
            "run scripts/test (or python3 rig/run.py -- pytest tests/kernel)"
        )


@pytest.fixture(params=["0.9", "1.1"], ids=["tools0.9", "tools1.1"])
def tools_generation(request: pytest.FixtureRequest) -> str:
    """Every test that runs thin_delta/thin_dump runs once per tools generation."""
    return request.param


@pytest.fixture
def loop_vg():
    """Factory of loop-backed VGs, all removed at the end of the test."""
    made: list[LoopVG] = []

    def make(size_mb: int = 512, prefix: str = "vg") -> LoopVG:
        vg = LoopVG(new_vg_name(prefix), size_mb)
        made.append(vg)
        return vg

    yield make
    for vg in reversed(made):
        vg.remove()
