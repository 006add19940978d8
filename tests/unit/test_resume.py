"""Resume tokens and resumed streams (format 1.1's resume_offset)."""

from __future__ import annotations

import io

import pytest

from lvdiff.dump import skip_before
from lvdiff.errors import CorruptStream, UsageError
from lvdiff.plan import DATA, ZERO, Extent
from lvdiff.resume import ResumeToken
from lvdiff.stream import Header, StreamReader, StreamWriter, encode_data, encode_zero

FP = {
    "level": 2,
    "algorithm": "sha256-of-sha256",
    "unit": 4096,
    "size": 1 << 20,
    "sha256": "ab" * 32,
    "offsets": [0],
    "seed": 99,
}


def test_token_round_trip_and_tag():
    t = ResumeToken.for_stream(1 << 30, 2, FP)
    assert t == ResumeToken(1 << 30, 2, 99, "ab" * 16)
    assert ResumeToken.parse(str(t)) == t == ResumeToken.from_tags(["x", t.tag])
    assert set(t.tag) <= set("abcdefghijklmnopqrstuvwxyz0123456789_:")  # a valid LVM tag


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1:2:3",
        "1:0:3:" + "a" * 32,
        "x:2:3:" + "a" * 32,
        "1:2:3:" + "A" * 32,
        "1:2:3:" + "a" * 31,
    ],
)
def test_bad_tokens(bad):
    with pytest.raises(UsageError):
        ResumeToken.parse(bad)


def test_level_0_streams_cannot_be_resumed():
    with pytest.raises(UsageError, match="-d 0"):
        ResumeToken.for_stream(0, 0, None)


def test_skip_before_cuts_straddling_extents():
    ext = [Extent(DATA, 0, 100), Extent(ZERO, 100, 100), Extent(DATA, 300, 50)]
    assert list(skip_before(ext, 150)) == [Extent(ZERO, 150, 50), Extent(DATA, 300, 50)]


def header(**kw) -> Header:
    return Header(
        kind="full",
        volume_size=1 << 20,
        chunk_size=65536,
        vg="vg",
        pool="p",
        transaction_id=1,
        new={"name": "v", "uuid": "u", "thin_id": 1},
        compression="none",
        detect_level=2,
        new_fingerprint=FP,
        **kw,
    )


def test_resume_offset_round_trips_and_bounds_records():
    out = io.BytesIO()
    w = StreamWriter(out, header(resume_offset=8192))
    w.write_record(encode_zero(8192, 512))
    w.write_record(encode_data(16384, b"x" * 512, None))
    w.close()
    r = StreamReader(io.BytesIO(out.getvalue()))
    assert r.version == (1, 1) and r.header.resume_offset == 8192
    assert [rec.offset for rec in r] == [8192, 16384]
    # a record before the resume point is refused by the writer and the reader
    with pytest.raises(ValueError):
        StreamWriter(io.BytesIO(), header(resume_offset=8192)).write_record(encode_zero(0, 512))
    forged = io.BytesIO()
    w = StreamWriter(forged, header(resume_offset=8192))
    w._next_offset = 0  # a hostile writer
    w.write_record(encode_zero(0, 512))
    w.close()
    with pytest.raises(CorruptStream, match="precedes"):
        list(StreamReader(io.BytesIO(forged.getvalue())))
    plain = io.BytesIO()
    w = StreamWriter(plain, header())
    w.write_record(encode_zero(0, 512))
    w.close()
    raw = plain.getvalue()
    assert b"resume_offset" not in raw  # absent unless set: 1.0 readers are unaffected
    assert StreamReader(io.BytesIO(raw)).header.resume_offset is None
    with pytest.raises(CorruptStream):
        header(resume_offset=(1 << 20) + 512).validate()
