"""Lineage identities on real LVM: a stream applied onto the wrong snapshot is refused every time.

The common mistake in a chain of incrementals is applying a stream one step
behind or ahead.  With content sampling alone that was caught by luck; with
identities it is refused before anything is written, whatever the level.
"""

from __future__ import annotations

import os
import random

from .lvmrig import (
    IMAGES,
    lv_attr,
    lv_names,
    lv_tags,
    lv_uuid,
    sh,
    sha256_of,
    tool,
    write_at,
)

M = 1 << 20


def test_wrong_snapshot_refused_by_identity_and_restores_are_read_only(loop_vg):
    rnd = random.Random(21)
    src = loop_vg(prefix="src")
    src.pool(size_mb=100)
    vol = src.thin("vol", 16)
    write_at(vol, 0, rnd.randbytes(8 * M))
    for i, snap in enumerate(("s0", "s1", "s2")):
        if i:  # a little changes each day: what sampling alone could miss
            write_at(vol, rnd.randrange(16) * M, rnd.randbytes(64 * 1024))
        src.snapshot("vol", snap, activate=False)
    streams = {}
    for base, new in ((None, "s0"), ("s0", "s1"), ("s1", "s2")):
        streams[new] = IMAGES / f"lineage-{new}.lvd"
        vols = [f"{src.name}/{v}" for v in (base, new) if v]
        res = tool("lvdiff", "-d", "0", *vols, stdout_file=streams[new])
        assert res.returncode == 0, res.stderr.decode()

    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=100)
    res = tool("lvpatch", "-g", dst.name, "-p", "pool", stdin_file=streams["s0"])
    assert res.returncode == 0, res.stderr.decode()
    # the restored volume is read-only and says which snapshot it holds
    assert lv_attr(dst.name, "s0")[1] == "r"
    assert lv_tags(dst.name, "s0") == f"lvdiff_identity:{lv_uuid(src.name, 's0')}"
    assert "NOT verified" in res.stderr.decode()  # -d 0: nothing was checked, and it says so

    # one step ahead: s1 -> s2 onto the copy of s0, at -d 0, is refused before writing
    before = sha256_of(dst.dev("s0"))
    res = tool("lvpatch", "-g", dst.name, "-l", "s0", stdin_file=streams["s2"])
    err = res.stderr.decode()
    assert res.returncode == 4 and "not this stream's base" in err, err
    assert lv_names(dst.name) == {"pool", "s0"} and sha256_of(dst.dev("s0")) == before

    # in order it applies; --writable leaves the result writable
    res = tool("lvpatch", "-g", dst.name, "-l", "s0", stdin_file=streams["s1"])
    assert res.returncode == 0 and lv_attr(dst.name, "s1")[1] == "r", res.stderr.decode()
    res = tool(
        "lvpatch", "-g", dst.name, "-l", f"{dst.name}/s1", "--writable", stdin_file=streams["s2"]
    )
    assert res.returncode == 0, res.stderr.decode()
    assert lv_attr(dst.name, "s2")[1] == "w"
    for snap in ("s0", "s1", "s2"):
        sh("lvchange", "-q", "-ay", "-K", f"{src.name}/{snap}")
        assert sha256_of(dst.dev(snap)) == sha256_of(src.dev(snap)), snap

    # --no-base-check overrides the identity too, and says so
    res = tool(
        "lvpatch", "-g", dst.name, "-l", "s0", "--no-base-check", "forced", stdin_file=streams["s2"]
    )
    err = res.stderr.decode()
    assert res.returncode == 0 and "base check skipped" in err, err
    assert "lvdiff_identity:" in lv_tags(dst.name, "forced")

    # a base that is open and writable can change under lvpatch: refused
    s3 = IMAGES / "lineage-s3.lvd"
    src.snapshot("vol", "s3", activate=False)
    res = tool("lvdiff", f"{src.name}/s2", f"{src.name}/s3", stdout_file=s3)
    assert res.returncode == 0, res.stderr.decode()
    fd = os.open(dst.dev("s2"), os.O_RDONLY)
    try:
        res = tool("lvpatch", "-g", dst.name, "-l", "s2", stdin_file=s3)
    finally:
        os.close(fd)
    err = res.stderr.decode()
    assert res.returncode == 2 and "in use" in err, err
    assert "s3" not in lv_names(dst.name)


def test_in_place_full_stream_leaves_nothing_of_the_old_content(loop_vg):
    """A full stream written --in-place over a volume full of other data is exact."""
    rnd = random.Random(22)
    src = loop_vg(prefix="src")
    src.pool(size_mb=64)
    vol = src.thin("vol", 16)
    write_at(vol, 3 * M, rnd.randbytes(2 * M))  # most of NEW is unmapped
    src.snapshot("vol", "new", activate=False)
    stream = IMAGES / "inplace.lvd"
    res = tool("lvdiff", "-d", "2", f"{src.name}/new", stdout_file=stream)
    assert res.returncode == 0, res.stderr.decode()

    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=64)
    thin = dst.thin("thin", 16)
    write_at(thin, 0, rnd.randbytes(16 * M))
    sh("lvcreate", "-q", "-L", "16m", "-n", "plain", dst.name)
    write_at(dst.dev("plain"), 0, rnd.randbytes(16 * M))
    sh("lvchange", "-q", "-ay", "-K", f"{src.name}/new")
    for target in ("thin", "plain"):
        res = tool("lvpatch", "-g", dst.name, "-l", target, "--in-place", stdin_file=stream)
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(dst.dev(target)) == sha256_of(src.dev("new")), target
    assert f"lvdiff_identity:{lv_uuid(src.name, 'new')}" in lv_tags(dst.name, "thin")
