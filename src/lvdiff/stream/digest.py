"""The SHA-256 of a format 1 or 2 stream, computed by a helper thread as the bytes go by.

One SHA-256 over every byte of the stream is the one part of reading such a
stream that cannot be spread over workers (format 3 uses XXH3, see
.checksums).  hashlib releases the GIL for buffers over 2 KiB, so a helper
thread that hashes while the caller reads, checks and writes takes that pass
off the caller's critical path: the caller only hands buffers over (no
copies of large ones; small ones are gathered first, in order).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import weakref

_SMALL = 64 * 1024  # buffers below this are gathered before the hand-off
_QUEUED = 4  # hand-offs waiting, at most: memory stays a few records whatever lags


def _hash_forever(q: queue.Queue[bytes | memoryview | None], h: hashlib._Hash) -> None:
    while (item := q.get()) is not None:
        h.update(item)
        q.task_done()
    q.task_done()


class BackgroundSha256:
    """A hashlib-like SHA-256 whose update() returns before the hashing is done.

    Buffers passed to update() must not change afterwards (bytes, or views of
    bytes): the helper thread reads them later.
    """

    def __init__(self, initial: bytes = b"") -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[bytes | memoryview | None] = queue.Queue(_QUEUED)
        self._small = bytearray(initial)
        threading.Thread(
            target=_hash_forever, args=(self._q, self._h), daemon=True, name="stream-sha256"
        ).start()
        # the thread ends with its owner, whatever path the owner took
        weakref.finalize(self, self._q.put, None)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) < _SMALL:
            self._small += data
            if len(self._small) >= _SMALL:
                self._flush()
            return
        self._flush()
        self._q.put(data)

    def _flush(self) -> None:
        if self._small:
            self._q.put(bytes(self._small))
            self._small.clear()

    def digest(self) -> bytes:
        """The digest of everything so far; more may be hashed afterwards."""
        self._flush()
        self._q.join()
        return self._h.digest()

    def hexdigest(self) -> str:
        return self.digest().hex()
