"""Apply a stream's records, in order, onto an open device: the LVM-free core of lvpatch.

Three kinds of threads: one reads the stream (and hands each record's
checks and decompression to workers, which zlib and zstandard let run in
parallel), the workers, and the caller's thread, which applies records
strictly in stream order as soon as each is ready.  So a record is never
written before it passed every check, a bad one stops everything after it,
and a record that arrived is applied even while the stream stalls (a
checkpoint of ``lvpatch -s`` must not wait for data that may never come).
The data decoded ahead of the writer is bounded, whatever the stream claims.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .chunk_writer import ChunkWriter
from .stream import Pending, Record, RecordType, StreamReader

DEFAULT_WORKERS = max(2, min(4, os.cpu_count() or 2))
AHEAD_BYTES = 64 << 20  # data read and decoded ahead of the writer, at most
HAND_OFF = 64 * 1024  # smaller records are checked in the reading thread: a hand-off costs more

_END = object()


class _Ahead:
    """The records between the reading thread and the writer, bounded by their bytes."""

    def __init__(self, limit: int, max_items: int) -> None:
        self.items: list[object] = []
        self.bytes = 0
        self.limit, self.max_items = limit, max_items
        self.cond = threading.Condition()
        self.stopped = False

    def put(self, item: object, size: int) -> bool:
        """Queue an item (waiting for room); False once the writer has stopped."""
        with self.cond:
            while (
                not self.stopped
                and self.items
                and (self.bytes + size > self.limit or len(self.items) >= self.max_items)
            ):
                self.cond.wait()
            if self.stopped:
                return False
            self.items.append((item, size))
            self.bytes += size
            self.cond.notify_all()
            return True

    def get(self) -> object:
        with self.cond:
            while not self.items:
                self.cond.wait()
            item, size = self.items.pop(0)
            self.bytes -= size
            self.cond.notify_all()
            return item

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


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
    ahead = _Ahead(AHEAD_BYTES, 4 * workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="lvpatch-decode") as ex:

        def read() -> None:
            try:
                for pending in reader.pending():
                    size = len(pending.payload) if pending.payload is not None else 0
                    work = ex.submit(pending.resolve) if size >= HAND_OFF else pending
                    if not ahead.put(work, pending.length if pending.payload else 0):
                        return
                ahead.put(_END, 0)
            except BaseException as e:  # noqa: BLE001 - handed to the writer, in order
                ahead.put(e, 0)

        thread = threading.Thread(target=read, name="lvpatch-read", daemon=True)
        thread.start()
        try:
            while (item := ahead.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                rec = item.result() if isinstance(item, Future) else _resolved(item)
                if rec.type == RecordType.DATA:
                    assert rec.data is not None
                    writer.data(rec.offset, rec.data)
                else:
                    writer.zero(rec.offset, rec.length)
                on_record(rec)
        finally:
            ahead.stop()
        thread.join()


def _resolved(item: object) -> Record:
    assert isinstance(item, Pending)
    return item.resolve()
