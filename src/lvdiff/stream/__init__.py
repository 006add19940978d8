"""The lvdiff stream format, version 3.0: a writer and a validating reader.

The byte layout is specified in ``docs/FORMAT.md``; this package is its only
implementation, so the two must change together.  Like :mod:`zipfile`, the
on-disk structures are explicit :mod:`struct` layouts (:mod:`.layout`), with
one typed header (:mod:`.header`), one writer class (:mod:`.writer`) and one
reader class (:mod:`.reader`).

The reader is the security boundary of ``lvpatch``.  The END record carries
counts and a digest of everything before it (:mod:`.checksums`), so truncation, reordering and
splicing of two streams are caught too, although a consumer only learns that
after it has applied the earlier records; callers that need all-or-nothing
semantics must write into a scratch volume (``lvpatch`` writes into a new
snapshot).
"""

from .digest import Digest, HashingWriter, StreamDigest
from .header import Header, VolumeRef, check_identity
from .layout import (
    MAGIC,
    MAX_DATA_LEN,
    MAX_HEADER_LEN,
    MAX_STORED_LEN,
    READABLE_MAJORS,
    SECTOR,
    VERSION,
    RecordFlag,
    RecordType,
)
from .reader import Pending, StreamReader
from .records import Record, RecordHeader, Totals, data_record, encode_data, encode_zero
from .text import escape_for_terminal
from .writer import StreamWriter

__all__ = [
    "MAGIC",
    "VERSION",
    "READABLE_MAJORS",
    "MAX_DATA_LEN",
    "MAX_HEADER_LEN",
    "MAX_STORED_LEN",
    "SECTOR",
    "RecordType",
    "RecordFlag",
    "VolumeRef",
    "Header",
    "Record",
    "RecordHeader",
    "Pending",
    "Totals",
    "StreamDigest",
    "Digest",
    "HashingWriter",
    "check_identity",
    "data_record",
    "encode_data",
    "encode_zero",
    "escape_for_terminal",
    "StreamWriter",
    "StreamReader",
]
