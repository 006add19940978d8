"""Making a point: from a thin volume (reading only what thin_delta says changed), or a stream.

A point's index names every slot of the volume.  Slots nothing changed since
the previous point of the source are named from that point's index, and a
whole segment of them is reused without even being read, so a point costs
what changed, not the volume's size.  Changed slots are read whole, named by
their (keyed) hash, and stored unless the repository has them: a VM
template and its clones, or two runs that stored the same content, store it
once.  Work happens in worker threads (hashing, zstd and AES-GCM release the
GIL) with a bounded number of slots in flight, so memory does not grow with
the volume.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from ..errors import UsageError
from ..events import Progress, Reporter, ignore
from ..fingerprint import Fingerprint
from ..plan import ZERO, Extent
from ..stream import StreamReader
from . import format as fmt
from .repository import Repository

UNCHANGED = "unchanged"  # named as in the previous point
ZEROS = "zeros"  # reads as zeros: nothing stored, nothing read
Content = Callable[[], bytes | bytearray | memoryview]  # a changed slot's bytes, when asked
Slot = str | Content

_ZERO_CACHE: dict[int, bytes] = {}


def _zeros(n: int) -> bytes:
    z = _ZERO_CACHE.get(n)
    if z is None:
        z = _ZERO_CACHE[n] = bytes(n)
    return z


@dataclass
class MakeStats:
    """What making a point did, for its manifest and for ``--json``."""

    read_bytes: int = 0  # of the volume (or the stream's records), read and named
    zero_bytes: int = 0  # slots that read as zeros
    new_chunks: int = 0
    new_bytes: int = 0  # stored, after compression (and encryption)
    reused_chunks: int = 0  # changed slots whose content the repository already had
    reused_segments: int = 0  # index segments shared with the previous point, unread
    seconds: float = 0.0

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "seconds"}


@dataclass
class Made:
    point: fmt.Point
    stats: MakeStats = field(default_factory=MakeStats)


class _Slots:
    """Names changed slots in worker threads, in order, with a bound on slots in flight."""

    def __init__(self, repo: Repository, workers: int, level: int | None) -> None:
        self.repo, self.level = repo, level
        self.ex = ThreadPoolExecutor(workers, thread_name_prefix="lvrepo-chunk")
        self.limit = 2 * workers
        self.stats = MakeStats()
        self._lock = threading.Lock()

    def name(self, content: Content) -> bytes:
        data = content()
        n = len(data)
        if data == _zeros(n):
            with self._lock:
                self.stats.zero_bytes += n
            return fmt.ZERO_SLOT
        chunk_id = self.repo.keys.chunk_id(data)
        stored = self.repo.store_chunk(chunk_id, data, self.level)
        with self._lock:
            self.stats.read_bytes += n
            if stored:
                self.stats.new_chunks += 1
                self.stats.new_bytes += stored
            else:
                self.stats.reused_chunks += 1
        return chunk_id

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


def build(
    repo: Repository,
    size: int,
    slots: Iterable[Slot],
    previous: fmt.Point | None,
    workers: int = 4,
    level: int | None = 3,
    report: Reporter = ignore,
) -> tuple[list[str], MakeStats]:
    """Store what ``slots`` (one per slot, in order) say and return the new index's segments.

    UNCHANGED takes the previous point's entry (previous must exist and have
    the same chunk size); ZEROS names nothing; a callable gives the slot's
    bytes, read in a worker, a bounded number in flight.  A segment of
    UNCHANGED slots, when the previous point's segment covered exactly the
    same slots, is reused unread.
    """
    chunk = repo.config.chunk_size
    total = -(-size // chunk)
    prev_total = previous.slots if previous else 0
    if previous and previous.chunk_size != chunk:
        raise UsageError("the previous point was made with another chunk size")
    names = _Slots(repo, workers, level)
    segments: list[str] = []
    started = time.monotonic()
    try:
        it = iter(slots)
        for g in range(-(-total // fmt.SEGMENT_SLOTS)):
            first = g * fmt.SEGMENT_SLOTS
            count = min(fmt.SEGMENT_SLOTS, total - first)
            same_shape = (
                previous is not None
                and first + count <= prev_total
                and (count == fmt.SEGMENT_SLOTS or prev_total == total)
            )
            seg = _Segment(repo, names, previous, g)
            for _ in range(count):
                seg.add(next(it))
            if same_shape and seg.untouched:
                segments.append(previous.segments[g])  # type: ignore[union-attr]
                names.stats.reused_segments += 1
            else:
                segments.append(repo.store_segment(seg.entries()).hex())
            report(Progress(min(size, (first + count) * chunk), size))
        if next(it, None) is not None:  # also runs what follows the last slot (a stream's END)
            raise UsageError("more slots than the volume holds")
    finally:
        names.close()
    names.stats.seconds = time.monotonic() - started
    return segments, names.stats


class _Segment:
    """One segment's entries as its slots arrive; the previous segment is read only if a
    slot of it changed (a segment nothing changed in is reused whole, unread)."""

    def __init__(self, repo: Repository, names: _Slots, previous: fmt.Point | None, g: int):
        self.repo, self.names, self.previous, self.g = repo, names, previous, g
        self.untouched = True
        self._old: list[bytes] | None = None
        self._entries: list[bytes | Future[bytes] | None] = []  # None: unchanged, not yet read
        self._pending: deque[Future[bytes]] = deque()

    def add(self, s: Slot) -> None:
        if s == UNCHANGED:
            self._entries.append(None)
            return
        self.untouched = False
        if s == ZEROS:
            self._entries.append(fmt.ZERO_SLOT)
            return
        f = self.names.ex.submit(self.names.name, s)  # type: ignore[arg-type]
        self._entries.append(f)
        self._pending.append(f)
        while len(self._pending) > self.names.limit:  # the bound on slots in flight
            self._pending.popleft().result()

    def entries(self) -> list[bytes]:
        out = []
        for i, e in enumerate(self._entries):
            if e is None:
                out.append(self._unchanged(i))
            else:
                out.append(e.result() if isinstance(e, Future) else e)
        return out

    def _unchanged(self, i: int) -> bytes:
        if self._old is None:
            p = self.previous
            if p is None or self.g >= len(p.segments):
                raise UsageError(f"a slot is unchanged, but no previous segment {self.g}")
            self._old = self.repo.segment(bytes.fromhex(p.segments[self.g]))
        if i >= len(self._old):
            raise UsageError(f"slot {i} of segment {self.g} is unchanged but new")
        return self._old[i]


def slots_from_extents(
    extents: Iterable[Extent],
    size: int,
    chunk: int,
    read: Callable[[int, int], bytes | bytearray | memoryview],
    incremental: bool,
    prev_size: int | None,
) -> Iterator[Slot]:
    """What each slot is, from thin_delta's plan: a slot any DATA touches is read whole; one
    only ZERO ranges cover whole reads as zeros; untouched ones are unchanged (incremental,
    within the previous size) or unmapped, so zeros (a full point)."""
    ext = iter(extents)
    cur = next(ext, None)
    for _slot, offset, length in fmt.slot_ranges(size, chunk):
        end = offset + length
        touched = data = False
        zero_cover = 0
        while cur is not None and cur.offset < end:
            a, b = max(cur.offset, offset), min(cur.end, end)
            if b > a:
                touched = True
                if cur.kind is ZERO:
                    zero_cover += b - a
                else:
                    data = True
            if cur.end <= end:
                cur = next(ext, None)
            else:
                break
        grown = incremental and (prev_size is None or end > prev_size)
        if not touched and not grown:
            yield UNCHANGED if incremental else ZEROS
        elif not data and zero_cover == length and not grown:
            yield ZEROS
        else:
            yield lambda offset=offset, length=length: read(offset, length)


def make_point(
    repo: Repository,
    source: fmt.SourceRef,
    name: str,
    identity: str,
    size: int,
    slots: Iterable[Slot],
    previous: fmt.Point | None,
    fingerprint: Fingerprint | None,
    when: datetime | None = None,
    tags: list[str] | None = None,
    workers: int = 4,
    report: Reporter = ignore,
) -> Made:
    """Store a point's chunks and index, then commit its manifest (the one visible step)."""
    started = datetime.now(UTC)
    segments, stats = build(repo, size, slots, previous, workers, report=report)
    point = fmt.Point(
        id=fmt.new_point_name(when or started),
        source=source,
        name=name,
        identity=identity,
        size=size,
        chunk_size=repo.config.chunk_size,
        time=(when or started).strftime("%Y-%m-%dT%H:%M:%SZ"),
        fingerprint=fingerprint,
        segments=segments,
        stats=stats.to_dict(),
        tags=tags or [],
    )
    repo.commit(point, started, lambda: repo.referenced([point]))
    return Made(point, stats)


