"""thin_delta output of both tool generations, parsed as a stream."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from lvdiff.errors import UsageError
from lvdiff.thindelta import Delta, DeltaParseError, DeltaRange, DeltaStream, parse_version

DATA = Path(__file__).parent / "data"
RECORDED = [  # real output of the rig test's layout, both generations
    (Delta.SAME, 0, 1),
    (Delta.DIFFERENT, 1, 2),
    (Delta.RIGHT_ONLY, 3, 1),
    (Delta.LEFT_ONLY, 100, 2),
]


def parse(raw: bytes, piece: int = 7) -> tuple[DeltaStream, list[DeltaRange]]:
    d = DeltaStream(raw[i : i + piece] for i in range(0, len(raw), piece))
    return d, list(d.ranges())


@pytest.mark.parametrize(
    "name", ["thin_delta-0.9.0.xml", "thin_delta-0.9.0-verbose.xml", "thin_delta-1.1.0.xml"]
)
def test_recorded_outputs(name):
    d, ranges = parse((DATA / name).read_bytes())
    assert d.superblock is not None
    assert d.superblock.chunk_bytes == 64 * 1024
    assert (d.superblock.left, d.superblock.right, d.superblock.transaction) == (1, 2, 2)
    assert [(r.kind, r.begin, r.length) for r in ranges] == RECORDED


def test_attributes_in_any_order_and_flags():
    d, ranges = parse((DATA / "thin_delta-reordered-attrs.xml").read_bytes(), piece=3)
    assert d.superblock.data_block_size == 256 and d.superblock.left == 8
    assert [(r.kind, r.begin, r.length) for r in ranges] == [
        (Delta.LEFT_ONLY, 0, 5),
        (Delta.SAME, 5, 3),
    ]


def test_memory_stays_flat_on_many_ranges():
    n = 200_000
    body = "".join(f'<different begin="{2 * i}" length="1"/>' for i in range(n))
    raw = (
        f'<superblock data_block_size="128"><diff left="1" right="2">{body}</diff>'
        f"</superblock>".encode()
    )
    tracemalloc.start()
    try:
        d = DeltaStream(raw[i : i + 65536] for i in range(0, len(raw), 65536))
        count, last = 0, -2
        for r in d.ranges():
            assert r.begin == last + 2
            count, last = count + 1, r.begin
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 4 << 20, peak  # the ranges of one 64 KiB read at a time, never all of them


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"<superblock>",
        b'<superblock data_block_size="128"><diff left="1"></diff></superblock>',
        b'<superblock data_block_size="x"><diff left="1" right="2"/></superblock>',
    ],
)
def test_bad_headers(raw):
    with pytest.raises(DeltaParseError):
        parse(raw)


def test_out_of_order_and_broken_xml():
    raw = (
        b'<superblock data_block_size="128"><diff left="1" right="2">'
        b'<same begin="5" length="2"/><different begin="6" length="1"/></diff></superblock>'
    )
    with pytest.raises(DeltaParseError, match="out of order"):
        parse(raw)
    with pytest.raises(DeltaParseError, match="not valid XML"):
        parse(b'<superblock data_block_size="128"><diff left="1" right="2"><same begin=')


def test_versions():
    assert parse_version("0.9.0\n") == (0, 9, 0)
    assert parse_version("thin_delta 1.1.0") == (1, 1, 0)
    with pytest.raises(UsageError):
        parse_version("unknown")
