"""Records: DATA and ZERO encoding, the rules on where a record may sit, zstd frame bounds.

Shared by the writer (which encodes and checks placement, so a producer bug
fails at backup time) and the reader (which applies the same placement rule
to a stream that may be hostile).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import zstandard

from .checksums import CURRENT
from .digest import Buffer
from .layout import (
    CRC,
    DATA,
    MAX_DATA_LEN,
    MAX_OFFSET,
    RECORD,
    RECORD_BODY,
    SECTOR,
    ZERO,
    RecordFlag,
    RecordType,
    crc32,
    is_int,
)

# Bound once: RecordHeader's pack and unpack run for every record, and on a stream
# of small ones each lookup of RECORD.unpack_from and the like costs a few percent.
_unpack_header = RECORD.unpack_from
_pack_body = RECORD_BODY.pack
_pack_crc = CRC.pack
_new_tuple = tuple.__new__
_BODY_LEN = RECORD_BODY.size


class RecordHeader(NamedTuple):
    """The 32-byte header in front of every record (docs/FORMAT.md, "Records"), field by field.

    ``rtype`` is a plain int, not a RecordType: a reader must be able to hold
    (and skip, or refuse by name) a type this version does not know.
    """

    rtype: int
    flags: int
    reserved: int
    stored: int  # stored_len: the payload bytes that follow the header
    offset: int
    length: int
    payload_check: int  # check32 of the stored payload (CRC-32 in versions 1 and 2)
    header_check: int = 0  # CRC-32 of bytes 0-27; pack() computes it

    def pack(self) -> bytes:
        """The header's 32 bytes, ending in the CRC-32 of the first 28 (``header_check`` unused)."""
        body = _pack_body(*self[:7])
        return body + _pack_crc(crc32(body))

    @classmethod
    def unpack(cls, buf: Buffer) -> RecordHeader:
        """The header at the start of ``buf`` (bytes, or a memoryview of bytes), once its CRC holds.

        Raises ValueError if ``buf`` is shorter than a header or its last 4
        bytes are not the CRC-32 of the first 28: no field of such a header can
        be trusted, not even the ``stored`` length that says where the next one is.
        """
        try:
            fields = _unpack_header(buf)
        except struct.error:
            raise ValueError(f"a record header is {RECORD.size} bytes, not {len(buf)}") from None
        if crc32(buf[:_BODY_LEN]) != fields[7]:
            raise ValueError("record header checksum mismatch")
        # What cls._make does, less its call and length check (RECORD has our 8 fields).
        return _new_tuple(cls, fields)


@dataclass(frozen=True)
class Record:
    """One validated DATA or ZERO record as yielded by StreamReader.

    ``data`` is the decompressed content (exactly ``length`` bytes) for DATA
    and None for ZERO, whose range reads as zeros.
    """

    type: RecordType
    offset: int
    length: int
    data: bytes | None

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Totals:
    """Counts carried by the END record, so a reader can cross-check what it saw."""

    data_records: int = 0
    zero_records: int = 0
    data_bytes: int = 0
    zero_bytes: int = 0
    stored_bytes: int = 0

    def end_payload(self, layout: struct.Struct, digest: bytes) -> bytes:
        """END's payload in ``layout`` (its stream version's): these counts, then ``digest``."""
        return layout.pack(
            self.data_records,
            self.zero_records,
            self.data_bytes,
            self.zero_bytes,
            self.stored_bytes,
            digest,
        )

    @classmethod
    def from_end_payload(cls, layout: struct.Struct, payload: bytes) -> tuple[Totals, bytes]:
        """The counts and the digest in an END payload of ``layout``."""
        data_records, zero_records, data_bytes, zero_bytes, stored_bytes, digest = layout.unpack(
            payload
        )
        totals = cls(
            data_records=data_records,
            zero_records=zero_records,
            data_bytes=data_bytes,
            zero_bytes=zero_bytes,
            stored_bytes=stored_bytes,
        )
        return totals, digest


