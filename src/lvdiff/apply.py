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
from . import lineage, locks, lvm, tags
from .apply_records import DEFAULT_WORKERS, write_records
from .blockdev import BlockDevice, DeviceError
from .chunk_writer import ChunkWriter, TargetKind
from .errors import (
    BaseMismatch,
    DigestMismatch,
    LvdiffError,
    StreamError,
    UsageError,
    VerifyFailed,
)
from .events import Note, Progress, Reporter, ignore
from .restored import Restored
from .resume import ResumeToken
from .stream import Digest, Header, Record, StreamDigest, StreamReader


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


def apply_stream(
    inp: BinaryIO,
    vg: str,
    base: str | None = None,
    pool: str | None = None,
    name: str | None = None,
    options: ApplyOptions | None = None,
    report: Reporter = ignore,
    announce: Callable[[Header], None] | None = None,
) -> Restored:
    """Rebuild NEW in ``vg`` from a stream: see the module docstring for the guarantees.

    ``announce`` is given the stream's header once it is read, before LVM is touched.
    """
    opt = options or ApplyOptions()
    reader = StreamReader(inp, opt.digest, opt.expect_digest)
    if announce:
        announce(reader.header)
    run = _Restore(reader, lvm.check_name(vg, "VG name"), base, pool, name, opt, report)
    with run.stack:
        return run.run()


class _Target:
    """The volume a restore writes, through its life: made (or found again to resume, or
    the -l volume itself in place), sized, then committed, kept for a resume, or discarded.

    Only a volume this run made is ever removed, and only while it is not kept.
    """

    def __init__(self, vg: str, name: str, opt: ApplyOptions, report: Reporter) -> None:
        self.vg, self.name, self.opt, self.report = vg, name, opt, report
        self.lv: lvm.LV | None = None
        self.pool: lvm.LV | None = None  # its thin pool, once known
        self.made = False  # this run created it
        self.kept = False  # an interrupted restore to resume: never removed here

    @property
    def label(self) -> str:
        assert self.lv is not None
        return self.lv.full_name

    def create(self, h: Header, base_lv: lvm.LV | None, pool: str | None) -> None:
        """A new snapshot of ``base_lv`` (incremental) or thin volume in ``pool`` (full)."""
        new_tags = [tags.INCOMPLETE, *(lvm.check_tag(t) for t in self.opt.tags)]
        if h.new.identity:
            new_tags.append(lineage.identity_tag(h.new.identity))
        # Ctrl-C/SIGTERM wait until the create returns, so the volume is known
        # to us (and removed) rather than left half made.
        with _signals_deferred():
            if base_lv:
                self.lv = lvm.create_snapshot(
                    base_lv, self.name, add_tags=new_tags, activation_skip=False
                )
            else:
                self.lv = lvm.create_thin(self.vg, pool or "", self.name, h.volume_size, new_tags)
            self.made = True

    def resize(self, size: int) -> None:
        """Give a new snapshot NEW's size, after BASE was checked at its own size."""
        if self.made and self.lv is not None and self.lv.size != size:
            self.lv = lvm.resize(self.lv, size)

    def commit(self, identity: str | None) -> bool:
        """Make the restored volume read-only (unless asked not to) and mark it complete, in
        one metadata change; True if it is read-only."""
        t = self.lv
        assert t is not None
        with _signals_deferred():
            if self.opt.in_place:
                if identity:
                    lvm.set_tags(t, add=[lineage.identity_tag(identity)])
                return not t.writable
            read_only = not self.opt.writable
            lvm.set_tags(
                t,
                remove=[tags.INCOMPLETE, *tags.with_prefix(t.tags, tags.RESUME_PREFIX)],
                read_only=read_only,
            )
            return read_only

    def keep(self) -> None:
        """Keep it, incomplete, for ``lvpatch --resume``."""
        self.kept = True

    def discard(self) -> None:
        """Remove what this run made and did not keep; a failure here is only reported."""
        if not self.made or self.kept or self.lv is None:
            return
        with _signals_deferred():
            try:
                lvm.remove(self.lv)
            except LvdiffError as e:
                self.report(Note(f"could not remove the incomplete {self.lv.full_name}: {e}"))

    def kind(self, dev: BlockDevice, incremental: bool) -> TargetKind:
        """How records land on it (chunk size, zeroing, discards): see lvdiff.chunk_writer."""
        t = self.lv
        if t is None or not t.is_thin:
            return TargetKind.plain()
        pool = self.pool or lvm.get_lv(t.vg, t.pool)
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
            fresh=self.made and not incremental,
        )


