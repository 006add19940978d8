"""A repository of backup points over a store: what it holds, and the rules for changing it.

Every point stands alone (its manifest names its whole index), so any point
restores, verifies and is pruned by itself.  Writers only add objects; a
point becomes visible through one create-if-absent write of its manifest,
after every chunk and segment it names is stored and flushed.  Only
``prune`` (manifests) and ``gc`` (chunks) delete.

Garbage collection needs no lock, so many machines can write at once while
one prunes (as Proxmox Backup Server's and rustic's, not restic's exclusive
lock, which a busy fleet rarely leaves free): a run of ``gc`` condemns the
chunks and segments no point names, recording them with the time; a later
run deletes those still unnamed, still untouched since, and condemned at
least the grace period (24 h) before.  A writer never counts a condemned
chunk as stored: it stores it again, which moves its time past the
condemnation.  So a writer that reused a chunk just before it was condemned
has committed its point long before the deletion, provided no run lasts
half the grace period; a writer whose run did checks what it used against the
lists made since it started, and commits nothing if it must
(:meth:`Repository.commit`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..errors import LvdiffError, UsageError
from ..events import Note, Reporter, ignore
from . import format as fmt
from .crypto import DamagedObject, Keys
from .store import MissingObject, Store

GRACE = timedelta(hours=24)
GC_PREFIX = "gc/"
_GC_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # to the microsecond: compared with objects' mtimes


@dataclass(frozen=True)
class Condemned:
    """One gc run's list: these objects were named by no point at ``time``."""

    name: str
    time: datetime
    objects: frozenset[str]


