"""Check a stream without applying it: what ``lvpatch --check`` and ``--dump`` do.

Like ``zstream dump`` or ``btrfs receive --dump``: every record is read and
checked completely (checksums, order and bounds, zstd frames and their
checksums, END's counts and digest), and nothing is written anywhere, so
a stream file can be proved intact long before it is needed, without root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from .stream import Digest, Header, Pending, StreamDigest, StreamReader, Totals


@dataclass(frozen=True)
class CheckResult:
    header: Header
    version: tuple[int, int]
    totals: Totals
    digest: StreamDigest  # of the whole file, as sha256sum (or xxh128sum) prints it

    def to_dict(self, digest: StreamDigest | None) -> dict[str, Any]:
        """``lvpatch --check --json``'s summary (keys in the README); ``digest``: the one shown."""
        h, t = self.header, self.totals
        return {
            "action": "check",
            "complete": True,
            "format": f"{self.version[0]}.{self.version[1]}",
            "kind": h.kind,
            "vg": h.vg,
            "pool": h.pool,
            "new": {"name": h.new.name, "identity": h.new.identity, "size": h.volume_size},
            "base": {"name": h.base.name, "identity": h.base.identity, "size": h.base_size}
            if h.base
            else None,
            "created": h.created,
            "check_level": h.detect_level,
            "meta": [list(kv) for kv in h.meta],
            "records": {"data": t.data_records, "zero": t.zero_records},
            "bytes": {"data": t.data_bytes, "zero": t.zero_bytes, "stored": t.stored_bytes},
            "stream_digest": str(digest) if digest else None,
        }


def check_stream(
    fp: BinaryIO,
    on_record: Callable[[Pending], None] = lambda _p: None,
    digest: Digest | None = None,
    expect_digest: StreamDigest | None = None,
) -> CheckResult:
    """Read and check every record; StreamError (exit status 3) at the first fault.

    ``on_record`` hears each record (with its stored size) once it passed
    every check, in order.  ``digest`` picks the digest of the result (None:
    the stream's own); a stream whose digest is not ``expect_digest`` is
    refused (DigestMismatch, exit status 3).
    """
    reader = StreamReader(fp, digest, expect_digest)
    for pending in reader.pending():
        pending.resolve()  # payload check, zstd frame, decompressed size and checksum
        on_record(pending)
    assert reader.complete and reader.file_digest is not None
    return CheckResult(reader.header, reader.version, reader.totals, reader.file_digest)
