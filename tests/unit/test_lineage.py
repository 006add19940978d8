"""Which identity a volume gets, and which targets a stream's BASE identity refuses."""

from __future__ import annotations

import pytest

from lvdiff import lineage
from lvdiff.errors import BaseMismatch
from lvdiff.lvm import LV
from lvdiff.stream import Header, VolumeRef

from ..builders import make_header


def lv(name: str, attr: str = "Vwi---tz-k", tags: tuple[str, ...] = ()) -> LV:
    return LV(
        "vg", name, f"uuid-{name}", attr, 1 << 20, "thin", "pool", 1, list(tags), 0, "", True, None
    )


def test_source_identity():
    snap = lv("s1")  # an inactive, writable snapshot: its UUID
    assert lineage.source_identity(snap) == "uuid-s1"
    active = lv("s1", "Vwi-a-tz--")  # active but nobody has it open: still its UUID
    assert lineage.source_identity(active, lv("tmp")) == "uuid-s1"
    mounted = lv("vol", "Vwi-aotz--")  # in use: the point in time lives only in the temp snapshot
    assert lineage.source_identity(mounted, lv("tmp")) == "uuid-tmp"
    restored = lv("r", "Vri---tz--", ("lvdiff_identity:origin-id",))  # read-only restore
    assert lineage.source_identity(restored) == "origin-id"
    made_writable = lv("r", "Vwi---tz--", ("lvdiff_identity:origin-id",))
    assert lineage.source_identity(made_writable) == "uuid-r"


def header(base_identity: str | None) -> Header:
    return make_header(
        kind="incremental",
        base_size=1 << 20,
        base=VolumeRef("s1", "u1", 1, base_identity),
        new=VolumeRef("s2", "u2", 2, "id-2"),
    )


def check(h: Header, base: LV, notes: list | None = None) -> lineage.BaseCheck:
    """The identity half of the base check, as lvpatch makes it on a volume before writing."""
    report = notes.append if notes is not None else lineage.ignore
    recorded = lineage.recorded_identity(base)
    return lineage.check_base(h, base.full_name, recorded, not base.writable, report=report)


def test_check_base():
    none = lineage.BaseCheck(lineage.Identity.NONE)
    assert check(header("id-1"), lv("b")) == none  # no identity: content decides
    ro = ("Vri---tz--", ("lvdiff_identity:id-1",))
    assert check(header("id-1"), lv("b", *ro)).identity is lineage.Identity.MATCHES
    with pytest.raises(BaseMismatch, match="not this stream's base"):
        check(header("id-0"), lv("b", *ro))
    notes: list = []
    got = check(header("id-1"), lv("b", "Vwi---tz--", ro[1]), notes)
    assert got.identity is lineage.Identity.UNPROVEN and "writable" in notes[0].text
    assert check(header(None), lv("b", *ro)) == none  # a 1.x stream


def test_one_wording_for_what_was_checked():
    from lvdiff.lineage import BaseCheck, Identity

    assert str(BaseCheck(Identity.MATCHES, 2)) == "identity matches, content matches at level 2"
    assert str(BaseCheck(Identity.MATCHES)) == (
        "identity matches, content not checked (stream made with -d 0)"
    )
    assert str(BaseCheck(Identity.NONE, 3)) == "content matches at level 3"
    assert str(BaseCheck(Identity.UNPROVEN, 2)) == "content matches at level 2"
    assert str(BaseCheck(Identity.NONE)) == "not checked (stream made with -d 0)"
    assert str(BaseCheck(Identity.SKIPPED)) == "not checked (--no-base-check)"
