"""How many external commands each tool starts (issue 22), counted on real LVM.

Every LVM command scans and locks the whole VG (a tenth of a second to seconds
on a host with hundreds of LVs), so the count is what a large host pays for
around the data. Wrappers placed first on PATH log each start and exec the
real command: nothing in lvdiff is trusted to count itself. The targets are
the issue's; docs/PERFORMANCE.md keeps the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from .lvmrig import BIN, IMAGES, thin_tool, tool, write_at

WRAPPED = ("lvs", "vgs", "lvcreate", "lvchange", "lvremove", "lvresize", "dmsetup", "lvm")
M = 1 << 20


class Counting:
    """A PATH (and LVDIFF_THIN_DELTA) on which every LVM, device-mapper and thin_delta start
    is logged."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.log = folder / "log"
        real = {name: shutil.which(name) for name in WRAPPED}
        real["thin_delta"] = shutil.which(thin_tool("0.9", "thin_delta"))  # not our wrapper
        for name, path in real.items():
            assert path, name
            script = folder / name
            script.write_text(f'#!/bin/sh\necho "{name} $*" >> {self.log}\nexec {path} "$@"\n')
            script.chmod(0o755)
        self.env = {
            "PATH": f"{folder}:{os.environ['PATH']}",
            "LVDIFF_THIN_DELTA": str(folder / "thin_delta"),
        }

    def take(self) -> list[str]:
        """The commands started since the last take."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return lines


def by_name(lines: list[str]) -> dict[str, int]:
    return dict(Counter(line.split()[0] for line in lines))


def lvsync(counting: Counting, *args: str) -> dict:
    proc = subprocess.run(
        [str(BIN / "lvsync"), "--json", *args],
        env={**os.environ, **counting.env},
        capture_output=True,
        check=False,
    )
    assert proc.returncode in (0, 3), proc.stderr.decode()
    return json.loads(proc.stdout)


def test_commands_started_per_run_stay_within_the_targets(loop_vg, tmp_path):
    counting = Counting(tmp_path / "bin")
    src = loop_vg(128)
    src.pool("pool", size_mb=64)
    dst = loop_vg(128)
    dst.pool("pool", size_mb=64)
    vols = ["a", "b"]
    for v in vols:
        write_at(src.thin(v, 8), 0, os.urandom(M // 4))
    src.snapshot("a", "s1", activate=False)
    write_at(src.dev("a"), 2 * M, os.urandom(M // 4))
    src.snapshot("a", "s2", activate=False)
    counts: dict[str, list[str]] = {}
    res = tool("lvdiff", "-g", src.name, "s1", "s2", stdout_file=IMAGES / "inc", env=counting.env)
    assert res.returncode == 0, res.stderr.decode()
    started = counting.take()  # thin_delta --version too, unless an earlier run proved this one
    checks = [c for c in started if c.startswith("thin_delta --version")]
    assert len(checks) <= 1, started
    counts["lvdiff BASE NEW, two inactive snapshots"] = [c for c in started if c not in checks]

    out = lvsync(counting, *(f"{src.name}/{v}" for v in vols), dst.name)
    assert {o["status"] for o in out["jobs"][0]["volumes"]} == {"synced"}, out
    counts["lvsync, 2 volumes, first run"] = counting.take()
    lvsync(counting, f"{src.name}/a", dst.name)
    one = counts["lvsync, 1 volume, nothing changed"] = counting.take()
    out = lvsync(counting, *(f"{src.name}/{v}" for v in vols), dst.name)
    assert {o["status"] for o in out["jobs"][0]["volumes"]} == {"unchanged"}, out
    two = counts["lvsync, 2 volumes, nothing changed"] = counting.take()
    write_at(src.dev("b"), 4 * M, os.urandom(M // 4))
    out = lvsync(counting, *(f"{src.name}/{v}" for v in vols), dst.name)
    assert [o["status"] for o in out["jobs"][0]["volumes"]] == ["unchanged", "synced"], out
    changed = counts["lvsync, 2 volumes, one changed"] = counting.take()

    report = "\n".join(
        f"{len(lines):4d}  {label}: {by_name(lines)}" for label, lines in counts.items()
    )
    print("\nexternal commands started\n" + report)
    incremental = counts["lvdiff BASE NEW, two inactive snapshots"]
    assert len(incremental) <= 7, report
    assert by_name(incremental)["lvchange"] == 2, report  # both on, both off: one command each
    assert len(two) - len(one) <= 4, report  # what one more unchanged volume costs
    # the run's sends activated in one command and deactivated in one, whatever their number;
    # the other two are the target's commits, one per restored volume
    assert by_name(counts["lvsync, 2 volumes, first run"])["lvchange"] == 2 + 2, report
    # one reservation of the source pool's metadata snapshot for the whole run: the changed
    # volume is sent from the ranges its comparison spooled
    assert by_name(changed)["dmsetup"] == 3 and by_name(changed)["thin_delta"] == 2, report
