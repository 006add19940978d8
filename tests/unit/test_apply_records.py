"""The parallel record pipeline: order, bounds, and what is applied when a stream goes bad."""

from __future__ import annotations

import io
import os

import pytest

from lvdiff.apply_records import write_records
from lvdiff.blockdev import BlockDevice
from lvdiff.chunk_writer import ChunkWriter, TargetKind
from lvdiff.errors import CorruptStream, TruncatedStream
from lvdiff.stream import StreamReader, StreamWriter, encode_data, encode_zero

from ..builders import make_header

M = 1 << 20


def stream(blocks: list[bytes], size: int) -> tuple[bytes, bytes, list[int]]:
    """A full stream of DATA records (zstd where it pays), a ZERO between each pair."""
    out = io.BytesIO()
    h = make_header(volume_size=size)
    w = StreamWriter(out, h)
    image = bytearray(size)
    starts, pos = [], 0
    for block in blocks:
        starts.append(out.tell())
        w.write_record(encode_data(pos, block, 3))
        image[pos : pos + len(block)] = block
        pos += len(block)
        w.write_record(encode_zero(pos, 4096))
        pos += 4096
    w.close()
    return out.getvalue(), bytes(image), starts


def restore(data: bytes, path, workers: int = 3) -> list[int]:
    seen: list[int] = []
    with BlockDevice(str(path), writable=True, direct_writes=True) as dev:
        writer = ChunkWriter(dev, TargetKind.plain(), fill_from=0)
        try:
            write_records(
                StreamReader(io.BytesIO(data)),
                writer,
                workers=workers,
                on_record=lambda r: seen.append(r.end),
            )
            writer.finish()
        finally:
            seen.append(-1)
    return seen


def blocks(n: int) -> list[bytes]:
    # compressible and not, so some records are decoded in workers and some not
    return [(os.urandom(512) * 64 if i % 2 else os.urandom(32 * 1024)) for i in range(n)]


def test_records_are_applied_in_order_and_exactly(tmp_path):
    data, image, _ = stream(blocks(40), 4 * M)
    target = tmp_path / "img"
    target.write_bytes(os.urandom(4 * M))  # old content everywhere: all of it must go
    ends = restore(data, target)
    assert ends[:-1] == sorted(ends[:-1]) and len(ends) == 81
    assert target.read_bytes() == image


def test_a_bad_record_stops_the_writer_after_what_came_before(tmp_path):
    data, image, starts = stream(blocks(12), 2 * M)
    bad = bytearray(data)
    bad[starts[7] + 40] ^= 1  # a bit flip in the 8th DATA record's payload
    target = tmp_path / "img"
    target.write_bytes(bytes(2 * M))
    with pytest.raises(CorruptStream):
        restore(bytes(bad), target)
    cut = tmp_path / "cut"
    cut.write_bytes(bytes(2 * M))
    seen: list[int] = []
    with BlockDevice(str(cut), writable=True) as dev, pytest.raises(TruncatedStream):
        write_records(
            StreamReader(io.BytesIO(data[: starts[7] + 10])),
            ChunkWriter(dev, TargetKind.plain()),
            on_record=lambda r: seen.append(r.end),
        )
    assert len(seen) == 14  # 7 DATA and 7 ZERO records, all applied before the cut
    assert cut.read_bytes()[: seen[-1]] == image[: seen[-1]]


def test_records_that_arrived_are_applied_while_the_stream_stalls(tmp_path):
    """lvpatch -s checkpoints must not wait for data that may never come."""
    import threading

    data, _image, starts = stream(blocks(6), 2 * M)
    r, w = os.pipe()
    applied: list[int] = []
    got_three = threading.Event()

    def on_record(rec) -> None:
        applied.append(rec.end)
        if len(applied) == 3:
            got_three.set()

    target = tmp_path / "img"
    target.write_bytes(bytes(2 * M))
    out = open(w, "wb", buffering=0)  # noqa: SIM115 - closed below, to end the stream
    with open(r, "rb") as inp, BlockDevice(str(target), writable=True) as dev:
        out.write(data[: starts[2]])  # two DATA and their ZERO records, then nothing more
        done = threading.Thread(
            target=lambda: write_records(
                StreamReader(inp), ChunkWriter(dev, TargetKind.plain()), on_record=on_record
            ),
            daemon=True,
        )
        done.start()
        assert got_three.wait(20), applied  # applied although the stream has not gone on
        out.write(data[starts[2] :])
        out.close()
        done.join(20)
    assert len(applied) == 12
