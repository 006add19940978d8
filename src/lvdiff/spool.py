"""thin_delta's ranges, kept in an unlinked temporary file between passes.

lvdiff reads the delta once, while the pool's metadata snapshot is held, and
then releases the snapshot: the fingerprints, the plan and the data pass all
read the ranges from here.  Seventeen bytes a range, so a million ranges cost
17 MB of temporary disk, not memory.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable, Iterator

from .thindelta import Delta, DeltaRange

_RANGE = struct.Struct("<BQQ")
_CODES = {kind: i for i, kind in enumerate(Delta)}
_KINDS = list(Delta)
_BUFFER = 1 << 20


class RangeSpool:
    """Write ranges once; iterate over them any number of times, in order."""

    def __init__(self, ranges: Iterable[DeltaRange] = ()) -> None:
        self._file = tempfile.TemporaryFile(prefix="lvdiff-ranges-")  # noqa: SIM115 - closed by close()
        self.count = 0
        for _ in self.keep(ranges):
            pass

    def keep(self, ranges: Iterable[DeltaRange]) -> Iterator[DeltaRange]:
        """Write each range as it passes through (so one pass can also plan)."""
        buf = bytearray()
        pack, codes = _RANGE.pack, _CODES
        for r in ranges:
            buf += pack(codes[r.kind], r.begin, r.length)
            if len(buf) >= _BUFFER:
                self._file.write(buf)
                buf.clear()
            self.count += 1
            yield r
        self._file.write(buf)
        self._file.flush()

    def __iter__(self) -> Iterator[DeltaRange]:
        self._file.seek(0)
        size = _RANGE.size
        while chunk := self._file.read(_BUFFER // size * size):
            for code, begin, length in _RANGE.iter_unpack(chunk):
                yield DeltaRange(_KINDS[code], begin, length)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RangeSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
