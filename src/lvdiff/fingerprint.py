"""Fingerprints of a volume's content: what lvpatch checks before and after writing.

A fingerprint names byte ranges ("units") of a volume and the SHA-256 over
the SHA-256 of each, in order.  It is defined on content alone, not on thin
mappings or chunk sizes, so any target (another pool, another chunk size, a
plain disk, an image file) recomputes it just by reading.

- level 1: the head unit.
- level 2: the head unit plus ``samples`` units of 4 KiB drawn uniformly over
  the *whole* volume, mapped or not, so ranges that must read as zeros are
  checked too.  The positions follow from a random seed by a rule any
  implementation can repeat (see :func:`sample_offsets`), so the header
  carries the seed, not thousands of offsets.  BASE and NEW get independent
  seeds, so the check after writing is not a repeat of the check before it.
- level 3: every unit of the volume.

What level 2 guarantees is a probability: if a fraction ``f`` of the
volume's 4 KiB blocks differ, all ``k`` samples miss them with probability
``(1 - f) ** k`` (:func:`miss_probability`).  ``k`` grows with the volume
(one sample per 16 MiB, from 1024 to 16384), so a difference of a fixed size
stays likely to be seen on large volumes while the check reads at most
64 MiB.  The common mistake, a stream applied onto the wrong snapshot, is
refused by lineage identities (see lvdiff.apply) whatever the level.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import CorruptStream

ALGORITHM = "sha256-of-sha256"
# the check levels (lvdiff -d): 0 none, 1 the head chunk, 2 random samples, 3 every byte;
# the one definition the command lines, the configuration and the header read
LEVELS = range(4)
LEVELS_SHOWN = f"{LEVELS[0]}..{LEVELS[-1]}"
UNIT_MAX = 1 << 20
SAMPLE_UNIT = 4096  # level 2: the block size filesystems write in
SAMPLE_GRAIN = 16 << 20  # level 2: one sample per this many bytes of volume...
MIN_SAMPLES = 1024  # ...but at least this many
MAX_SAMPLES = 16384  # ...and at most this many (64 MiB of 4 KiB reads)
LEGACY_MAX_OFFSETS = 65  # format 1.x listed the head plus up to 64 offsets
READ_BATCH = 4 << 20

Reader = Callable[[int, int], bytes]  # (offset, length) -> exactly length bytes
_KEYS = ("level", "algorithm", "unit", "size", "sha256")
_SEED_RE = re.compile(r"[0-9a-f]{32}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def unit_for(chunk: int) -> int:
    """Level 1 and 3 unit: the source chunk, capped so the head read stays small."""
    return min(chunk, UNIT_MAX)


def samples_for(size: int) -> int:
    """How many units a level-2 fingerprint samples on a volume of ``size`` bytes."""
    return max(MIN_SAMPLES, min(MAX_SAMPLES, -(-size // SAMPLE_GRAIN)))


def miss_probability(changed_fraction: float, samples: int) -> float:
    """Chance that ``samples`` uniform draws all miss a difference of this fraction."""
    return (1.0 - changed_fraction) ** samples


@dataclass(frozen=True)
class Fingerprint:
    """A validated fingerprint, as lvdiff computed it or a stream header carried it."""

    level: int
    unit: int
    size: int
    sha256: str
    seed: str | None = None  # level 2: 32 hex digits that choose the samples
    samples: int = 0  # level 2: how many draws (before removing duplicates)
    listed: tuple[int, ...] | None = None  # format 1.x: sample offsets given in full

    def offsets(self) -> list[int] | None:
        """Byte offsets of the units hashed; None at level 3 (every unit)."""
        if self.level == 3:
            return None
        if self.listed is not None:
            return list(self.listed)
        if self.level == 1:
            return [0]
        assert self.seed is not None
        return sample_offsets(self.size, self.unit, self.seed, self.samples)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "level": self.level,
            "algorithm": ALGORITHM,
            "unit": self.unit,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.level == 2:
            d["seed"] = self.seed
            d["samples"] = self.samples
        return d

    @classmethod
    def from_dict(cls, d: Any, legacy: bool = False) -> Fingerprint:
        """Parse and bound a fingerprint from a stream header, which may be hostile.

        ``legacy`` reads the form of format 1.x, which listed the sampled
        offsets instead of deriving them from a seed.
        """
        if not isinstance(d, dict) or d.get("algorithm") != ALGORITHM:
            raise CorruptStream("stream header holds a malformed fingerprint (not an object)")
        level, unit, size, digest = (d.get(k) for k in ("level", "unit", "size", "sha256"))

        def bad(why: str) -> CorruptStream:
            return CorruptStream(f"stream header holds a malformed fingerprint: {why}")

        if type(level) is not int or level not in LEVELS[1:]:
            raise bad("level must be 1, 2 or 3")
        if type(unit) is not int or not 512 <= unit <= UNIT_MAX or unit & (unit - 1):
            raise bad("unit must be a power of two from 512 to 1 MiB")
        if type(size) is not int or not 0 < size <= 1 << 63:
            raise bad("size out of range")
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise bad("sha256 must be 64 lowercase hex digits")
        if legacy:
            return cls(level, unit, size, digest, listed=_legacy_offsets(d, level, unit, size))
        keys = set(_KEYS) | ({"seed", "samples"} if level == 2 else set())
        if set(d) - keys:
            raise bad(f"unexpected key {ascii(sorted(set(d) - keys)[0])[:40]} at level {level}")
        if level != 2:
            return cls(level, unit, size, digest)
        seed, samples = d.get("seed"), d.get("samples")
        if not isinstance(seed, str) or not _SEED_RE.fullmatch(seed):
            raise bad("seed must be 32 lowercase hex digits")
        if type(samples) is not int or not 1 <= samples <= MAX_SAMPLES:
            raise bad(f"samples must be 1 to {MAX_SAMPLES}")
        return cls(level, unit, size, digest, seed=seed, samples=samples)


def _legacy_offsets(d: dict[str, Any], level: int, unit: int, size: int) -> tuple[int, ...] | None:
    offs = d.get("offsets")
    if level == 3:
        if offs is not None:
            raise CorruptStream("stream header holds a malformed fingerprint: offsets at level 3")
        return None
    ok = (
        isinstance(offs, list)
        and 0 < len(offs) <= LEGACY_MAX_OFFSETS
        and all(type(o) is int and 0 <= o < size and o % unit == 0 for o in offs)
        and all(a < b for a, b in zip(offs, offs[1:], strict=False))
    )
    if not ok:
        raise CorruptStream("stream header holds a malformed fingerprint: bad offsets")
    return tuple(offs)


def sample_offsets(size: int, unit: int, seed: str, samples: int) -> list[int]:
    """The level-2 sample: offset 0 plus ``samples`` uniform draws over all units.

    Draw ``i`` is unit ``u64(SHA-256(seed bytes || u64(i))[0:8]) mod n`` (big
    endian, ``n`` = units in the volume), so another implementation can repeat
    it from docs/FORMAT.md alone.  Sorted, duplicates removed.
    """
    n = -(-size // unit)
    key = bytes.fromhex(seed)
    picks = {0}
    for i in range(samples):
        h = hashlib.sha256(key + i.to_bytes(8, "big")).digest()
        picks.add(int.from_bytes(h[:8], "big") % n)
    return sorted(u * unit for u in picks)


def digest_units(read: Reader, offsets: Iterable[int], size: int, unit: int) -> str:
    h = hashlib.sha256()
    for off in offsets:
        h.update(hashlib.sha256(read(off, min(unit, size - off))).digest())
    return h.hexdigest()


def digest_whole(
    read: Reader, size: int, unit: int, mapped: Iterable[tuple[int, int]] | None = None
) -> str:
    """Level-3 digest: every unit, reading only mapped ones when mapping is known.

    Skipping unmapped units is exact only for a thin volume without an external
    origin (those read as zeros); lvdiff refuses the others.
    """
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


class _Level3:
    """The level-3 digest of one volume, fed unit digests in ascending order.

    Units nobody fed (unmapped) hash as zeros, the last one as long as the
    volume allows.
    """

    def __init__(self, size: int, unit: int) -> None:
        self.size, self.unit, self.pos = size, unit, 0
        self.h = hashlib.sha256()
        self.zero = hashlib.sha256(bytes(unit)).digest()

    def feed(self, off: int, digests: list[bytes], end: int) -> None:
        """``digests`` are of the units of [off, end), off unit-aligned, past ``pos``."""
        self._zeros_to(off)
        for d in digests:
            self.h.update(d)
        self.pos = end

    def _zeros_to(self, off: int) -> None:
        whole = max(0, (min(off, self.size) - self.pos) // self.unit)
        self.pos += whole * self.unit
        while whole > 0:  # many units per update(), a bounded buffer per call
            n = min(whole, 1 << 15)
            self.h.update(self.zero * n)
            whole -= n
        if self.pos < off and self.pos < self.size:  # a partial last unit
            self.h.update(hashlib.sha256(bytes(self.size - self.pos)).digest())
            self.pos = self.size

    def hexdigest(self) -> str:
        self._zeros_to(self.size)
        return self.h.hexdigest()


def _unit_digests(buf: memoryview, unit: int) -> list[bytes]:
    return [hashlib.sha256(buf[i : i + unit]).digest() for i in range(0, len(buf), unit)]


def level3_pair(
    read_new: Reader,
    new_size: int,
    read_base: Reader | None,
    base_size: int,
    unit: int,
    spans: Iterable[tuple[bool, bool, bool, int, int]],
) -> tuple[str, str | None]:
    """Level-3 digests of NEW and BASE in one pass over the delta's byte spans.

    Each span is (in_base, in_new, shared, start, end): which volumes map it,
    and whether they share the data blocks.  Shared spans are read and
    hashed once for both; unmapped units hash as zeros, so only mapped data
    is read (exact for thin volumes without an external origin, which lvdiff
    refuses).
    """
    new = _Level3(new_size, unit)
    base = _Level3(base_size, unit) if read_base is not None else None
    for in_base, in_new, shared, start, end in spans:
        pos = start // unit * unit
        while pos < end:
            stop = min(end, pos + READ_BATCH)
            got: list[bytes] | None = None
            n_end = min(stop, new_size)
            if in_new and pos < n_end:
                got = _unit_digests(memoryview(read_new(pos, n_end - pos)), unit)
                new.feed(pos, got, n_end)
            b_end = min(stop, base_size)
            if base is not None and read_base is not None and in_base and pos < b_end:
                if not (shared and got is not None and b_end == n_end):
                    got = _unit_digests(memoryview(read_base(pos, b_end - pos)), unit)
                base.feed(pos, got, b_end)
            pos = stop
    return new.hexdigest(), (base.hexdigest() if base is not None else None)


def compute(
    level: int,
    read: Reader,
    size: int,
    chunk: int,
    seed: str,
    mapped: Callable[[], Iterable[tuple[int, int]]] | None = None,
) -> Fingerprint | None:
    """Fingerprint a volume on the source side.

    ``seed`` (32 hex digits) chooses the level-2 sample; ``mapped`` gives the
    volume's mapped byte ranges, which level 3 uses to skip reading the rest.
    """
    if level == 0:
        return None
    if level == 3:
        unit = unit_for(chunk)
        return Fingerprint(
            3, unit, size, digest_whole(read, size, unit, mapped() if mapped else None)
        )
    if level == 1:
        unit = unit_for(chunk)
        return Fingerprint(1, unit, size, digest_units(read, [0], size, unit))
    fp = Fingerprint(2, SAMPLE_UNIT, size, "", seed=seed, samples=samples_for(size))
    offsets = fp.offsets()
    assert offsets is not None
    return Fingerprint(
        2, SAMPLE_UNIT, size, digest_units(read, offsets, size, SAMPLE_UNIT), seed, fp.samples
    )


def verify(fp: Fingerprint, read: Reader) -> bool:
    """Recompute a recorded fingerprint by reading the target."""
    offsets = fp.offsets()
    if offsets is None:
        got = digest_whole(read, fp.size, fp.unit)
    else:
        got = digest_units(read, offsets, fp.size, fp.unit)
    return got == fp.sha256


def describe_level(level: int) -> str:
    """What a check at ``level`` guarantees, in the words --help and the README use."""
    if level == 0:
        return "no content check"
    if level == 1:
        return "the head chunk only: catches a wrong volume, not a wrong snapshot of it"
    if level == 2:
        p = miss_probability(0.001, MIN_SAMPLES)
        return (
            f"the head plus {MIN_SAMPLES}-{MAX_SAMPLES} random 4 KiB blocks over the whole "
            f"volume: a difference in a fraction f of it is missed with probability (1-f)^k "
            f"(f=0.1%, k={MIN_SAMPLES}: {p:.0%}; f=1%: {miss_probability(0.01, MIN_SAMPLES):.0e})"
        )
    return "every byte (reads the whole volume)"


__all__ = [
    "Fingerprint",
    "compute",
    "verify",
    "samples_for",
    "miss_probability",
    "sample_offsets",
    "unit_for",
    "describe_level",
]
