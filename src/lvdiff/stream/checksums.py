"""The checksums of each major version: a 32-bit check per payload and a whole-stream digest.

Versions 1 and 2 used CRC-32 and SHA-256.  On the two-core machines the
benchmark runs on, those two passes over every byte were the ceiling of the
uncompressed paths: SHA-256 runs at about 1.7 GB/s even with SHA-NI and
cannot be spread over cores, CRC-32 at about 4 GB/s, while a disk read from
cache comes at 3 GB/s.  Version 3 uses XXH3 for both (over 20 GB/s on one
core).  Their job is to catch damage in transit and storage, as ZFS send
streams use fletcher-4: a digest carried inside the stream proves nothing
against someone who can rewrite the stream, since they rewrite it too (the
tools print a SHA-256 of the file for that: see .digest).

Headers (the stream's and each record's) keep CRC-32 in every version: they
are a few bytes each, and a reader checks them before it knows anything else.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from .digest import BackgroundSha256, Buffer, Hasher, StreamDigest
from .layout import VERSION, crc32


def xxh3_32(data: Buffer) -> int:
    """The low 32 bits of XXH3-64 (seed 0); 0 for no bytes, as CRC-32 gives."""
    return xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF if len(data) else 0


@dataclass(frozen=True)
class Checksums:
    """What one major version checks payloads and the whole stream with."""

    payload: Callable[[Buffer], int]  # into the record header's 32-bit payload check
    digest_name: str  # of the whole-stream digest, as StreamDigest.algorithm
    digest_len: int
    _new_hasher: Callable[[bytes], Hasher]

    @property
    def end_payload(self) -> struct.Struct:
        """END's payload: five u64 counts, then the digest of the stream before END."""
        return struct.Struct(f">QQQQQ{self.digest_len}s")

    def hasher(self, initial: bytes = b"") -> Hasher:
        return self._new_hasher(initial)

    def digest(self, hasher: Hasher) -> StreamDigest:
        return StreamDigest(self.digest_name, hasher.hexdigest())


# SHA-256 of 1.x/2.x streams is hashed off the caller's thread (see .digest)
LEGACY = Checksums(crc32, "sha256", hashlib.sha256().digest_size, BackgroundSha256)
XXH3 = Checksums(xxh3_32, "xxh128", 16, xxhash.xxh3_128)

BY_MAJOR = {1: LEGACY, 2: LEGACY, 3: XXH3}
CURRENT = BY_MAJOR[VERSION[0]]  # what the writer uses