class Repository:
    """A repository opened with its keys; thread-safe for concurrent chunk stores and reads."""

    def __init__(self, store: Store, config: fmt.Config, keys: Keys) -> None:
        self.store, self.config, self.keys = store, config, keys
        self.label = store.label
        self._condemned: frozenset[str] | None = None
        self._lock = threading.Lock()

    # -- opening

    @classmethod
    def create(cls, store: Store, keys: Keys, chunk_size: int = fmt.DEFAULT_CHUNK) -> Repository:
        """Write a new repository's config; refuse a store that already holds one."""
        if not fmt.MIN_CHUNK <= chunk_size <= fmt.MAX_CHUNK or chunk_size & (chunk_size - 1):
            raise UsageError(
                f"the chunk size must be a power of two from {fmt.MIN_CHUNK} to {fmt.MAX_CHUNK}"
            )
        config = fmt.Config(
            keys.repository_id, chunk_size, keys.mode, keys.key_check(), fmt.utc_now()
        )
        if not store.put(fmt.CONFIG, config.to_json(), exclusive=True):
            raise UsageError(f"{store.label} already holds a repository")
        return cls(store, config, keys)

    @classmethod
    def open(cls, store: Store, keys_for: Callable[[fmt.Config], Keys]) -> Repository:
        """Open an existing repository; ``keys_for`` finds the keys its config asks for."""
        try:
            data = store.get(fmt.CONFIG)
        except MissingObject:
            raise UsageError(f"{store.label} is not an lvdiff repository (no config)") from None
        config = fmt.Config.from_json(data, store.label)
        keys = keys_for(config)
        keys.verify_key_check(config.key_check)
        return cls(store, config, keys)

    # -- points

    def point_names(self) -> list[str]:
        return sorted(o.name for o in self.store.list("points/"))

    def point(self, name: str) -> fmt.Point:
        obj = self.store.get(name)
        data = self.keys.open(fmt.KIND_DOCUMENT, name.encode(), obj)
        # A manifest's name is not its hash, so it carries one: an unencrypted repository
        # (no AEAD tag) still refuses a damaged manifest.
        body, _, digest = data.rpartition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise DamagedObject(f"{name}: the manifest does not match its own digest", None)
        return fmt.Point.from_json(body, name)

    def points(self, workers: int = 8) -> list[fmt.Point]:
        """Every committed point, oldest first (their manifests read in parallel)."""
        names = self.point_names()
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(self.point, names))

    def find(self, ref: str, points: list[fmt.Point] | None = None) -> fmt.Point:
        """A point by its id (``20261201T020000Z-…``, a unique prefix of it) or snapshot name."""
        found = points if points is not None else self.points()
        hits = [p for p in found if p.id.removeprefix("points/").startswith(ref) or p.name == ref]
        if len(hits) != 1:
            why = "no point" if not hits else f"{len(hits)} points"
            raise UsageError(f"{self.label} has {why} matching {ref!r}")
        return hits[0]

    def commit(
        self, point: fmt.Point, started: datetime, relied: Callable[[], set[str]] = set
    ) -> None:
        """Make ``point`` visible, after everything it names is durable.

        A run shorter than half the grace period cannot have relied on an object
        a gc condemned long enough ago to delete it before this commit.  A longer
        run checks ``relied`` (what it used without storing it itself) against
        the lists made since it started, and commits nothing if one is there.
        """
        self.store.flush()
        now = datetime.now(UTC)
        if now - started > GRACE / 2:
            since = [c for c in self.condemned_lists() if c.time > started]
            late = {n for c in since for n in c.objects} & relied()
            if late:
                raise LvdiffError(
                    f"{len(late)} objects this point uses were condemned by a gc during this "
                    "run, which took too long to trust them: nothing committed; run again"
                )
        body = point.to_json()
        plain = body + b"\n" + hashlib.sha256(body).hexdigest().encode()
        doc = self.keys.seal(fmt.KIND_DOCUMENT, point.id.encode(), plain)
        if not self.store.put(point.id, doc, exclusive=True):
            raise LvdiffError(f"{self.label} already has a point {point.id}")

    def delete_point(self, point: fmt.Point) -> None:
        self.store.delete(point.id)

    # -- index

    def segment(self, segment_id: bytes) -> list[bytes]:
        name = fmt.index_name(segment_id)
        data = self.keys.open(fmt.KIND_INDEX, name.encode(), self.store.get(name), segment_id)
        return fmt.decode_segment(data, name)

    def slots(self, point: fmt.Point) -> Iterator[bytes]:
        """A point's slot entries in order, a segment at a time (a chunk id, or ZERO_SLOT)."""
        left = point.slots
        for hex_id in point.segments:
            entries = self.segment(bytes.fromhex(hex_id))
            want = min(fmt.SEGMENT_SLOTS, left)
            if len(entries) != want:
                raise LvdiffError(f"{point.id}: a segment of {len(entries)} slots, not {want}")
            yield from entries
            left -= want

    def store_segment(self, entries: list[bytes]) -> bytes:
        data = fmt.encode_segment(entries)
        segment_id = self.keys.chunk_id(data)
        name = fmt.index_name(segment_id)
        if not self.has(name):
            self.store.put(name, self.keys.seal(fmt.KIND_INDEX, name.encode(), data))
        return segment_id

    # -- chunks

    def has(self, name: str) -> bool:
        """Stored, and not condemned by a gc (a condemned object is stored again, see above)."""
        return name not in self.condemned() and self.store.exists(name)

    def store_chunk(self, chunk_id: bytes, data: bytes | memoryview, level: int | None = 3) -> int:
        """Store one chunk unless it is there; the bytes it took (0 when it was there)."""
        name = fmt.data_name(chunk_id)
        if self.has(name):
            return 0
        sealed = self.keys.seal(fmt.KIND_DATA, name.encode(), data, level)
        self.store.put(name, sealed)
        return len(sealed)

    def read_chunk(self, chunk_id: bytes) -> bytes:
        """A chunk's content, after every check (its AEAD tag or its hash) passed."""
        name = fmt.data_name(chunk_id)
        return self.keys.open(fmt.KIND_DATA, name.encode(), self.store.get(name), chunk_id)

    def read_chunk_frame(self, chunk_id: bytes) -> tuple[bytes | memoryview, bool]:
        """A chunk for a stream: (its stored zstd frame, True) or (its content, False),
        after the checks :meth:`lvdiff.repo.crypto.Keys.open_frame` names."""
        name = fmt.data_name(chunk_id)
        return self.keys.open_frame(fmt.KIND_DATA, name.encode(), self.store.get(name), chunk_id)

    # -- garbage collection

    def condemned_lists(self) -> list[Condemned]:
        out = []
        for obj in self.store.list(GC_PREFIX):
            data = json.loads(self.store.get(obj.name))
            when = datetime.strptime(data["time"], _GC_TIME).replace(tzinfo=UTC)
            out.append(Condemned(obj.name, when, frozenset(data["objects"])))
        return sorted(out, key=lambda c: c.time)

    def condemned(self) -> frozenset[str]:
        """What a gc has condemned and not yet deleted: read once per opened repository."""
        with self._lock:
            if self._condemned is None:
                found: set[str] = set()
                for c in self.condemned_lists():
                    found |= c.objects
                self._condemned = frozenset(found)
            return self._condemned

    def referenced(self, points: list[fmt.Point]) -> set[str]:
        """Every object some point names: its segments and their chunks."""
        names: set[str] = set()
        for p in points:
            for hex_id in p.segments:
                segment_id = bytes.fromhex(hex_id)
                seg = fmt.index_name(segment_id)
                if seg in names:
                    continue  # a segment two points share names the same chunks
                names.add(seg)
                names |= {fmt.data_name(e) for e in self.segment(segment_id) if e != fmt.ZERO_SLOT}
        return names


