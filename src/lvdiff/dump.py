"""The lvdiff engine: from two thin volumes (or one) to a stream.

Order of work, every step undone on every exit path by one ExitStack:
lock the pool; take point-in-time snapshots of writable volumes; reserve the
pool's metadata snapshot; fingerprint BASE and NEW; then stream the changed
extents through a bounded pipeline (reads and compression in worker threads,
one ordered writer).
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from . import fingerprint as fpr
from . import lineage, locks, lvm, tags
from .blockdev import BlockDevice
from .errors import LvdiffError, UsageError
from .events import Note, Progress, Reporter, ignore
from .plan import MAX_READ, ZERO, Extent, PlanTotals, plan
from .restored import mib_per_s
from .resume import ResumeToken
from .spool import RangeSpool
from .stream import Header, StreamDigest, StreamWriter, Totals, VolumeRef, data_record, encode_zero
from .stream.header import StreamKind
from .thindelta import Delta, check_version, thin_delta

ZERO_GRAIN = 64 * 1024  # finest unit at which all-zero data is sent as ZERO
AHEAD_BYTES = 32 << 20  # data read and encoded ahead of the writer, at most


@dataclass
class DumpOptions:
    level: int = 2
    meta: list[tuple[str, str]] = field(default_factory=list)
    thin_delta: str = "thin_delta"
    workers: int = max(2, min(8, os.cpu_count() or 2))
    zstd_level: int | None = 3
    resume: ResumeToken | None = None  # re-send only what lies past an lvpatch's durable point
    dry_run: bool = False  # find what would be sent, read no data, write nothing
    compared: Compared | None = None  # thin_delta's ranges for this pair, taken already


@dataclass
class DumpResult:
    """What lvdiff did (or, in a dry run, would do)."""

    vg: str
    pool: str
    new: str
    base: str | None
    volume_size: int
    chunk_size: int
    ranges: int  # thin_delta's
    plan: PlanTotals
    seconds: float
    header: Header | None = None  # None in a dry run
    digest: StreamDigest | None = None
    totals: Totals | None = None

    def to_dict(self, digest: StreamDigest | None) -> dict[str, Any]:
        """The ``lvdiff --json`` summary (keys in the README); ``digest``: the one printed."""
        t, h = self.totals, self.header
        return {
            "dry_run": h is None,
            "kind": StreamKind.INCREMENTAL if self.base else StreamKind.FULL,
            "vg": self.vg,
            "pool": self.pool,
            "new": {
                "name": self.new,
                "identity": h.new.identity if h else None,
                "size": self.volume_size,
            },
            "base": (
                {"name": self.base, "identity": h.base.identity if h and h.base else None}
                if self.base
                else None
            ),
            "chunk_size": self.chunk_size,
            "ranges": self.ranges,
            "bytes_to_read": self.plan.read_bytes,
            "bytes_as_zero": self.plan.zero_bytes,
            "check_level": h.detect_level if h else None,
            "records": {"data": t.data_records, "zero": t.zero_records} if t else None,
            "bytes": {"data": t.data_bytes, "zero": t.zero_bytes, "stored": t.stored_bytes}
            if t
            else None,
            "stream_digest": str(digest) if digest else None,
            "seconds": round(self.seconds, 3),
            "read_mib_per_s": mib_per_s(self.plan.read_bytes, self.seconds) if t else None,
        }


@dataclass
class Prepared:
    """NEW (and BASE) ready to be read, within :func:`prepare`'s context: their point-in-time
    views, thin_delta's ranges spooled and counted, the pool's metadata snapshot released.

    The lvdiff engine writes a stream from it; the repository reads whole slots of
    NEW where the ranges say something changed.
    """

    vg: str
    pool: lvm.LV
    new: lvm.LV  # as named
    base: lvm.LV | None
    read_new: lvm.LV  # what is read: NEW itself, or its temporary snapshot
    read_base: lvm.LV | None
    ranges: RangeSpool
    planned: PlanTotals
    stack: ExitStack

    @property
    def chunk(self) -> int:
        return self.pool.chunk_size

    def extents(self, resume_offset: int | None = None) -> Iterator[Extent]:
        """What to send, in order: DATA and ZERO byte ranges of NEW."""
        extents = plan(self.ranges, self.chunk, self.new.size, _size(self.base))
        return skip_before(extents, resume_offset) if resume_offset else extents

    def devices(self) -> tuple[BlockDevice, BlockDevice | None]:
        """NEW's and BASE's devices, opened for reading (closed with the context)."""
        new_dev = self.stack.enter_context(BlockDevice(self.read_new.dev))
        base_dev = (
            self.stack.enter_context(BlockDevice(self.read_base.dev)) if self.read_base else None
        )
        return new_dev, base_dev

    def refs(self) -> tuple[VolumeRef, VolumeRef | None]:
        """NEW's and BASE's references, with the identities of what is read."""
        base = _ref(self.base, self.read_base) if self.base and self.read_base else None
        return _ref(self.new, self.read_new), base


@contextmanager
def prepare(
    new: tuple[str, str],
    base: tuple[str, str] | None,
    pool: str | None = None,
    options: DumpOptions | None = None,
    report: Reporter = ignore,
) -> Iterator[Prepared]:
    """Lock the pool, take point-in-time views, run thin_delta once; undone on every exit.

    Order of work, each step undone by one ExitStack: the pool lock; temporary
    snapshots left by a killed lvdiff removed; point-in-time snapshots of
    writable volumes; the metadata snapshot reserved only while thin_delta
    runs (on a busy pool a held one pins old metadata blocks), its ranges
    spooled to a temporary file.
    """
    opt = options or DumpOptions()
    if opt.level not in fpr.LEVELS:
        raise UsageError(f"detect level must be {fpr.LEVELS_SHOWN}, not {opt.level}")
    check_thin_delta(opt.thin_delta)
    listing = lvm.lvs_in_vg(new[0])  # once: every lvm command costs a metadata scan
    new_lv = lvm.get_thin(*new, listing)
    base_lv = lvm.get_thin(*base, listing if base[0] == new[0] else None) if base else None
    if base_lv and (base_lv.vg, base_lv.pool) != (new_lv.vg, new_lv.pool):
        raise UsageError(
            f"{base_lv.full_name} (pool {base_lv.pool}) and {new_lv.full_name} "
            f"(pool {new_lv.pool}) are not in one thin pool"
        )
    if pool and new_lv.pool != pool:
        raise UsageError(f"{new_lv.full_name} is in pool {new_lv.pool}, not {pool}")
    if opt.resume:
        _check_resumable(opt.resume, new_lv, base_lv)
    vg, pool_name = new_lv.vg, new_lv.pool
    pool_lv = lvm.get_lv(vg, pool_name, listing)
    chunk = pool_lv.chunk_size

    with ExitStack() as stack:
        stack.enter_context(locks.pool_lock(vg, pool_name, report))
        # With the pool lock held, every temporary snapshot in the pool is a killed lvdiff's.
        # The listing came before the lock: one that names any is taken again now.
        if any(tags.TEMP in lv.tags and lv.pool == pool_name for lv in listing):
            stale = [
                lv for lv in lvm.lvs_in_vg(vg) if tags.TEMP in lv.tags and lv.pool == pool_name
            ]
            lvm.remove(*stale)
            for lv in stale:
                report(Note(f"removed {lv.full_name}, left by a killed lvdiff"))
        src_new, src_base = _points_in_time(stack, new_lv, base_lv)
        for lv, shown in ((src_new, new_lv), (src_base, base_lv)):
            if lv and shown and lvm.external_origin(lv):
                raise UsageError(
                    f"{shown.full_name} reads unprovisioned blocks from an external origin; "
                    "lvdiff can only copy volumes whose data is all in the pool"
                )
        planned = PlanTotals()
        resume = opt.resume.offset if opt.resume else None
        earlier = opt.compared
        if earlier and earlier.matches(src_new, src_base):
            ranges = stack.enter_context(earlier.ranges)  # no second reservation
            if earlier.chunk_bytes != chunk:
                raise LvdiffError(
                    f"thin_delta reports {earlier.chunk_bytes}-byte chunks, lvs {chunk}"
                )
            counted = plan(iter(ranges), chunk, new_lv.size, _size(base_lv))
            for _ in planned.count(skip_before(counted, resume) if resume else counted):
                pass
            yield Prepared(vg, pool_lv, new_lv, base_lv, src_new, src_base, ranges, planned, stack)
            return
        snap1 = src_base.thin_id if src_base else src_new.thin_id
        assert snap1 is not None and src_new.thin_id is not None
        with (
            locks.metadata_snapshot(vg, pool_name, report) as meta_dev,
            thin_delta(opt.thin_delta, meta_dev, snap1, src_new.thin_id) as delta,
        ):
            sb = delta.superblock
            assert sb is not None
            if sb.chunk_bytes != chunk:
                raise LvdiffError(f"thin_delta reports {sb.chunk_bytes}-byte chunks, lvs {chunk}")
            ranges = stack.enter_context(RangeSpool())
            # one pass: spool the ranges and count what the plan will read
            counted = plan(ranges.keep(delta.ranges()), chunk, new_lv.size, _size(base_lv))
            for _ in planned.count(skip_before(counted, resume) if resume else counted):
                pass
        yield Prepared(vg, pool_lv, new_lv, base_lv, src_new, src_base, ranges, planned, stack)


@dataclass
class Compared:
    """thin_delta's ranges between exactly these BASE and NEW, spooled while one
    reservation of their pool's metadata snapshot was held: enough to say whether NEW
    changed, and, for a send that follows, to spare it reserving and running thin_delta
    again (both are read-only snapshots: the ranges cannot go stale)."""

    base: lvm.LV
    new: lvm.LV
    ranges: RangeSpool
    chunk_bytes: int
    same: bool  # nothing but shared blocks, and one size

    def matches(self, new: lvm.LV, base: lvm.LV | None) -> bool:
        """Whether these are the very volumes compared, and neither can have changed."""
        return (
            base is not None
            and (self.new.uuid, self.base.uuid) == (new.uuid, base.uuid)
            and not (new.writable or base.writable)
        )


def compare(
    pairs: Sequence[tuple[lvm.LV, lvm.LV]],
    thin_delta_tool: str = "thin_delta",
    report: Reporter = ignore,
) -> dict[str, Compared]:
    """thin_delta between each (BASE, NEW) pair of thin volumes, by NEW's full name.

    From the pool's metadata alone, one reservation per pool for every pair in
    it: nothing is activated or read, so a nightly run over many volumes in
    which little changed pays one thin_delta per volume, and a volume that did
    change is sent from these ranges without a reservation of its own.  The
    caller closes each result's ``ranges`` (``dump`` does, when given one).
    """
    by_pool: dict[tuple[str, str], list[tuple[lvm.LV, lvm.LV]]] = {}
    for base, new in pairs:
        if (base.vg, base.pool) == (new.vg, new.pool):
            by_pool.setdefault((new.vg, new.pool), []).append((base, new))
    if not by_pool:
        return {}
    check_thin_delta(thin_delta_tool)
    found: dict[str, Compared] = {}
    try:
        for (vg, pool), group in by_pool.items():
            with (
                locks.pool_lock(vg, pool, report),
                locks.metadata_snapshot(vg, pool, report) as meta_dev,
            ):
                for base, new in group:
                    assert base.thin_id is not None and new.thin_id is not None
                    spool = RangeSpool()
                    try:
                        with thin_delta(
                            thin_delta_tool, meta_dev, base.thin_id, new.thin_id
                        ) as delta:
                            kept = spool.keep(delta.ranges())
                            differs = sum(1 for r in kept if r.kind is not Delta.SAME)
                            sb = delta.superblock
                            assert sb is not None
                    except BaseException:
                        spool.close()
                        raise
                    found[new.full_name] = Compared(
                        base, new, spool, sb.chunk_bytes, not differs and base.size == new.size
                    )
    except BaseException:
        for c in found.values():
            c.ranges.close()
        raise
    return found


def _size(lv: lvm.LV | None) -> int | None:
    return lv.size if lv else None


def dump(
    new: tuple[str, str],
    base: tuple[str, str] | None,
    out: BinaryIO,
    pool: str | None = None,
    options: DumpOptions | None = None,
    report: Reporter = ignore,
) -> DumpResult:
    """Write the stream that turns BASE into NEW (or a full stream of NEW).

    With ``options.dry_run`` it stops once it knows what it would send
    (thin_delta's ranges, the bytes it would read and send as zeros): no
    data is read and nothing is written to ``out``.
    """
    started = time.monotonic()
    opt = options or DumpOptions()
    with prepare(new, base, pool, opt, report) as p:
        result = DumpResult(
            p.vg,
            p.pool.name,
            p.new.name,
            p.base.name if p.base else None,
            p.new.size,
            p.chunk,
            p.ranges.count,
            p.planned,
            0.0,
        )
        if opt.dry_run:
            result.seconds = time.monotonic() - started
            return result
        new_dev, base_dev = p.devices()
        base_fp, new_fp = _fingerprints(
            opt.level,
            p.ranges,
            p.chunk,
            (new_dev, p.new.size),
            (base_dev, p.base.size) if base_dev and p.base else None,
        )
        new_ref, base_ref = p.refs()
        header = Header(
            kind=StreamKind.INCREMENTAL if p.base else StreamKind.FULL,
            volume_size=p.new.size,
            base_size=_size(p.base),
            chunk_size=p.chunk,
            vg=p.vg,
            pool=p.pool.name,
            transaction_id=p.pool.transaction_id or 0,
            base=base_ref,
            new=new_ref,
            meta=[(k, v) for k, v in opt.meta],
            compression="zstd" if opt.zstd_level is not None else "none",
            detect_level=opt.level,
            base_fingerprint=base_fp,
            new_fingerprint=new_fp,
            resume_offset=opt.resume.offset if opt.resume else None,
        )
        writer = StreamWriter(out, header)
        total = p.planned.read_bytes + p.planned.zero_bytes
        send(p.extents(header.resume_offset), new_dev, writer, opt, report, total=total)
        result.digest = writer.close()
        result.header, result.totals = header, writer.totals
        result.seconds = time.monotonic() - started
        return result


def _fingerprints(
    level: int,
    ranges: RangeSpool,
    chunk: int,
    new: tuple[BlockDevice, int],
    base: tuple[BlockDevice, int] | None,
) -> tuple[fpr.Fingerprint | None, fpr.Fingerprint | None]:
    """BASE's and NEW's fingerprints (device, size); level 3 reads the chunks they share once."""
    new_dev, new_size = new
    if level != 3:
        return (
            fpr.compute(level, base[0].read_once, base[1], chunk, _seed()) if base else None,
            fpr.compute(level, new_dev.read_once, new_size, chunk, _seed()),
        )
    unit = fpr.unit_for(chunk)
    spans = (
        (r.kind.in_left, r.kind.in_right, r.kind is Delta.SAME, r.begin * chunk, r.end * chunk)
        for r in ranges
    )
    new_hex, base_hex = fpr.level3_pair(
        new_dev.read_once,
        new_size,
        base[0].read_once if base else None,
        base[1] if base else 0,
        unit,
        spans,
    )
    return (
        fpr.Fingerprint(3, unit, base[1], base_hex) if base and base_hex else None,
        fpr.Fingerprint(3, unit, new_size, new_hex),
    )


def _seed() -> str:
    """An independent random seed for each fingerprint (see lvdiff.fingerprint)."""
    return secrets.token_hex(16)


def _check_resumable(token: ResumeToken, new_lv: lvm.LV, base_lv: lvm.LV | None) -> None:
    """Resume only from volumes that cannot have changed since the interrupted transfer."""
    for lv in (new_lv, base_lv):
        if lv and lv.writable:
            raise UsageError(
                f"cannot resume from {lv.full_name}: it is writable, so nothing proves it "
                "is what the interrupted transfer was sending; transfers resume from "
                "read-only snapshots (lvcreate -s -p r, or lvchange -p r before the first run)"
            )
    got = (lineage.source_identity(new_lv), lineage.source_identity(base_lv) if base_lv else None)
    if got != (token.new_identity, token.base_identity):
        raise UsageError(
            "these are not the volumes the interrupted transfer was sending "
            f"(token {token}); give the same BASE and NEW, or start a new transfer"
        )


def _ref(named: lvm.LV, read: lvm.LV) -> VolumeRef:
    """The header's reference to a volume: its name, and the identity of what was read."""
    return VolumeRef(
        named.name, named.uuid, named.thin_id or 0, lineage.source_identity(named, read)
    )


def skip_before(extents: Iterable[Extent], offset: int) -> Iterator[Extent]:
    """Drop what a resumed target already holds; cut an extent that straddles it."""
    for e in extents:
        if e.end <= offset:
            continue
        if e.offset < offset:
            e = Extent(e.kind, offset, e.end - offset)
        yield e


def _points_in_time(
    stack: ExitStack, new: lvm.LV, base: lvm.LV | None
) -> tuple[lvm.LV, lvm.LV | None]:
    """Views of NEW and BASE that cannot change while we read them.

    A volume that is active and writable (mounted, in use) gets a temporary
    read-only thin snapshot, made active and removed at the end; the rest are
    activated where needed, all in one command, and deactivated again in one.
    """
    views = []
    for lv, side in ((new, "new"), (base, "base")):
        if lv is not None and lv.active and lv.writable:
            name = f"lvdiff_{os.getpid()}_{side}_{lv.name[:40]}"
            snap = lvm.create_snapshot(
                lv, name, add_tags=(tags.TEMP,), writable=False, activation_skip=False
            )
            assert snap is not None
            stack.callback(lvm.remove, snap)
            lv = snap
        views.append(lv)
    activated = lvm.activate(*(v for v in views if v is not None))
    if activated:
        stack.callback(lvm.deactivate, *activated)
    view_new, view_base = views
    assert view_new is not None
    return view_new, view_base


_CHECKED: set[str] = set()  # thin_delta binaries proved safe in this process


def check_thin_delta(tool: str) -> None:
    """Refuse a thin_delta that loses data (:func:`lvdiff.thindelta.check_version`), once
    per binary: in this process, and across runs while the file is the same one (its
    inode, size and times, kept in the private lock directory until the next boot)."""
    path = shutil.which(tool)
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    key = (
        f"{os.path.realpath(path)} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} "
        f"{st.st_ctime_ns}"
        if path and st
        else None
    )
    if key and (key in _CHECKED or locks.recall(_VERSION_NOTE) == key):
        _CHECKED.add(key)
        return
    check_version(tool)
    if key:
        _CHECKED.add(key)
        locks.remember(_VERSION_NOTE, key)


_VERSION_NOTE = "thin_delta.checked"


Encoded = tuple[bytes, bytes | memoryview]  # a record's header (or all of it), its payload
Batch = tuple[list[Encoded], bytearray | None]  # a batch's records, and the buffer they view
_ZEROS = memoryview(bytes(ZERO_GRAIN))  # made once: encode_extent runs once per extent


def encode_extent(
    offset: int,
    buf: bytes | bytearray,
    zstd_level: int | None,
    start: int = 0,
    length: int | None = None,
) -> list[Encoded]:
    """Records for ``buf[start:start+length]``, read from ``offset``: all-zero grains become ZERO.

    Raw payloads are views of ``buf``, which must not change until they are written.
    """
    grain, zero = ZERO_GRAIN, _ZEROS
    out: list[Encoded] = []
    end = len(buf) if length is None else start + length
    view = memoryview(buf)
    i = start
    while i < end:
        # startswith compares in place: slicing would copy every byte once more
        is_zero = buf.startswith(zero[: min(grain, end - i)], i)
        j = i + grain
        while j < end and buf.startswith(zero[: min(grain, end - j)], j) == is_zero:
            j += grain
        j = min(j, end)
        at = offset + i - start
        if is_zero:
            out.append((encode_zero(at, j - i), b""))
        else:
            out.append(data_record(at, view[i:j], zstd_level))
        i = j
    return out


class _Buffers:
    """Read buffers reused from batch to batch (see BlockDevice.read_into).

    As many exist as batches are in flight, which send() bounds.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)


def send(
    extents: Iterable[Extent],
    dev: BlockDevice,
    writer: StreamWriter,
    opt: DumpOptions,
    report: Reporter = ignore,
    total: int | None = None,
) -> None:
    """Bounded pipeline: worker threads read and compress, this thread writes in order.

    Small extents travel in batches (one task per MAX_READ of data), so a
    fragmented delta costs a read per extent, not a thread hand-off; the data
    read ahead of the writer stays under AHEAD_BYTES whatever the extents.
    """
    done = 0
    buffers = _Buffers(MAX_READ)

    def work(batch: list[Extent]) -> Batch:
        records: list[Encoded] = []
        buf = buffers.take()
        at = 0
        for e in batch:
            dev.read_into(e.offset, memoryview(buf)[at : at + e.length])
            dev.drop_cache(e.offset, e.length)
            records += encode_extent(e.offset, buf, opt.zstd_level, at, e.length)
            at += e.length
        return records, buf

    def emit(item: Future[Batch] | Batch, volume_bytes: int) -> None:
        nonlocal done
        records, buf = item.result() if isinstance(item, Future) else item
        for head, payload in records:
            writer.write_record(head, payload)
        if buf is not None:  # raw payloads are views of it: refill it once they are out
            writer.after_written(lambda: buffers.give(buf))
        done += volume_bytes
        report(Progress(done, total))

    queue: deque[tuple[Future[Batch] | Batch, int]] = deque()
    ahead = 0
    batch: list[Extent] = []
    batched = 0

    def submit() -> None:
        nonlocal ahead, batch, batched
        if batch:
            queue.append((ex.submit(work, batch), batched))
            ahead += batched
            batch, batched = [], 0

    def drain(limit: int) -> None:
        nonlocal ahead
        while queue and (ahead > limit or len(queue) > 4 * opt.workers):
            item, n = queue.popleft()
            ahead -= n if isinstance(item, Future) else 0
            emit(item, n)

    ex = ThreadPoolExecutor(opt.workers, thread_name_prefix="lvdiff-read")
    try:
        for e in extents:
            if e.kind == ZERO:
                submit()
                queue.append((([(encode_zero(e.offset, e.length), b"")], None), e.length))
            else:
                if batched + e.length > MAX_READ or len(batch) >= 256:
                    submit()
                batch.append(e)
                batched += e.length
            drain(AHEAD_BYTES)
        submit()
        drain(-1)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
