"""Locks, and the pool's metadata-snapshot reservation: who may do what to a pool or a volume.

As borg keeps its locks in ``fslocking.py`` apart from the repository, these
live apart from the LVM commands (:mod:`lvdiff.lvm`), and report through the
engines' events instead of printing: a caller that waits for a lock says so
in its own words and on its own console.

- a *pool lock* serialises our own runs on one thin pool, which holds at most
  one metadata snapshot;
- a *target lock* is held by lvpatch while it builds a volume: an incomplete
  volume whose lock is free belongs to an lvpatch that died;
- a *job lock* is held by an lvsync run of one job for its whole life.

All are flocks on files in a private directory (:data:`LOCK_DIR`), so the
kernel drops them however the holder ends, ``kill -9`` included.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from . import lvm
from .errors import CommandFailed, LvdiffError
from .events import Note, Reporter, ignore

LOCK_DIR = Path("/run/lock/lvdiff")


def _private_dir() -> int:
    """An fd of LOCK_DIR, made (mode 0700) if missing, and proved private to us.

    /run/lock is world-writable: a local user could create /run/lock/lvdiff
    first and plant symlinks in it for root to write through, or swap lock
    files under a running lvdiff.  So the directory must be a real directory
    (not a link), owned by us and writable by nobody else; files in it are
    opened relative to this fd and never through a link.
    """
    LOCK_DIR.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.mkdir(LOCK_DIR, 0o700)
    try:
        fd = os.open(LOCK_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise LvdiffError(f"{LOCK_DIR} is not a directory ({e.strerror}); remove it") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022:
        os.close(fd)
        raise LvdiffError(
            f"{LOCK_DIR} belongs to uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}: "
            "another user could tamper with lvdiff's locks; remove it and run again"
        )
    return fd


def _open_private(name: str, flags: int) -> int:
    """Open LOCK_DIR/name (created 0600), never following a symlink."""
    dfd = _private_dir()
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as e:
        raise LvdiffError(f"cannot open {LOCK_DIR / name}: {e.strerror}") from None
    finally:
        os.close(dfd)


@contextmanager
def _flock(name: str, busy: str | None, report: Reporter) -> Iterator[bool]:
    """Hold an exclusive flock on LOCK_DIR/name; the kernel drops it if we die.

    With ``busy`` set, wait (saying so once, through ``report``); without,
    yield False at once when someone else holds it.
    """
    fd = _open_private(name, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is None:
                yield False
                return
            report(Note(busy))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def pool_lock(vg: str, pool: str, report: Reporter = ignore) -> AbstractContextManager[bool]:
    """Serialise our own runs on one pool: it holds at most one metadata snapshot."""
    return _flock(
        f"pool-{lvm.dm_name(vg, pool)}.lock",
        f"waiting for another run on the thin pool {vg}/{pool}",
        report,
    )


def target_lock(
    vg: str, name: str, wait: bool = True, report: Reporter = ignore
) -> AbstractContextManager[bool]:
    """Held by lvpatch while it builds vg/name: an incomplete volume whose lock is
    free belongs to an lvpatch that died."""
    busy = f"waiting for another restore of {vg}/{name}" if wait else None
    return _flock(f"target-{lvm.dm_name(vg, name)}.lock", busy, report)


def job_lock(key: str) -> AbstractContextManager[bool]:
    """Held by an lvsync run of one job for its whole life: a second run of it stops at once."""
    return _flock(f"lvsync-{key}.lock", None, ignore)


class _Note:
    """A one-line file in LOCK_DIR, private to root like the locks beside it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self) -> str | None:
        try:
            fd = _open_private(self.name, os.O_RDONLY)
        except LvdiffError:
            return None
        with os.fdopen(fd) as f:
            return f.read().strip()

    def write(self, text: str) -> None:
        fd = _open_private(self.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")

    def remove(self) -> None:
        dfd = _private_dir()
        try:
            os.unlink(self.name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)


class _Marker(_Note):
    """Which metadata root this host's lvdiff reserved on a pool."""

    def __init__(self, vg: str, pool: str) -> None:
        super().__init__(f"pool-{lvm.dm_name(vg, pool)}.held")


def recall(name: str) -> str | None:
    """What :func:`remember` kept under ``name`` (until the next boot: LOCK_DIR is in /run)."""
    return _Note(name).read()


def remember(name: str, text: str) -> None:
    _Note(name).write(text)


@contextmanager
def metadata_snapshot(vg: str, pool: str, report: Reporter = ignore) -> Iterator[str]:
    """Reserve the pool's metadata snapshot; release it on every exit path.

    Call with the pool lock held.  A marker file records the held root we
    reserved; if an lvdiff was killed with the reservation held, the next one
    finds the marker naming the very root still held and releases it.  Any
    other reservation belongs to another tool and is never released: stop and
    tell the user how to release it.

    The reservation is tried first (the kernel refuses a second one with EBUSY),
    and the pool's status read only when it fails: a run costs three dmsetup
    commands (reserve, the root for the marker, release), not five.
    """
    marker = _Marker(vg, pool)
    tpool = lvm.likely_pool_device(vg, pool)
    try:
        lvm.run(["dmsetup", "message", tpool, "0", "reserve_metadata_snap"])
    except CommandFailed:  # held already, or not the thin-pool target: look before anything
        tpool = lvm.pool_device(vg, pool)
        held = lvm.held_metadata_root(tpool)
        if held != "-":
            if marker.read() != held:
                raise LvdiffError(
                    f"thin pool {vg}/{pool} already has a metadata snapshot held by another "
                    f"tool; when it is done, release it with: "
                    f"dmsetup message {tpool} 0 release_metadata_snap"
                ) from None
            report(Note(f"releasing the metadata snapshot a killed lvdiff left on {vg}/{pool}"))
            lvm.run(["dmsetup", "message", tpool, "0", "release_metadata_snap"])
        marker.remove()
        lvm.run(["dmsetup", "message", tpool, "0", "reserve_metadata_snap"])
    try:
        marker.write(lvm.held_metadata_root(tpool))
        yield lvm.metadata_device(vg, pool)
    finally:
        lvm.run(["dmsetup", "message", tpool, "0", "release_metadata_snap"])
        marker.remove()
