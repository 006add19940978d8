"""lvdiff | lvpatch end to end on real dm-thin.

The chain runs thin_delta of both thin-provisioning-tools generations on the
same volumes and requires the same stream from each; everything else here is
about what lvpatch does with a stream, so it runs once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import tempfile

import pytest

from lvdiff.stream import StreamReader

from .lvmrig import IMAGES, committed, discard, lv_attr, lv_names, sh, sha256_of, tool, write_at

K = 1024
M = 1024 * K


def test_seed_example_mounted_volume(loop_vg):
    """The seed README's example, with its typos fixed: vol0 mounted and in use."""
    vg0 = loop_vg()
    vg0.pool("pool0", size_mb=200)
    vol0 = vg0.thin("vol0", 64, pool="pool0")
    vg0.snapshot("vol0", "sp0", activate=False)  # the (empty) base
    sh("mkfs.ext4", "-q", vol0)
    mnt = tempfile.mkdtemp(dir=IMAGES)
    sh("mount", vol0, mnt)
    try:
        with open(os.path.join(mnt, "hello"), "w") as f:
            f.write("hello world\n")
        os.sync()
        diff_file = IMAGES / "test.diff"
        res = tool(
            "lvdiff",
            "-g",
            vg0.name,
            "--pair",
            "Author:BigVan (alpc_metic@live.com)",
            "--pair",
            "Message: hello world",
            "--meta",
            "url:http://x:8080/y",
            "sp0",
            "vol0",
            stdout_file=diff_file,  # `> test.diff`, in the folder it is typed in
            cwd=IMAGES,
        )
        assert res.returncode == 0, res.stderr.decode()
    finally:
        sh("umount", mnt)
    stderr = res.stderr.decode()
    data = diff_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    # the line sha256sum --tag prints for test.diff, which sha256sum -c accepts
    line = f"SHA256 (test.diff) = {digest}"
    assert re.search(rf"^{re.escape(line)}$", stderr, re.M), stderr
    assert sh("sha256sum", diff_file).split()[0] == digest
    check = subprocess.run(["sha256sum", "-c"], input=line + "\n", cwd=IMAGES, text=True)
    assert check.returncode == 0
    diff_file.unlink()  # the scratch area is shared with later tests
    # temporary snapshot gone, metadata snapshot released, sp0 back to inactive
    assert lv_names(vg0.name) == {"pool0", "vol0", "sp0"}
    assert vg0.held_metadata_root("pool0") == "-"

    vg1 = loop_vg()
    vg1.pool("pool0", size_mb=200)
    sp0 = vg1.thin("sp0", 64, pool="pool0")
    before = sha256_of(sp0)
    res = tool("lvpatch", "-g", vg1.name, "-l", "sp0", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    out = res.stderr.decode()
    assert "Author: BigVan (alpc_metic@live.com)" in out
    assert "url: http://x:8080/y" in out  # split at the first colon only
    assert sha256_of(sp0) == before  # BASE untouched
    assert committed(vg1.name, "vol0")  # no incomplete tag; the identity of what it holds
    mnt = tempfile.mkdtemp(dir=IMAGES)
    # as a user types it: the restored volume is read-only, so mount falls back to a
    # read-only mount; its journal is clean (LVM freezes the filesystem for a snapshot)
    assert lv_attr(vg1.name, "vol0")[1] == "r"
    sh("mount", vg1.dev("vol0"), mnt)
    try:
        with open(os.path.join(mnt, "hello")) as f:
            assert f.read() == "hello world\n"
    finally:
        sh("umount", mnt)


def scribble(rnd: random.Random, dev: str, size: int, n: int) -> None:
    """Writes of random length at random, mostly unaligned, offsets."""
    for _ in range(n):
        off = rnd.randrange(0, size // 512) * 512
        length = min(rnd.randrange(1, 300) * 512, size - off)
        write_at(dev, off, rnd.randbytes(length))


def records(path) -> list[tuple[int, int, int, bytes | None]]:
    """What a stream says about the volume, without its header (seeds, times differ)."""
    with open(path, "rb") as f:
        return [(r.type, r.offset, r.length, r.data) for r in StreamReader(f)]


def test_full_then_incremental_chain_bit_exact(loop_vg):
    """Full + 3 incrementals onto a pool with 4x the chunk size, no zeroing, stale free chunks.

    Each step uses another detect level, 0 to 3.  Each stream is made with
    thin_delta 0.9 and 1.1, which must yield the same records; the steps
    apply the two generations' streams in turn.
    """
    rnd = random.Random(42)
    size = 24 * M
    src = loop_vg(prefix="src")
    src.pool(size_mb=160, chunk_kb=64)
    vol = src.thin("vol", 24)
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=160, chunk_kb=256, zero=False)
    junk = dst.thin("junk", 100)  # fill the target pool with stale data, then free it
    write_at(junk, 0, rnd.randbytes(100 * M))
    sh("lvremove", "-q", "-f", f"{dst.name}/junk")

    scribble(rnd, vol, size, 40)
    prev = None
    for step, level in enumerate((0, 1, 2, 3)):
        if step:
            scribble(rnd, vol, size, 15)  # overwrites and writes to never-mapped regions
            for _ in range(3):  # discards, whole 64 KiB source chunks
                discard(vol, rnd.randrange(size // (64 * K)) * 64 * K, 64 * K * rnd.randrange(1, 4))
            write_at(vol, 20 * M + 4096, rnd.randbytes(8192))
        snap = f"s{step}"
        src.snapshot("vol", snap)
        args = ["-d", level, *(f"{src.name}/{v}" for v in (prev, snap) if v)]
        dry = None
        if step in (1, 3):  # the dry run says exactly what the real run then reads and sends
            res = tool("lvdiff", "-n", "--json", *args)
            assert res.returncode == 0, res.stderr.decode()
            dry = json.loads(res.stdout)
            assert dry["dry_run"] is True and dry["stream_digest"] is None
        streams = {}
        for generation in ("0.9", "1.1"):
            streams[generation] = IMAGES / f"{snap}-{generation}.lvd"
            summary = IMAGES / f"{snap}-{generation}.json"
            res = tool(
                "lvdiff",
                f"--json={summary}",
                *args,
                generation=generation,
                stdout_file=streams[generation],
            )
            assert res.returncode == 0, res.stderr.decode()
            sent = json.loads(summary.read_text())
            assert sent["bytes"]["data"] + sent["bytes"]["zero"] == (
                sent["bytes_to_read"] + sent["bytes_as_zero"]
            )
            if dry is not None:
                assert sent["bytes_to_read"] == dry["bytes_to_read"]
                assert sent["bytes_as_zero"] == dry["bytes_as_zero"]
        assert records(streams["0.9"]) == records(streams["1.1"]), f"step {step}"
        applied = streams[("0.9", "1.1")[step % 2]]
        where = ["-p", "pool"] if prev is None else ["-l", prev]
        res = tool("lvpatch", "-g", dst.name, *where, stdin_file=applied)
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(dst.dev(snap)) == sha256_of(src.dev(snap)), f"step {step}"
        # the same chain restored into image files, with no thin pool, is the same
        image = IMAGES / f"{snap}.img"
        from_file = ["--from-file", IMAGES / f"{prev}.img"] if prev else []
        res = tool("lvpatch", "--to-file", image, *from_file, stdin_file=applied)
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(str(image)) == sha256_of(dst.dev(snap)), f"step {step}, image"
        for stream in streams.values():
            stream.unlink()
        if prev:
            (IMAGES / f"{prev}.img").unlink()
        prev = snap
    assert dst.held_metadata_root() == "-" and src.held_metadata_root() == "-"


@pytest.fixture
def pair(loop_vg):
    """A source base/new pair, their incremental stream, and a target equal to base."""
    rnd = random.Random(7)
    src = loop_vg(prefix="src")
    src.pool(size_mb=100)
    vol = src.thin("vol", 16)
    write_at(vol, 0, rnd.randbytes(4 * M))
    src.snapshot("vol", "base")
    write_at(vol, 0, rnd.randbytes(64 * K))  # NEW rewrites the head chunk fully
    write_at(vol, 6 * M, rnd.randbytes(3 * M))
    src.snapshot("vol", "new")
    stream = IMAGES / f"pair-{src.name}.lvd"
    res = tool(
        "lvdiff",
        "-d",
        "2",
        "--meta",
        "k:v",
        f"{src.name}/base",
        f"{src.name}/new",
        stdout_file=stream,
    )
    assert res.returncode == 0, res.stderr.decode()
    full = IMAGES / f"full-{src.name}.lvd"
    res = tool("lvdiff", f"{src.name}/base", stdout_file=full)
    assert res.returncode == 0, res.stderr.decode()
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=100)
    # writable: the wrong-base test damages it on purpose
    res = tool("lvpatch", "-g", dst.name, "-p", "pool", "base", "--writable", stdin_file=full)
    assert res.returncode == 0, res.stderr.decode()
    yield src, dst, stream
    stream.unlink()
    full.unlink()


def lvpatch_fails(dst, data: bytes, code: int, *extra: str) -> str:
    base_sum = sha256_of(dst.dev("base"))
    res = tool("lvpatch", "-g", dst.name, "-l", "base", *extra, stdin=data)
    err = res.stderr.decode()
    assert res.returncode == code, err
    assert lv_names(dst.name) == {"pool", "base"}, err  # nothing left behind
    assert sha256_of(dst.dev("base")) == base_sum
    assert len(err.strip().splitlines()[-1]) < 300
    return err


def test_damaged_streams_refused_with_nothing_left(pair):
    src, dst, stream = pair
    data = stream.read_bytes()
    for cut in (len(data) // 2, len(data) - 1):  # every cut: test_damaged_streams.py
        lvpatch_fails(dst, data[:cut], 3)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    lvpatch_fails(dst, bytes(flipped), 3)
    # and the intact stream still applies
    res = tool("lvpatch", "-g", dst.name, "-l", "base", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert sha256_of(dst.dev("new")) == sha256_of(src.dev("new"))


def test_wrong_base_refused_unless_no_base_check(pair):
    src, dst, stream = pair
    data = stream.read_bytes()
    write_at(dst.dev("base"), 100, b"not the base")  # inside the head chunk NEW rewrites
    err = lvpatch_fails(dst, data, 4)
    assert "not the base" in err
    res = tool("lvpatch", "-g", dst.name, "-l", "base", "--no-base-check", "restored", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert sha256_of(dst.dev("restored")) == sha256_of(src.dev("new"))
    res = tool("lvpatch", "-g", dst.name, "-l", "base", "restored", stdin=data)
    assert res.returncode == 2 and "already exists" in res.stderr.decode()
