"""Fingerprints of a volume's content at detect levels 1-3.

A fingerprint names byte ranges ("units") and the SHA-256 over the SHA-256 of
each, in order.  It is defined on content alone, not on thin mappings or
chunk sizes, so the target (any pool, any chunk size, even a plain disk) can
recompute it just by reading: unmapped regions read as zeros on both sides.

- level 1: the head unit.
- level 2: the head unit plus a seeded uniform sample of the mapped units
  (positions recorded, so the target needs no mapping knowledge).
- level 3: every unit of the volume; the source skips reading unmapped units
  (their digest is the digest of zeros) but the result is the same.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import CorruptStream

UNIT_MAX = 1 << 20
SAMPLES = 64
READ_BATCH = 4 << 20

Reader = Callable[[int, int], bytes]  # (offset, length) -> exactly length bytes


def unit_for(chunk: int) -> int:
    """Fingerprint unit: the source chunk, capped so level 2 reads stay small."""
    return min(chunk, UNIT_MAX)


@dataclass
class Fingerprint:
    level: int
    unit: int
    size: int
    sha256: str
    offsets: list[int] | None = None  # None at level 3: every unit
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "level": self.level,
            "algorithm": "sha256-of-sha256",
            "unit": self.unit,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.offsets is not None:
            d["offsets"] = self.offsets
        if self.seed is not None:
            d["seed"] = self.seed
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Fingerprint:
        """Parse and bound a fingerprint from a stream header (which may be hostile)."""
        try:
            fp = cls(
                level=d["level"],
                unit=d["unit"],
                size=d["size"],
                sha256=d["sha256"],
                offsets=d.get("offsets"),
                seed=d.get("seed"),
            )
            ok = (
                d.get("algorithm") == "sha256-of-sha256"
                and all(type(v) is int for v in (fp.level, fp.unit, fp.size))
                and fp.level in (1, 2, 3)
                and 512 <= fp.unit <= UNIT_MAX
                and fp.unit & (fp.unit - 1) == 0
                and 0 < fp.size <= 1 << 63
                and isinstance(fp.sha256, str)
                and len(fp.sha256) == 64
                and int(fp.sha256, 16) >= 0
            )
            if ok and fp.level < 3:
                offs = fp.offsets
                ok = (
                    isinstance(offs, list)
                    and 0 < len(offs) <= SAMPLES + 1
                    and all(type(o) is int and 0 <= o < fp.size and o % fp.unit == 0 for o in offs)
                    and all(a < b for a, b in zip(offs, offs[1:], strict=False))
                )
            elif ok:
                ok = fp.offsets is None
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise CorruptStream("stream header holds a malformed fingerprint")
        return fp


def _units_of(mapped: Iterable[tuple[int, int]], size: int, unit: int) -> Iterable[tuple[int, int]]:
    """(first unit, count) for mapped byte ranges, clipped to size."""
    for start, end in mapped:
        end = min(end, size)
        if start < end:
            first = start // unit
            yield first, (end + unit - 1) // unit - first


def sample_units(
    mapped: Iterable[tuple[int, int]], size: int, unit: int, k: int, rng: random.Random
) -> list[int]:
    """Uniform sample of k mapped unit indices, in one pass over ranges.

    Li's Algorithm L: skips whole runs of units with geometric jumps, so the
    cost grows with the number of ranges, not with the volume's size.
    """
    res: list[int] = []
    seen = 0
    w = math.exp(math.log(1.0 - rng.random()) / k)
    nxt = -1
    for first, count in _units_of(mapped, size, unit):
        take = min(count, k - len(res))
        if take > 0:
            res.extend(range(first, first + take))
            if len(res) == k:
                nxt = seen + take - 1 + _skip(w, rng)
        while len(res) == k and nxt < seen + count:
            res[rng.randrange(k)] = first + (nxt - seen)
            w *= math.exp(math.log(1.0 - rng.random()) / k)
            nxt += _skip(w, rng)
        seen += count
    return sorted(res)


def _skip(w: float, rng: random.Random) -> int:
    if w >= 1.0:  # float underflow of log(1-w): nothing more gets picked
        return 1 << 62
    return math.floor(math.log(1.0 - rng.random()) / math.log1p(-w)) + 1


def sample_offsets(
    level: int, mapped: Iterable[tuple[int, int]], size: int, unit: int, seed: int
) -> list[int]:
    """Byte offsets of the units a level-1 or level-2 fingerprint covers."""
    units = {0}
    if level >= 2:
        units.update(sample_units(mapped, size, unit, SAMPLES, random.Random(seed)))
    return sorted(u * unit for u in units)


def digest_units(read: Reader, offsets: Iterable[int], size: int, unit: int) -> str:
    h = hashlib.sha256()
    for off in offsets:
        h.update(hashlib.sha256(read(off, min(unit, size - off))).digest())
    return h.hexdigest()


def digest_whole(
    read: Reader, size: int, unit: int, mapped: Iterable[tuple[int, int]] | None = None
) -> str:
    """Level-3 digest: every unit, reading only mapped ones when mapping is known."""
    zero = hashlib.sha256(bytes(unit)).digest()
    h = hashlib.sha256()
    pos = 0

    def hash_read(start: int, end: int) -> None:
        while start < end:
            n = min(READ_BATCH, end - start)
            buf = memoryview(read(start, n))
            for i in range(0, n, unit):
                h.update(hashlib.sha256(buf[i : i + unit]).digest())
            start += n

    spans = mapped if mapped is not None else [(0, size)]
    for start, end in spans:
        start, end = start // unit * unit, min(-(-end // unit) * unit, size)
        start = max(start, pos)
        if start >= end:
            continue
        for _ in range((start - pos) // unit):
            h.update(zero)
        hash_read(start, end)
        pos = end
    tail_units = (size - pos) // unit
    for _ in range(tail_units):
        h.update(zero)
    pos += tail_units * unit
    if pos < size:  # a last partial unit
        hash_read(pos, size)
    return h.hexdigest()


def compute(
    level: int,
    read: Reader,
    size: int,
    unit: int,
    seed: int,
    mapped: Callable[[], Iterable[tuple[int, int]]] | None,
) -> Fingerprint | None:
    """Fingerprint a volume on the source side; ``mapped`` gives its mapped byte ranges."""
    if level == 0:
        return None
    if level == 3:
        return Fingerprint(
            3, unit, size, digest_whole(read, size, unit, mapped() if mapped else None)
        )
    offsets = sample_offsets(level, mapped() if mapped else [(0, size)], size, unit, seed)
    return Fingerprint(
        level,
        unit,
        size,
        digest_units(read, offsets, size, unit),
        offsets,
        seed if level == 2 else None,
    )


def verify(fp: Fingerprint, read: Reader) -> bool:
    """Recompute a recorded fingerprint by reading the target."""
    if fp.level == 3:
        got = digest_whole(read, fp.size, fp.unit)
    else:
        got = digest_units(read, fp.offsets or [], fp.size, fp.unit)
    return got == fp.sha256
