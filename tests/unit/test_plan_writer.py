"""Range planning and chunk-aligned writing, against a model of dm-thin's rules."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lvdiff.plan import DATA, ZERO, Extent, plan
from lvdiff.thindelta import DeltaRange
from lvdiff.writer import ChunkWriter

K = 64 * 1024


def test_plan_kinds_clamp_merge_and_split():
    ranges = [
        DeltaRange("same", 0, 2),
        DeltaRange("different", 2, 3),
        DeltaRange("right_only", 5, 1),
        DeltaRange("left_only", 6, 2),
        DeltaRange("left_only", 8, 1),
        DeltaRange("same", 9, 3),
        DeltaRange("right_only", 100, 50),
    ]
    got = list(plan(ranges, K, new_size=110 * K, base_size=10 * K, max_read=2 * K))
    assert got == [
        Extent(DATA, 2 * K, 2 * K),
        Extent(DATA, 4 * K, 2 * K),  # merged, then split
        Extent(ZERO, 6 * K, 3 * K),  # left_only merged
        Extent(DATA, 10 * K, 2 * K),  # "same" past BASE's end is sent
        *[Extent(DATA, o * K, 2 * K) for o in range(100, 110, 2)],  # clamped to NEW
    ]


def test_full_stream_sends_every_mapped_range():
    got = list(plan([DeltaRange("same", 1, 2), DeltaRange("same", 5, 1)], K, 10 * K, None))
    assert got == [Extent(DATA, K, 2 * K), Extent(DATA, 5 * K, K)]


class ThinModel:
    """dm-thin's rules that matter here: whole-chunk provisioning and discards.

    With zeroing off, a partial write to an unprovisioned chunk exposes stale
    data in the rest of the chunk; a discard not covering a whole chunk is ignored.
    """

    def __init__(self, size: int, chunk: int, content: bytes) -> None:
        self.size, self.chunk = size, chunk
        self.mapped = {
            i for i in range(-(-size // chunk)) if any(content[i * chunk : (i + 1) * chunk])
        }
        self.data = bytearray(content)
        self.rdev = None

    def read(self, off: int, n: int) -> bytes:
        out = bytearray(self.data[off : off + n])
        for i in range(off // self.chunk, -(-(off + n) // self.chunk)):
            if i not in self.mapped:
                s, e = max(off, i * self.chunk), min(off + n, (i + 1) * self.chunk)
                out[s - off : e - off] = bytes(e - s)
        return bytes(out)

    def write(self, off: int, data) -> None:
        data = bytes(data)
        for i in range(off // self.chunk, -(-(off + len(data)) // self.chunk)):
            if i not in self.mapped:
                cs = i * self.chunk
                self.data[cs : cs + self.chunk] = os.urandom(min(self.chunk, self.size - cs))
                self.mapped.add(i)
        self.data[off : off + len(data)] = data

    def discard(self, off: int, n: int) -> None:
        for i in range(-(-off // self.chunk), (off + n) // self.chunk):
            self.mapped.discard(i)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_writer_reproduces_new_on_any_chunk_size(data):
    sector = 512
    size = data.draw(st.integers(8, 96)) * 4 * sector
    chunk = data.draw(st.sampled_from([1024, 2048, 4096, 8192]))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    base = bytearray(size)
    for _ in range(rnd.randrange(4)):
        o = rnd.randrange(size)
        base[o : o + rnd.randrange(1, 3000)] = os.urandom(3000)[: min(3000, size - o)]
    base = bytes(base[:size])
    fresh = data.draw(st.booleans())
    if fresh:
        base = bytes(size)
    dev = ThinModel(size, chunk, base)
    expected = bytearray(base)
    w = ChunkWriter(dev, chunk, size, fresh=fresh, discard=data.draw(st.booleans()))
    pos = 0
    while True:
        pos += data.draw(st.integers(0, 6)) * sector
        n = data.draw(st.integers(1, 8)) * sector
        if pos + n > size:
            break
        if data.draw(st.booleans()):
            payload = os.urandom(n)
            w.data(pos, payload)
            expected[pos : pos + n] = payload
        else:
            w.zero(pos, n)
            expected[pos : pos + n] = bytes(n)
        pos += n
    w.finish()
    assert dev.read(0, size) == bytes(expected)