class Tally:
    """The running Totals of a writer or reader: every DATA or ZERO record goes through add()."""

    __slots__ = ("data_records", "zero_records", "data_bytes", "zero_bytes", "stored_bytes")

    def __init__(self) -> None:
        self.data_records = self.zero_records = 0
        self.data_bytes = self.zero_bytes = self.stored_bytes = 0

    def add(self, head: RecordHeader) -> None:
        """Count the record ``head`` is the header of (ValueError unless DATA or ZERO)."""
        if head.rtype == DATA:
            self.data_records += 1
            self.data_bytes += head.length
            self.stored_bytes += head.stored
        elif head.rtype == ZERO:
            self.zero_records += 1
            self.zero_bytes += head.length
        else:
            raise ValueError(f"only DATA and ZERO records are counted, not type {head.rtype:#04x}")

    @property
    def totals(self) -> Totals:
        """What has been added so far, as a value that later adds leave alone."""
        return Totals(
            data_records=self.data_records,
            zero_records=self.zero_records,
            data_bytes=self.data_bytes,
            zero_bytes=self.zero_bytes,
            stored_bytes=self.stored_bytes,
        )


def record_header(rtype: int, flags: int, payload: Buffer, offset: int, length: int) -> bytes:
    """The packed header of a record with this ``payload`` (its stored bytes)."""
    check = CURRENT.payload(payload)
    return RecordHeader(rtype, flags, 0, len(payload), offset, length, check).pack()


def _check_range(offset: int, length: int) -> None:
    if not is_int(offset) or offset < 0 or offset > MAX_OFFSET or offset % SECTOR:
        raise ValueError(f"offset must be a multiple of {SECTOR} in 0..2**63, not {offset!r}")
    if not is_int(length) or length <= 0 or length > MAX_OFFSET or length % SECTOR:
        raise ValueError(f"length must be a positive multiple of {SECTOR}, not {length!r}")


_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe, and creating one per call
    # costs more than compressing a small chunk; one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_tls, "compressors", None)
    if cache is None:
        cache = _tls.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        # The content checksum lets the reader's decoder verify the output end
        # to end, independently of the CRC over the stored bytes.
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    return cctx


def parse_compression(text: str) -> int | None:
    """``zstd``, ``zstd:LEVEL`` (1..19) or ``none``: the zstd level, or None; else ValueError."""
    name, _, lvl = text.partition(":")
    if name == "none" and not lvl:
        return None
    if name == "zstd" and (not lvl or (lvl.isdigit() and 1 <= int(lvl) <= 19)):
        return int(lvl or 3)
    raise ValueError(f"compression must be zstd, zstd:1..19 or none, not {text!r}")


def encode_data(offset: int, data: bytes | bytearray | memoryview, level: int | None = 3) -> bytes:
    """Complete DATA record bytes (header and payload) for ``data`` at ``offset``."""
    return b"".join(data_record(offset, data, level))


def data_record(
    offset: int, data: bytes | bytearray | memoryview, level: int | None = 3
) -> tuple[bytes, bytes | memoryview]:
    """A DATA record for ``data`` at ``offset``, as its header and its payload.

    The two stay apart so that a raw payload is written from the buffer it
    was read into: joining them copies every byte into a fresh allocation,
    whose page faults cost more than the rest of the uncompressed path.
    Compressed with zstd at ``level`` unless ``level`` is None; the compressed
    form is kept only when it is smaller, so incompressible blocks cost no
    decompression on restore.  Thread-safe: dump compresses in worker threads
    and hands the finished records to a single StreamWriter.
    """
    view = memoryview(data).cast("B")
    length = view.nbytes
    _check_range(offset, length)
    if length > MAX_DATA_LEN:
        raise ValueError(f"DATA record of {length} bytes exceeds MAX_DATA_LEN ({MAX_DATA_LEN})")
    payload: bytes | memoryview = view
    flags = 0
    if level is not None:
        packed = _compressor(level).compress(view)
        if len(packed) < length:
            payload, flags = packed, RecordFlag.ZSTD
    return record_header(RecordType.DATA, flags, payload, offset, length), payload


