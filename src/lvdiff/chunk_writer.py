"""Write records onto a target so that it reads exactly as NEW, on any pool.

dm-thin provisions and discards whole chunks:

- a partial write to an unprovisioned chunk, in a pool that does not zero new
  blocks (``-Zn``), leaves the rest of the chunk holding whatever stale data
  the pool's free block had.  (A provisioned chunk is safe: shared ones are
  copied whole before the write, exclusive ones written in place; and a
  pool that zeroes new blocks zeroes the rest.)  So in such a pool, a chunk
  touched only in part is first read to see whether it is unprovisioned
  (reads as zeros); if so, every byte of it no record writes is written
  with zeros.  Memory stays at one bounded slice, whatever the chunk size.
- a discard that does not cover a whole chunk does nothing, and neither does
  one of the device's last chunk when the device ends inside it.  So whole
  chunks of zeros are discarded; the rest is written as zeros, only where it
  does not already read as zeros (writing zeros allocates pool space).
- never BLKZEROOUT on thin: dm-thin has no WRITE_ZEROES, so the kernel would
  allocate and write zeros.

Ranges no record covers keep the target's content, which is right for the
unchanged parts of an incremental but not everywhere: past the base's size
(a shrunk then grown volume keeps old mappings; a ``-l`` target larger than
the stream's base), and anywhere in a full stream written over an existing
volume.  ``fill_from`` names where every uncovered byte must read as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blockdev import BlockDevice

SLICE = 4 << 20  # largest read or zero write this module makes at once


@dataclass(frozen=True)
class TargetKind:
    """How a target device behaves where the writer cares."""

    chunk: int  # provisioning granularity (thin pool chunk); any power of two if not thin
    thin: bool  # a thin volume: zeros are discarded, never BLKZEROOUT
    zeroes_new_chunks: bool = True  # a partial write to a new chunk zeroes the rest
    discard: bool = False  # whole-chunk discards unmap (and then read as zeros)
    fresh: bool = False  # nothing written yet (new thin volume, new sparse file): reads zeros

    @classmethod
    def plain(cls) -> TargetKind:
        """A device that is not thin (or a file): writes never expose stale data."""
        return cls(chunk=4096, thin=False)


class ChunkWriter:
    """Applies DATA/ZERO ranges in ascending order so the target reads exactly as NEW.

    ``start`` is where this run begins (a resumed restore starts at its
    durable point); ``fill_from`` .. ``fill_end`` is the region in which
    bytes no record covers must read as zeros (None: nowhere).
    """

    def __init__(
        self,
        dev: BlockDevice,
        kind: TargetKind,
        *,
        start: int = 0,
        fill_from: int | None = None,
        fill_end: int | None = None,
    ) -> None:
        self.dev = dev
        self.kind = kind
        self.chunk = kind.chunk
        self.fill_from = fill_from
        self.fill_end = dev.size if fill_end is None else min(fill_end, dev.size)
        self._cursor = start  # everything below is done
        self._pending = -1  # chunk being completed with zeros around what records write
        self._pending_pos = 0  # bytes of the pending chunk below this are written
        self._high = start  # nothing at or past this was written by this run
        self._zeros = bytes(min(SLICE, max(self.chunk, 1 << 20)))
        self.discarded = 0
        self.zero_written = 0

    # -- records

    def data(self, offset: int, data: bytes | memoryview) -> None:
        self._fill_to(offset)
        self._apply(offset, memoryview(data).cast("B"))
        self._cursor = offset + len(data)

    def zero(self, offset: int, length: int) -> None:
        self._fill_to(offset)
        self._zero(offset, offset + length)
        self._cursor = offset + length

    def finish(self) -> None:
        """Zero what must read as zeros past the last record, and close any open chunk."""
        self._fill_to(self.fill_end)
        self._close_pending()

    def checkpoint(self) -> None:
        """Make every byte written so far final, without filling past the cursor."""
        self._close_pending()

    # -- internals

    def _fill_to(self, end: int) -> None:
        if self.fill_from is None:
            return
        start = max(self._cursor, self.fill_from)
        end = min(end, self.fill_end)
        if start < end:
            self._zero(start, end)
            self._cursor = end

    def _whole_chunks(self, start: int, end: int) -> tuple[int, int]:
        """The run of whole chunks inside [start, end) that lie wholly inside the device."""
        c = self.chunk
        first = -(-start // c) * c
        last = min(end, self.dev.size // c * c) // c * c
        return (first, last) if first < last else (start, start)

    def _apply(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        if not self.kind.thin or self.kind.zeroes_new_chunks:
            self._close_pending()
            self._write(offset, data)
            return
        first, last = self._whole_chunks(offset, end)
        if offset < first:
            self._partial_data(offset, data[: first - offset])
        if first < last:
            self._close_pending()
            self._write(first, data[first - offset : last - offset])
        if last < end:
            self._partial_data(last, data[last - offset :])

    def _partial_data(self, offset: int, piece: memoryview) -> None:
        """Write parts of chunks in a pool that does not zero new chunks."""
        end = offset + len(piece)
        pos = offset
        while pos < end:
            idx = pos // self.chunk
            cstart, cend = idx * self.chunk, self._chunk_end(idx)
            if idx != self._pending:
                self._close_pending()
                untouched = self.kind.fresh and cstart >= self._high
                if untouched or self._reads_zero(cstart, cend):  # unprovisioned, or zeros
                    self._pending, self._pending_pos = idx, cstart
            stop = min(cend, end)
            if idx == self._pending:
                self._write_zeros(self._pending_pos, pos)
                self._pending_pos = stop
            self._write(pos, piece[pos - offset : stop - offset])
            pos = stop

    def _partial_zero(self, start: int, end: int) -> None:
        """Make parts of chunks read as zeros without provisioning unprovisioned ones."""
        pos = start
        while pos < end:
            idx = pos // self.chunk
            stop = min(self._chunk_end(idx), end)
            if idx != self._pending:  # the pending chunk is zero-filled when it closes
                self._zero_where_needed(pos, stop)
            pos = stop

    def _chunk_end(self, idx: int) -> int:
        return min((idx + 1) * self.chunk, self.dev.size)

    def _close_pending(self) -> None:
        if self._pending >= 0:
            self._write_zeros(self._pending_pos, self._chunk_end(self._pending))
            self._pending = -1

    def _zero(self, start: int, end: int) -> None:
        """Make [start, end) read as zeros."""
        if self.kind.fresh:
            return  # never-written chunks read as zeros; a pending one is zero-filled
        if not self.kind.thin:
            self._close_pending()
            self.dev.zeroout(start, end - start)
            self.zero_written += end - start
            return
        first, last = self._whole_chunks(start, end) if self.kind.discard else (start, start)
        if start < first:
            self._partial_zero(start, first)
        if first < last:
            self._close_pending()
            self.dev.discard(first, last - first)
            self.discarded += last - first
        if last < end:
            self._partial_zero(last, end)

    def _zero_where_needed(self, start: int, end: int) -> None:
        """Write zeros over [start, end) except where it already reads as zeros."""
        pos = start
        while pos < end:
            n = min(SLICE, end - pos)
            if not self._reads_zero(pos, pos + n):
                self._write_zeros(pos, pos + n)
            pos += n

    def _reads_zero(self, start: int, end: int) -> bool:
        pos = start
        while pos < end:
            n = min(len(self._zeros), end - pos)
            if self.dev.read(pos, n) != self._zeros[:n]:
                return False
            pos += n
        return True

    def _write(self, offset: int, data: memoryview) -> None:
        self.dev.write(offset, data)
        self._high = max(self._high, offset + len(data))

    def _write_zeros(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(len(self._zeros), end - pos)
            self._write(pos, memoryview(self._zeros)[:n])
            pos += n
        self.zero_written += max(0, end - start)
