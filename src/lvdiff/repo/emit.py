"""Points out in every form lvdiff speaks: an lvdiff stream, a thin volume, an image file.

A point becomes a stream (full, or incremental from an older point of the
same source), and restoring is that stream applied by lvpatch's own engine:
atomic, lineage-tagged, read-only, verified against the point's fingerprint,
zero ranges discarded, exactly as ``lvpatch`` restores any stream.  Chunks
are fetched and checked in worker threads, in order, a bounded number ahead;
a chunk that fails its check (its AEAD tag, or its hash) stops the stream
before it is written, so a restore never writes it.  Each DATA record
carries the chunk's own zstd frame: nothing is compressed twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import UsageError
from ..events import Progress, Reporter, ignore
from ..stream import Header, StreamDigest, StreamWriter, VolumeRef, data_record, encode_zero
from ..stream.header import StreamKind
from ..stream.records import compressed_data_record
from . import format as fmt
from .repository import Repository

AHEAD = 8  # chunks fetched and checked ahead of the writer
PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size's default


@dataclass(frozen=True)
class Emitted:
    header: Header
    digest: StreamDigest
    data_bytes: int
    zero_bytes: int


def header_for(point: fmt.Point, base: fmt.Point | None) -> Header:
    """The stream header of ``point`` (from ``base``): identities and fingerprints as recorded."""
    level = point.fingerprint.level if point.fingerprint else 0
    base_fp = base.fingerprint if base else None
    if base and (base_fp is None or base_fp.level != level):
        level = 0  # fingerprints of two levels cannot check one stream: lvpatch says so
    return Header(
        kind=StreamKind.INCREMENTAL if base else StreamKind.FULL,
        volume_size=point.size,
        base_size=base.size if base else None,
        chunk_size=point.chunk_size,
        vg=point.source.vg,
        pool="repository",
        transaction_id=0,
        base=_ref(base) if base else None,
        new=_ref(point),
        meta=[("repository-point", point.id.removeprefix("points/"))],
        compression="zstd",
        detect_level=level,
        base_fingerprint=base_fp if base and level else None,
        new_fingerprint=point.fingerprint if level else None,
    )


def _ref(p: fmt.Point) -> VolumeRef:
    return VolumeRef(p.name, p.identity, 0, p.identity)


def write_stream(
    repo: Repository,
    point: fmt.Point,
    out: BinaryIO,
    base: fmt.Point | None = None,
    workers: int = 4,
    report: Reporter = ignore,
    zstd_level: int | None = 3,
) -> Emitted:
    """Write ``point`` as an lvdiff stream (incremental from ``base``, an older point of it).

    Restores, which read the stream at once through a pipe, ask for no
    compression (``zstd_level=None``): compressing it again only to undo it
    would cost more than the rest of the restore.
    """
    if base is not None:
        if base.source.key != point.source.key:
            raise UsageError(f"{base.id} is another source's point than {point.id}")
        if base.chunk_size != point.chunk_size:
            raise UsageError("the two points were made with different chunk sizes")
    header = header_for(point, base)
    writer = StreamWriter(out, header)
    data = zero = 0
    ex = ThreadPoolExecutor(workers, thread_name_prefix="lvrepo-fetch")
    queue: deque[tuple[int, int, Future[tuple[bytes, bytes | memoryview]]]] = deque()

    def emit(offset: int, length: int, fut: Future[tuple[bytes, bytes | memoryview]]) -> None:
        head, payload = fut.result()
        writer.write_record(head, payload)
        report(Progress(offset + length, point.size))

    try:
        for offset, length, entry in _changes(repo, point, base):
            if entry == fmt.ZERO_SLOT:
                while queue:
                    emit(*queue.popleft())
                writer.write_record(encode_zero(offset, length))
                zero += length
                continue
            job = ex.submit(_record, repo, entry, offset, length, zstd_level)
            queue.append((offset, length, job))
            data += length
            while len(queue) > AHEAD:
                emit(*queue.popleft())
        while queue:
            emit(*queue.popleft())
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    digest = writer.close()
    return Emitted(header, digest, data, zero)


def _record(
    repo: Repository, entry: bytes, offset: int, length: int, level: int | None
) -> tuple[bytes, bytes | memoryview]:
    """A chunk's DATA record: its stored zstd frame as the record's payload where the
    repository hands it on (encrypted: the AEAD tag vouches for it), else its checked
    content, raw when it was stored raw (zstd found nothing to gain when it was stored)."""
    payload, framed = repo.read_chunk_frame(entry)  # checked before anything is written
    if framed:
        return compressed_data_record(offset, length, payload)
    if len(payload) != length:
        raise UsageError(f"chunk {entry.hex()} holds {len(payload)} bytes, its slot {length}")
    return data_record(offset, payload, level)


def _changes(
    repo: Repository, point: fmt.Point, base: fmt.Point | None
) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, entry) of each slot to send; adjacent zero slots merged."""
    old = repo.slots(base) if base else iter(())
    zero_at = zero_len = 0
    chunk = point.chunk_size
    for (slot, offset, length), entry in zip(
        fmt.slot_ranges(point.size, chunk), repo.slots(point), strict=True
    ):
        was = next(old, None) if base and slot < base.slots else None
        same = (
            base is not None
            and was == entry
            and offset + length <= base.size  # a slot that grew must be sent
        )
        if entry == fmt.ZERO_SLOT and not same:
            if zero_len and zero_at + zero_len == offset:
                zero_len += length
            else:
                if zero_len:
                    yield zero_at, zero_len, fmt.ZERO_SLOT
                zero_at, zero_len = offset, length
            continue
        if zero_len:
            yield zero_at, zero_len, fmt.ZERO_SLOT
            zero_len = 0
        if not same:
            yield offset, length, entry
    if zero_len:
        yield zero_at, zero_len, fmt.ZERO_SLOT


