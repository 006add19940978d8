"""StreamReader: the security boundary of lvpatch.

lvpatch runs as root and writes what this yields onto a block device, while
the stream may come from anywhere (a pipe, ``ssh``, a file an attacker left
behind).  So every record is checked completely (checksums, order, bounds,
decompressed size) *before* it is yielded, at most one record is held in
memory whatever the stream claims, and every malformed input becomes a
:class:`~lvdiff.errors.StreamError` rather than a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from ..errors import (
    CorruptStream,
    DigestMismatch,
    StreamError,
    TruncatedStream,
    UnsupportedStream,
)
from .checksums import BY_MAJOR, CURRENT, Checksums
from .digest import Digest, HashingReader, StreamDigest
from .header import Header
from .layout import (
    CRC,
    DATA,
    END,
    KNOWN_FLAGS,
    MAGIC,
    MAX_DATA_LEN,
    MAX_HEADER_LEN,
    MAX_OFFSET,
    MAX_STORED_LEN,
    MAX_ZSTD_WINDOW,
    MIN_HEADER_LEN,
    PREAMBLE,
    READABLE_MAJORS,
    RECORD,
    SECTOR,
    SKIPPABLE,
    TRUNCATED,
    VERSION,
    ZERO,
    ZSTD,
    RecordType,
    crc32,
)
from .records import (
    Record,
    RecordHeader,
    Tally,
    Totals,
    placement_problem,
    zstd_frame_extent,
)

_tls = threading.local()


def _decompress(payload: bytes, length: int, what: str) -> bytes:
    """Decompress exactly ``length`` bytes, never materialising more.

    The payload must be exactly one zstd frame whose declared content size,
    if any, is ``length`` (checked by walking its block headers first); one
    decoder call then fills at most ``length + 1`` bytes, so a frame that
    would expand to gigabytes fails at one byte over, and the decoder checks
    the frame's content checksum.  Thread-safe: one decoder per thread.
    """
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
    try:
        if zstd_frame_extent(payload, length) != len(payload):
            raise ValueError("payload has bytes after its zstd frame")
        data = dctx.decompress(payload, max_output_size=length + 1)
    except (ValueError, zstandard.ZstdError) as exc:
        raise CorruptStream(f"{what}: bad zstd payload: {exc}") from None
    if len(data) != length:
        amount = f"more than {length}" if len(data) > length else f"{len(data)} instead of {length}"
        raise CorruptStream(f"{what} decompresses to {amount} bytes")
    return data


@dataclass(frozen=True)
class Pending:
    """A DATA or ZERO record read and checked, its zstd frame (if any) not yet decoded."""

    type: RecordType
    offset: int
    length: int
    payload: bytes | None  # stored bytes; None for ZERO
    zstd: bool
    payload_check: int = 0
    checksums: Checksums = CURRENT  # of the stream's version, which the reader passes

    @property
    def end(self) -> int:
        return self.offset + self.length

    def resolve(self) -> Record:
        """The record with its data, after the checks of its payload (CorruptStream).

        The payload's check first, then its zstd frame: the parts of a record's
        checks that cost time in proportion to its size, so they run where
        the caller likes (a worker thread) rather than in the reading thread.
        """
        data = self.payload
        if data is not None:
            what = f"DATA record at offset {self.offset}"
            if self.checksums.payload(data) != self.payload_check:
                raise CorruptStream(f"payload checksum mismatch in the {what}")
            if self.zstd:
                data = _decompress(data, self.length, what)
        return Record(self.type, self.offset, self.length, data)


class StreamReader:
    """Reads and validates one stream; iterate to get its DATA and ZERO records.

    The preamble and header are read and checked by the constructor, so a
    caller can inspect :attr:`header` (e.g. find the base volume) before any
    record is read.  Iteration yields each record only after all its checks
    passed, and ends normally only after a valid END followed by end of file;
    then :attr:`totals` and :attr:`digest` describe the whole stream.

    ``file_digest`` asks for a digest of every byte read (the file's, as
    ``sha256sum`` prints it) in :attr:`file_digest`; ``expect`` is one the
    operator recorded: a stream whose bytes digest otherwise is refused at
    its end (DigestMismatch), before a consumer commits anything.
    """

    def __init__(
        self,
        fp: BinaryIO,
        file_digest: Digest | None = None,
        expect: StreamDigest | None = None,
    ) -> None:
        self._expect = expect
        wanted = Digest(expect.algorithm) if expect else file_digest
        self._hashing = HashingReader(fp, wanted) if wanted else None
        self._fp: BinaryIO = self._hashing or fp  # type: ignore[assignment]
        self.file_digest: StreamDigest | None = None
        self._next_offset = 0
        self._tally = Tally()
        self._started = False
        self._pos = 0  # bytes consumed, for error messages
        self.digest: StreamDigest | None = None
        self.complete = False
        self.version, self.header = self._read_header()
        # A resumed stream may not reach back before its resume point.
        self._next_offset = self.header.resume_offset or 0

    @property
    def totals(self) -> Totals:
        """Counts of the records read so far; the stream's totals once complete."""
        return self._tally.totals

    # -- low-level input

    def _read_upto(self, n: int) -> bytes | bytearray:
        """Up to n bytes, fewer only at EOF; loops because pipes return short reads.

        A pipe hands a 4 MiB payload over in pieces of its capacity: the rest is read
        into one buffer of the payload's size, not gathered and joined (a second 4 MiB
        allocation and copy, whose page faults cost more than the copy itself).
        """
        first = self._fp.read(n)
        if len(first) == n or not first:
            self._pos += len(first)
            return first
        buf = bytearray(n)
        got = len(first)
        buf[:got] = first
        readinto = getattr(self._fp, "readinto", None)
        with memoryview(buf) as view:
            while got < n:
                try:
                    if readinto is None:
                        raise NotImplementedError
                    k = readinto(view[got:]) or 0
                except NotImplementedError:  # a file-like object with read() only
                    readinto = None
                    chunk = self._fp.read(n - got)
                    k = len(chunk)
                    view[got : got + k] = chunk
                if not k:
                    break
                got += k
        self._pos += got
        if got < n:
            # Cut short (only at EOF): a copy, not a resize, because a digest's helper
            # thread may still hold a view of the buffer and a bytearray with views
            # cannot shrink (BufferError).
            return bytes(buf[:got])
        return buf

    def _read_exact(self, n: int, where: str) -> bytes:
        data = self._read_upto(n)
        if len(data) != n:
            raise TruncatedStream(f"{TRUNCATED} (end of input {where})")
        return data

    # -- preamble and header

    def _read_header(self) -> tuple[tuple[int, int], Header]:
        preamble = self._read_upto(PREAMBLE.size)
        if preamble[: len(MAGIC)] != MAGIC[: len(preamble)]:
            raise StreamError("not an lvdiff stream (bad magic number)")
        if len(preamble) < PREAMBLE.size:
            raise TruncatedStream(f"{TRUNCATED} (end of input inside the preamble)")
        _magic, major, minor, header_len = PREAMBLE.unpack(preamble)
        if major not in READABLE_MAJORS:
            if major > VERSION[0]:
                raise UnsupportedStream(
                    f"stream format version {major}.{minor} was made by a newer lvdiff;"
                    f" this one reads versions {READABLE_MAJORS[0]}.x to {VERSION[0]}.x"
                )
            raise UnsupportedStream(f"unsupported stream format version {major}.{minor}")
        if header_len > MAX_HEADER_LEN:
            raise CorruptStream(f"header too large: {header_len} bytes (limit {MAX_HEADER_LEN})")
        if header_len < MIN_HEADER_LEN:
            raise CorruptStream(f"header too small: {header_len} bytes")
        raw = self._read_exact(header_len, "inside the header")
        (crc,) = CRC.unpack(self._read_exact(CRC.size, "inside the header checksum"))
        if crc32(preamble + raw) != crc:
            raise CorruptStream("header checksum mismatch")
        header = Header.from_json(raw, (major, minor))
        self._checks = BY_MAJOR[major]
        if self._hashing and self._hashing.algorithm == self._checks.digest_name:
            self._fp, self._hashing = self._hashing.unwrapped, None  # END's digest is that one
        self._hash = self._checks.hasher(preamble + raw + CRC.pack(crc))
        return (major, minor), header

    # -- records

    def __iter__(self) -> Iterator[Record]:
        return (p.resolve() for p in self.pending())

    def pending(self) -> Iterator[Pending]:
        """Records whose payload may still need decompressing, for parallel consumers.

        Each has passed every check but those of its zstd frame, which
        :meth:`Pending.resolve` makes (in any thread) before it returns the
        data; a consumer must resolve a record before acting on it, in order.
        """
        if self._started:
            raise ValueError("a StreamReader can be iterated only once")
        self._started = True
        return self._records()

    def _records(self) -> Iterator[Pending]:
        while True:
            at = self._pos
            raw = self._read_exact(RECORD.size, "where a record header was expected")
            try:
                head = RecordHeader.unpack(raw)
            except ValueError:  # raw is a whole header, so its CRC failed
                raise CorruptStream(
                    f"record header checksum mismatch at stream byte {at}"
                ) from None
            if head.flags & ~KNOWN_FLAGS:
                raise CorruptStream(
                    f"record at offset {head.offset} has unknown flags {head.flags:#04x}"
                )
            if head.reserved:
                raise CorruptStream(f"record at offset {head.offset} has nonzero reserved bits")
            rtype = head.rtype
            if rtype == DATA:
                yield self._read_data(raw, head)
            elif rtype == ZERO:
                yield self._read_zero(raw, head)
            elif rtype == END:
                self._read_end(raw, head)
                return
            elif head.flags & SKIPPABLE:
                self._skip_unknown(raw, head)
            else:
                raise UnsupportedStream(
                    f"unknown mandatory record type {rtype:#04x} at stream byte {at}:"
                    f" the stream needs a newer lvdiff"
                )

    def _check_extent(self, kind: str, offset: int, length: int) -> None:
        if offset > MAX_OFFSET or length > MAX_OFFSET:
            raise CorruptStream(
                f"{kind} record at offset {offset} has an impossible offset or length {length}"
            )
        if length == 0:
            raise CorruptStream(f"{kind} record at offset {offset} has zero length")
        if offset % SECTOR or length % SECTOR:
            raise CorruptStream(
                f"{kind} record at offset {offset} (length {length}) is not aligned to {SECTOR}"
            )
        problem = placement_problem(offset, length, self._next_offset, self.header.volume_size)
        if problem:
            raise CorruptStream(f"{kind} record {problem}")

    def _read_payload(self, stored: int, pcrc: int, what: str) -> bytes:
        payload = self._read_exact(stored, f"inside the payload of the {what}")
        if self._checks.payload(payload) != pcrc:
            raise CorruptStream(f"payload checksum mismatch in the {what}")
        return payload

    def _read_data(self, raw: bytes, head: RecordHeader) -> Pending:
        offset, length, stored = head.offset, head.length, head.stored
        self._check_extent("DATA", offset, length)
        what = f"DATA record at offset {offset}"
        if length > MAX_DATA_LEN:
            raise CorruptStream(f"{what} is longer than {MAX_DATA_LEN} bytes ({length})")
        compressed = bool(head.flags & ZSTD)
        if compressed:
            if not 0 < stored <= MAX_STORED_LEN:
                raise CorruptStream(f"{what} has an impossible stored length {stored}")
        elif stored != length:
            raise CorruptStream(f"{what} stores {stored} bytes for a length of {length}")
        payload = self._read_exact(stored, f"inside the payload of the {what}")
        self._hash.update(raw)
        self._hash.update(payload)
        self._next_offset = offset + length
        self._tally.add(head)
        return Pending(
            RecordType.DATA, offset, length, payload, compressed, head.payload_check, self._checks
        )

    def _read_zero(self, raw: bytes, head: RecordHeader) -> Pending:
        offset, length = head.offset, head.length
        self._check_extent("ZERO", offset, length)
        if head.flags & ZSTD or head.stored or head.payload_check:
            raise CorruptStream(f"ZERO record at offset {offset} has a payload")
        self._hash.update(raw)
        self._next_offset = offset + length
        self._tally.add(head)
        return Pending(RecordType.ZERO, offset, length, None, False, 0, self._checks)

    def _skip_unknown(self, raw: bytes, head: RecordHeader) -> None:
        what = f"skippable record of type {head.rtype:#04x}"
        if head.stored > MAX_STORED_LEN:
            raise CorruptStream(f"{what} has an impossible stored length {head.stored}")
        payload = self._read_payload(head.stored, head.payload_check, what)
        self._hash.update(raw)
        self._hash.update(payload)

    def _read_end(self, raw: bytes, head: RecordHeader) -> None:
        before_end = self._hash.digest()
        layout = self._checks.end_payload
        if head.offset or head.length or head.stored != layout.size or head.flags & ZSTD:
            raise CorruptStream("END record is malformed")
        payload = self._read_payload(head.stored, head.payload_check, "END record")
        claimed, digest = Totals.from_end_payload(layout, payload)
        if digest != before_end:
            raise CorruptStream(
                "stream checksum in END does not match: the stream was altered or spliced"
            )
        if claimed != self.totals:
            raise CorruptStream(
                f"END record totals {claimed} do not match the records read {self.totals}"
            )
        if self._fp.read(1):
            raise CorruptStream("unexpected data after the END record")
        self._hash.update(raw)
        self._hash.update(payload)
        self.digest = self._checks.digest(self._hash)
        self.file_digest = self._hashing.digest() if self._hashing else self.digest
        if self._expect and self.file_digest != self._expect:
            raise DigestMismatch(
                f"the stream's {self.file_digest.algorithm} is {self.file_digest.hex}, not the "
                f"expected {self._expect.hex}: it is not the stream that was recorded"
            )
        self.complete = True
