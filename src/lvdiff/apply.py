"""The lvpatch engine: apply a stream to a new thin snapshot of BASE, atomically.

The target is created tagged ``lvdiff_incomplete``; the tag is cleared only
after every record was applied, END validated, data flushed and NEW's
fingerprint verified.  Any failure before that removes the target, so a
half-written volume never survives.  Two documented exceptions: ``--in-place``
(there is nothing to remove) and ``-s``/``--resume``, where an interrupted
target is kept on purpose, still tagged incomplete, with a resume token.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO

from . import fingerprint as fpr
from . import lvm
from .blockdev import BlockDevice, DeviceError
from .errors import BaseMismatch, LvdiffError, StreamError, UsageError, VerifyFailed
from .resume import TAG_PREFIX, ResumeToken
from .stream import Header, RecordType, StreamReader, Totals
from .writer import ChunkWriter


@dataclass
class ApplyOptions:
    base_check: bool = True
    in_place: bool = False
    progress: bool = False
    resumable: bool = False  # on interruption keep NAME and a resume token (lvpatch -s)
    resume: bool = False  # continue an interrupted NAME (lvpatch --resume)
    checkpoint_bytes: int = 1 << 30  # resumable: make progress durable this often


@dataclass
class ApplyResult:
    target: str
    header: Header
    totals: Totals
    sha256: str


def apply_stream(
    inp: BinaryIO,
    vg: str,
    base: str | None = None,
    pool: str | None = None,
    name: str | None = None,
    options: ApplyOptions | None = None,
    announce: Callable[[Header], None] | None = None,
) -> ApplyResult:
    """Rebuild NEW in ``vg`` from a stream: see the module docstring for the guarantees."""
    opt = options or ApplyOptions()
    reader = StreamReader(inp)
    if announce:
        announce(reader.header)
    job = _Apply(reader, lvm.check_name(vg, "VG name"), base, pool, name, opt)
    with job.stack:
        return job.run()


class _Apply:
    """One lvpatch run; ``stack`` holds the target lock for its whole life."""

    def __init__(
        self,
        reader: StreamReader,
        vg: str,
        base: str | None,
        pool: str | None,
        name: str | None,
        opt: ApplyOptions,
    ) -> None:
        self.reader, self.h, self.vg, self.base, self.pool, self.opt = (
            reader,
            reader.header,
            vg,
            base,
            pool,
            opt,
        )
        self.name = lvm.check_name(name or self.h.new["name"], "LV name")
        self.stack = ExitStack()
        self.target: lvm.LV | None = None  # a thin volume we write (None: --in-place non-thin)
        self.created = False  # we made the target, so failure removes it
        self.durable = self.h.resume_offset or 0  # records below this are on disk
        self._check_arguments()

    def _check_arguments(self) -> None:
        h, opt = self.h, self.opt
        if opt.resume:
            if opt.in_place:
                raise UsageError("--resume continues a volume lvpatch created; not --in-place")
        elif h.resume_offset is not None:
            raise UsageError(
                "this stream resumes an interrupted transfer: apply it with lvpatch --resume"
            )
        elif h.kind == "incremental" and not self.base:
            raise UsageError("this is an incremental stream: give the base volume with -l BASE")
        elif h.kind == "full" and not (self.pool or (opt.in_place and self.base)):
            raise UsageError("this is a full stream: give the thin pool with -p POOL")
        if opt.in_place and not self.base:
            raise UsageError("--in-place writes into the -l volume: give -l")
        if opt.resumable and opt.in_place:
            raise UsageError("-s/--resumable keeps a volume lvpatch created; not --in-place")
        if opt.resumable:
            ResumeToken.for_stream(0, h.detect_level, h.new_fingerprint)  # refuses -d 0

    def run(self) -> ApplyResult:
        ok = False
        try:
            path, label = self._prepare_target()
            with (
                _pool_full_is_named(self.target),
                BlockDevice(path, writable=True, exclusive=True) as dev,
            ):
                if dev.size < self.h.volume_size:
                    raise UsageError(
                        f"{label} holds {dev.size} bytes; the stream needs {self.h.volume_size}"
                    )
                self._check_base(dev)
                self._write(dev)
                self._verify(dev, label)
            if self.target and not self.opt.in_place:
                with _signals_deferred():
                    lvm.set_tags(self.target, remove=[lvm.TAG_INCOMPLETE, *self._resume_tags()])
            ok = True
            return ApplyResult(label, self.h, self.reader.totals, self.reader.sha256 or "")
        finally:
            if not ok and self.created and self.target:
                with _signals_deferred():
                    try:
                        lvm.remove(self.target)
                    except LvdiffError as e:
                        print(
                            f"lvpatch: could not remove the incomplete "
                            f"{self.target.full_name}: {e}",
                            file=sys.stderr,
                        )

    def _prepare_target(self) -> tuple[str, str]:
        h, vg, opt = self.h, self.vg, self.opt
        if opt.in_place:
            lv = lvm.get_lv(vg, lvm.check_name(self.base or "", "LV name"))
            lvm.activate(lv)
            self.target = lv if lv.is_thin else None
            return lv.dev, lv.full_name
        self.stack.enter_context(lvm.target_lock(vg, self.name))
        if opt.resume:
            self.target = self._resumable_target()
        else:
            cleanup(vg, locked=(self.name,))
            if lvm.exists(vg, self.name):
                raise UsageError(
                    f"{vg}/{self.name} already exists; name the restored volume "
                    "differently or remove it first"
                )
            if h.kind == "full":
                lvm.get_pool(vg, lvm.check_name(self.pool or "", "pool name"))
            # Ctrl-C/SIGTERM wait until the create returns, so the volume is known
            # to us (and removed) rather than left half made.
            with _signals_deferred():
                if h.kind == "incremental":
                    base_lv = lvm.get_thin(vg, self.base or "")
                    _check_base_identity(h, base_lv)
                    self.target = lvm.create_snapshot(
                        base_lv, self.name, tags=(lvm.TAG_INCOMPLETE,), activation_skip=False
                    )
                else:
                    self.target = lvm.create_thin(
                        vg, self.pool or "", self.name, h.volume_size, tags=(lvm.TAG_INCOMPLETE,)
                    )
                self.created = True
        lvm.activate(self.target)
        if self.created and self.target.size != h.volume_size and h.kind == "incremental":
            self.target = lvm.resize(self.target, h.volume_size)
        return self.target.dev, self.target.full_name

    def _resumable_target(self) -> lvm.LV:
        """The incomplete volume to continue, after checking the stream belongs to it."""
        h = self.h
        lv = lvm.get_thin(self.vg, self.name)
        token = ResumeToken.from_tags(lv.tags)
        if lvm.TAG_INCOMPLETE not in lv.tags or token is None:
            raise UsageError(
                f"{lv.full_name} is not an interrupted lvpatch target "
                "(no lvdiff_incomplete and lvdiff_resume tags)"
            )
        mine = ResumeToken.for_stream(token.offset, h.detect_level, h.new_fingerprint)
        if mine != token:
            raise StreamError(
                f"this stream does not continue {lv.full_name}: its NEW "
                f"differs from the interrupted transfer's (token {token})"
            )
        if (h.resume_offset or 0) > token.offset:
            raise StreamError(
                f"this stream starts at byte {h.resume_offset}, past the "
                f"{token.offset} bytes {lv.full_name} holds: lvdiff --resume "
                f"{token}"
            )
        self.durable = token.offset
        return lv

    def _check_base(self, dev: BlockDevice) -> None:
        h = self.h
        if (
            h.kind != "incremental"
            or not self.opt.base_check
            or not h.base_fingerprint
            or self.opt.resume
        ):  # a resumed target was checked, then written
            return
        fp = fpr.Fingerprint.from_dict(h.base_fingerprint)
        if not fpr.verify(fp, dev.read):
            raise BaseMismatch(
                f"{self.vg}/{self.base} is not the base this stream was made "
                f"from ({h.base['name']}, check level {fp.level})"
            )

    def _write(self, dev: BlockDevice) -> None:
        h, opt, thin = self.h, self.opt, self.target
        writer = ChunkWriter(
            dev,
            _target_chunk(thin),
            h.volume_size,
            fresh=self.created and h.kind == "full",
            discard=dev.discard_max_bytes > 0 and thin is not None,
            zero_fallback="write" if thin else "zeroout",
        )
        bar = _progress_bar(opt.progress, h.volume_size)
        applied = self.durable
        try:
            for rec in self.reader:
                if rec.type == RecordType.DATA:
                    assert rec.data is not None
                    writer.data(rec.offset, rec.data)
                else:
                    writer.zero(rec.offset, rec.length)
                applied = rec.offset + rec.length
                if bar:
                    bar.update(applied - bar.n)
                if opt.resumable and applied - self.durable >= opt.checkpoint_bytes:
                    self._checkpoint(writer, dev, applied)
            writer.finish()
        except (StreamError, DeviceError, KeyboardInterrupt):
            if (opt.resumable or opt.resume) and thin is not None:
                self._keep_for_resume(writer, dev, applied)
            raise
        finally:
            if bar:
                bar.close()
        dev.sync()
        dev.drop_cache()

    def _checkpoint(self, writer: ChunkWriter, dev: BlockDevice, applied: int) -> None:
        """Make everything up to ``applied`` durable, then say so on the volume."""
        assert self.target is not None
        writer.finish()
        dev.sync()
        token = ResumeToken.for_stream(applied, self.h.detect_level, self.h.new_fingerprint)
        with _signals_deferred():
            lvm.set_tags(self.target, add=[token.tag], remove=self._resume_tags())
        self.target.tags = [t for t in self.target.tags if t not in self._resume_tags()]
        self.target.tags.append(token.tag)
        self.durable = applied

    def _keep_for_resume(self, writer: ChunkWriter, dev: BlockDevice, applied: int) -> None:
        """On interruption, keep the target and its token instead of removing it."""
        assert self.target is not None
        if applied == 0 and not self.opt.resume:
            return  # nothing written yet: removing it loses nothing
        try:
            self._checkpoint(writer, dev, applied)
        except (LvdiffError, OSError) as e:
            print(f"lvpatch: could not record progress ({e})", file=sys.stderr)
        token = ResumeToken.from_tags(self.target.tags)
        if token is None:
            return  # no durable point was ever recorded: nothing to resume from
        self.created = False  # keep it
        print(
            f"lvpatch: kept the incomplete {self.target.full_name} (durable up to byte "
            f"{token.offset}); resume with:\n  lvdiff --resume {token} ... | "
            f"lvpatch --resume -g {self.vg} {self.name}",
            file=sys.stderr,
        )

    def _resume_tags(self) -> list[str]:
        return [t for t in (self.target.tags if self.target else []) if t.startswith(TAG_PREFIX)]

    def _verify(self, dev: BlockDevice, label: str) -> None:
        if self.h.new_fingerprint:
            fp = fpr.Fingerprint.from_dict(self.h.new_fingerprint)
            if not fpr.verify(fp, dev.read):
                raise VerifyFailed(
                    f"{label} does not match the fingerprint of {self.h.new['name']} after writing"
                )


def cleanup(vg: str, resumable: bool = False, locked: tuple[str, ...] = ()) -> list[str]:
    """Remove targets that a killed lvpatch left tagged incomplete in ``vg``.

    Volumes kept for ``--resume`` go only when ``resumable`` (lvpatch --cleanup).
    """
    removed = lvm.remove_stale(vg, lvm.TAG_INCOMPLETE, resumable=resumable, locked=locked)
    for full_name in removed:
        print(
            f"lvpatch: removed {full_name}, left incomplete by an interrupted lvpatch",
            file=sys.stderr,
        )
    return removed


@contextmanager
def _pool_full_is_named(thin: lvm.LV | None) -> Iterator[None]:
    """Turn the EIO/ENOSPC of a thin pool that ran out of data space into that fact."""
    try:
        yield
    except DeviceError as e:
        if thin is not None and lvm.pool_out_of_data_space(thin.vg, thin.pool):
            raise DeviceError(f"thin pool {thin.vg}/{thin.pool} is full ({e})") from None
        raise


def _progress_bar(enabled: bool, total: int):  # noqa: ANN202 - tqdm is imported lazily
    """Position in the volume, on stderr; tqdm is only loaded when asked for."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="lvpatch")


def _check_base_identity(h: Header, base_lv: lvm.LV) -> None:
    if h.base_size is not None and base_lv.size < h.base_size:
        raise BaseMismatch(
            f"{base_lv.full_name} holds {base_lv.size} bytes; the stream's base "
            f"{h.base['name']} held {h.base_size}"
        )


def _target_chunk(thin: lvm.LV | None) -> int:
    """The granularity at which the target must be written whole."""
    if thin is None:
        return 4096  # a volume that is not thin: page-sized read-modify-write
    return lvm.get_lv(thin.vg, thin.pool).chunk_size


class _signals_deferred:
    """Hold SIGINT/SIGTERM across a short LVM change, then deliver them."""

    def __enter__(self) -> None:
        self.pending: list[int] = []
        self.saved = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(ValueError):  # not the main thread: nothing to defer
                self.saved[sig] = signal.signal(sig, lambda s, _f: self.pending.append(s))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        for sig in self.pending:
            signal.raise_signal(sig)


__all__ = ["ApplyOptions", "ApplyResult", "StreamError", "apply_stream"]