def _feed(
    repo: Repository, point: fmt.Point, base: fmt.Point | None, workers: int
) -> tuple[BinaryIO, threading.Thread, list[BaseException]]:
    """A pipe a thread writes ``point``'s stream into, for lvpatch's engine to read."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # 1 MiB, not 64 KiB: a 4 MiB chunk in 4 wakeups, not 64
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with open(w, "wb") as out:
                write_stream(repo, point, out, base, workers, zstd_level=None)
        except BaseException as e:  # noqa: BLE001 - reported after the reader ends
            failure.append(e)

    t = threading.Thread(target=run, name="lvrepo-stream")
    t.start()
    return open(r, "rb", buffering=0), t, failure  # noqa: SIM115 - the caller closes it


def restore_volume(
    repo: Repository,
    point: fmt.Point,
    vg: str,
    pool: str,
    name: str | None = None,
    writable: bool = False,
    workers: int = 4,
    report: Reporter = ignore,
):  # noqa: ANN201 - lvdiff.restored.Restored
    """Restore ``point`` as a new thin volume in ``vg``/``pool`` (lvpatch's engine)."""
    from ..apply import ApplyOptions, apply_stream

    tags = tuple(t for t in point.tags if not t.startswith("lvdiff_"))
    opts = ApplyOptions(writable=writable, tags=tags)
    return _through(
        repo, point, None, workers, lambda inp: apply_stream(
            inp, vg, pool=pool, name=name or point.name, options=opts, report=report
        )
    )  # fmt: skip


def restore_image(
    repo: Repository,
    point: fmt.Point,
    image: Path,
    base_image: Path | None = None,
    base: fmt.Point | None = None,
    workers: int = 4,
    report: Reporter = ignore,
):  # noqa: ANN201 - lvdiff.restored.Restored
    """Restore ``point`` into a new image file (from ``base_image``, a restore of ``base``)."""
    from ..imagefile import restore_to_file

    return _through(
        repo, point, base, workers, lambda inp: restore_to_file(
            inp, image, base_image, report=report
        )
    )  # fmt: skip


def _through(repo, point, base, workers, apply):  # noqa: ANN001, ANN202
    inp, t, failure = _feed(repo, point, base, workers)
    try:
        with inp:
            res = apply(inp)
    except BaseException as e:
        t.join()
        cause = next((f for f in failure if not isinstance(f, BrokenPipeError)), None)
        if cause is not None:  # the repository failed first (a damaged chunk): that is the news
            raise cause from e
        raise
    t.join()
    if failure:
        raise failure[0]
    return res
