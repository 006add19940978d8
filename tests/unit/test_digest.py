"""The digest the tools print: SHA-256 of exactly the bytes written or read, checkable by sha256sum.

lvdiff's own command runs here with its LVM part stood in for by a plain file
read through the real pipeline (``dump.send`` into a ``StreamWriter``): what
these tests check is the command's output and the line it prints, which do
not depend on where the blocks came from.  The real-kernel seed example
checks the same line against a stream of real thin volumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from lvdiff.errors import DigestMismatch
from lvdiff.stream import Digest, HashingWriter, StreamDigest, StreamReader

from .test_operator import lvpatch, stream_between, volumes

# lvdiff's CLI with dump() reading a plain file (LVDIFF_TEST_SOURCE) instead of thin volumes
FAKE_LVM = r"""
import os, sys
import lvdiff.dump as d
from lvdiff.blockdev import BlockDevice
from lvdiff.plan import plan
from lvdiff.stream import Header, StreamWriter, VolumeRef
from lvdiff.thindelta import Delta, DeltaRange

def dump(new, base, out, pool=None, options=None, report=None):
    src = os.environ["LVDIFF_TEST_SOURCE"]
    with BlockDevice(src) as dev:
        h = Header(kind="full", volume_size=dev.size, chunk_size=65536, vg=new[0], pool="pool",
                   transaction_id=1, new=VolumeRef(new[1], "u", 1, "id-new"),
                   compression="zstd", detect_level=0)
        w = StreamWriter(out, h)
        ranges = [DeltaRange(Delta.RIGHT_ONLY, 0, dev.size // 65536)]
        d.send(plan(ranges, 65536, dev.size, None), dev, w, options)
        digest = w.close()
    return d.DumpResult(new[0], "pool", new[1], None, dev.size, 65536, 1, d.PlanTotals(), 0.1,
                        header=h, digest=digest, totals=w.totals)

d.dump = dump
from lvdiff.cli import lvdiff_main
sys.exit(lvdiff_main())
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lvdiff refuses to run but as root")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """12 MiB: random, zeros and repeated bytes, so records are raw, zero and compressed."""
    rnd = random.Random(7)
    src = tmp_path / "volume"
    src.write_bytes(rnd.randbytes(5 << 20) + bytes(3 << 20) + b"x" * (4 << 20))
    return src


def lvdiff(source: Path, cwd: Path, *args: str, stdout=subprocess.PIPE):  # noqa: ANN001, ANN201
    env = {**os.environ, "LVDIFF_TEST_SOURCE": str(source)}
    return subprocess.run(
        [sys.executable, "-c", FAKE_LVM, *args, "vg0/vol0"],
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        check=False,
    )


def tag_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode().splitlines() if " = " in ln]
    assert len(lines) == 1, stderr.decode()
    return lines[0]


@needs_root
def test_lvdiff_into_a_redirected_stdout_prints_what_sha256sum_prints(tmp_path, source):
    """The seed README's `lvdiff ... > test.diff`: the line names test.diff and -c accepts it."""
    with open(tmp_path / "test.diff", "wb") as out:
        res = lvdiff(source, tmp_path, stdout=out)
    assert res.returncode == 0, res.stderr.decode()
    line = tag_line(res.stderr)
    want = hashlib.sha256((tmp_path / "test.diff").read_bytes()).hexdigest()
    assert line == f"SHA256 (test.diff) = {want}"
    plain = subprocess.run(["sha256sum", "test.diff"], cwd=tmp_path, capture_output=True, text=True)
    assert plain.stdout.split()[0] == want
    (tmp_path / "test.diff.sha256").write_text(line + "\n")
    check = subprocess.run(["sha256sum", "-c", "test.diff.sha256"], cwd=tmp_path, check=False)
    assert check.returncode == 0
    with open(tmp_path / "test.diff", "r+b") as f:  # one byte changed: -c says so
        f.seek(12345)
        f.write(b"\xff" if f.read(1) != b"\xff" else b"\x00")
    check = subprocess.run(["sha256sum", "-c", "test.diff.sha256"], cwd=tmp_path, check=False)
    assert check.returncode == 1


@needs_root
def test_lvdiff_into_a_pipe_digests_the_bytes_that_went_through_it(tmp_path, source):
    res = lvdiff(source, tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    assert tag_line(res.stderr) == f"SHA256 (-) = {hashlib.sha256(res.stdout).hexdigest()}"


@needs_root
def test_lvdiff_appending_to_a_file_names_no_file(tmp_path, source):
    """`>> old.diff`: the digest is of what lvdiff wrote, which is not the whole file."""
    (tmp_path / "old.diff").write_bytes(b"something before\n")
    with open(tmp_path / "old.diff", "ab") as out:
        res = lvdiff(source, tmp_path, stdout=out)
    written = (tmp_path / "old.diff").read_bytes()[len(b"something before\n") :]
    assert tag_line(res.stderr) == f"SHA256 (-) = {hashlib.sha256(written).hexdigest()}"


@needs_root
def test_lvdiff_output_file_and_json_carry_the_same_digest(tmp_path, source):
    res = lvdiff(source, tmp_path, "--json", "-o", "out.lvd")
    assert res.returncode == 0, res.stderr.decode()
    want = hashlib.sha256((tmp_path / "out.lvd").read_bytes()).hexdigest()
    assert tag_line(res.stderr) == f"SHA256 (out.lvd) = {want}"
    assert json.loads(res.stdout)["stream_digest"] == f"sha256:{want}"
    check = subprocess.run(
        ["sha256sum", "-c"], input=tag_line(res.stderr) + "\n", cwd=tmp_path, text=True
    )
    assert check.returncode == 0


@needs_root
def test_lvdiff_digest_xxh128_is_the_streams_own_and_none_prints_nothing(tmp_path, source):
    res = lvdiff(source, tmp_path, "--json", "-o", "a.lvd", "--digest", "xxh128")
    data = (tmp_path / "a.lvd").read_bytes()
    assert tag_line(res.stderr) == f"XXH128 (a.lvd) = {xxhash.xxh3_128(data).hexdigest()}"
    assert json.loads(res.stdout)["stream_digest"].startswith("xxh128:")
    assert StreamReader(io.BytesIO(data)).header.new.name == "vol0"
    res = lvdiff(source, tmp_path, "--json", "-o", "b.lvd", "--digest", "none")
    assert res.returncode == 0 and " = " not in res.stderr.decode()
    assert json.loads(res.stdout)["stream_digest"] is None


class _Trickle(io.RawIOBase):
    """A raw output that takes at most 1000 bytes per write, as a pipe may."""

    def __init__(self) -> None:
        self.got = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001
        n = min(len(b), 1000)
        self.got += bytes(b[:n])
        return n


@pytest.mark.parametrize("algorithm", list(Digest))
def test_hashing_writer_digests_exactly_what_reached_the_output(algorithm):
    out = _Trickle()
    w = HashingWriter(out, algorithm)
    rnd = random.Random(1)
    for n in (0, 1, 65535, 65536, 3 << 20, 17):
        w.write(rnd.randbytes(n))
    want = hashlib.sha256 if algorithm is Digest.SHA256 else xxhash.xxh3_128
    assert w.digest() == StreamDigest(algorithm.value, want(bytes(out.got)).hexdigest())


def test_a_reused_buffer_is_refilled_only_after_the_helper_thread_hashed_it():
    w = HashingWriter(io.BytesIO(), Digest.SHA256)
    buf = bytearray(b"a" * (1 << 20))
    released = []
    w.write(memoryview(buf))
    w.when_hashed(lambda: released.append(True))
    w.digest()  # waits for the helper
    assert released == [True]
    buf[:] = b"b" * (1 << 20)  # now it may change
    assert w.digest().hex == hashlib.sha256(b"a" * (1 << 20)).hexdigest()


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("sha256:" + "ab" * 32, True),
        ("SHA256:" + "AB" * 32, True),
        ("xxh128:" + "0f" * 16, True),
        ("sha256:" + "ab" * 16, False),
        ("md5:" + "ab" * 16, False),
        ("sha256:" + "zz" * 32, False),
        ("sha256", False),
    ],
)
def test_stream_digests_parse_as_the_tools_print_them(text, ok):
    if ok:
        d = StreamDigest.parse(text)
        assert str(d) == text.lower()
    else:
        with pytest.raises(ValueError, match="digest"):
            StreamDigest.parse(text)


@pytest.mark.parametrize("name", ["plain.lvd", "back\\slash.lvd", "new\nline.lvd"])
def test_tag_lines_are_read_back_by_sha256sum(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"some stream")
    line = StreamDigest("sha256", hashlib.sha256(b"some stream").hexdigest()).tag_line(name)
    check = subprocess.run(["sha256sum", "-c"], input=line + "\n", cwd=tmp_path, text=True)
    assert check.returncode == 0


def _stream() -> bytes:
    v = volumes(3)
    return stream_between(v[0], v[1], "id-0", "id-1")


@pytest.mark.parametrize("algorithm", list(Digest))
def test_the_reader_refuses_a_stream_whose_digest_is_not_the_expected_one(algorithm):
    data = _stream()
    right = hashlib.sha256 if algorithm is Digest.SHA256 else xxhash.xxh3_128
    expect = StreamDigest(algorithm.value, right(data).hexdigest())
    reader = StreamReader(io.BytesIO(data), expect=expect)
    list(reader)
    assert reader.complete and reader.file_digest == expect
    other = StreamDigest(algorithm.value, "0" * algorithm.hex_len)
    reader = StreamReader(io.BytesIO(data), expect=other)
    with pytest.raises(DigestMismatch, match="not the stream that was recorded"):
        list(reader)
    assert not reader.complete


def test_the_reader_digests_the_file_as_asked_and_its_own_by_default():
    data = _stream()
    reader = StreamReader(io.BytesIO(data), Digest.SHA256)
    list(reader)
    assert reader.file_digest == StreamDigest("sha256", hashlib.sha256(data).hexdigest())
    assert reader.digest == StreamDigest("xxh128", xxhash.xxh3_128(data).hexdigest())
    reader = StreamReader(io.BytesIO(data))
    list(reader)
    assert reader.file_digest == reader.digest


def test_lvpatch_check_refuses_a_stream_that_is_not_the_recorded_one(tmp_path):
    data = _stream()
    sha = hashlib.sha256(data).hexdigest()
    res = lvpatch("--check", "--expect-digest", f"sha256:{sha}", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    other = _stream()  # same content, other fingerprints: another stream
    res = lvpatch("--check", "--expect-digest", f"sha256:{sha}", stdin=other)
    err = res.stderr.decode().strip()
    assert res.returncode == 3 and len(err.splitlines()) == 1, err
    assert "not the stream that was recorded" in err
    res = lvpatch("--check", "--expect-digest", "sha256:12", stdin=data)
    assert res.returncode == 2 and "64 hex digits" in res.stderr.decode()


def test_lvpatch_to_file_with_the_wrong_digest_leaves_no_image(tmp_path):
    v = volumes(4)
    data = stream_between(None, v[0], "", "id-0")
    img = tmp_path / "vol.img"
    res = lvpatch("--to-file", img, "--expect-digest", "xxh128:" + "1" * 32, stdin=data)
    assert res.returncode == 3, res.stderr.decode()
    assert not img.exists() and list(tmp_path.iterdir()) == []
    want = hashlib.sha256(data).hexdigest()
    res = lvpatch("--to-file", img, "--expect-digest", f"sha256:{want}", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert img.read_bytes() == v[0]
    assert f"SHA256 (-) = {want}" in res.stderr.decode()
