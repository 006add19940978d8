"""Restore into a sparse image file instead of a thin pool (``lvpatch --to-file``).

For the day the data is needed and no thin pool is at hand: a full stream
becomes an image file, and incrementals apply onto a copy of the image of
their base, exactly as lvpatch would build them on LVM.  Atomic like the LVM
path: the new image is built under a temporary name beside it (a reflink
copy of the base where the filesystem has them, else a sparse copy),
verified, flushed, and only then renamed into place; any failure removes it.
Images are plain raw files: ``losetup``, ``qemu-img`` and ``mount -o loop``
read them.  Lineage works as on LVM, with the identity in an extended
attribute (``user.lvdiff.identity``) instead of a tag.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import fingerprint as fpr
from .blockdev import BlockDevice
from .errors import BaseMismatch, LvdiffError, UsageError, VerifyFailed
from .events import Note, Progress, Reporter, ignore
from .lineage import check_recorded
from .restore import DEFAULT_WORKERS, write_records
from .stream import Digest, Header, Record, StreamDigest, StreamReader, Totals
from .writer import ChunkWriter, TargetKind

XATTR = "user.lvdiff.identity"
_FICLONE = 0x40049409


@dataclass(frozen=True)
class FileResult:
    target: str
    header: Header
    totals: Totals
    digest: StreamDigest | None
    base_checked: str
    verified_level: int
    reflinked: bool


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
) -> FileResult:
    """Build ``image`` from a stream (and, for an incremental one, the image ``base``).

    ``digest`` and ``expect_digest`` are StreamReader's ``file_digest`` and ``expect``.
    """
    reader = StreamReader(inp, digest, expect_digest)
    h = reader.header
    if h.resume_offset is not None:
        raise UsageError("a resume stream continues an lvpatch -s target, not an image file")
    if h.incremental and base is None:
        raise UsageError("this is an incremental stream: give its base's image with --from-file")
    if not h.incremental and base is not None:
        raise UsageError("this is a full stream: it needs no --from-file")
    if image.exists() or image.is_symlink():
        raise UsageError(f"{image} exists; not overwriting it")
    tmp = image.with_name(f".{image.name}.lvpatch-{os.getpid()}")
    ok = False
    try:
        checked, reflinked = "", False
        if base is not None:
            checked = _check_base(h, base, base_check, report)
            reflinked = _clone(base, tmp)
        else:
            with open(tmp, "xb"):
                pass
        os.truncate(tmp, h.volume_size)
        with BlockDevice(str(tmp), writable=True, direct_writes=True) as dev:
            kind = TargetKind(4096, thin=False, fresh=base is None)
            writer = ChunkWriter(dev, kind, fill_from=h.base_size if base is not None else None)

            def progress(rec: Record) -> None:
                report(Progress(rec.end, h.volume_size))

            write_records(reader, writer, workers=workers, on_record=progress)
            writer.finish()
            dev.sync()
            fp = h.new_fingerprint
            if fp and not fpr.verify(fp, dev.read):
                raise VerifyFailed(f"{image} does not match the fingerprint of {h.new.name}")
        if h.new.identity and not _set_identity(tmp, h.new.identity):
            report(
                Note(f"{image.parent} keeps no extended attributes: the image names no identity")
            )
        os.rename(tmp, image)
        _sync_dir(image.parent)
        ok = True
        return FileResult(
            str(image),
            h,
            reader.totals,
            reader.file_digest,
            checked,
            h.detect_level if fp else 0,
            reflinked,
        )
    finally:
        if not ok:
            tmp.unlink(missing_ok=True)


def image_identity(path: Path) -> str | None:
    try:
        return os.getxattr(path, XATTR).decode("ascii", "replace")
    except OSError:
        return None


def _set_identity(path: Path, identity: str) -> bool:
    try:
        os.setxattr(path, XATTR, identity.encode())
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise LvdiffError(f"cannot record the identity on {path}: {e.strerror}") from None


def _check_base(h: Header, base: Path, base_check: bool, report: Reporter) -> str:
    """Lineage first (O(1)), then content, as lvpatch does on LVM."""
    assert h.base is not None and h.base_size is not None
    try:
        size = os.stat(base).st_size
    except OSError as e:
        raise UsageError(f"cannot read {base}: {e.strerror}") from None
    if size < h.base_size:
        raise BaseMismatch(f"{base} holds {size} bytes; the stream's base held {h.base_size}")
    if not base_check:
        report(Note("base check skipped (--no-base-check): BASE is not verified"))
        return "not checked (--no-base-check)"
    checked = []
    recorded = image_identity(base)
    # an image file's mode is no promise to keep it unchanged: no note about writability
    check_recorded(h, str(base), recorded, writable=False)
    if recorded is not None and h.base.identity is not None:
        checked.append("identity matches")
    fp = h.base_fingerprint
    if fp is None:
        checked.append("content not checked (stream made with -d 0)")
    else:
        with BlockDevice(str(base)) as dev:
            if not fpr.verify(fp, dev.read):
                raise BaseMismatch(
                    f"{base} is not the base this stream was made from "
                    f"({h.base.name}, check level {fp.level})"
                )
        checked.append(f"content matches at level {fp.level}")
    return ", ".join(checked)


def _clone(src: Path, dst: Path) -> bool:
    """Copy ``src`` to a new ``dst``: a reflink where the filesystem can, else sparse.

    True if it was a reflink.
    """
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        try:
            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
            return True
        except OSError:
            pass
        size = os.fstat(fi.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nothing but a hole to the end
                    break
                raise
            hole = os.lseek(fi.fileno(), data, os.SEEK_HOLE)
            while data < hole:
                n = os.copy_file_range(fi.fileno(), fo.fileno(), hole - data, data, data)
                if n == 0:
                    break
                data += n
            pos = hole
        os.ftruncate(fo.fileno(), size)
    return False


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
