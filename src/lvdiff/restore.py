"""Apply a stream's records, in order, onto an open device: the LVM-free core of lvpatch.

Worker threads check payloads and decompress them (zlib and zstandard
release the GIL) while this thread reads the stream and one writer applies records
strictly in stream order, so a record is never written before it passed
every check, and a bad one stops everything after it.  The bytes decoded
ahead of the writer are bounded, whatever the stream claims.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import StreamError
from .stream import Pending, Record, RecordType, StreamReader
from .writer import ChunkWriter

DEFAULT_WORKERS = max(2, min(4, os.cpu_count() or 2))
AHEAD_BYTES = 64 << 20  # decoded data waiting for the writer, at most
HAND_OFF = 64 * 1024  # smaller records are checked here: a thread hand-off costs more


def write_records(
    reader: StreamReader,
    writer: ChunkWriter,
    *,
    workers: int = DEFAULT_WORKERS,
    on_record: Callable[[Record], None] = lambda _r: None,
) -> None:
    """Apply every record of ``reader`` through ``writer``; ``on_record`` hears each applied.

    When the stream turns out truncated or damaged, every record read before
    the damage is applied first (a resumable restore keeps them), then the
    error is raised.
    """
    queue: deque[tuple[Pending, Future[Record] | Record]] = deque()
    ahead = 0

    def apply_next() -> None:
        nonlocal ahead
        pending, item = queue.popleft()
        ahead -= pending.length if pending.type == RecordType.DATA else 0
        rec = item.result() if isinstance(item, Future) else item
        if rec.type == RecordType.DATA:
            assert rec.data is not None
            writer.data(rec.offset, rec.data)
        else:
            writer.zero(rec.offset, rec.length)
        on_record(rec)

    with ThreadPoolExecutor(workers, thread_name_prefix="lvpatch-decode") as ex:
        try:
            for pending in reader.pending():
                big = pending.payload is not None and len(pending.payload) >= HAND_OFF
                item = ex.submit(pending.resolve) if big else pending.resolve()
                queue.append((pending, item))
                ahead += pending.length if pending.type == RecordType.DATA else 0
                while queue and (ahead > AHEAD_BYTES or len(queue) > 4 * workers):
                    apply_next()
        except StreamError:
            while queue:  # keep what arrived intact; stops at the first bad record
                apply_next()
            raise
        except BaseException:
            for _p, item in queue:
                if isinstance(item, Future):
                    item.cancel()
            raise
        while queue:
            apply_next()