class _Restore:
    """One lvpatch run: its arguments' rules, BASE's checks, and the write loop with its
    checkpoints; the target's life is :class:`_Target`'s.  ``stack`` holds the target
    lock for the whole run."""

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
        self.target = _Target(vg, self.name, opt, report)
        self.durable = self.h.resume_offset or 0  # records below this are on disk
        self.base_check: lineage.BaseCheck | None = None
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

    def run(self) -> Restored:
        target = self.target
        try:
            path = self._prepare_target()
            with BlockDevice(path) as dev:
                self._check_base_content(dev)
            if self.h.incremental:
                target.resize(self.h.volume_size)
            if self.opt.in_place and target.lv:
                # From here it may be half-written: it must not keep claiming what it held.
                t = target.lv
                lvm.set_tags(t, remove=tags.with_prefix(t.tags, tags.IDENTITY_PREFIX))
            with (
                _pool_full_is_named(target.lv),
                BlockDevice(path, writable=True, exclusive=True, direct_writes=True) as dev,
            ):
                if dev.size < self.h.volume_size:
                    raise UsageError(
                        f"{target.label} holds {dev.size} bytes; "
                        f"the stream needs {self.h.volume_size}"
                    )
                self._write(dev)
                self._verify(dev)
            read_only = target.commit(self.h.new.identity)
        except BaseException:
            target.discard()
            raise
        return Restored(
            target=target.label,
            header=self.h,
            totals=self.reader.totals,
            digest=self.reader.file_digest,
            base_check=self.base_check,
            verified_level=self.h.detect_level if self.h.new_fingerprint else 0,
            read_only=read_only,
        )

    # -- the target

    def _prepare_target(self) -> str:
        """Find or make the target, after every check that needs no data; its device path."""
        h, vg, opt, target = self.h, self.vg, self.opt, self.target
        if opt.in_place:
            lv = lvm.get_lv(vg, self.base or "")
            self._check_lineage(lv)
            lvm.activate(lv)
            target.lv = lv
            return lv.dev
        self.stack.enter_context(locks.target_lock(vg, self.name, report=self.report))
        if opt.resume:
            target.lv = self._resumable_target()
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
                target.pool = lvm.get_pool(vg, base_lv.pool, listing)
                self._check_lineage(base_lv)
            else:
                base_lv = None
                target.pool = lvm.get_pool(
                    vg, lvm.check_name(self.pool or "", "pool name"), listing
                )
            target.create(h, base_lv, self.pool)
        assert target.lv is not None
        lvm.activate(target.lv)
        return target.lv.dev

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

    # -- checks

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
        elif base_lv.open and base_lv.writable and not self.opt.in_place:
            raise UsageError(
                f"{base_lv.full_name} is in use and writable, so it can change while "
                "lvpatch copies it; unmount it (or make it read-only) first"
            )
        self._base_identity = (lineage.recorded_identity(base_lv), not base_lv.writable)
        self.base_check = self._base_check()  # the identity alone, now

    def _base_check(self, read: Callable[[int, int], bytes] | None = None) -> lineage.BaseCheck:
        recorded, provable = self._base_identity
        return lineage.check_base(
            self.h,
            f"{self.vg}/{self.base}",
            recorded,
            provable,
            read,
            enabled=self.opt.base_check,
            report=self.report if read is None else ignore,
        )

    def _check_base_content(self, dev: BlockDevice) -> None:
        """BASE's content, read through the new snapshot of it (the same blocks)."""
        if not self.h.incremental or self.opt.resume:
            return  # a resumed target was checked, then written
        self.base_check = self._base_check(dev.read)

    def _verify(self, dev: BlockDevice) -> None:
        fp = self.h.new_fingerprint
        if fp and not fpr.verify(fp, dev.read):
            raise VerifyFailed(
                f"{self.target.label} does not match the fingerprint of {self.h.new.name} "
                "after writing"
            )

    # -- writing

    def _write(self, dev: BlockDevice) -> None:
        h, opt = self.h, self.opt
        kind = self.target.kind(dev, h.incremental)
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

    def _checkpoint(self, writer: ChunkWriter, dev: BlockDevice, applied: int) -> None:
        """Make everything up to ``applied`` durable, then say so on the volume.

        The device refuses every flush after one failed, so a durable point is
        never recorded past data that did not reach the disk.
        """
        t = self.target.lv
        assert t is not None
        writer.checkpoint()
        dev.sync()
        new, base = _identities(self.h)
        token = ResumeToken(applied, new, base)
        if ResumeToken.from_tags(t.tags) != token:
            old = tags.with_prefix(t.tags, tags.RESUME_PREFIX)
            with _signals_deferred():
                lvm.set_tags(t, add=[token.tag], remove=old)
        self.durable = applied

    def _keep_for_resume(self, writer: ChunkWriter, dev: BlockDevice, applied: int) -> None:
        """On interruption, keep the target and its token instead of removing it."""
        t = self.target.lv
        assert t is not None
        if applied == 0 and not self.opt.resume:
            return  # nothing written yet: removing it loses nothing
        try:
            self._checkpoint(writer, dev, applied)
        except (LvdiffError, OSError) as e:
            self.report(Note(f"could not record progress ({e})"))
        token = ResumeToken.from_tags(t.tags)
        if token is None:
            return  # no durable point was ever recorded: nothing to resume from
        self.target.keep()
        self.report(
            Note(
                f"kept the incomplete {t.full_name} (durable up to byte "
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
    with locks.target_lock(vg, lvm.check_name(name, "LV name"), wait=False) as free:
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
    removed = []
    for lv in found:
        if tags.INCOMPLETE not in lv.tags:
            continue
        if not resumable and tags.with_prefix(lv.tags, tags.RESUME_PREFIX):
            continue  # kept on purpose for lvpatch --resume
        if lv.name not in locked:  # the caller holds the lock of those in locked: stale
            with locks.target_lock(lv.vg, lv.name, wait=False) as free:
                if not free:
                    continue  # an lvpatch is building it now
        # nobody is building it: the lvpatch that was died
        lvm.remove(lv)
        removed.append(lv.full_name)
        report(Note(f"removed {lv.full_name}, left incomplete by an interrupted lvpatch"))
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


__all__ = ["ApplyOptions", "Restored", "StreamError", "apply_stream", "cleanup"]