def put_stream(
    repo: Repository,
    inp: BinaryIO,
    source: str | None = None,
    host: str = "",
    workers: int = 4,
    report: Reporter = ignore,
    points: list[fmt.Point] | None = None,
) -> Made:
    """A point from an lvdiff stream: full, or incremental from a point it names as its BASE.

    The stream's records are laid over the base point's content slot by slot
    (a slot a record covers only partly is completed from the base's chunk,
    read and checked from the repository); the stream's END and checksums are
    checked before the point is committed, so a damaged stream makes none.
    """
    reader = StreamReader(inp)
    h = reader.header
    if h.resume_offset is not None:
        raise UsageError("a resume stream continues an lvpatch -s target, not a repository")
    if h.new.identity is None:
        raise UsageError("this stream (format 1) names no identity: a point needs one")
    previous = None
    if h.incremental:
        assert h.base is not None
        found = [p for p in (points or repo.points()) if p.identity == h.base.identity]
        if not found:
            raise UsageError(
                f"{repo.label} has no point of this stream's base {h.base.name} "
                f"({h.base.identity}): put its chain in order, or a full stream"
            )
        previous = found[-1]
    if previous is not None and source in (None, previous.source.key):
        ref = previous.source  # a chain goes on as the source it continues
    else:
        lv = _volume_of(h.new.name)
        ref = fmt.SourceRef(source or f"{h.vg}/{lv}", host, h.vg, lv)
    chunk = repo.config.chunk_size
    slots = _slots_from_records(repo, reader, h.volume_size, chunk, previous)
    made = make_point(
        repo,
        ref,
        h.new.name,
        h.new.identity,
        h.volume_size,
        slots,
        previous,
        h.new_fingerprint,
        workers=workers,
        report=report,
    )
    return made


