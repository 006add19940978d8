"""lvpatch --check, --list, --json and --to-file, as an operator runs them (no root, no LVM)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import xxhash

from lvdiff.imagefile import XATTR

from .. import builders

M = 1 << 20
SIZE = 4 * M
LVPATCH = [
    sys.executable,
    "-c",
    "import sys; from lvdiff.cli import lvpatch_main; sys.exit(lvpatch_main())",
]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def stream_between(base: bytes | None, new: bytes, base_id: str, new_id: str, level: int = 2):
    """A stream that turns ``base`` into ``new`` (a full one when base is None)."""
    return builders.stream_between(base, new, base_id, new_id, level, meta=[("Author", "BigVan")])


def volumes(seed: int) -> list[bytes]:
    """Three versions of a volume: a little changes each time, some of it to zeros."""
    rnd = random.Random(seed)
    v0 = bytearray(SIZE)
    v0[: 2 * M] = rnd.randbytes(2 * M)
    v1 = bytearray(v0)
    v1[M : M + 65536] = rnd.randbytes(65536)
    v1[3 * M : 3 * M + 65536] = rnd.randbytes(65536)
    v2 = bytearray(v1)
    v2[0:65536] = bytes(65536)
    v2[2 * M - 65536 : 2 * M] = rnd.randbytes(65536)
    return [bytes(v0), bytes(v1), bytes(v2)]


@pytest.fixture
def open_dir():
    """A directory any user can write (pytest's own are root's only)."""
    d = Path(tempfile.mkdtemp(prefix="lvdiff-op-"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d)


def lvpatch(*args, stdin: bytes | None = None, user: bool = False) -> subprocess.CompletedProcess:
    argv = [*(NOBODY if user else []), *LVPATCH, *map(str, args)]
    return subprocess.run(argv, input=stdin, capture_output=True, check=False)


def test_check_and_dump_read_a_stream_without_applying_it(open_dir):
    tmp_path = open_dir
    v = volumes(1)
    data = stream_between(v[0], v[1], "id-0", "id-1")
    f = tmp_path / "s.lvd"
    f.write_bytes(data)
    f.chmod(0o644)
    res = lvpatch("--check", "-i", f, user=bool(shutil.which("setpriv")))
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode()
    assert "incremental stream of src/n from src/b" in out and "Author: BigVan" in out
    assert "NEW identity id-1" in out and "BASE identity id-0" in out
    sha = hashlib.sha256(data).hexdigest()
    assert f"SHA256 ({f}) = {sha}" in out  # sha256sum --tag, by default
    res = lvpatch("--check", "--digest", "xxh128", "-i", f)
    assert f"XXH128 ({f}) = {xxhash.xxh3_128(data).hexdigest()}" in res.stdout.decode()
    res = lvpatch("--check", "--digest", "none", "-i", f)
    assert res.returncode == 0 and " = " not in res.stdout.decode()
    res = lvpatch("--dump", stdin=data)
    lines = [ln for ln in res.stdout.decode().splitlines() if ln.startswith(("DATA", "ZERO"))]
    assert res.returncode == 0 and len(lines) == 2 and "stored      65536" in lines[0]
    res = lvpatch("--check", "--json", stdin=data)
    obj = json.loads(res.stdout)
    assert obj["version"] == 2 and obj["action"] == "check" and obj["complete"] is True
    assert obj["stream_digest"] == f"sha256:{sha}"
    assert obj["new"]["identity"] == "id-1" and obj["records"] == {"data": 2, "zero": 0}
    res = lvpatch("--check", stdin=data[:-10])  # cut
    err = res.stderr.decode().strip()
    assert res.returncode == 3 and len(err.splitlines()) == 1 and "truncated" in err


def test_a_chain_restored_into_image_files(open_dir):
    tmp_path = open_dir
    v = volumes(2)
    s0 = stream_between(None, v[0], "", "id-0")
    s1 = stream_between(v[0], v[1], "id-0", "id-1", level=3)
    s2 = stream_between(v[1], v[2], "id-1", "id-2", level=0)
    user = bool(shutil.which("setpriv"))
    imgs = [tmp_path / f"v{i}.img" for i in range(3)]
    res = lvpatch("--to-file", imgs[0], stdin=s0, user=user)  # no root needed
    assert res.returncode == 0, res.stderr.decode()
    res = lvpatch("--to-file", imgs[1], "--from-file", imgs[0], "--json", stdin=s1, user=user)
    assert res.returncode == 0, res.stderr.decode()
    summary = json.loads(res.stdout)
    assert summary["verified_level"] == 3 and "identity matches" in summary["base_check"]
    # one step ahead: refused by identity, before anything is written
    res = lvpatch("--to-file", tmp_path / "x.img", "--from-file", imgs[0], stdin=s2, user=user)
    assert res.returncode == 4 and "not this stream's base" in res.stderr.decode()
    res = lvpatch("--to-file", imgs[2], "--from-file", imgs[1], stdin=s2, user=user)
    assert res.returncode == 0 and "NOT verified" in res.stderr.decode()
    for img, want in zip(imgs, v, strict=True):
        assert img.read_bytes() == want
        assert os.getxattr(img, XATTR) in (b"id-0", b"id-1", b"id-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0.img", "v1.img", "v2.img"]


def test_a_damaged_stream_leaves_no_image_and_the_base_as_it_was(tmp_path):
    v = volumes(3)
    base = tmp_path / "b.img"
    base.write_bytes(v[0])
    os.setxattr(base, XATTR, b"id-0")
    good = stream_between(v[0], v[1], "id-0", "id-1")
    bad = bytearray(good)
    bad[len(good) // 2] ^= 1
    for data, code in ((bytes(bad), 3), (good[: len(good) - 50], 3)):
        res = lvpatch("--to-file", tmp_path / "n.img", "--from-file", base, stdin=data)
        assert res.returncode == code, res.stderr.decode()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b.img"]  # no image, no temp
    assert base.read_bytes() == v[0]
    res = lvpatch("--to-file", tmp_path / "n.img", stdin=good)
    assert res.returncode == 2 and "incremental" in res.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        ["--check", "-g", "vg"],
        ["--to-file", "x.img", "-l", "base"],
        ["--from-file", "x.img", "-g", "vg", "-l", "b"],
    ],
)
def test_file_modes_refuse_lvm_arguments(args, tmp_path):
    res = lvpatch(*args, stdin=b"")
    assert res.returncode == 2 and len(res.stderr.decode().strip().splitlines()) == 1
