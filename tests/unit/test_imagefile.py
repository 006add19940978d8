"""lvpatch --to-file / --from-file against what happens to image files between restores.

Images are written to after they were restored (a loop mount is read-write by
default), live on other file systems than the new image, appear at the target
name while a restore runs, and are left half-built by a ``kill -9``.  These
tests do each of those for real, on real streams; the one stand-in is
copy_file_range() failing, which a test cannot otherwise make happen on the
file system at hand.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import random
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lvdiff.errors import LvdiffError, UsageError
from lvdiff.events import Event, Note, Progress
from lvdiff.imagefile import STAMP_XATTR, XATTR, image_identity, restore_to_file
from lvdiff.restored import Restored

from .test_operator import LVPATCH, stream_between, volumes

M = 1 << 20


def restore(
    data: bytes, image: Path, base: Path | None = None, report=None
) -> tuple[Restored, list[str]]:
    """restore_to_file in this process; the notes it reported, as text."""
    notes: list[str] = []

    def hear(ev: Event) -> None:
        if isinstance(ev, Note):
            notes.append(ev.text)
        if report is not None:
            report(ev)

    return restore_to_file(io.BytesIO(data), image, base, report=hear), notes


def sparse_volumes() -> tuple[bytes, bytes]:
    """A 16 MiB volume with 1.1 MiB of data, and its next version (one chunk changed)."""
    rnd = random.Random(6)
    v0 = bytearray(16 * M)
    v0[:M] = rnd.randbytes(M)
    v0[9 * M : 9 * M + 65536] = rnd.randbytes(65536)
    v1 = bytearray(v0)
    v1[M // 2 : M // 2 + 65536] = rnd.randbytes(65536)
    return bytes(v0), bytes(v1)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def write_block(path: Path, offset: int, as_root: bool) -> None:
    """What a read-write loop mount does to an image: rewrite one 4 KiB block in place.

    A user first makes the image writable; root writes whatever its mode.
    """
    if not as_root:
        path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xab" * 4096)


# --- F5: restored images are read-only, and one changed since loses its identity ---------


def test_a_restored_image_is_read_only_and_keeps_its_identity_while_untouched(tmp_path):
    v = volumes(11)
    img0 = tmp_path / "v0.img"
    res, _ = restore(stream_between(None, v[0], "", "id-0"), img0)
    assert stat.S_IMODE(os.stat(img0).st_mode) & 0o222 == 0  # no write bits, as on LVM
    assert res.target == str(img0) and img0.read_bytes() == v[0]
    assert os.getxattr(img0, XATTR) == b"id-0" and os.getxattr(img0, STAMP_XATTR)
    assert image_identity(img0) == "id-0"
    moved = tmp_path / "moved.img"  # a rename (new ctime) is no change of content
    img0.rename(moved)
    res, notes = restore(stream_between(v[0], v[1], "id-0", "id-1"), tmp_path / "v1.img", moved)
    assert str(res.base_check) == "identity matches, content matches at level 2", notes
    assert notes == []
    assert (tmp_path / "v1.img").read_bytes() == v[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.img", "v1.img"]


@pytest.mark.parametrize("as_root", [False, True], ids=["chmod-then-write", "root-writes"])
def test_an_image_written_to_since_its_restore_no_longer_proves_its_identity(tmp_path, as_root):
    if as_root and os.geteuid() != 0:
        pytest.skip("root writes through mode 0444; this user cannot")
    v = volumes(12)
    img0 = tmp_path / "v0.img"
    restore(stream_between(None, v[0], "", "id-0"), img0)
    write_block(img0, 2 * M - 8192, as_root)  # inside the data, not in a chunk NEW changes
    # -d 0: no content check, so only the identity could have vouched for BASE
    s1 = stream_between(v[0], v[1], "id-0", "id-1", level=0)
    res, notes = restore(s1, tmp_path / "v1.img", img0)
    assert "identity matches" not in str(res.base_check)
    assert str(res.base_check) == "not checked (stream made with -d 0)"
    assert any("changed since it was restored" in n and "id-0" in n for n in notes), notes
    # with a content check, a sampled one may miss a 4 KiB write: never "identity matches"
    s1 = stream_between(v[0], v[1], "id-0", "id-1", level=2)
    try:
        res, notes = restore(s1, tmp_path / "v1b.img", img0)
    except LvdiffError:  # the samples caught it (BaseMismatch) or NEW's check did
        pass
    else:
        assert str(res.base_check) == "content matches at level 2"
    assert os.getxattr(img0, XATTR) == b"id-0"  # the attribute survived the write...
    assert image_identity(img0) is None  # ...but proves nothing any more


def test_an_image_with_an_identity_but_no_stamp_is_checked_by_content(tmp_path):
    """An older lvpatch recorded the identity only; such images stayed writable."""
    v = volumes(13)
    old = tmp_path / "old.img"
    old.write_bytes(v[0])
    os.setxattr(old, XATTR, b"id-0")
    res, notes = restore(stream_between(v[0], v[1], "id-0", "id-1"), tmp_path / "v1.img", old)
    assert str(res.base_check) == "content matches at level 2"
    assert any("no stamp" in n for n in notes), notes
    assert (tmp_path / "v1.img").read_bytes() == v[1]
    assert image_identity(old) is None


# --- F6: --from-file onto another file system -------------------------------------------


@pytest.mark.parametrize(
    "err",
    [errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS],
    ids=["EXDEV", "EINVAL", "EOPNOTSUPP", "ENOSYS"],
)
def test_the_base_is_copied_by_hand_where_copy_file_range_cannot(tmp_path, monkeypatch, err):
    v0, v1 = sparse_volumes()
    base, img = tmp_path / "v0.img", tmp_path / "v1.img"
    restore(stream_between(None, v0, "", "id-0"), base)
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    res, _ = restore(stream_between(v0, v1, "id-0", "id-1"), img, base)
    if res.reflinked:
        pytest.skip("this file system reflinks: copy_file_range is never asked")
    assert calls  # it was asked, failed, and the copy went on by hand
    assert img.read_bytes() == v1 and str(res.base_check).startswith("identity matches")
    assert allocated(img) <= len(v1) // 4  # the holes stayed holes


def test_a_failing_copy_is_an_error_that_leaves_nothing(tmp_path, monkeypatch):
    v0, v1 = sparse_volumes()
    base = tmp_path / "v0.img"
    restore(stream_between(None, v0, "", "id-0"), base)

    def fail(*_args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "copy_file_range", fail)
    with pytest.raises(LvdiffError, match="cannot copy"):
        restore(stream_between(v0, v1, "id-0", "id-1"), tmp_path / "v1.img", base)
    assert [p.name for p in tmp_path.iterdir()] == ["v0.img"]


def test_the_base_image_on_another_file_system(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's directory")
    v0, v1 = sparse_volumes()
    other = Path(tempfile.mkdtemp(prefix="lvdiff-img-", dir=shm))
    try:
        base = other / "v0.img"
        restore(stream_between(None, v0, "", "id-0"), base)
        img = tmp_path / "v1.img"
        res, _ = restore(stream_between(v0, v1, "id-0", "id-1"), img, base)
        assert img.read_bytes() == v1 and not res.reflinked
        assert str(res.base_check) == "identity matches, content matches at level 2"
        assert allocated(img) <= len(v1) // 4
        assert [p.name for p in tmp_path.iterdir()] == ["v1.img"]
    finally:
        shutil.rmtree(other)


# --- F7: never over a file that appeared meanwhile; leftovers of kill -9 removed --------


def test_an_image_that_appears_during_the_restore_is_left_as_it_was(tmp_path):
    v = volumes(14)
    img = tmp_path / "v0.img"
    theirs = b"someone else's image, made while lvpatch ran\n"

    def make_theirs(ev: Event) -> None:
        if isinstance(ev, Progress) and not img.exists():
            img.write_bytes(theirs)

    with pytest.raises(UsageError, match="appeared during the restore; not replacing it"):
        restore(stream_between(None, v[0], "", "id-0"), img, report=make_theirs)
    assert img.read_bytes() == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["v0.img"]  # and no temporary file


def test_leftover_temporary_files_are_removed_unless_a_restore_holds_them(tmp_path):
    v = volumes(15)
    stale = tmp_path / ".x.img.lvpatch-99999"  # what a kill -9 leaves
    stale.write_bytes(b"\0" * 65536)
    held = tmp_path / ".y.img.lvpatch-12345"  # a restore still building it
    held.write_bytes(b"\0" * 65536)
    other = tmp_path / ".z.img.lvpatch-old"  # not an lvpatch name
    other.write_bytes(b"x")
    with open(held, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _, notes = restore(stream_between(None, v[0], "", "id-0"), tmp_path / "v0.img")
    assert not stale.exists() and held.exists() and other.exists()
    assert notes == [f"removed {stale}, left by an interrupted lvpatch"]


def test_a_restore_killed_with_sigkill_leaves_a_file_the_next_one_removes(tmp_path):
    v = volumes(16)
    data = stream_between(None, v[0], "", "id-0")
    img = tmp_path / "killed.img"
    proc = subprocess.Popen(
        [*LVPATCH, "--to-file", str(img)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    tmp = tmp_path / f".killed.img.lvpatch-{proc.pid}"
    try:
        assert proc.stdin is not None
        proc.stdin.write(data[: len(data) // 2])  # and then the stream stalls
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not (tmp.exists() and tmp.stat().st_size == len(v[0])):  # locked, sized
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.01)
        # a restore running alongside leaves the live one's file alone
        _, notes = restore(stream_between(None, v[1], "", "id-1"), tmp_path / "other.img")
        assert tmp.exists() and notes == []
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert tmp.exists() and not img.exists()  # kill -9 ran no cleanup
    _, notes = restore(stream_between(None, v[2], "", "id-2"), tmp_path / "next.img")
    assert notes == [f"removed {tmp}, left by an interrupted lvpatch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.img", "other.img"]
