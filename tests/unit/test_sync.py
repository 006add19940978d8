"""lvsync's logic that needs no kernel: names, retention, configuration, targets, exit codes."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from lvdiff.errors import UsageError
from lvdiff.retention import Retention
from lvdiff.sync import naming
from lvdiff.sync.config import load
from lvdiff.sync.job import Outcome, exit_status
from lvdiff.sync.targets import LocalTarget, RepoTarget, SshTarget, parse_target

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def test_snapshot_names_read_by_people_and_by_lvsync():
    src = naming.Source("vg0", "vol0", "VGUUID")
    name = naming.snapshot_name(src, "job", T0)
    assert name.startswith("vol0.20261101T020000Z.") and naming.taken_at(name) == T0
    assert naming.is_ours(src, "job", name, list(src.tags("job")))
    assert not naming.is_ours(src, "job", name, ["lvsync"])  # another volume's, or by hand
    assert not naming.is_ours(src, "job", "vol0-manual", list(src.tags("job")))
    assert len(naming.snapshot_name(naming.Source("v", "x" * 200, "U"), "j", T0)) <= 127


def test_retention_keeps_the_last_and_one_per_period():
    snaps = [(f"s{i}", T0 + timedelta(hours=6 * i)) for i in range(40)]  # 10 days, 4 a day
    keep = Retention(last=2, daily=3, weekly=2).keep(snaps, pinned={"s5"})
    newest = [n for n, _ in snaps[-2:]]
    assert set(newest) <= keep and "s5" in keep
    days = {t.date() for n, t in snaps if n in keep and n not in newest and n != "s5"}
    assert len(days) <= 3 + 2  # the newest of each of the last 3 days, and of 2 weeks
    assert Retention(last=0).keep(snaps) == set()
    with pytest.raises(ValueError):
        Retention(last=-1)


def test_configuration_is_checked_when_read(tmp_path):
    f = tmp_path / "lvsync.toml"
    f.write_text(
        """
[defaults]
check_level = 3
[defaults.retention]
last = 3
[job.nightly]
sources = ["vg0/vol0", "vg0/vol1"]
target = "backup@nas:vg1/pool0"
ssh_options = ["-p", "2222"]
[job.nightly.retention]
daily = 7
"""
    )
    job = load(f)["nightly"]
    assert job.sources == ["vg0/vol0", "vg0/vol1"] and job.check_level == 3
    assert job.retention == Retention(last=3, daily=7) and job.ssh_options == ["-p", "2222"]
    for bad, why in (
        ('[job.x]\ntarget = "vg1"\n', "sources"),
        ('[job.x]\nsources = ["a/b"]\ntarget = "vg1"\ncheck_level = 7\n', "check_level"),
        ('[job.x]\nsources = ["a/b"]\ntarget = "vg1"\nspeed = 1\n', "unknown key"),
        ('[job.x]\nsources = ["a/b"]\ntarget = "vg1"\n[job.x.retention]\nlast = -1\n', "retention"),
        ("[jobs]\n", "unknown section"),
        ("not toml [", "lvsync.toml"),
    ):
        f.write_text(bad)
        with pytest.raises(UsageError, match=why):
            load(f)


def test_targets_are_read_from_their_spelling():
    assert isinstance(parse_target("vg1/pool0", []), LocalTarget)
    t = parse_target("backup@nas:vg1/pool0", ["-p", "2"])
    assert isinstance(t, SshTarget) and (t.host, t.vg, t.pool) == ("backup@nas", "vg1", "pool0")
    assert isinstance(parse_target("dir:/srv/streams", []), RepoTarget)  # a repository now
    for bad in ("vg/../x", ":vg1", "-oProxyCommand=x:vg1"):
        with pytest.raises(UsageError):
            parse_target(bad, [])


def test_exit_status_tells_monitoring_what_to_do():
    ok, same = Outcome("vg/a", "synced"), Outcome("vg/b", "unchanged")
    cut = Outcome("vg/c", "failed", transient=True)
    bad = Outcome("vg/d", "failed")
    assert exit_status([ok, same]) == 0
    assert exit_status([same, same]) == 3
    assert exit_status([ok, cut]) == 75
    assert exit_status([ok, cut, bad]) == 1


def test_a_remote_lvpatch_of_another_version_is_a_clear_error(tmp_path, monkeypatch):
    """The far side answers a listing with its version; lvsync refuses another one."""
    import stat

    from lvdiff.errors import LvdiffError

    fake = tmp_path / "ssh"  # what the far side's lvpatch would print, whatever was asked
    fake.write_text(
        "#!/bin/sh\n"
        'echo \'{"version": 1, "command": "lvpatch", "tool": "lvpatch 0.0.9", "volumes": []}\'\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    target = parse_target("backup@nas:vg1/pool0", [])
    with pytest.raises(LvdiffError, match="runs lvpatch 0.0.9.*same lvdiff version"):
        target.prepare()
    target.close()
