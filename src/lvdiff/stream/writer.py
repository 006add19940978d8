"""StreamWriter: preamble and header, records in order, then END."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from .checksums import CURRENT, StreamDigest
from .header import Header
from .layout import CRC, DATA, MAGIC, PREAMBLE, RECORD, VERSION, ZERO, RecordType, crc32
from .records import RecordHeader, Tally, Totals, placement_problem, record_header, write_all


class StreamWriter:
    """Writes one stream: preamble and header at once, then records, then END.

    The writer enforces the same order and bounds rules as the reader, so a
    bug in the producer fails at backup time instead of at restore time.  Use
    it as a context manager to get END written on success only: a stream left
    behind by a failed backup must stay detectably incomplete.
    """

    def __init__(self, fp: BinaryIO, header: Header) -> None:
        raw = header.to_json()
        head = PREAMBLE.pack(MAGIC, VERSION[0], VERSION[1], len(raw)) + raw
        head += CRC.pack(crc32(head))
        self._fp = fp
        self.header = header
        self._hash = CURRENT.hasher(head)
        self._next_offset = header.resume_offset or 0
        self._tally = Tally()
        self.digest: StreamDigest | None = None
        write_all(fp, head)

    @property
    def totals(self) -> Totals:
        return self._tally.totals

    @property
    def closed(self) -> bool:
        return self.digest is not None

    def write_record(
        self, record: bytes | memoryview, payload: bytes | bytearray | memoryview = b""
    ) -> None:
        """Append a record made by encode_data or encode_zero, or data_record's two parts.

        Raises ValueError on misuse (out of order, overlapping, beyond the
        volume, not a DATA/ZERO record) before writing anything.
        """
        if self.digest is not None:  # closed; not the property: this runs per record
            raise ValueError("write_record on a closed StreamWriter")
        view = memoryview(record).cast("B")
        if view.nbytes < RECORD.size:
            raise ValueError("record is shorter than a record header")
        try:
            head = RecordHeader.unpack(view)
        except ValueError:  # view is long enough, so its CRC failed
            raise ValueError(
                "record header checksum mismatch: not made by encode_data/zero"
            ) from None
        if view.nbytes + len(payload) != RECORD.size + head.stored:
            raise ValueError("record length does not match its header")
        if head.rtype not in (DATA, ZERO):
            raise ValueError(
                f"write_record accepts DATA and ZERO records, not type {head.rtype:#04x}"
            )
        offset, length = head.offset, head.length
        problem = placement_problem(offset, length, self._next_offset, self.header.volume_size)
        if problem:
            raise ValueError(f"record {problem}")
        write_all(self._fp, view)
        self._hash.update(view)
        if payload:
            write_all(self._fp, payload)
            self._hash.update(payload)
        self._next_offset = offset + length
        self._tally.add(head)

    def after_written(self, done: Callable[[], None]) -> None:
        """Call ``done`` once the output no longer needs the bytes given so far.

        Writes are synchronous, but an output that digests what passes
        through it in a helper thread (HashingWriter) reads them later: a
        caller that reuses its buffers refills one only after this calls back.
        """
        later = getattr(self._fp, "when_hashed", None)
        if later is None:
            done()
        else:
            later(done)

    def close(self) -> StreamDigest:
        """Write END, flush, and return the digest of the whole stream.

        The digest is over every byte including END, i.e. what ``xxh128sum``
        prints for the file, so users can compare it with a copy.  The file
        object is flushed but not closed: the caller opened it.
        """
        if self.digest is not None:
            return self.digest
        payload = self.totals.end_payload(CURRENT.end_payload, self._hash.digest())
        end = record_header(RecordType.END, 0, payload, 0, 0) + payload
        write_all(self._fp, end)
        self._fp.flush()
        self._hash.update(end)
        self.digest = CURRENT.digest(self._hash)
        return self.digest

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
