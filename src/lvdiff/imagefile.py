"""Restore into a sparse image file instead of a thin pool (``lvpatch --to-file``).

For the day the data is needed and no thin pool is at hand: a full stream
becomes an image file, and incrementals apply onto a copy of the image of
their base, exactly as lvpatch would build them on LVM.  Atomic like the LVM
path: the new image is built under a temporary name beside it (a reflink
copy of the base where the filesystem has them, else a sparse copy),
verified, flushed, and only then given its name, never over a file that
appeared there meanwhile; any failure removes it.  The temporary file is
locked while it is built, so the next restore into the directory removes one
that a killed lvpatch left.  Images are plain raw files: ``losetup``,
``qemu-img`` and ``mount -o loop`` read them.

Lineage works as on LVM, with the identity in an extended attribute
(``user.lvdiff.identity``) instead of a tag.  As on LVM, a restored image is
made read-only so that its identity keeps proving its content; but root
writes regardless of modes and anyone may chmod their own file, so the image
also records its modification time and size (``user.lvdiff.stamp``), and an
image that no longer matches its stamp is checked by content alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from . import fingerprint as fpr
from .apply_records import DEFAULT_WORKERS, write_records
from .blockdev import BlockDevice
from .chunk_writer import ChunkWriter, TargetKind
from .errors import BaseMismatch, LvdiffError, UsageError, VerifyFailed
from .events import Note, Progress, Reporter, ignore
from .lineage import BaseCheck, check_base
from .restored import Restored
from .stream import Digest, Header, Record, StreamDigest, StreamReader

XATTR = "user.lvdiff.identity"
STAMP_XATTR = "user.lvdiff.stamp"
_FICLONE = 0x40049409
_TEMP_NAME = re.compile(r"\..+\.lvpatch-[0-9]+")
# copy_file_range() cannot here: across file systems (Linux >= 5.19), on some file
# systems, or on a kernel without it.  ENOTSUP is EOPNOTSUPP on Linux.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})
# link() cannot here: the file system has no hard links (vfat, some FUSE and SMB mounts).
_NO_LINK = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK})
_COPY_STEP = 1 << 20
_CLOCK_REALTIME_COARSE = 5  # Linux: the clock the kernel stamps file writes with


def restore_to_file(
    inp: BinaryIO,
    image: Path,
    base: Path | None = None,
    *,
    base_check: bool = True,
    workers: int = DEFAULT_WORKERS,
    report: Reporter = ignore,
    digest: Digest | None = None,
    expect_digest: StreamDigest | None = None,
) -> Restored:
    """Build ``image`` from a stream (and, for an incremental one, the image ``base``).

    ``digest`` and ``expect_digest`` are StreamReader's ``file_digest`` and ``expect``.
    """
    reader = StreamReader(inp, digest, expect_digest)
    h = reader.header
    _refuse_misuse(h, image, base)
    _remove_stale_temps(image.parent, report)
    checked = _check_base(h, base, base_check, report) if base is not None else None
    tmp = image.with_name(f".{image.name}.lvpatch-{os.getpid()}")
    fd = _create_locked(tmp)
    ok = False
    try:
        reflinked = _clone(base, fd) if base is not None else False
        os.ftruncate(fd, h.volume_size)
        _fill(reader, tmp, image, base is not None, workers, report)
        if not _seal(fd, image, h.new.identity):
            report(
                Note(f"{image.parent} keeps no extended attributes: the image names no identity")
            )
        _publish(tmp, image)
        ok = True
    finally:
        if not ok:
            tmp.unlink(missing_ok=True)
        os.close(fd)  # only now: the lock kept other restores' cleanup off tmp
    _sync_dir(image.parent)
    return Restored(
        target=str(image),
        header=h,
        totals=reader.totals,
        digest=reader.file_digest,
        base_check=checked,
        verified_level=h.detect_level if h.new_fingerprint else 0,
        read_only=True,
        reflinked=reflinked,
    )


def image_identity(path: Path) -> str | None:
    """The identity an image proves: the one recorded, while its stamp shows it unchanged."""
    try:
        return _proven_identity(path, os.stat(path))[0]
    except OSError:
        return None


def _refuse_misuse(h: Header, image: Path, base: Path | None) -> None:
    if h.resume_offset is not None:
        raise UsageError("a resume stream continues an lvpatch -s target, not an image file")
    if h.incremental and base is None:
        raise UsageError("this is an incremental stream: give its base's image with --from-file")
    if not h.incremental and base is not None:
        raise UsageError("this is a full stream: it needs no --from-file")
    if image.exists() or image.is_symlink():
        raise UsageError(f"{image} exists; not overwriting it")


def _fill(
    reader: StreamReader,
    tmp: Path,
    image: Path,
    incremental: bool,
    workers: int,
    report: Reporter,
) -> None:
    """Apply the records onto ``tmp``, flush, and prove the result is NEW before it is named."""
    h = reader.header
    with BlockDevice(str(tmp), writable=True, direct_writes=True) as dev:
        kind = TargetKind(4096, thin=False, fresh=not incremental)
        writer = ChunkWriter(dev, kind, fill_from=h.base_size if incremental else None)

        def progress(rec: Record) -> None:
            report(Progress(rec.end, h.volume_size))

        write_records(reader, writer, workers=workers, on_record=progress)
        writer.finish()
        dev.sync()
        fp = h.new_fingerprint
        if fp and not fpr.verify(fp, dev.read):
            raise VerifyFailed(f"{image} does not match the fingerprint of {h.new.name}")


# --- identity and stamp ------------------------------------------------------------


def _stamp(st: os.stat_result) -> bytes:
    """What shows an image unchanged since it was restored: any write moves its mtime.

    Not the inode number or ctime: a copy with ``cp -a`` or ``rsync -aX``, or a
    ``mv``, holds the same content and keeps its identity.
    """
    return f"mtime_ns={st.st_mtime_ns} size={st.st_size}".encode()


def _proven_identity(path: Path, st: os.stat_result) -> tuple[str | None, str | None]:
    """The identity ``path`` proves, or None and, if it records one it cannot prove, why."""
    raw = _get_xattr(path, XATTR)
    if raw is None:
        return None, None  # made by other means: the content check decides
    identity = raw.decode("ascii", "replace")
    stamp = _get_xattr(path, STAMP_XATTR)
    if stamp is None:
        # Restored by an lvpatch older than the stamp (or labelled by hand): such images
        # stayed writable, and nothing shows this one was not written to since, so its
        # identity is not trusted; it is checked like an image made by other means.
        return None, (
            f"{path} records identity {identity} but no stamp of when it was restored "
            "(an older lvpatch made it), so the identity cannot prove it unchanged; "
            "the content check decides"
        )
    if stamp != _stamp(st):
        return None, (
            f"{path} was changed since it was restored (its modification time or size "
            f"is not the one recorded), so its identity {identity} no longer proves its "
            "content; the content check decides"
        )
    return identity, None


def _get_xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def _set_xattr(fd: int, image: Path, name: str, value: bytes) -> bool:
    """False if the file system keeps no extended attributes."""
    try:
        os.setxattr(fd, name, value)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise LvdiffError(f"cannot record the identity on {image}: {e.strerror}") from None


def _seal(fd: int, image: Path, identity: str | None) -> bool:
    """Make the finished image read-only and record what it holds, as lvpatch does on LVM.

    The attributes go on before the chmod, since only root may set them on a
    file without write permission; the stamp is read after every write and the
    flush, and checked again after the chmod (which moves neither mtime nor
    size).  The image keeps the read bits it was created with (the umask's),
    so read-only never means readable by more people.  False if the file
    system keeps no extended attributes.
    """
    os.fsync(fd)
    st = os.fstat(fd)
    kept = True
    if identity:
        kept = _set_xattr(fd, image, XATTR, identity.encode()) and _set_xattr(
            fd, image, STAMP_XATTR, _stamp(st)
        )
    os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o222)
    os.fsync(fd)
    if _stamp(os.fstat(fd)) != _stamp(st):
        raise LvdiffError(f"{image} was written to while lvpatch finished it")
    if identity and kept:
        _outlast(st.st_mtime_ns)
    return kept


def _outlast(mtime_ns: int) -> None:
    """Return once no write can be given the modification time ``mtime_ns`` any more.

    The kernel stamps writes from a clock that ticks every few milliseconds, so
    a write right after lvpatch returned could keep the recorded mtime and go
    unnoticed (git's "racy clean" files).  Waiting out the tick closes that;
    the wait is bounded for a file server whose clock runs ahead of ours.  On a
    file system with whole-second times, a write within that second stays
    unseen: the content check still runs.
    """
    deadline = time.monotonic() + 0.1
    while time.clock_gettime_ns(_CLOCK_REALTIME_COARSE) <= mtime_ns:
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)


def _check_base(h: Header, base: Path, base_check: bool, report: Reporter) -> BaseCheck:
    """Lineage first (O(1)), then content, with the check lvpatch makes on LVM.

    An image's mode is no promise (root writes anyway, owners chmod): its
    identity counts only while its stamp shows it unchanged.  Otherwise, like
    a writable base on LVM, the content check decides and a note says why.
    """
    assert h.base is not None and h.base_size is not None
    try:
        st = os.stat(base)
    except OSError as e:
        raise UsageError(f"cannot read {base}: {e.strerror}") from None
    if st.st_size < h.base_size:
        raise BaseMismatch(f"{base} holds {st.st_size} bytes; the stream's base held {h.base_size}")
    if not base_check:
        report(Note("base check skipped (--no-base-check): BASE is not verified"))
        return check_base(h, str(base), None, False, enabled=False)
    recorded, doubt = _proven_identity(base, st)
    if doubt and h.base.identity is not None:
        report(Note(doubt))
    with BlockDevice(str(base)) as dev:
        return check_base(h, str(base), recorded, True, dev.read)


# --- the temporary file: locked while built, named without replacing -------------


def _create_locked(tmp: Path) -> int:
    """Create the temporary file and hold a lock on it until it is published or removed.

    The kernel drops the lock however the process ends (``kill -9`` too), which
    is how a later restore tells a leftover from a file being built.  Between
    creating and locking, another restore's cleanup could take it for a
    leftover and remove it: then it is made again.
    """
    for _attempt in range(3):
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            # the cleanup just ran: this one is locked, or not ours to remove
            raise UsageError(
                f"{tmp} exists and is in use or not removable; not touching it"
            ) from None
        except OSError as e:
            raise UsageError(f"cannot create {tmp}: {e.strerror}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, tmp):
            return fd
        os.close(fd)
    raise LvdiffError(f"{tmp} was removed by another process each time it was made")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _remove_stale_temps(directory: Path, report: Reporter) -> None:
    """Remove the temporary files that killed restores left in ``directory``.

    Each can be as large as a volume.  One whose lock can be taken has nobody
    building it; one that is locked belongs to a restore still running.
    """
    try:
        names = [e.name for e in os.scandir(directory) if _TEMP_NAME.fullmatch(e.name)]
    except OSError:
        return  # no such directory: creating the temporary file says so
    for name in sorted(names):
        if _remove_if_unlocked(directory / name):
            report(Note(f"removed {directory / name}, left by an interrupted lvpatch"))


def _remove_if_unlocked(path: Path) -> bool:
    """Remove ``path`` if it is a regular file nobody holds locked; False if it stays."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # gone meanwhile, a symlink, or not ours to read
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _same_file(fd, path):
            return False  # removed, and perhaps made again, while we locked it
        path.unlink()
        return True
    except OSError:
        return False  # locked (a restore is building it), or not ours to remove
    finally:
        os.close(fd)


def _publish(tmp: Path, image: Path) -> None:
    """Give the finished image its name, never over a file that appeared there meanwhile.

    rename() would silently replace one (another restore of the same volume, a
    user's file); link() fails instead.  Without hard links, rename after
    checking the name is still free: the gap between the two is what remains.
    """
    try:
        os.link(tmp, image, follow_symlinks=False)
    except FileExistsError:
        raise UsageError(f"{image} appeared during the restore; not replacing it") from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise LvdiffError(f"cannot name the image {image}: {e.strerror}") from None
        if image.exists() or image.is_symlink():
            raise UsageError(f"{image} appeared during the restore; not replacing it") from None
        os.rename(tmp, image)
        return
    tmp.unlink()


# --- copying the base --------------------------------------------------------------


def _clone(src: Path, fo: int) -> bool:
    """Copy ``src`` into the new, empty file ``fo``: a reflink where the filesystem can,
    else sparse.  True if it was a reflink.
    """
    try:
        with open(src, "rb") as fi:
            try:
                fcntl.ioctl(fo, _FICLONE, fi.fileno())
                return True
            except OSError:
                pass
            _copy_sparse(fi.fileno(), fo, os.fstat(fi.fileno()).st_size)
    except OSError as e:
        raise LvdiffError(f"cannot copy {src}: {e.strerror}") from None
    return False


def _copy_sparse(fi: int, fo: int, size: int) -> None:
    """Copy the data of ``fi`` into ``fo`` and leave its holes holes.

    copy_file_range() lets the kernel (or the file server) do it; where it
    cannot, pread/pwrite do, segment by segment.  shutil.copyfileobj would
    write every hole out as zeros.
    """
    in_kernel = True
    for start, end in _data_segments(fi, size):
        if in_kernel:
            try:
                _copy_in_kernel(fi, fo, start, end)
                continue
            except OSError as e:
                if e.errno not in _NO_COPY_RANGE:
                    raise
                in_kernel = False  # and this segment again, by hand
        _copy_by_hand(fi, fo, start, end)
    os.ftruncate(fo, size)


def _data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The [start, end) ranges of ``fd`` that hold data, between its holes."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole to the end
                return
            raise
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        if data >= hole:
            return
        yield data, hole
        pos = hole


def _copy_in_kernel(fi: int, fo: int, start: int, end: int) -> None:
    while start < end:
        n = os.copy_file_range(fi, fo, end - start, start, start)
        if n == 0:  # the file ended early
            return
        start += n


def _copy_by_hand(fi: int, fo: int, start: int, end: int) -> None:
    while start < end:
        buf = memoryview(os.pread(fi, min(_COPY_STEP, end - start), start))
        if not buf:  # the file ended early
            return
        while buf:
            n = os.pwrite(fo, buf, start)
            buf, start = buf[n:], start + n


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
