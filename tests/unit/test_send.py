"""lvdiff's data path on plain files: zero detection, reused read buffers, the stream it makes."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from lvdiff.blockdev import BlockDevice
from lvdiff.dump import ZERO_GRAIN, DumpOptions, encode_extent, send
from lvdiff.plan import DATA, MAX_READ, Extent
from lvdiff.stream import (
    Digest,
    HashingWriter,
    RecordType,
    StreamReader,
    StreamWriter,
)

from ..builders import make_header

KiB = 1024
MiB = 1024 * KiB


def kinds(records: list[tuple[bytes, bytes | memoryview]]) -> list[tuple[int, int, int]]:
    """(type, offset, length) of each encoded record, from its header bytes."""
    out = []
    for head, _payload in records:
        out.append((head[0], int.from_bytes(head[8:16]), int.from_bytes(head[16:24])))
    return out


def test_zero_grains_become_zero_records_inside_a_slice_of_the_buffer():
    g = ZERO_GRAIN
    buf = bytearray(b"\xff" * g)  # outside the slice: must not leak into it
    body = bytearray(g) + bytearray(b"\x01" * g) + bytearray(2 * g) + bytearray(b"\x02" * 512)
    buf += body + bytearray(b"\xff" * g)
    got = encode_extent(1 * MiB, buf, None, start=g, length=len(body))
    assert kinds(got) == [
        (RecordType.ZERO, 1 * MiB, g),
        (RecordType.DATA, 1 * MiB + g, g),
        (RecordType.ZERO, 1 * MiB + 2 * g, 2 * g),
        (RecordType.DATA, 1 * MiB + 4 * g, 512),  # a partial last grain
    ]
    assert bytes(got[1][1]) == b"\x01" * g and bytes(got[3][1]) == b"\x02" * 512
    assert got[0][1] == b"" and got[2][1] == b""


def test_a_grain_with_one_nonzero_byte_at_its_end_is_data():
    buf = bytearray(2 * ZERO_GRAIN)
    buf[-1] = 1
    assert kinds(encode_extent(0, buf, None)) == [
        (RecordType.ZERO, 0, ZERO_GRAIN),
        (RecordType.DATA, ZERO_GRAIN, ZERO_GRAIN),
    ]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("level", [None, 3])
def test_send_reuses_read_buffers_without_mixing_their_data(tmp_path, workers, level):
    """Many more batches than buffers: a buffer handed out again too early would show."""
    rnd = random.Random(workers)
    blocks = []
    for i in range(40):
        kind = i % 3
        if kind == 0:
            blocks.append(rnd.randbytes(MAX_READ // 4))
        elif kind == 1:
            blocks.append(bytes(MAX_READ // 4))
        else:
            blocks.append(bytes([i]) * (MAX_READ // 4))
    data = b"".join(blocks)
    src = tmp_path / "src"
    src.write_bytes(data)
    size = len(data)
    # extents of uneven sizes, so batches and buffer slices do not line up with blocks
    extents, at = [], 0
    while at < size:
        n = min(size - at, rnd.choice([64 * KiB, 1 * MiB, MAX_READ]))
        extents.append(Extent(DATA, at, n))
        at += n
    out = io.BytesIO()
    header = make_header(volume_size=size, compression="none" if level is None else "zstd")
    hashed = HashingWriter(out, Digest.SHA256)  # reads raw payloads after they are written
    with BlockDevice(str(src)) as dev:
        writer = StreamWriter(hashed, header)
        send(extents, dev, writer, DumpOptions(zstd_level=level, workers=workers))
        digest = writer.close()
    assert hashed.digest().hex == hashlib.sha256(out.getvalue()).hexdigest()
    out.seek(0)
    reader = StreamReader(out)
    rebuilt = bytearray(size)
    for rec in reader:
        if rec.data is not None:
            rebuilt[rec.offset : rec.end] = rec.data
    assert rebuilt == data
    assert reader.digest == digest
    assert reader.totals.zero_bytes == sum(len(b) for i, b in enumerate(blocks) if i % 3 == 1)
