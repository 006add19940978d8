"""Turn thin_delta ranges into byte extents to send.

Works on iterators end to end so memory stays flat however many ranges the
pool reports.  All offsets leaving this module are bytes: the stream is
independent of the source's chunk size.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .thindelta import Delta, DeltaRange

MAX_READ = 4 << 20  # merge adjacent chunks into sequential reads up to this size


class ExtentKind(enum.Enum):
    DATA = "data"  # read from NEW and send
    ZERO = "zero"  # reads as zeros in NEW


DATA = ExtentKind.DATA
ZERO = ExtentKind.ZERO


@dataclass(frozen=True)
class Extent:
    kind: ExtentKind
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def classify(r: DeltaRange, chunk: int, base_size: int | None) -> Iterator[Extent]:
    """What NEW needs for one range, given ``--snap1 BASE --snap2 NEW``.

    A full stream (``base_size`` None) diffs NEW against itself: every mapped
    range is "same" and is sent.  In an incremental stream, "same" past the
    end of BASE is still sent: a shrunk BASE keeps mappings past its end that
    a target made from a BASE of that size does not have.
    """
    off, end = r.begin * chunk, r.end * chunk
    if base_size is None or r.kind in (Delta.DIFFERENT, Delta.RIGHT_ONLY):
        yield Extent(DATA, off, end - off)
    elif r.kind is Delta.LEFT_ONLY:
        yield Extent(ZERO, off, end - off)
    elif end > base_size:  # "same", partly past BASE's end
        start = max(off, base_size)
        yield Extent(DATA, start, end - start)


def plan(
    ranges: Iterable[DeltaRange],
    chunk: int,
    new_size: int,
    base_size: int | None,
    max_read: int = MAX_READ,
) -> Iterator[Extent]:
    """Extents in ascending order, clamped to NEW's size, merged, data split for reading.

    Ranges can run past the end of a shrunk volume: they are clamped here.
    """
    pending: Extent | None = None
    for r in ranges:
        for e in classify(r, chunk, base_size):
            if e.offset >= new_size:
                continue
            if e.end > new_size:
                e = Extent(e.kind, e.offset, new_size - e.offset)
            if pending and pending.kind == e.kind and pending.end == e.offset:
                pending = Extent(e.kind, pending.offset, pending.length + e.length)
            else:
                if pending:
                    yield from _split(pending, max_read)
                pending = e
    if pending:
        yield from _split(pending, max_read)


def _split(e: Extent, max_read: int) -> Iterator[Extent]:
    if e.kind == ZERO:
        yield e
        return
    off = e.offset
    while off < e.end:
        # Cut at multiples of max_read so reads stay aligned to large boundaries.
        cut = min(e.end, (off // max_read + 1) * max_read)
        yield Extent(DATA, off, cut - off)
        off = cut


@dataclass
class PlanTotals:
    """What a plan will do: exact for the data read (compression and zero grains aside)."""

    extents: int = 0
    read_bytes: int = 0  # DATA extents: read from NEW and sent
    zero_bytes: int = 0  # ZERO extents: sent as zeros without reading

    def count(self, extents: Iterable[Extent]) -> Iterator[Extent]:
        """Count extents as they pass through."""
        for e in extents:
            self.extents += 1
            if e.kind is ZERO:
                self.zero_bytes += e.length
            else:
                self.read_bytes += e.length
            yield e
