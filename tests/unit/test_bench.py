"""scripts/bench runs end to end in its small configuration (figures are not asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


@pytest.mark.skipif(not shutil.which("zstd"), reason="needs the zstd command")
def test_quick_benchmark_produces_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--warm",
            "--json",
            str(out),
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["pipelines"]]
    assert names == [
        "lvdiff, zstd -3",
        "lvdiff, no compression",
        "lvdiff, no compression, --digest xxh128",
        "lvdiff, no compression, vs sha256sum",
        "lvpatch, zstd stream",
        "lvpatch, zstd stream, --digest xxh128",
        "lvpatch, uncompressed stream",
    ]
    for r in result["pipelines"]:
        assert r["ratio"] > 0 and r["peak_rss_mib"] > 0 and r["ours_mib_s"] > 0
    assert result["scale"][0]["ranges_per_s"] > 0
    repo = [r["name"] for r in result["repository"]]
    assert repo[:2] == ["repository: make a point", "repository: restore a point"]
    assert result["repository"][-1]["ratio"] > 0
    assert list(tmp_path.iterdir()) == [out]  # it cleaned up after itself
