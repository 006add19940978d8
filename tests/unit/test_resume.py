"""Resume tokens and resumed streams (resume_offset)."""

from __future__ import annotations

import io

import pytest

from lvdiff.dump import skip_before
from lvdiff.errors import CorruptStream, UsageError
from lvdiff.plan import DATA, ZERO, Extent
from lvdiff.resume import ResumeToken
from lvdiff.stream import Header, StreamReader, StreamWriter, VolumeRef, encode_data, encode_zero

from ..builders import make_header

NEW_ID = "k3Ws2d-aB0c-Zz9y-1111-2222-3333-444444"


def test_token_round_trip_and_tag():
    for t in (ResumeToken(1 << 30, NEW_ID, None), ResumeToken(512, NEW_ID, "Base-id.1")):
        assert ResumeToken.parse(str(t)) == t == ResumeToken.from_tags(["x", t.tag])
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.-/=!:&#")
        assert set(t.tag) <= allowed  # a valid LVM tag


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1:2:3:" + "a" * 32,  # the 0.1 form
        f"x:{NEW_ID}:-",
        f"100:{NEW_ID}:-",  # not a multiple of 512
        f"{1 << 63}:{NEW_ID}:-",  # past any volume
        f"{'9' * 25}:{NEW_ID}:-",
        f"512:{NEW_ID}",
        "512:-:-",
        f"512:{NEW_ID}:a b",
        f"512:{'x' * 65}:-",
    ],
)
def test_bad_tokens(bad):
    with pytest.raises(UsageError):
        ResumeToken.parse(bad)


def test_skip_before_cuts_straddling_extents():
    ext = [Extent(DATA, 0, 100), Extent(ZERO, 100, 100), Extent(DATA, 300, 50)]
    assert list(skip_before(ext, 150)) == [Extent(ZERO, 150, 50), Extent(DATA, 300, 50)]


def header(**kw) -> Header:
    return make_header(new=VolumeRef("v", "u", 1, NEW_ID), compression="none", **kw)


def test_resume_offset_round_trips_and_bounds_records():
    out = io.BytesIO()
    w = StreamWriter(out, header(resume_offset=8192))
    w.write_record(encode_zero(8192, 512))
    w.write_record(encode_data(16384, b"x" * 512, None))
    w.close()
    r = StreamReader(io.BytesIO(out.getvalue()))
    assert r.header.resume_offset == 8192
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
    assert b"resume_offset" not in raw  # absent unless set
    assert StreamReader(io.BytesIO(raw)).header.resume_offset is None
    with pytest.raises(CorruptStream):
        header(resume_offset=(1 << 20) + 512).validate()