@dataclass
class GcResult:
    condemned: int = 0  # objects newly condemned
    deleted: int = 0
    deleted_bytes: int = 0
    kept: int = 0  # condemned earlier, but named again or stored again since
    waiting: int = 0  # condemned, not yet past the grace period
    cleaned: int = 0  # half-written leftovers of killed writers removed

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def gc(repo: Repository, grace: timedelta = GRACE, report: Reporter = ignore) -> GcResult:
    """Condemn what no point names; delete what was condemned at least ``grace`` ago.

    An object is deleted only if a list at least ``grace`` old condemned it, no
    point names it now, and it was not stored again since that list was made.
    """
    now = datetime.now(UTC)
    result = GcResult()
    points = repo.points()
    named = repo.referenced(points)
    stored = {o.name: o for p in ("data/", "index/") for o in repo.store.list(p)}
    lists = repo.condemned_lists()
    done_lists = []
    already: set[str] = set()
    for c in lists:
        if now - c.time < grace:
            already |= c.objects
            result.waiting += len(c.objects & stored.keys())
            continue
        for name in c.objects:
            obj = stored.get(name)
            if obj is None:
                continue
            stored_after = datetime.fromtimestamp(obj.mtime, UTC) > c.time
            if name in named or stored_after:
                result.kept += 1
                continue
            repo.store.delete(name)
            result.deleted += 1
            result.deleted_bytes += obj.size
            del stored[name]
        done_lists.append(c)
    fresh = {n for n in stored if n not in named and n not in already}
    if fresh:
        name = f"{GC_PREFIX}{now.strftime('%Y%m%dT%H%M%SZ')}-{len(lists):06d}"
        body = {"time": now.strftime(_GC_TIME), "objects": sorted(fresh)}
        repo.store.put(name, json.dumps(body).encode(), exclusive=True)
        result.condemned = len(fresh)
        report(Note(f"condemned {len(fresh)} objects no point names; deleted after {grace}"))
    for c in done_lists:
        repo.store.delete(c.name)
    result.cleaned = repo.store.cleanup(grace.total_seconds() or 3600)
    if result.deleted:
        report(Note(f"deleted {result.deleted} objects ({result.deleted_bytes} bytes)"))
    return result
