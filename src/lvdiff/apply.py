"""The lvpatch engine: apply a stream to a new thin snapshot of BASE, atomically.

The target is created tagged ``lvdiff_incomplete``; the tag is cleared only
after every record was applied, END validated, data flushed and NEW's
fingerprint verified.  Any failure before that removes the target, so a
half-written volume never survives.  Two documented exceptions: ``--in-place``
(there is nothing to remove) and ``-s``/``--resume``, where an interrupted
target is kept on purpose, still tagged incomplete, with a resume token.

Before anything is written, BASE is checked twice over: its lineage identity
(if lvpatch restored it, it says which snapshot it holds; a different one is
refused whatever the level) and its content (the stream's fingerprint of
BASE).  A restored volume is made read-only, so it stays what its identity
says it is.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO

from . import fingerprint as fpr
from . import lineage, lvm, tags
from .blockdev import BlockDevice, DeviceError
from .errors import (
    BaseMismatch,
    DigestMismatch,
    LvdiffError,
    StreamError,
    UsageError,
    VerifyFailed,
)
from .events import Note, Progress, Reporter, ignore
from .restore import DEFAULT_WORKERS, write_records
from .resume import ResumeToken
from .stream import Digest, Header, Record, StreamDigest, StreamReader, Totals
from .writer import ChunkWriter, TargetKind


@dataclass
class ApplyOptions:
    base_check: bool = True
    in_place: bool = False
    writable: bool = False  # leave the restored volume writable (default: read-only)
    resumable: bool = False  # on interruption keep NAME and a resume token (lvpatch -s)
    resume: bool = False  # continue an interrupted NAME (lvpatch --resume)
    checkpoint_bytes: int = 1 << 30  # resumable: make progress durable this often
    workers: int = DEFAULT_WORKERS  # threads that decompress and check records
    tags: tuple[str, ...] = ()  # more LVM tags for the restored volume (lvsync marks its own)
    digest: Digest | None = None  # of the stream's bytes, for the result (None: its own)
    expect_digest: StreamDigest | None = None  # refuse, before commit, a stream that differs


@dataclass
class ApplyResult:
    target: str
    header: Header
    totals: Totals
    digest: StreamDigest | None
    base_checked: str  # how BASE was checked, in words ("" for a full stream)
    verified_level: int  # level of the check of the result against NEW; 0: none ran
    read_only: bool


def apply_stream(
    inp: BinaryIO,
    vg: str,
    base: str | None = None,
    pool: str | None = None,
    name: str | None = None,
    options: ApplyOptions | None = None,
    report: Reporter = ignore,
    announce: Callable[[Header], None] | None = None,
) -> ApplyResult:
    """Rebuild NEW in ``vg`` from a stream: see the module docstring for the guarantees.

    ``announce`` is given the stream's header once it is read, before LVM is touched.
    """
    opt = options or ApplyOptions()
    reader = StreamReader(inp, opt.digest, opt.expect_digest)
    if announce:
        announce(reader.header)
    job = _Apply(reader, lvm.check_name(vg, "VG name"), base, pool, name, opt, report)
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
        report: Reporter,
    ) -> None:
        self.reader, self.h, self.vg, self.pool, self.opt = reader, reader.header, vg, pool, opt
        self.report = report
        self.base = lvm.parse_lv_spec(base, vg)[1] if base else None
        self.name = lvm.check_name(name or self.h.new.name, "LV name")
        self.stack = ExitStack()
        self.target: lvm.LV | None = None  # the volume we write
        self.pool_lv: lvm.LV | None = None  # its thin pool, once known
        self.created = False  # we made the target, so failure removes it
        self.durable = self.h.resume_offset or 0  # records below this are on disk
        self.base_checked = ""
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
        elif h.incremental and not self.base:
            raise UsageError("this is an incremental stream: give the base volume with -l BASE")
        elif not h.incremental and not (self.pool or (opt.in_place and self.base)):
            raise UsageError("this is a full stream: give the thin pool with -p POOL")
        if opt.in_place and not self.base:
            raise UsageError("--in-place writes into the -l volume: give -l")
        if opt.resumable and opt.in_place:
            raise UsageError("-s/--resumable keeps a volume lvpatch created; not --in-place")
        if opt.resumable and h.new.identity is None:
            raise UsageError(
                f"this stream (format {h.version[0]}.{h.version[1]}) names no identities, "
                "so an interrupted restore could not be resumed safely; drop -s"
            )

    def run(self) -> ApplyResult:
        ok = False
        try:
            path, label = self._prepare_target()
            with BlockDevice(path) as dev:
                self._check_base(dev)
            self._resize()
            if self.opt.in_place and self.target:
                # From here it may be half-written: it must not keep claiming what it held.
                t = self.target
                lvm.set_tags(t, remove=tags.with_prefix(t.tags, tags.IDENTITY_PREFIX))
            with (
                _pool_full_is_named(self.target),
                BlockDevice(path, writable=True, exclusive=True, direct_writes=True) as dev,
            ):
                if dev.size < self.h.volume_size:
                    raise UsageError(
                        f"{label} holds {dev.size} bytes; the stream needs {self.h.volume_size}"
                    )
                self._write(dev)
                self._verify(dev, label)
            read_only = self._commit()
            ok = True
            return ApplyResult(
                label,
                self.h,
                self.reader.totals,
                self.reader.file_digest,
                self.base_checked,
                self.h.detect_level if self.h.new_fingerprint else 0,
                read_only,
            )
        finally:
            if not ok and self.created and self.target:
                with _signals_deferred():
                    try:
                        lvm.remove(self.target)
                    except LvdiffError as e:
                        self.report(
                            Note(f"could not remove the incomplete {self.target.full_name}: {e}")
                        )

    # -- the target

    def _prepare_target(self) -> tuple[str, str]:
        h, vg, opt = self.h, self.vg, self.opt
        if opt.in_place:
            lv = lvm.get_lv(vg, self.base or "")
            self._check_lineage(lv)
            lvm.activate(lv)
            self.target = lv
            return lv.dev, lv.full_name
        self.stack.enter_context(lvm.target_lock(vg, self.name))
        if opt.resume:
            self.target = self._resumable_target()
        else:
            listing = lvm.lvs_in_vg(vg)  # once: every lvm command costs a metadata scan
            removed = cleanup(vg, self.report, locked=(self.name,), listing=listing)
            if any(lv.name == self.name for lv in listing) and f"{vg}/{self.name}" not in removed:
                raise UsageError(
                    f"{vg}/{self.name} already exists; name the restored volume "
                    "differently or remove it first"
                )
            if h.incremental:
                base_lv = lvm.get_thin(vg, self.base or "", listing)
                self.pool_lv = lvm.get_pool(vg, base_lv.pool, listing)
            else:
                base_lv = None
                self.pool_lv = lvm.get_pool(
                    vg, lvm.check_name(self.pool or "", "pool name"), listing
                )
            if base_lv:
                self._check_lineage(base_lv)
            new_tags = [tags.INCOMPLETE, *(lvm.check_tag(t) for t in opt.tags)]
            if h.new.identity:
                new_tags.append(lineage.identity_tag(h.new.identity))
            # Ctrl-C/SIGTERM wait until the create returns, so the volume is known
            # to us (and removed) rather than left half made.
            with _signals_deferred():
                if base_lv:
                    self.target = lvm.create_snapshot(
                        base_lv, self.name, add_tags=new_tags, activation_skip=False
                    )
                else:
                    self.target = lvm.create_thin(
                        vg, self.pool or "", self.name, h.volume_size, add_tags=new_tags
                    )
                self.created = True
        lvm.activate(self.target)
        return self.target.dev, self.target.full_name

    def _check_lineage(self, base_lv: lvm.LV) -> None:
        """Refuse a base that cannot be the stream's BASE before anything is written."""
        h = self.h
        if not h.incremental:
            return
        if tags.INCOMPLETE in base_lv.tags:
            raise UsageError(f"{base_lv.full_name} is an incomplete restore, not a base")
        if base_lv.size < (h.base_size or 0):
            raise BaseMismatch(
                f"{base_lv.full_name} holds {base_lv.size} bytes; the stream's base "
                f"{h.base.name if h.base else '?'} held {h.base_size}"
            )
        if not self.opt.base_check:
            self.report(Note("base check skipped (--no-base-check): BASE is not verified"))
            self.base_checked = "not checked (--no-base-check)"
            return
        if base_lv.open and base_lv.writable and not self.opt.in_place:
            raise UsageError(
                f"{base_lv.full_name} is in use and writable, so it can change while "
                "lvpatch copies it; unmount it (or make it read-only) first"
            )
        note = lineage.check_base(h, base_lv)
        if note:
            self.report(Note(note))
        if lineage.recorded_identity(base_lv) is not None and h.base and h.base.identity:
            self.base_checked = "identity matches"

    def _resumable_target(self) -> lvm.LV:
        """The incomplete volume to continue, after checking the stream belongs to it."""
        h = self.h
        lv = lvm.get_thin(self.vg, self.name)
        token = ResumeToken.from_tags(lv.tags)
        if tags.INCOMPLETE not in lv.tags or token is None:
            raise UsageError(
                f"{lv.full_name} is not an interrupted lvpatch target "
                "(no lvdiff_incomplete and lvdiff_resume tags)"
            )
        if (token.new_identity, token.base_identity) != _identities(h):
            raise StreamError(
                f"this stream does not continue {lv.full_name}: it holds another NEW or "
                f"BASE than the interrupted transfer (token {token})"
            )
        if (h.resume_offset or 0) > token.offset:
            raise StreamError(
                f"this stream starts at byte {h.resume_offset}, past the "
                f"{token.offset} bytes {lv.full_name} holds: lvdiff --resume {token}"
            )
        self.durable = token.offset
        if not lv.writable:
            # An lvpatch before the commit became one lvchange could die between making
            # the target read-only and clearing its tags: it is still ours to write.
            self.report(Note(f"{lv.full_name} was left read-only before its commit; resuming it"))
            lvm.set_read_only(lv, False)
            lv = lvm.get_thin(lv.vg, lv.name)
        return lv

    def _resize(self) -> None:
        """Give a new snapshot NEW's size, after BASE was checked at its own size."""
        t = self.target
        if self.created and t is not None and self.h.incremental and t.size != self.h.volume_size:
            self.target = lvm.resize(t, self.h.volume_size)

    def _commit(self) -> bool:
        """Make the restored volume read-only (unless asked not to), then mark it complete."""
        t = self.target
        assert t is not None
        with _signals_deferred():
            if self.opt.in_place:
                if self.h.new.identity:
                    lvm.set_tags(t, add=[lineage.identity_tag(self.h.new.identity)])
                return not t.writable
            read_only = not self.opt.writable
            lvm.set_tags(
                t,
                remove=[tags.INCOMPLETE, *tags.with_prefix(t.tags, tags.RESUME_PREFIX)],
                read_only=read_only,
            )
            return read_only

    # -- checks

    def _check_base(self, dev: BlockDevice) -> None:
        h, fp = self.h, self.h.base_fingerprint
        if not h.incremental or not self.opt.base_check or self.opt.resume:
            return  # a resumed target was checked, then written
        if fp is None:
            self.base_checked = self.base_checked or "not checked (stream made with -d 0)"
            return
        if not fpr.verify(fp, dev.read):
            raise BaseMismatch(
                f"{self.vg}/{self.base} is not the base this stream was made "
                f"from ({h.base.name if h.base else '?'}, check level {fp.level})"
            )
        content = f"content matches at level {fp.level}"
        self.base_checked = f"{self.base_checked}, {content}" if self.base_checked else content

    def _verify(self, dev: BlockDevice, label: str) -> None:
        fp = self.h.new_fingerprint
        if fp and not fpr.verify(fp, dev.read):
            raise VerifyFailed(
                f"{label} does not match the fingerprint of {self.h.new.name} after writing"
            )

    # -- writing

    def _write(self, dev: BlockDevice) -> None:
        h, opt = self.h, self.opt
        kind = self._target_kind(dev)
        if h.incremental:
            fill_from: int | None = h.base_size
        else:
            fill_from = None if kind.fresh else 0
        writer = ChunkWriter(
            dev,
            kind,
            start=self.durable,
            fill_from=fill_from,
            fill_end=h.volume_size if opt.in_place else None,
        )
        applied = self.durable

        def on_record(rec: Record) -> None:
            nonlocal applied
            applied = rec.end
            self.report(Progress(applied, h.volume_size))
            if opt.resumable and applied - self.durable >= opt.checkpoint_bytes:
                self._checkpoint(writer, dev, applied)

        try:
            write_records(self.reader, writer, workers=opt.workers, on_record=on_record)
            writer.finish()
        except (StreamError, DeviceError, KeyboardInterrupt) as e:
            # a stream that is not the recorded one gives nothing worth resuming
            if (opt.resumable or opt.resume) and not isinstance(e, DigestMismatch):
                self._keep_for_resume(writer, dev, applied)
            raise
        dev.sync()
        dev.drop_cache()

    def _target_kind(self, dev: BlockDevice) -> TargetKind:
        t = self.target
        if t is None or not t.is_thin:
            return TargetKind.plain()
        pool = self.pool_lv or lvm.get_lv(t.vg, t.pool)
        # A thin volume with an external origin reads unprovisioned chunks from it:
        # a discarded chunk would show the origin's data, not zeros.
        external = lvm.external_origin(t) is not None
        if external:
            self.report(Note(f"{t.full_name} has an external origin: zeros are written"))
        return TargetKind(
            chunk=pool.chunk_size,
            thin=True,
            zeroes_new_chunks=pool.zero,
            discard=dev.discard_max_bytes > 0 and not external,
            fresh=self.created and not self.h.incremental,
        )

    def _checkpoint(self, writer: ChunkWriter, dev: BlockDevice, applied: int) -> None:
        """Make everything up to ``applied`` durable, then say so on the volume.

        The device refuses every flush after one failed, so a durable point is
        never recorded past data that did not reach the disk.
        """
        assert self.target is not None
        writer.checkpoint()
        dev.sync()
        new, base = _identities(self.h)
        token = ResumeToken(applied, new, base)
        if ResumeToken.from_tags(self.target.tags) != token:
            old = tags.with_prefix(self.target.tags, tags.RESUME_PREFIX)
            with _signals_deferred():
                lvm.set_tags(self.target, add=[token.tag], remove=old)
        self.durable = applied

    def _keep_for_resume(self, writer: ChunkWriter, dev: BlockDevice, applied: int) -> None:
        """On interruption, keep the target and its token instead of removing it."""
        assert self.target is not None
        if applied == 0 and not self.opt.resume:
            return  # nothing written yet: removing it loses nothing
        try:
            self._checkpoint(writer, dev, applied)
        except (LvdiffError, OSError) as e:
            self.report(Note(f"could not record progress ({e})"))
        token = ResumeToken.from_tags(self.target.tags)
        if token is None:
            return  # no durable point was ever recorded: nothing to resume from
        self.created = False  # keep it
        self.report(
            Note(
                f"kept the incomplete {self.target.full_name} (durable up to byte "
                f"{token.offset}); resume with:\n  lvdiff --resume {token} ... | "
                f"lvpatch --resume -g {self.vg} {self.name}"
            )
        )


