"""Fingerprints: same answer whether or not the mapping is known; bounded sampling."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvdiff import fingerprint as fpr
from lvdiff.errors import CorruptStream

U = 4096


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


def test_levels_detect_a_changed_unit_and_roundtrip():
    size = 256 * U
    buf = volume(size, [(0, U), (10 * U, 200 * U)])
    mapped = [(0, U), (10 * U, 200 * U)]
    for level in (1, 2, 3):
        fp = fpr.compute(level, reader(buf), size, U, seed=7, mapped=lambda: mapped)
        assert fp is not None
        again = fpr.Fingerprint.from_dict(fp.to_dict())
        assert fpr.verify(again, reader(buf))
        changed = bytearray(buf)
        changed[5] ^= 1  # the head unit is in every level
        assert not fpr.verify(again, reader(bytes(changed)))
    fp2 = fpr.compute(2, reader(buf), size, U, seed=7, mapped=lambda: mapped)
    assert len(fp2.offsets) == fpr.SAMPLES + 1  # head + 64 mapped units
    assert all(o == 0 or 10 * U <= o < 200 * U for o in fp2.offsets)
    assert fpr.compute(0, reader(buf), size, U, seed=7, mapped=None) is None


def test_sampling_is_uniform_and_cheap_on_huge_ranges():
    rng = random.Random(1)
    counts: Counter[int] = Counter()
    for _ in range(400):
        for u in fpr.sample_units([(0, 10 * U), (100 * U, 110 * U)], 1 << 40, U, 4, rng):
            counts[u // 10] += 1  # bucket 0: first range, bucket 10: second
    assert set(counts) == {0, 10} and abs(counts[0] - counts[10]) < 200
    # 2**40 units: must not iterate unit by unit
    got = fpr.sample_units([(0, 1 << 52)], 1 << 52, U, 64, random.Random(3))
    assert len(set(got)) == 64 and max(got) > 1 << 38


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"level": 9, "unit": U, "size": U, "sha256": "0" * 64, "algorithm": "sha256-of-sha256"},
        {
            "level": 2,
            "unit": U,
            "size": U,
            "sha256": "0" * 64,
            "algorithm": "sha256-of-sha256",
            "offsets": [U * 5],
        },
        {
            "level": 2,
            "unit": 3,
            "size": U,
            "sha256": "0" * 64,
            "algorithm": "sha256-of-sha256",
            "offsets": [0],
        },
        {
            "level": 2,
            "unit": U,
            "size": 8 * U,
            "sha256": "zz" * 32,
            "algorithm": "sha256-of-sha256",
            "offsets": [0],
        },
        {
            "level": 2,
            "unit": U,
            "size": 8 * U,
            "sha256": "0" * 64,
            "algorithm": "sha256-of-sha256",
            "offsets": [U, 0],
        },
        "not a dict",
    ],
)
def test_hostile_fingerprints_refused(bad):
    with pytest.raises(CorruptStream):
        fpr.Fingerprint.from_dict(bad)
