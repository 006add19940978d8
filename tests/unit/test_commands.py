"""How many external commands lvdiff starts (issue 22), through a recording runner.

Every LVM command scans and locks the whole VG, so the number a run starts is
what a host with hundreds of LVs pays for around the data. These tests drive
the real engine code (lvdiff.dump, lvdiff.locks, lvdiff.lvm) with ``lvm.run``
replaced by a recorder that answers as lvm2 and device-mapper would, a
thin_delta script that logs its starts, and a sysfs tree; the real-kernel
suite counts the same runs on real LVM (tests/kernel/test_commands.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvdiff import dump, locks, lvm
from lvdiff.errors import CommandFailed, LvdiffError

DATA = Path(__file__).parent / "data"
ATTR_SNAPSHOT = "Vri---tz-k"  # read-only, inactive, activation skipped: lvsync's and ours
ATTR_LIVE = "Vwi-aotz--"


def row(name: str, thin_id: int, attr: str = ATTR_SNAPSHOT, **kw: str) -> dict[str, str]:
    return {
        "vg_name": "vg",
        "lv_name": name,
        "lv_uuid": f"uuid-{name}",
        "lv_attr": attr,
        "lv_size": str(1 << 30),
        "segtype": "thin",
        "pool_lv": "pool",
        "thin_id": str(thin_id),
        "lv_tags": "",
        "chunk_size": "0",
        "discards": "",
        "zero": "",
        "transaction_id": "",
        "lv_active": "",
        "origin": "",
        "vg_extent_size": str(4 << 20),
        "vg_uuid": "vg-uuid",
        **kw,
    }


POOL = {
    **row("pool", 0, "twi-aotz--", segtype="thin-pool", pool_lv="", chunk_size="65536"),
    "thin_id": "",
}


class Recorder:
    """``lvm.run`` as lvm2 and dmsetup answer it, every call recorded."""

    def __init__(self, rows: list[dict[str, str]]) -> None:
        self.rows = rows
        self.calls: list[list[str]] = []
        self.held = "-"
        self.refuse_reserve = False

    def __call__(self, argv: list[str], input: bytes | None = None) -> str:
        self.calls.append(argv)
        if argv[0] == "lvs":
            wanted = [a for a in argv[1:] if "/" in a]
            rows = [r for r in self.rows if not wanted or f"vg/{r['lv_name']}" in wanted]
            return json.dumps({"report": [{"lv": rows}]})
        if argv[:2] == ["dmsetup", "status"]:
            return f"0 2097152 thin-pool 1 10/1000 20/16384 {self.held} rw discard_passdown"
        if argv[:2] == ["dmsetup", "message"]:
            if argv[-1] == "reserve_metadata_snap":
                if self.held != "-" or self.refuse_reserve:
                    raise CommandFailed(argv, 1, "device-mapper: message ioctl failed: busy")
                self.held = "42"
            elif argv[-1] == "release_metadata_snap":
                self.held = "-"
            return ""
        if argv[0] in ("lvchange", "lvcreate", "lvremove"):
            return ""
        raise AssertionError(f"unexpected command {argv}")

    def named(self) -> list[str]:
        return [" ".join(c[:2]) if c[0] == "dmsetup" else c[0] for c in self.calls]


def dm_node(sys_block: Path, node: str, name: str, slaves: tuple[str, ...] = ()) -> None:
    """/sys/block/dm-N as the kernel shows an active device-mapper device and what it uses."""
    (sys_block / node / "dm").mkdir(parents=True)
    (sys_block / node / "dm" / "name").write_text(name + "\n")
    (sys_block / node / "slaves").mkdir()
    for slave in slaves:
        (sys_block / node / "slaves" / slave).symlink_to(sys_block / slave)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A recorder for lvm.run, a thin_delta that logs its starts, an empty sysfs, a lock dir."""
    monkeypatch.setattr(locks, "LOCK_DIR", tmp_path / "lock")
    monkeypatch.setattr(lvm, "SYS_BLOCK", str(tmp_path / "sys"))
    sys_block = tmp_path / "sys"
    dm_node(sys_block, "dm-1", "vg-pool-tpool")
    dm_node(sys_block, "dm-2", "vg-s1", ("dm-1",))
    dm_node(sys_block, "dm-3", "vg-s2", ("dm-1",))
    log = tmp_path / "thin_delta.log"
    tool = tmp_path / "thin_delta"
    xml = DATA / "thin_delta-0.9.0.xml"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$1" in --version) echo 0.9.0; exit 0;; esac\n'
        f"cat {xml}\n"
    )
    tool.chmod(0o755)
    rec = Recorder([POOL, row("s1", 1), row("s2", 2)])
    monkeypatch.setattr(lvm, "run", rec)
    monkeypatch.setattr(dump, "_CHECKED", set())
    return rec, str(tool), log


