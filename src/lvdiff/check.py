"""Check a stream without applying it: what ``lvpatch --check`` and ``--dump`` do.

Like ``zstream dump`` or ``btrfs receive --dump``: every record is read and
checked completely (checksums, order and bounds, zstd frames and their
checksums, END's counts and digest), and nothing is written anywhere, so
a stream file can be proved intact long before it is needed, without root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .stream import Digest, Header, Pending, StreamDigest, StreamReader, Totals


@dataclass(frozen=True)
class CheckResult:
    header: Header
    version: tuple[int, int]
    totals: Totals
    digest: StreamDigest  # of the whole file, as sha256sum (or xxh128sum) prints it


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
