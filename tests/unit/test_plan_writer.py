"""Range planning and chunk-aligned writing, against a model of dm-thin's rules."""

from __future__ import annotations

import os
import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from lvdiff.chunk_writer import ChunkWriter, TargetKind
from lvdiff.plan import DATA, ZERO, Extent, plan
from lvdiff.thindelta import Delta, DeltaRange

K = 64 * 1024


def test_plan_kinds_clamp_merge_and_split():
    ranges = [
        DeltaRange(Delta.SAME, 0, 2),
        DeltaRange(Delta.DIFFERENT, 2, 3),
        DeltaRange(Delta.RIGHT_ONLY, 5, 1),
        DeltaRange(Delta.LEFT_ONLY, 6, 2),
        DeltaRange(Delta.LEFT_ONLY, 8, 1),
        DeltaRange(Delta.SAME, 9, 3),
        DeltaRange(Delta.RIGHT_ONLY, 100, 50),
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
    got = list(plan([DeltaRange(Delta.SAME, 1, 2), DeltaRange(Delta.SAME, 5, 1)], K, 10 * K, None))
    assert got == [Extent(DATA, K, 2 * K), Extent(DATA, 5 * K, K)]


class ThinModel:
    """dm-thin's rules that matter here, on a device that may end inside a chunk.

    A partial write to an unprovisioned chunk exposes stale data in the rest
    of the chunk unless the pool zeroes new chunks; a provisioned chunk keeps
    its other bytes; a discard unmaps only the whole chunks it covers, and
    never the device's last chunk when the device ends inside it.
    """

    def __init__(self, size: int, chunk: int, content: bytes, zeroing: bool = False) -> None:
        self.size, self.chunk, self.zeroing = size, chunk, zeroing
        self.mapped = {
            i for i in range(-(-size // chunk)) if any(content[i * chunk : (i + 1) * chunk])
        }
        self.data = bytearray(content)
        self.rdev = None
        self.reads = 0

    def read(self, off: int, n: int) -> bytes:
        self.reads += n
        out = bytearray(self.data[off : off + n])
        for i in range(off // self.chunk, -(-(off + n) // self.chunk)):
            if i not in self.mapped:
                s, e = max(off, i * self.chunk), min(off + n, (i + 1) * self.chunk)
                out[s - off : e - off] = bytes(e - s)
        return bytes(out)

    def write(self, off: int, data) -> None:
        data = bytes(data)
        assert off + len(data) <= self.size
        for i in range(off // self.chunk, -(-(off + len(data)) // self.chunk)):
            if i not in self.mapped:
                cs = i * self.chunk
                n = min(self.chunk, self.size - cs)
                self.data[cs : cs + n] = bytes(n) if self.zeroing else os.urandom(n)
                self.mapped.add(i)
        self.data[off : off + len(data)] = data

    def zeroout(self, off: int, n: int) -> None:  # a device that is not thin
        self.write(off, bytes(n))

    def discard(self, off: int, n: int) -> None:
        for i in range(-(-off // self.chunk), (off + n) // self.chunk):
            if (i + 1) * self.chunk <= self.size:
                self.mapped.discard(i)


def thin(chunk: int, *, zeroing: bool = False, discard: bool = True, fresh: bool = False):
    return TargetKind(chunk, thin=True, zeroes_new_chunks=zeroing, discard=discard, fresh=fresh)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_writer_reproduces_new_on_any_chunk_size(data):
    sector = 512
    size = data.draw(st.integers(8, 96)) * 4 * sector - data.draw(st.sampled_from([0, 1024]))
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
    dev = ThinModel(size, chunk, base, zeroing=data.draw(st.booleans()))
    kind = thin(chunk, zeroing=dev.zeroing, discard=data.draw(st.booleans()), fresh=fresh)
    # bytes no record covers must read as zeros from here on (a full stream over an
    # existing volume: 0; an incremental: the base's size; a fresh volume: nowhere)
    fill_from = None if fresh else data.draw(st.sampled_from([None, 0, size // 2, size]))
    expected = bytearray(base)
    if fill_from is not None:
        expected[fill_from:] = bytes(size - fill_from)
    w = ChunkWriter(dev, kind, fill_from=fill_from)
    pos = 0
    checkpoints = data.draw(st.booleans())
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
        if checkpoints and data.draw(st.booleans()):
            w.checkpoint()
    w.finish()
    assert dev.read(0, size) == bytes(expected)


def test_zeros_reaching_a_device_that_ends_inside_a_chunk_are_written():
    """dm-thin ignores a discard of the last chunk when the device ends inside it."""
    chunk, size = 4096, 4096 * 3 + 2048
    dev = ThinModel(size, chunk, os.urandom(size), zeroing=True)
    w = ChunkWriter(dev, thin(chunk, zeroing=True))
    w.zero(4096, size - 4096)
    w.finish()
    assert dev.read(4096, size - 4096) == bytes(size - 4096)


def test_a_full_stream_over_an_existing_volume_leaves_nothing_of_it():
    """--in-place with a full stream: what NEW does not map must read as zeros."""
    size = 256 * 1024
    for kind in (TargetKind.plain(), thin(65536, zeroing=True), thin(65536, discard=False)):
        dev = ThinModel(size, 65536, os.urandom(size), zeroing=kind.zeroes_new_chunks)
        w = ChunkWriter(dev, kind, fill_from=0)
        w.data(100 * 1024, b"n" * 4096)
        w.finish()
        assert dev.read(0, size) == bytes(100 * 1024) + b"n" * 4096 + bytes(size - 104 * 1024)


def test_partial_chunks_cost_a_bounded_amount_of_memory():
    """A 512-byte record used to cost two copies of a whole target chunk."""

    class Sparse:
        """A 2 GiB device of unprovisioned 1 GiB chunks that remembers nothing."""

        size, rdev = 2 << 30, None

        def read(self, off: int, n: int) -> bytes:
            return bytes(n)

        def write(self, off: int, data) -> None:
            pass

    tracemalloc.start()
    try:
        w = ChunkWriter(Sparse(), thin(1 << 30))
        w.data(512, os.urandom(512))
        w.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def test_a_pool_that_zeroes_new_chunks_needs_no_read_modify_write():
    chunk = 1 << 20
    dev = ThinModel(4 * chunk, chunk, bytes(4 * chunk), zeroing=True)
    w = ChunkWriter(dev, thin(chunk, zeroing=True))
    w.data(chunk + 512, os.urandom(512))
    w.finish()
    assert dev.reads == 0
