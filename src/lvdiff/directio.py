"""Writes that bypass the page cache (O_DIRECT), a few in flight, errors kept.

A restore writes gigabytes nobody reads back soon.  Through the page cache
each 4 KiB costs a fresh page, and the final flush writes it all at once
while the decoding threads idle; measured on a VM whose freed memory goes
back to its host, a 1 GiB restore took 0.2 s or 1.4 s to fill the cache
depending on which pages it got.  Written direct, the disk works while records
are decoded, and a server's cache is left alone.

Data is copied into page-aligned staging buffers (O_DIRECT needs aligned
memory, offsets and lengths) and written by one I/O thread, so the caller
copies the next slice while the previous one is on its way to the disk.  A
write that failed is reported by the next call and by every call after it:
nothing may count as durable after lost data.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress

ALIGN = 4096  # alignment every Linux block device and file system accepts
SLICE = 4 << 20  # bytes one write moves
DEPTH = 4  # staging buffers: one being filled, the rest queued for the I/O thread


class WriteFailed(Exception):
    """A direct write failed: ``error`` is its OSError, ``offset`` where."""

    def __init__(self, error: OSError, offset: int) -> None:
        super().__init__(error, offset)
        self.error, self.offset = error, offset


class DirectWriter:
    """O_DIRECT writes to one file or device, for one caller thread.

    ``cached_fd`` (the caller's own descriptor) takes what O_DIRECT refuses:
    a write the device cut short off alignment, or every write once one
    failed with EINVAL (a file system that takes the open but not the write,
    or wants a coarser alignment than ours).
    """

    def __init__(self, fd: int, cached_fd: int) -> None:
        self.fd, self.cached_fd = fd, cached_fd
        self._free = deque(memoryview(mmap.mmap(-1, SLICE)) for _ in range(DEPTH))  # page-aligned
        self._inflight: deque[tuple[memoryview, Future[None]]] = deque()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="lvdiff-direct-io")
        self._failed: WriteFailed | None = None
        self.refused = False  # O_DIRECT said EINVAL once: the cache takes the rest

    @classmethod
    def open(cls, path: str, cached_fd: int) -> DirectWriter | None:
        """None where O_DIRECT is refused at open (some FUSE and network file systems)."""
        try:
            # Not O_EXCL: the caller's descriptor holds any claim, and a second
            # exclusive open of the same device would fail with EBUSY.
            return cls(os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC), cached_fd)
        except OSError:
            return None

    @staticmethod
    def takes(offset: int, length: int) -> bool:
        return length > 0 and (offset | length) % ALIGN == 0

    def write(self, offset: int, data: memoryview) -> None:
        """Queue ``data`` for ``offset`` (it may be reused at once); raise if a write failed."""
        self._check()
        done = 0
        while done < len(data):
            n = min(SLICE, len(data) - done)
            buf = self._buffer()
            buf[:n] = data[done : done + n]
            self._inflight.append((buf, self._io.submit(self._write, buf[:n], offset + done)))
            done += n

    def settle(self) -> None:
        """Wait for every queued write; raise the first that failed (again, on every call)."""
        while self._inflight:
            self._retire()
        self._check()

    def close(self) -> None:
        """Wait for the writes in flight, without reporting: ``settle`` is what reports."""
        with suppress(WriteFailed):
            self.settle()
        self._io.shutdown()
        self._free.clear()  # the buffers go with their last view (a kept error may hold one)
        os.close(self.fd)

    # -- internals

    def _check(self) -> None:
        if self._failed:
            raise self._failed

    def _buffer(self) -> memoryview:
        while not self._free:
            self._retire()
        return self._free.popleft()

    def _retire(self) -> None:
        buf, fut = self._inflight[0]
        try:
            fut.result()  # interrupted here, the buffer stays in flight: it may still be read
        except WriteFailed as e:
            self._failed = self._failed or e
        self._inflight.popleft()
        self._free.append(buf)
        self._check()

    def _write(self, view: memoryview, offset: int) -> None:
        done = 0
        try:
            while done < len(view):
                if done % ALIGN == 0 and not self.refused:
                    try:
                        done += os.pwrite(self.fd, view[done:], offset + done)
                        continue
                    except OSError as e:
                        if e.errno != errno.EINVAL:
                            raise
                        self.refused = True
                done += os.pwrite(self.cached_fd, view[done:], offset + done)
        except OSError as e:
            raise WriteFailed(e, offset + done) from None
