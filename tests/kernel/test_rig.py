"""Proof of the rig: real dm-thin, real LVM, and thin_delta of both generations.

Builds a pool, a volume and a snapshot, writes and discards at known chunks,
reserves a metadata snapshot and checks that `thin_delta -m` reports exactly
the ranges the test caused.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from .lvmrig import discard, sh, thin_tool, write_at

CHUNK = 64 * 1024


def chunks(n: int, fill: int | None = None) -> bytes:
    return os.urandom(n * CHUNK) if fill is None else bytes([fill]) * (n * CHUNK)


def test_thin_delta_reports_what_was_written_and_discarded(loop_vg, tools_generation):
    vg = loop_vg()
    vg.pool(chunk_kb=64)
    vol = vg.thin("vol", 16)
    write_at(vol, 0, chunks(4))  # chunks 0-3 mapped before the snapshot
    snap = vg.snapshot("vol", "snap")  # activation-skip flag: activated with -K
    assert "k" in sh("lvs", "--noheadings", "-o", "lv_attr", f"{vg.name}/snap").strip()[9:]

    write_at(vol, 1 * CHUNK, chunks(2))  # chunks 1-2 rewritten: different
    discard(vol, 3 * CHUNK, CHUNK)  # chunk 3 unmapped in vol: left_only
    write_at(vol, 10 * CHUNK, chunks(2))  # chunks 10-11 never mapped before: right_only
    with open(snap, "rb") as f:  # the snapshot still reads the old data
        assert f.read(CHUNK) != bytes(CHUNK)

    sh("dmsetup", "message", vg.tpool(), "0", "reserve_metadata_snap")
    try:
        assert vg.held_metadata_root() != "-"
        xml = sh(
            thin_tool(tools_generation, "thin_delta"),
            "-m",
            "--snap1",
            vg.thin_id("snap"),
            "--snap2",
            vg.thin_id("vol"),
            vg.tmeta(),
        )
    finally:
        sh("dmsetup", "message", vg.tpool(), "0", "release_metadata_snap")
    assert vg.held_metadata_root() == "-"

    root = ET.fromstring(xml)
    assert int(root.get("data_block_size")) * 512 == CHUNK
    diff = root.find("diff")
    assert diff is not None
    assert (int(diff.get("left")), int(diff.get("right"))) == (
        vg.thin_id("snap"),
        vg.thin_id("vol"),
    )
    got = [(e.tag, int(e.get("begin")), int(e.get("length"))) for e in diff]
    assert sorted(got, key=lambda r: r[1]) == [
        ("same", 0, 1),
        ("different", 1, 2),
        ("left_only", 3, 1),
        ("right_only", 10, 2),
    ]
