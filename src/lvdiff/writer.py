"""Write records onto a target so that it reads exactly as NEW, on any pool.

dm-thin provisions and discards whole chunks.  A partial write to an
unprovisioned chunk in a pool without zeroing (``-Zn``) leaves the rest of
the chunk holding whatever stale data the pool's free block had, and a
discard that does not cover a whole chunk does nothing.  So every target
chunk that a record covers only partly is assembled in memory (starting from
what the target reads now) and written whole; whole chunks of ZERO ranges
are discarded; partial ones are written as zeros.  Never BLKZEROOUT on thin:
dm-thin has no WRITE_ZEROES, so the kernel would allocate and write zeros.
"""

from __future__ import annotations

from .blockdev import BlockDevice

ZERO_WRITE = 4 << 20  # size of each plain zero write


class ChunkWriter:
    """Applies DATA/ZERO ranges in ascending order, at target-chunk granularity.

    Holds at most one partial chunk in memory: records arrive in order, so a
    chunk can be flushed as soon as a record starts past it.
    """

    def __init__(
        self,
        dev: BlockDevice,
        chunk: int,
        size: int,
        *,
        fresh: bool,
        discard: bool,
        zero_fallback: str = "write",
    ) -> None:
        self.dev = dev
        self.chunk = chunk
        self.size = size  # bytes of NEW; the device may be larger (extent rounding)
        self.fresh = fresh  # newly created thin volume: unwritten chunks read as zeros
        self.can_discard = discard
        self.zero_fallback = zero_fallback  # "write" on thin targets, "zeroout" otherwise
        self._idx = -1
        self._buf: bytearray | None = None
        self._zeros = bytes(min(ZERO_WRITE, max(chunk, 1 << 20)))
        self.discarded = 0
        self.zero_written = 0

    def _span(self, idx: int) -> tuple[int, int]:
        start = idx * self.chunk
        return start, min(start + self.chunk, self.dev.size)

    def _partial(self, idx: int) -> bytearray:
        if self._idx != idx:
            self.flush()
            start, end = self._span(idx)
            self._idx, self._buf = idx, bytearray(self.dev.read(start, end - start))
        assert self._buf is not None
        return self._buf

    def flush(self) -> None:
        if self._buf is not None:
            self.dev.write(self._idx * self.chunk, self._buf)
            self._idx, self._buf = -1, None

    def _apply(self, offset: int, length: int, data: memoryview | None) -> None:
        end = offset + length
        pos = offset
        while pos < end:
            idx = pos // self.chunk
            cstart, cend = self._span(idx)
            if pos == cstart and end >= cend:  # whole chunks from here
                # up to the last chunk boundary within the record (or the device's end);
                # at least cend, since end >= cend here
                run_end = end if end >= self.dev.size else end - (end - cstart) % self.chunk
                if self._idx != -1 and self._idx < idx:
                    self.flush()
                if data is None:
                    self._zero_whole(pos, run_end)
                else:
                    self.dev.write(pos, data[pos - offset : run_end - offset])
                pos = run_end
            else:
                piece_end = min(end, cend)
                buf = self._partial(idx)
                if data is None:
                    buf[pos - cstart : piece_end - cstart] = bytes(piece_end - pos)
                else:
                    buf[pos - cstart : piece_end - cstart] = data[pos - offset : piece_end - offset]
                pos = piece_end

    def data(self, offset: int, data: bytes) -> None:
        self._apply(offset, len(data), memoryview(data))

    def zero(self, offset: int, length: int) -> None:
        if self.fresh:
            return  # a new thin volume reads as zeros wherever nothing was written
        self._apply(offset, length, None)

    def _zero_whole(self, start: int, end: int) -> None:
        if self.can_discard:
            self.dev.discard(start, end - start)
            self.discarded += end - start
        elif self.zero_fallback == "zeroout":
            self.dev.zeroout(start, end - start)
            self.zero_written += end - start
        else:
            pos = start
            while pos < end:
                n = min(len(self._zeros), end - pos)
                self.dev.write(pos, memoryview(self._zeros)[:n])
                pos += n
            self.zero_written += end - start

    def finish(self) -> None:
        self.flush()