def compressed_data_record(
    offset: int, length: int, frame: bytes | memoryview
) -> tuple[bytes, bytes | memoryview]:
    """A DATA record of ``length`` bytes at ``offset`` whose payload is ``frame``, a zstd
    frame made elsewhere (a repository's stored chunk): framed as it is, not compressed
    again. The reader checks it as any other: its extent, declared size and output."""
    _check_range(offset, length)
    if length > MAX_DATA_LEN:
        raise ValueError(f"DATA record of {length} bytes exceeds MAX_DATA_LEN ({MAX_DATA_LEN})")
    return record_header(RecordType.DATA, RecordFlag.ZSTD, frame, offset, length), frame


def encode_zero(offset: int, length: int) -> bytes:
    """Complete ZERO record bytes: ``[offset, offset+length)`` reads as zeros."""
    _check_range(offset, length)
    # Not through record_header: no payload, so its check is 0 in every version.
    return RecordHeader(ZERO, 0, 0, 0, offset, length, 0).pack()


def write_all(fp: BinaryIO, data: bytes | memoryview) -> None:
    # Buffered files write everything or raise; raw files may write part of
    # it and report how much, or return None when non-blocking and full.
    # Treating None as success would silently drop part of a backup.
    view = memoryview(data)
    while view.nbytes:
        written = fp.write(view)
        if written is None:
            raise BlockingIOError("stream output is non-blocking and not ready")
        if written >= view.nbytes:
            return
        view = view[written:]


def placement_problem(offset: int, length: int, next_offset: int, volume_size: int) -> str | None:
    """Why a record may not sit at [offset, offset+length), or None.

    One rule for writer and reader: records ascend without overlap (and not
    before a resumed stream's start) and stay inside the volume.
    """
    if offset < next_offset:
        return (
            f"at offset {offset} overlaps or precedes the previous record,"
            f" which ends at {next_offset}"
        )
    if offset + length > volume_size:
        return f"at offset {offset} (length {length}) extends beyond the volume size {volume_size}"
    return None


def zstd_frame_extent(frame: bytes, length: int) -> int:
    """Size in bytes of the zstd frame at the start of ``frame``.

    python-zstandard cannot say where a frame ends, and without that a payload
    could carry bytes after its frame that nothing checks.  This walks the
    block headers (RFC 8878, section 3.1.1) without decoding anything.  It
    also refuses a declared content size other than ``length``; the declared
    size is never used to size a buffer.  Raises ValueError on malformed input.
    """
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        raise ValueError("payload is not a zstd frame")
    fhd = frame[4]
    if fhd & 0x08:
        raise ValueError("zstd frame header has its reserved bit set")
    single_segment = (fhd >> 5) & 1
    fcs_size = (single_segment, 2, 4, 8)[fhd >> 6]
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3]
    if fcs_size:
        if len(frame) < pos + fcs_size:
            raise ValueError("zstd frame header is truncated")
        declared = int.from_bytes(frame[pos : pos + fcs_size], "little")
        if fcs_size == 2:
            declared += 256
        if declared != length:
            raise ValueError(f"zstd frame declares {declared} bytes, record says {length}")
        pos += fcs_size
    size = len(frame)
    while True:
        if pos + 3 > size:
            raise ValueError("zstd frame is truncated")
        block = frame[pos] | frame[pos + 1] << 8 | frame[pos + 2] << 16
        pos += 3
        block_type = (block >> 1) & 3
        if block_type == 3:
            raise ValueError("zstd frame has a reserved block type")
        pos += 1 if block_type == 1 else block >> 3  # RLE blocks store one byte
        if block & 1:
            break
    if fhd & 0x04:
        pos += 4  # content checksum
    if pos > size:
        raise ValueError("zstd frame is truncated")
    return pos