def _identities(h: Header) -> tuple[str, str | None]:
    """NEW's and BASE's identities as a resume token pins them."""
    assert h.new.identity is not None
    return h.new.identity, (h.base.identity if h.base else None)


def abandon(vg: str, name: str) -> None:
    """Remove a restore an interrupted ``lvpatch -s`` kept for resuming (zfs recv -A)."""
    with lvm.target_lock(vg, lvm.check_name(name, "LV name"), wait=False) as free:
        if not free:
            raise UsageError(f"{vg}/{name} is being written by a running lvpatch")
        lv = lvm.get_lv(vg, name)
        if tags.INCOMPLETE not in lv.tags:
            raise UsageError(f"{lv.full_name} is not an incomplete restore; not removing it")
        lvm.remove(lv)


def prune(vg: str, name: str, source_tag: str) -> None:
    """Remove a complete copy lvsync restored, only if its tags prove it is one of ``source_tag``.

    lvsync's retention on a target calls this (over ssh, through lvpatch), so
    the proof is required here, whatever the caller passes: lvsync's mark,
    exactly that source, and the identity every restored volume records.  A
    volume lvsync did not make, or made for another source, is never removed.
    """
    if not source_tag.startswith(tags.LVSYNC_SOURCE_PREFIX):
        raise UsageError(f"--prune needs the source tag, {tags.LVSYNC_SOURCE_PREFIX}<VG UUID>/<LV>")
    lv = lvm.get_lv(vg, lvm.check_name(name, "LV name"))
    ours = (
        tags.LVSYNC in lv.tags
        and source_tag in lv.tags
        and tags.with_prefix(lv.tags, tags.IDENTITY_PREFIX)
        and tags.INCOMPLETE not in lv.tags
    )
    if not ours:
        raise UsageError(
            f"{lv.full_name} is not a complete copy lvsync made of {source_tag}; not removing it"
        )
    lvm.remove(lv)


def cleanup(
    vg: str,
    report: Reporter = ignore,
    resumable: bool = False,
    locked: tuple[str, ...] = (),
    listing: list[lvm.LV] | None = None,
) -> list[str]:
    """Remove targets that a killed lvpatch left tagged incomplete in ``vg``.

    Volumes kept for ``--resume`` go only when ``resumable`` (lvpatch --cleanup).
    """
    found = lvm.lvs_in_vg(vg) if listing is None else listing
    removed = lvm.remove_stale(found, tags.INCOMPLETE, resumable=resumable, locked=locked)
    for full_name in removed:
        report(Note(f"removed {full_name}, left incomplete by an interrupted lvpatch"))
    return removed


@contextmanager
def _pool_full_is_named(thin: lvm.LV | None) -> Iterator[None]:
    """Turn the EIO/ENOSPC of a thin pool that ran out of data space into that fact."""
    try:
        yield
    except DeviceError as e:
        if thin is not None and thin.is_thin and lvm.pool_out_of_data_space(thin.vg, thin.pool):
            raise DeviceError(f"thin pool {thin.vg}/{thin.pool} is full ({e})") from None
        raise


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


__all__ = ["ApplyOptions", "ApplyResult", "StreamError", "apply_stream", "cleanup"]
