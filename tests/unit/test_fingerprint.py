"""Fingerprints: defined on content alone, sampled over the whole volume, hostile input refused."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvdiff import fingerprint as fpr
from lvdiff.errors import CorruptStream

U = 4096
MiB = 1 << 20


def volume(size: int, spans: list[tuple[int, int]]) -> bytes:
    buf = bytearray(size)
    for s, e in spans:
        buf[s:e] = os.urandom(e - s)
    return bytes(buf)


def reader(buf: bytes):
    def read(off: int, n: int) -> bytes:
        assert off >= 0 and off + n <= len(buf)
        return buf[off : off + n]

    return read


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(1, 5)), max_size=8), st.integers(1, 64 * U)
)
def test_whole_digest_independent_of_mapping_knowledge(runs, size):
    size = -(-size // 512) * 512
    spans, pos = [], 0
    for gap, n in runs:
        s = pos + gap * U
        spans.append((s, s + n * U))
        pos = s + n * U
    buf = volume(size, [(s, min(e, size)) for s, e in spans if s < size])
    assert fpr.digest_whole(reader(buf), size, U, spans) == fpr.digest_whole(reader(buf), size, U)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_level3_pair_reads_shared_data_once_and_equals_two_whole_digests(data):
    unit = data.draw(st.sampled_from([512, 1024, 4096]))
    chunk = unit * data.draw(st.sampled_from([1, 2, 4]))
    n_chunks = data.draw(st.integers(1, 24))
    new_size = n_chunks * chunk - data.draw(st.sampled_from([0, 512]))
    base_size = max(512, new_size + 512 * data.draw(st.integers(-6, 6)))
    rnd = random.Random(data.draw(st.integers(0, 1 << 30)))
    base, new = bytearray(base_size), bytearray(new_size)
    spans = []
    for c in range(max(n_chunks, -(-base_size // chunk))):
        s, e = c * chunk, (c + 1) * chunk
        in_base, in_new = rnd.random() < 0.6, rnd.random() < 0.6
        shared = in_base and in_new and rnd.random() < 0.5
        block = rnd.randbytes(chunk)
        if in_base:
            base[s:e] = (block if shared else rnd.randbytes(chunk))[: max(0, base_size - s)]
        if in_new:
            new[s:e] = block[: max(0, new_size - s)]
        if in_base or in_new:
            spans.append((in_base, in_new, shared, s, e))
    base, new = bytes(base[:base_size]), bytes(new[:new_size])
    reads = []

    def reading(buf):
        def read(off, n):
            reads.append(n)
            return buf[off : off + n]

        return read

    got_new, got_base = fpr.level3_pair(
        reading(new), new_size, reading(base), base_size, unit, spans
    )
    assert got_new == fpr.digest_whole(reader(new), new_size, unit)
    assert got_base == fpr.digest_whole(reader(base), base_size, unit)
    shared_bytes = sum(
        min(e, new_size, base_size) - s
        for b, n, sh, s, e in spans
        if sh and s < min(new_size, base_size)
    )
    mapped = sum(max(0, min(e, new_size) - s) for b, n, sh, s, e in spans if n)
    mapped += sum(max(0, min(e, base_size) - s) for b, n, sh, s, e in spans if b)
    assert sum(reads) <= mapped - shared_bytes + chunk  # shared data read once (bar an edge)


def test_levels_detect_a_changed_unit_and_roundtrip():
    size = 256 * U
    buf = volume(size, [(0, U), (10 * U, 200 * U)])
    mapped = [(0, U), (10 * U, 200 * U)]
    for level in (1, 2, 3):
        fp = fpr.compute(level, reader(buf), size, 64 * 1024, "ab" * 16, lambda: mapped)
        assert fp is not None and fp.level == level and fp.size == size
        again = fpr.Fingerprint.from_dict(fp.to_dict())
        assert again == fp and fpr.verify(again, reader(buf))
        changed = bytearray(buf)
        changed[5] ^= 1  # the head unit is in every level
        assert not fpr.verify(again, reader(bytes(changed)))
    assert fpr.compute(0, reader(buf), size, U, "ab" * 16, None) is None


def test_level_2_samples_the_whole_volume_not_only_mapped_units():
    """A range that must read as zeros (unmapped on the source) is checked too."""
    size = 64 * MiB
    new = volume(size, [(0, MiB)])  # only the first MiB is mapped
    fp = fpr.compute(2, reader(new), size, 64 * 1024, "01" * 16)
    assert fp is not None and fp.samples == fpr.MIN_SAMPLES
    offsets = fp.offsets()
    assert offsets is not None and offsets[0] == 0 and len(offsets) > 950  # draws may repeat
    assert sum(o >= MiB for o in offsets) > 900  # nearly all fall in the unmapped part
    stale = bytearray(new)
    stale[32 * MiB : 34 * MiB] = os.urandom(2 * MiB)  # 3% of the volume not zeroed
    assert not fpr.verify(fp, reader(bytes(stale)))


def test_samples_follow_the_documented_rule():
    """docs/FORMAT.md: draw i is u64(SHA-256(seed || u64be(i))[:8]) mod units, plus unit 0."""
    seed, size, k = "0f" * 16, 10 * MiB + 512, 5
    n = -(-size // U)
    want = {0}
    for i in range(k):
        h = hashlib.sha256(bytes.fromhex(seed) + i.to_bytes(8, "big")).digest()
        want.add(int.from_bytes(h[:8], "big") % n)
    assert fpr.sample_offsets(size, U, seed, k) == sorted(u * U for u in want)
    assert fpr.sample_offsets(size, U, "1f" * 16, k) != fpr.sample_offsets(size, U, seed, k)


def test_sample_count_grows_with_the_volume_within_bounds():
    assert fpr.samples_for(1 * MiB) == fpr.MIN_SAMPLES
    assert fpr.samples_for(100 << 30) == 6400
    assert fpr.samples_for(1 << 40) == fpr.MAX_SAMPLES
    assert fpr.miss_probability(0.01, fpr.MIN_SAMPLES) < 1e-4


def test_one_snapshot_off_is_caught_every_time():
    """The review's case: sp1->sp2 applied onto sp0 with 1% of blocks changed per day.

    With 64 mapped samples and one seed for both sides, 185 of 300 such
    mistakes were accepted.  With independent seeds over the whole volume the
    miss chance per check is (0.99)^1024 < 1e-4.
    """
    rnd = random.Random(5)
    size, blocks = 32 * MiB, 32 * MiB // U
    sp0 = bytearray(rnd.randbytes(size))
    sp1 = bytearray(sp0)
    for b in rnd.sample(range(blocks), blocks // 100):
        sp1[b * U : (b + 1) * U] = rnd.randbytes(U)
    new, old = bytes(sp1), bytes(sp0)
    for _ in range(60):  # seeds from a seeded generator: the same 60 checks every run
        fp = fpr.compute(2, reader(new), size, 64 * 1024, rnd.randbytes(16).hex())
        assert fp is not None and not fpr.verify(fp, reader(old))


FP = {"algorithm": "sha256-of-sha256", "unit": U, "size": 8 * U, "sha256": "0" * 64}


@pytest.mark.parametrize(
    "bad",
    [
        {},
        "not a dict",
        {**FP, "level": 9},
        {**FP, "level": True},
        {**FP, "level": 1, "unit": 3},
        {**FP, "level": 1, "unit": 2 * MiB},
        {**FP, "level": 1, "size": 0},
        {**FP, "level": 1, "sha256": "zz" * 32},
        {**FP, "level": 1, "sha256": "AB" * 32},
        {**FP, "level": 1, "algorithm": "md5"},
        {**FP, "level": 1, "seed": "ab" * 16, "samples": 4},  # samples at level 1
        {**FP, "level": 2},  # no seed
        {**FP, "level": 2, "seed": "ab" * 16},  # no samples
        {**FP, "level": 2, "seed": "ab" * 15, "samples": 4},
        {**FP, "level": 2, "seed": 12, "samples": 4},
        {**FP, "level": 2, "seed": "ab" * 16, "samples": 0},
        {**FP, "level": 2, "seed": "ab" * 16, "samples": fpr.MAX_SAMPLES + 1},
        {**FP, "level": 2, "seed": "ab" * 16, "samples": 4, "offsets": [0]},
        {**FP, "level": 3, "x\x1b[2J": 1},
    ],
)
def test_hostile_fingerprints_refused(bad):
    with pytest.raises(CorruptStream) as info:
        fpr.Fingerprint.from_dict(bad)
    assert "\x1b" not in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        {**FP, "level": 2, "offsets": [U * 8]},  # past the end
        {**FP, "level": 2, "offsets": [U, 0]},  # not ascending
        {**FP, "level": 2, "offsets": [100]},  # not on a unit
        {**FP, "level": 2, "offsets": list(range(0, 66 * U, U)), "size": 66 * U},  # too many
        {**FP, "level": 3, "offsets": [0]},
    ],
)
def test_format_1_fingerprints_are_read_and_bounded(bad):
    good = fpr.Fingerprint.from_dict({**FP, "level": 2, "offsets": [0, U], "seed": 9}, legacy=True)
    assert good.offsets() == [0, U]
    with pytest.raises(CorruptStream):
        fpr.Fingerprint.from_dict(bad, legacy=True)
