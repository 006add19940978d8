"""Volumes that shrink and grow, targets larger than the base, a device that ends inside a chunk.

dm-thin keeps the mappings past the end of a reduced volume, so growing it
again brings old data back; a discard of the device's last chunk does nothing
when the device ends inside it.  Every step must still end bit-exact.
"""

from __future__ import annotations

import random

from .lvmrig import IMAGES, discard, resize, sh, sha256_of, tool, write_at

M = 1 << 20


def test_shrink_grow_and_a_partial_last_chunk_stay_bit_exact(loop_vg):
    rnd = random.Random(31)
    src = loop_vg(prefix="src")
    src.pool(size_mb=64, chunk_kb=64)
    vol = src.thin("vol", 10)
    write_at(vol, 0, rnd.randbytes(10 * M))
    src.snapshot("vol", "s0", activate=False)
    discard(vol, 6 * M, 4 * M)  # the filesystem trims what it no longer uses...
    resize(src.name, "vol", 6)  # ...and the volume shrinks: NEW smaller than BASE
    src.snapshot("vol", "s1", activate=False)
    resize(src.name, "vol", 10)  # grows again: [6, 8) MiB unmapped but 64 KiB
    write_at(vol, 7 * M, rnd.randbytes(64 * 1024))
    write_at(vol, 8 * M, rnd.randbytes(2 * M))
    src.snapshot("vol", "s2", activate=False)
    discard(vol, 8 * M, 2 * M)  # the volume's end is trimmed: ZERO [8, 10) MiB, to its end
    src.snapshot("vol", "s3", activate=False)

    # The target pool's 4 MiB chunks do not divide the 10 MiB volume: its last chunk is
    # partial, and the pool does not zero new chunks, so stale data shows if mishandled.
    dst = loop_vg(prefix="dst", size_mb=200)
    dst.pool(size_mb=96, chunk_kb=4096, zero=False)
    junk = dst.thin("junk", 80)
    write_at(junk, 0, rnd.randbytes(80 * M))
    sh("lvremove", "-q", "-f", f"{dst.name}/junk")

    prev = None
    for snap in ("s0", "s1", "s2", "s3"):
        stream = IMAGES / f"sizes-{snap}.lvd"
        vols = [f"{src.name}/{v}" for v in (prev, snap) if v]
        res = tool("lvdiff", "-d", "3", *vols, stdout_file=stream)
        assert res.returncode == 0, res.stderr.decode()
        where = ["-l", prev] if prev else ["-p", "pool"]
        res = tool("lvpatch", "-g", dst.name, *where, stdin_file=stream)
        assert res.returncode == 0, f"{snap}: {res.stderr.decode()}"
        if snap == "s3":
            assert "2097152 zeroed" in res.stderr.decode()  # the ZERO range to the end
        sh("lvchange", "-q", "-ay", "-K", f"{src.name}/{snap}")
        assert sha256_of(dst.dev(snap)) == sha256_of(src.dev(snap)), snap
        prev = snap

    # a -l target larger than the stream's base: its surplus is not part of NEW
    stream = IMAGES / "sizes-s2.lvd"
    res = tool("lvdiff", "-d", "3", f"{src.name}/s1", f"{src.name}/s2", stdout_file=stream)
    assert res.returncode == 0, res.stderr.decode()
    sh("lvcreate", "-q", "-s", "-k", "n", "-p", "rw", "-n", "bigger", f"{dst.name}/s1")
    resize(dst.name, "bigger", 12)
    write_at(dst.dev("bigger"), 6 * M, rnd.randbytes(6 * M))
    res = tool("lvpatch", "-g", dst.name, "-l", "bigger", "s2b", stdin_file=stream)
    assert res.returncode == 0, res.stderr.decode()
    assert sha256_of(dst.dev("s2b")) == sha256_of(src.dev("s2"))
