"""lvdiff's private lock directory and the flush rule, on this machine's own filesystem."""

from __future__ import annotations

import errno
import os

import pytest

from lvdiff import locks, lvm
from lvdiff.blockdev import BlockDevice, DeviceError
from lvdiff.errors import LvdiffError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    d = tmp_path / "lock" / "lvdiff"
    monkeypatch.setattr(locks, "LOCK_DIR", d)
    return d


def test_lock_dir_is_made_private(lock_dir):
    with locks.pool_lock("vg", "pool") as got:
        assert got
    st = lock_dir.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    assert (lock_dir / "pool-vg-pool.lock").stat().st_mode & 0o777 == 0o600


@needs_root
def test_lock_dir_made_by_another_user_is_refused(lock_dir):
    lock_dir.mkdir(parents=True, mode=0o755)
    os.chown(lock_dir, 65534, 65534)
    with pytest.raises(LvdiffError, match="uid 65534"), locks.pool_lock("vg", "pool"):
        pass


def test_world_writable_lock_dir_is_refused(lock_dir):
    lock_dir.mkdir(parents=True)
    lock_dir.chmod(0o777)
    with pytest.raises(LvdiffError, match="mode 777"), locks.pool_lock("vg", "pool"):
        pass


def test_symlinked_lock_dir_is_refused(lock_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    lock_dir.parent.mkdir(parents=True)
    lock_dir.symlink_to(elsewhere)
    with pytest.raises(LvdiffError, match="not a directory"), locks.pool_lock("vg", "pool"):
        pass


def test_marker_is_never_written_through_a_symlink(lock_dir, tmp_path):
    """The review's reproducer: root wrote "42\\n" into a file a user pointed at."""
    victim = tmp_path / "shadow"
    victim.write_text("secret\n")
    with locks.pool_lock("vg", "pool"):
        pass  # makes the private directory
    (lock_dir / "pool-vg-pool.held").symlink_to(victim)
    with pytest.raises(LvdiffError):
        locks._Marker("vg", "pool").write("42")
    assert victim.read_text() == "secret\n"
    assert locks._Marker("vg", "pool").read() is None


def test_pool_and_target_locks_never_share_a_file(lock_dir):
    """A pool named x.lvpatch and an LV named x once mapped to the same lock file."""
    with locks.pool_lock("vg", "x.lvpatch") as a, locks.target_lock("vg", "x", wait=False) as b:
        assert a and b


def test_a_failed_flush_is_never_followed_by_a_successful_one(tmp_path, monkeypatch):
    """Linux reports a write-back error once: the next fsync returns 0 on lost data."""
    f = tmp_path / "dev"
    f.write_bytes(bytes(4096))
    real_fsync = os.fsync
    calls = []

    def fsync_fails_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_once)
    with BlockDevice(str(f), writable=True) as dev:
        dev.write(0, b"x" * 512)
        with pytest.raises(DeviceError, match="Input/output error"):
            dev.sync()
        with pytest.raises(DeviceError, match="earlier flush"):
            dev.sync()  # the kernel would say 0 here
    assert len(calls) == 1


def test_cleanup_removes_only_what_a_dead_lvpatch_left(lock_dir, monkeypatch):
    """Incomplete targets go when nobody holds their lock (or the caller holds it); one an
    lvpatch is building, or one kept for --resume, stays."""
    from lvdiff.apply import cleanup
    from lvdiff.lvm import LV

    def lv(name: str, *tags: str) -> LV:
        return LV("vg", name, "u", "Vwi-a-tz--", 1, "thin", "pool", 1, list(tags), 0, "", 0, None)

    found = [
        lv("dead", "lvdiff_incomplete"),
        lv("mine", "lvdiff_incomplete"),  # the caller holds its lock: it is about to rebuild it
        lv("busy", "lvdiff_incomplete"),
        lv("kept", "lvdiff_incomplete", "lvdiff_resume:0:A:-"),
        lv("done", "lvdiff_identity:A"),
    ]
    gone: list[str] = []
    monkeypatch.setattr(lvm, "remove", lambda v: gone.append(v.name))
    with locks.target_lock("vg", "busy", wait=False) as held:
        assert held
        removed = cleanup("vg", listing=found, locked=("mine",))
    assert gone == ["dead", "mine"] and removed == ["vg/dead", "vg/mine"]
    gone.clear()
    cleanup("vg", listing=found, resumable=True)
    assert gone == ["dead", "mine", "busy", "kept"]