_SNAPSHOT = re.compile(r"^(?P<lv>.+)\.\d{8}T\d{6}Z(?:\.[0-9a-f]{8})?$")


def _volume_of(name: str) -> str:
    """The volume a snapshot's name is of: lvsync's ``vol0.<UTC time>[.<8 hex>]`` is vol0's."""
    m = _SNAPSHOT.match(name)
    return m["lv"] if m else name


def _slots_from_records(
    repo: Repository,
    reader: StreamReader,
    size: int,
    chunk: int,
    previous: fmt.Point | None,
) -> Iterator[Slot]:
    """Slots from a stream's records, in order; the base's content completes partial slots."""
    old = repo.slots(previous) if previous else iter(())
    records = iter(reader)
    rec = next(records, None)
    for _slot, offset, length in fmt.slot_ranges(size, chunk):
        end = offset + length
        base_entry = next(old, None) if previous else None
        if previous and offset >= previous.size:
            base_entry = None
        if rec is None or rec.offset >= end:
            if base_entry is not None and end <= previous.size:  # type: ignore[union-attr]
                yield UNCHANGED
            else:
                yield (
                    ZEROS
                    if base_entry is None or base_entry == fmt.ZERO_SLOT
                    else _read(repo, base_entry, length)
                )
            continue
        buf = bytearray(_base_content(repo, base_entry, length))
        while rec is not None and rec.offset < end:
            a, b = max(rec.offset, offset), min(rec.end, end)
            if rec.data is None:
                buf[a - offset : b - offset] = _zeros(b - a)
            else:
                buf[a - offset : b - offset] = memoryview(rec.data)[a - rec.offset : b - rec.offset]
            if rec.end <= end:
                rec = next(records, None)
            else:
                break
        yield lambda buf=buf: buf
    if rec is not None:  # pragma: no cover - the reader checks records stay inside the volume
        raise UsageError("a record past the volume's end")
    for _ in records:  # END: the stream is checked whole before the point is committed
        pass
    if not reader.complete:
        raise UsageError("the stream ended early")


def _base_content(repo: Repository, entry: bytes | None, length: int) -> bytes:
    if entry is None or entry == fmt.ZERO_SLOT:
        return _zeros(length)
    data = repo.read_chunk(entry)
    return data[:length] + _zeros(max(0, length - len(data)))


def _read(repo: Repository, entry: bytes, length: int) -> Content:
    return lambda: _base_content(repo, entry, length)


def make_from_volume(
    repo: Repository,
    prepared,  # noqa: ANN001 - lvdiff.dump.Prepared: NEW (and BASE) ready to read
    source: fmt.SourceRef,
    previous: fmt.Point | None,
    level: int = 2,
    when: datetime | None = None,
    tags: list[str] | None = None,
    workers: int = 4,
    report: Reporter = ignore,
) -> Made:
    """A point of NEW, reading only the slots thin_delta says changed since ``previous``.

    ``previous`` must be the point of BASE (the snapshot thin_delta compared
    NEW with), or None: then every mapped slot is read, and dedup keeps what
    the repository already has.
    """
    import secrets

    from .. import fingerprint as fpr

    new_dev, _ = prepared.devices()
    new_ref, base_ref = prepared.refs()
    if previous is not None and (base_ref is None or base_ref.identity != previous.identity):
        raise UsageError(
            f"the previous point {previous.id} is not of the snapshot thin_delta compared with"
        )
    size = prepared.new.size
    fingerprint = fpr.compute(level, new_dev.read_once, size, prepared.chunk, secrets.token_hex(16))

    def read(offset: int, length: int) -> bytes:
        data = new_dev.read(offset, length)
        new_dev.drop_cache(offset, length)  # a backup must not evict the server's cache
        return data

    slots = slots_from_extents(
        prepared.extents(),
        size,
        repo.config.chunk_size,
        read,
        incremental=previous is not None,
        prev_size=previous.size if previous else None,
    )
    return make_point(
        repo,
        source,
        prepared.new.name,
        new_ref.identity,
        size,
        slots,
        previous,
        fingerprint,
        when=when,
        tags=tags,
        workers=workers,
        report=report,
    )
