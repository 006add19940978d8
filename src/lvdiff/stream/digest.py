"""Digests of whole stream files: what the tools print, computed off the critical path.

Two kinds of digest cover a stream.  The one inside it (END's, see
.checksums) catches accidents at the speed of memory; it proves nothing
against someone who can alter the file, since they recompute it too.  The
one a tool prints is kept apart from the file by the operator, and is
checked later with the standard tools (``sha256sum -c``), so by default it
is a cryptographic one: SHA-256 of exactly the bytes written or read.

SHA-256 runs at about 1.7 GB/s with SHA-NI and cannot be spread over cores.
hashlib releases the GIL for buffers over 2 KiB, so a helper thread hashes
while the caller reads, checks and writes: the caller only hands buffers
over (no copies of large ones; small ones are gathered first, in order).
"""

from __future__ import annotations

import enum
import hashlib
import queue
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import xxhash

Buffer = bytes | bytearray | memoryview

_SMALL = 64 * 1024  # buffers below this are gathered before the hand-off
_QUEUED = 4  # hand-offs waiting, at most: memory stays a few records whatever lags


class Hasher(Protocol):
    def update(self, data: Buffer, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


class Digest(enum.StrEnum):
    """The digests a tool can print for a stream file; each has a standard tool that checks it."""

    SHA256 = "sha256"  # sha256sum: cryptographic, the default
    XXH128 = "xxh128"  # xxh128sum: the stream's own (format 3), free

    @property
    def hex_len(self) -> int:
        return 64 if self is Digest.SHA256 else 32

    def hasher(self) -> Hasher:
        """A hasher for this digest; SHA-256's hashes in a helper thread (BackgroundSha256)."""
        return BackgroundSha256() if self is Digest.SHA256 else xxhash.xxh3_128()


@dataclass(frozen=True)
class StreamDigest:
    """A whole stream's digest, as ``algorithm:hex`` (the form OCI digests use).

    ``hex`` is what the algorithm's standard tool prints for the stream file
    (``sha256sum``, ``xxh128sum``), so a copy can be checked without lvdiff.
    """

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> StreamDigest:
        """``sha256:HEX`` or ``xxh128:HEX``, as the tools print them in JSON; ValueError if not."""
        algorithm, _, hexdigits = text.strip().partition(":")
        try:
            kind = Digest(algorithm.lower())
        except ValueError:
            names = " or ".join(f"{d}:HEX" for d in Digest)
            raise ValueError(f"{text!r} is not a stream digest ({names})") from None
        if not re.fullmatch(rf"[0-9a-fA-F]{{{kind.hex_len}}}", hexdigits):
            raise ValueError(f"{text!r}: a {kind} digest is {kind.hex_len} hex digits")
        return cls(kind.value, hexdigits.lower())

    def tag_line(self, name: str) -> str:
        """The line ``sha256sum --tag`` or ``xxh128sum --tag`` prints; their ``-c`` reads it.

        Like coreutils, a name with a backslash or a newline is escaped and the
        line starts with a backslash, so ``-c`` reads the name back exactly.
        """
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n")
        mark = "\\" if escaped != name else ""
        return f"{mark}{self.algorithm.upper()} ({escaped}) = {self.hex}"


def _hash_forever(q: queue.Queue[Buffer | Callable[[], None] | None], h: hashlib._Hash) -> None:
    while (item := q.get()) is not None:
        if callable(item):
            item()
        else:
            h.update(item)
        q.task_done()
    q.task_done()


class BackgroundSha256:
    """A hashlib-like SHA-256 whose update() returns before the hashing is done.

    Buffers passed to update() must not change until :meth:`when_hashed`
    says so (bytes never change; views of reused buffers do).
    """

    def __init__(self, initial: bytes = b"") -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[Buffer | Callable[[], None] | None] = queue.Queue(_QUEUED)
        self._small = bytearray(initial)
        threading.Thread(
            target=_hash_forever, args=(self._q, self._h), daemon=True, name="stream-sha256"
        ).start()
        # the thread ends with its owner, whatever path the owner took
        weakref.finalize(self, self._q.put, None)

    def update(self, data: Buffer) -> None:
        if len(data) < _SMALL:
            self._small += data
            if len(self._small) >= _SMALL:
                self._flush()
            return
        self._flush()
        self._q.put(data)

    def when_hashed(self, done: Callable[[], None]) -> None:
        """Call ``done`` (in the helper thread) once every buffer given so far is hashed."""
        self._flush()
        self._q.put(done)

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


class HashingWriter:
    """A binary output that digests exactly the bytes written through it.

    What a tool prints for its output must be the digest of the file a user
    will check, whatever wrote into it, so the hashing sits at the output
    itself.  A writer that reuses its buffers must not refill one until
    :meth:`when_hashed` calls back (StreamWriter.after_written does that).
    """

    def __init__(self, fp: BinaryIO, algorithm: Digest) -> None:
        self._fp, self.algorithm, self._h = fp, algorithm, algorithm.hasher()

    def write(self, data: Buffer) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < view.nbytes:  # a raw file may take part of it
            n = self._fp.write(view[done:])
            if n is None:
                raise BlockingIOError("stream output is non-blocking and not ready")
            done += n
        self._h.update(view)
        return done

    def flush(self) -> None:
        self._fp.flush()

    def fileno(self) -> int:
        return self._fp.fileno()

    def when_hashed(self, done: Callable[[], None]) -> None:
        later = getattr(self._h, "when_hashed", None)
        if later is None:
            done()
        else:
            later(done)

    def digest(self) -> StreamDigest:
        return StreamDigest(self.algorithm.value, self._h.hexdigest())


class HashingReader:
    """A binary input that digests exactly the bytes read through it."""

    def __init__(self, fp: BinaryIO, algorithm: Digest) -> None:
        self._fp, self.algorithm, self._h = fp, algorithm, algorithm.hasher()

    @property
    def unwrapped(self) -> BinaryIO:
        return self._fp

    def read(self, n: int = -1) -> bytes:
        data = self._fp.read(n)
        if data:
            self._h.update(data)
        return data

    def readinto(self, buf: memoryview) -> int:
        got = self._fp.readinto(buf) or 0
        if got:
            self._h.update(buf[:got])
        return got

    def digest(self) -> StreamDigest:
        return StreamDigest(self.algorithm.value, self._h.hexdigest())