def prepare_once(tool: str, base: str | None = "s1", new: str = "s2") -> None:
    options = dump.DumpOptions(thin_delta=tool)
    with dump.prepare(("vg", new), ("vg", base) if base else None, options=options):
        pass


def starts(rec: Recorder, log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    thin = ["thin_delta " + line.split()[0] for line in lines]
    return rec.named() + thin


def test_an_incremental_lvdiff_of_two_inactive_snapshots_starts_at_most_seven(machine):
    rec, tool, log = machine
    prepare_once(tool)
    first = starts(rec, log)
    assert "thin_delta --version" in first
    rec.calls.clear()
    log.unlink()
    prepare_once(tool)
    second = starts(rec, log)
    assert second == [
        "lvs",
        "lvchange",  # both activated in one
        "dmsetup message",  # reserve
        "dmsetup status",  # the root the marker names
        "dmsetup message",  # release
        "lvchange",  # both deactivated in one
        "thin_delta -m",
    ], second
    assert len(second) <= 7
    assert rec.calls[1] == ["lvchange", "-ay", "-K", "vg/s2", "vg/s1"]
    assert rec.calls[-1] == ["lvchange", "-an", "vg/s2", "vg/s1"]


def test_the_thin_delta_version_is_checked_again_when_the_binary_changes(machine):
    _rec, tool, log = machine
    prepare_once(tool)
    prepare_once(tool)
    assert log.read_text().count("--version") == 1
    Path(tool).write_text(Path(tool).read_text() + "\n")  # another file: size and times differ
    prepare_once(tool)
    assert log.read_text().count("--version") == 2


def test_a_reservation_a_killed_lvdiff_left_is_released_and_another_tools_is_not(machine):
    rec, tool, _log = machine
    prepare_once(tool)
    # killed while holding root 42: the marker names it
    locks._Marker("vg", "pool").write("42")
    rec.held = "42"
    prepare_once(tool)
    assert rec.held == "-"
    rec.held, before = "77", len(rec.calls)  # held by another tool: never released
    with pytest.raises(LvdiffError, match="held by another tool"):
        prepare_once(tool)
    assert rec.held == "77"
    assert not [c for c in rec.calls[before:] if c[-1] == "release_metadata_snap"]


def test_an_external_origin_is_read_from_sysfs_without_a_command(machine):
    rec, _tool, _log = machine
    sys_block = Path(lvm.SYS_BLOCK)
    dm_node(sys_block, "dm-4", "vg-ext")
    lv = lvm.LV("vg", "s2", "u", ATTR_LIVE, 1, "thin", "pool", 2, [], 0, "", False, None)
    assert lvm.external_origin(lv) is None
    slaves = sys_block / "dm-3" / "slaves"
    (slaves / "dm-4").symlink_to(sys_block / "dm-4")
    assert lvm.external_origin(lv) == "dm-4"
    (slaves / "dm-4").unlink()
    (slaves / "loop7").mkdir()  # an origin that is no device-mapper device
    assert lvm.external_origin(lv) == "loop7"
    assert rec.calls == []


def test_a_send_after_lvsyncs_comparison_reserves_nothing_again(machine):
    """lvsync compares every pair under one reservation per pool; a changed pair is then
    sent from those ranges: no dmsetup message, no thin_delta of its own."""
    rec, tool, log = machine
    s1, s2 = lvm.lvs("vg/s1")[0], lvm.lvs("vg/s2")[0]
    found = dump.compare([(s1, s2)], tool)
    assert not found["vg/s2"].same  # the recorded delta has changed ranges
    rec.calls.clear()
    log.unlink()
    options = dump.DumpOptions(thin_delta=tool, compared=found["vg/s2"])
    with dump.prepare(("vg", "s2"), ("vg", "s1"), options=options) as p:
        assert p.ranges.count == 4 and p.planned.read_bytes > 0
    assert starts(rec, log) == ["lvs", "lvchange", "lvchange"]
    # a pair that is not the one compared is not sent from its ranges
    rec.calls.clear()
    with dump.prepare(("vg", "s1"), ("vg", "s2"), options=dump.DumpOptions(thin_delta=tool)):
        pass
    assert "thin_delta -m" in starts(rec, log)
