"""Check a stream without applying it: what ``lvpatch --check`` and ``--list`` do.

Like ``zstream dump`` or ``btrfs receive --dump``: every record is read and
checked completely (checksums, order and bounds, zstd frames and their
checksums, END's counts and digest), and nothing is written anywhere, so
a stream file can be proved intact long before it is needed, without root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .stream import Header, Pending, StreamDigest, StreamReader, Totals


@dataclass(frozen=True)
class CheckResult:
    header: Header
    version: tuple[int, int]
    totals: Totals
    digest: StreamDigest  # of the whole stream, as xxh128sum (sha256sum before 3.0) prints it


def check_stream(
    fp: BinaryIO, on_record: Callable[[Pending], None] = lambda _p: None
) -> CheckResult:
    """Read and check every record; StreamError (exit status 3) at the first fault.

    ``on_record`` hears each record (with its stored size) once it passed
    every check, in order.
    """
    reader = StreamReader(fp)
    for pending in reader.pending():
        pending.resolve()  # payload check, zstd frame, decompressed size and checksum
        on_record(pending)
    assert reader.complete and reader.digest is not None
    return CheckResult(reader.header, reader.version, reader.totals, reader.digest)
