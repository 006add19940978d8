"""Faults on the target side, with streams made by the library (no thin_delta involved)."""

from __future__ import annotations

import io
import os
import tempfile

from lvdiff.stream import StreamWriter, VolumeRef, encode_data

from ..builders import make_header
from .lvmrig import IMAGES, lv_names, sh, tool

M = 1 << 20


def full_stream(size: int, data_bytes: int, name: str = "vol") -> bytes:
    """A full stream whose first ``data_bytes`` are random."""
    out = io.BytesIO()
    h = make_header(volume_size=size, new=VolumeRef(name, "x", 1, "x"), compression="none")
    w = StreamWriter(out, h)
    for off in range(0, data_bytes, 4 * M):
        w.write_record(encode_data(off, os.urandom(4 * M), None))
    w.close()
    return out.getvalue()


def test_target_pool_full_is_a_clean_failure(loop_vg):
    dst = loop_vg(size_mb=200)
    dst.pool(size_mb=32)
    sh("lvchange", "--errorwhenfull", "y", f"{dst.name}/pool")  # fail writes, don't queue
    res = tool("lvpatch", "-g", dst.name, "-p", "pool", stdin=full_stream(64 * M, 48 * M))
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert f"thin pool {dst.name}/pool is full" in err
    assert lv_names(dst.name) == {"pool"}  # nothing half-written left
    # the pool is usable again: the space the failed restore took came back
    res = tool("lvpatch", "-g", dst.name, "-p", "pool", stdin=full_stream(64 * M, 16 * M))
    assert res.returncode == 0, res.stderr.decode()


def test_in_place_refuses_mounted_and_smaller_targets(loop_vg):
    dst = loop_vg()
    dst.pool(size_mb=100)
    small = dst.thin("small", 8)
    stream = full_stream(16 * M, 4 * M)
    res = tool("lvpatch", "-g", dst.name, "-l", "small", "--in-place", stdin=stream)
    assert res.returncode == 2 and "needs" in res.stderr.decode(), res.stderr.decode()
    big = dst.thin("big", 16)
    sh("mkfs.ext4", "-q", big)
    mnt = tempfile.mkdtemp(dir=IMAGES)
    sh("mount", big, mnt)
    try:
        res = tool("lvpatch", "-g", dst.name, "-l", "big", "--in-place", stdin=stream)
        assert res.returncode != 0 and "in use" in res.stderr.decode(), res.stderr.decode()
    finally:
        sh("umount", mnt)
    assert small and lv_names(dst.name) == {"pool", "small", "big"}
