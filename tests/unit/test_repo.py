"""The repository on a directory: points that stand alone, dedup, encryption, verify, prune, gc.

Streams here are real lvdiff streams (tests/builders.py) and restores go into
real image files through lvpatch's own engine; only the thin volumes are
absent (the real-kernel suite makes points from real snapshots).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from lvdiff.errors import LvdiffError, UsageError
from lvdiff.plan import DATA, ZERO, Extent
from lvdiff.repo import format as fmt
from lvdiff.repo.crypto import Keys, WrongKey, dump_key_file, new_keys
from lvdiff.repo.emit import restore_image, write_stream
from lvdiff.repo.maintenance import prune, verify
from lvdiff.repo.make import build, put_stream, slots_from_extents
from lvdiff.repo.repository import Repository, gc
from lvdiff.repo.store import DirStore
from lvdiff.retention import Retention
from lvdiff.stream import StreamReader

from ..builders import stream_between

M = 1 << 20
CHUNK = 64 * 1024  # small slots, so small volumes have many
MAIN = "import sys; from lvdiff.cli import {0}; sys.exit({0}())"


def make_repo(tmp_path: Path, mode: str = "aes-256-gcm", name: str = "repo") -> Repository:
    return Repository.create(DirStore(tmp_path / name), new_keys(mode), CHUNK)


def versions(seed: int, size: int = 2 * M, n: int = 4) -> list[bytes]:
    """``n`` versions of a volume: a little changes each time, some of it to zeros."""
    rnd = random.Random(seed)
    v = bytearray(size)
    v[: size // 2] = rnd.randbytes(size // 2)
    out = [bytes(v)]
    for _ in range(n - 1):
        for _ in range(3):
            at = rnd.randrange(size // 4096) * 4096
            v[at : at + 8192] = rnd.randbytes(min(8192, size - at))
        at = rnd.randrange(size // CHUNK) * CHUNK
        v[at : at + CHUNK] = bytes(CHUNK)
        out.append(bytes(v))
    return out


def put_chain(repo: Repository, vols: list[bytes], source: str = "vgA/data") -> list[fmt.Point]:
    points, prev = [], None
    for i, v in enumerate(vols):
        data = stream_between(prev, v, f"id-{i - 1}", f"id-{i}", level=2)
        made = put_stream(repo, io.BytesIO(data), source, "hostA")
        points.append(made.point)
        prev = v
    return points


def image_of(repo: Repository, point: fmt.Point, where: Path) -> bytes:
    img = where / f"{point.id.split('-')[-1]}.img"
    restore_image(repo, point, img)
    return img.read_bytes()


@pytest.mark.parametrize("mode", ["aes-256-gcm", "none"])
def test_every_point_restores_on_its_own_and_survives_pruning_the_others(tmp_path, mode):
    repo = make_repo(tmp_path, mode)
    vols = versions(1)
    points = put_chain(repo, vols)
    assert [p.name for p in repo.points()] == ["n"] * 4
    for p, v in zip(points, vols, strict=True):
        assert image_of(repo, p, tmp_path) == v
    # prune the middle points; gc with no grace: the others stay bit-exact
    for p in points[1:3]:
        repo.delete_point(p)
    gc(repo, grace=timedelta(0))  # condemns
    res = gc(repo, grace=timedelta(0))  # deletes what no point names
    assert res.deleted > 0
    for p, v in ((points[0], vols[0]), (points[3], vols[3])):
        img = tmp_path / f"after-{p.id.split('-')[-1]}.img"
        restore_image(repo, p, img)
        assert img.read_bytes() == v
        assert verify(repo, p).ok


def test_a_stream_between_two_non_adjacent_points_rebuilds_the_newer(tmp_path):
    repo = make_repo(tmp_path)
    vols = versions(2)
    points = put_chain(repo, vols)
    base_img = tmp_path / "a.img"
    restore_image(repo, points[0], base_img)
    out = io.BytesIO()
    done = write_stream(repo, points[3], out, base=points[0])
    reader = StreamReader(io.BytesIO(out.getvalue()))
    assert reader.header.incremental and reader.header.base.identity == points[0].identity
    from lvdiff.imagefile import restore_to_file

    res = restore_to_file(io.BytesIO(out.getvalue()), tmp_path / "d.img", base_img)
    assert (tmp_path / "d.img").read_bytes() == vols[3]
    assert str(res.base_check).startswith("identity matches")
    assert done.data_bytes < len(vols[3]) // 2  # only what differs is sent


def test_identical_content_is_stored_once_across_sources(tmp_path):
    """A VM template and its clone on another machine: one copy of each chunk."""
    repo = make_repo(tmp_path)
    vol = versions(3, n=1)[0]
    put_chain(repo, [vol], "vgA/template")
    before = _objects(tmp_path / "repo", "data/")
    made = put_stream(repo, io.BytesIO(stream_between(None, vol, "", "clone")), "vgB/clone", "hB")
    assert _objects(tmp_path / "repo", "data/") == before
    assert made.stats.new_chunks == 0 and made.stats.reused_chunks > 0


def _objects(root: Path, prefix: str) -> set[str]:
    return {p.name for p in (root / prefix).rglob("*") if p.is_file()}


def test_encryption_hides_content_and_names_and_refuses_any_alteration(tmp_path):
    repo = make_repo(tmp_path)
    vol = versions(4, n=1)[0]
    (p,) = put_chain(repo, [vol], "vgSecret/payroll")
    blobs = b"".join(f.read_bytes() for f in (tmp_path / "repo").rglob("*") if f.is_file())
    assert b"payroll" not in blobs and b"vgSecret" not in blobs and vol[:4096] not in blobs
    plain = make_repo(tmp_path, "none", "plain")
    put_chain(plain, [vol])
    assert _objects(tmp_path / "repo", "data/").isdisjoint(_objects(tmp_path / "plain", "data/"))
    # one flipped byte in one stored chunk: verify names the point, a restore refuses it
    chunk = sorted(f for f in (tmp_path / "repo" / "data").rglob("*") if f.is_file())[-1]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 1
    chunk.write_bytes(bytes(raw))
    checked = verify(repo, p)
    assert not checked.ok and chunk.name in checked.damaged[0]
    with pytest.raises(LvdiffError):
        restore_image(repo, p, tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists() and not list(tmp_path.glob(".x.img*"))


def test_an_unencrypted_repository_still_checks_every_chunk(tmp_path):
    repo = make_repo(tmp_path, "none")
    (p,) = put_chain(repo, [versions(5, n=1)[0]])
    chunk = sorted(f for f in (tmp_path / "repo" / "data").rglob("*") if f.is_file())[0]
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0x40
    chunk.write_bytes(bytes(raw))
    assert not verify(repo, p).ok


def test_a_wrong_key_is_refused_in_one_line(tmp_path):
    make_repo(tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(dump_key_file(new_keys("aes-256-gcm"), None))
    res = subprocess.run(
        [sys.executable, "-c", MAIN.format("lvrepo_main"), "list", str(tmp_path / "repo"),
         "--key-file", str(other)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "key" in res.stderr
    with pytest.raises(WrongKey):
        Repository.open(DirStore(tmp_path / "repo"), lambda c: new_keys("aes-256-gcm"))


def test_a_killed_put_leaves_no_point_and_the_rerun_stores_each_chunk_once(tmp_path):
    repo = make_repo(tmp_path, "none")
    size = 24 * M
    vol = random.Random(6).randbytes(size)
    data = stream_between(None, vol, "", "big", level=0, zstd_level=None)
    key = tmp_path / "none"  # an unencrypted repository needs no key
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN.format("lvrepo_main"), "put", str(tmp_path / "repo"),
         "--source", "vgA/big"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(data[: len(data) * 2 // 3])
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while len(_objects(tmp_path / "repo", "data/")) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert repo.points() == [] and not key.exists()
    stored = _objects(tmp_path / "repo", "data/")
    assert stored
    made = put_stream(repo, io.BytesIO(data), "vgA/big", "hostA")
    assert made.stats.reused_chunks >= len(stored)
    assert made.stats.new_chunks + made.stats.reused_chunks == size // CHUNK
    assert len(_objects(tmp_path / "repo", "data/")) == size // CHUNK


def test_prune_keeps_each_sources_points_apart(tmp_path):
    repo = make_repo(tmp_path, "none")
    vols = versions(7, n=3)
    put_chain(repo, vols, "vgA/data")
    put_chain(repo, vols[:1], "vgB/data")
    gone = prune(repo, Retention(last=1))
    assert len(gone) == 2 and all(p.source.key == "vgA/data" for p in gone)
    assert sorted(p.source.key for p in repo.points()) == ["vgA/data", "vgB/data"]


def test_gc_keeps_what_a_writer_stored_again_after_it_was_condemned(tmp_path):
    repo = make_repo(tmp_path, "none")
    (p,) = put_chain(repo, [versions(8, n=1)[0]])
    repo.delete_point(p)
    first = gc(repo, grace=timedelta(0))
    assert first.condemned > 0 and first.deleted == 0
    # a writer that needs one of them stores it again (it does not count it as stored)
    fresh = Repository.open(repo.store, lambda c: Keys(c.id, "none", b"", b""))
    one = next(iter(fresh.condemned()))
    assert not fresh.has(one)
    time.sleep(1.1)  # file times have whole-second resolution on some file systems
    fresh.store.put(one, fresh.store.get(one))
    res = gc(fresh, grace=timedelta(0))
    assert res.kept == 1 and fresh.store.exists(one)
    assert res.deleted == first.condemned - 1  # the rest, named by no point, went
    assert res.condemned == 1  # and the one stored again is condemned anew


def test_a_point_costs_what_changed_not_the_volume(tmp_path):
    """One changed slot in a volume of 4096 slots: one slot read, the other segments reused."""
    repo = make_repo(tmp_path, "none")
    size = 4096 * CHUNK
    zeros = slots_from_extents([], size, CHUNK, lambda o, n: b"", incremental=False, prev_size=None)
    segments, _ = build(repo, size, zeros, None)
    first = fmt.Point(
        id=fmt.new_point_name(fmt.datetime.now(fmt.UTC)),
        source=fmt.SourceRef("k", "h", "vg", "lv"), name="s0", identity="i0", size=size,
        chunk_size=CHUNK, time=fmt.utc_now(), fingerprint=None, segments=segments,
    )  # fmt: skip
    reads = []

    def read(offset: int, length: int) -> bytes:
        reads.append(offset)
        return os.urandom(length)

    changed = [Extent(DATA, 1000 * CHUNK + 4096, 4096), Extent(ZERO, 3000 * CHUNK, CHUNK)]
    slots = slots_from_extents(changed, size, CHUNK, read, incremental=True, prev_size=size)
    segments2, stats = build(repo, size, slots, first)
    assert reads == [1000 * CHUNK]  # the one slot data touched, and nothing else
    assert stats.reused_segments == len(segments) - 2 and stats.new_chunks == 1
    # segment 2 was rebuilt (a ZERO range touched it) but names what it named: one object
    assert segments2[2] == segments[2] and segments2[0] != segments[0]


def test_the_config_and_manifests_are_versioned(tmp_path):
    repo = make_repo(tmp_path)
    cfg = json.loads((tmp_path / "repo" / "config").read_text())
    assert cfg["format"] == "lvdiff-repository" and cfg["version"] == 1
    cfg["version"] = 2
    (tmp_path / "repo" / "config").write_text(json.dumps(cfg))
    with pytest.raises(LvdiffError, match="version 2"):
        Repository.open(repo.store, lambda c: repo.keys)
    with pytest.raises(UsageError, match="already holds"):
        Repository.create(repo.store, new_keys("none"), CHUNK)


def test_a_restore_hands_on_stored_frames_and_verify_still_checks_every_id(tmp_path):
    """An encrypted chunk's AEAD tag vouches for it on restore: its stored zstd frame goes
    into the stream as it is (decoded once, by lvpatch's engine); ``verify`` recomputes
    each chunk's keyed id, so even a chunk a key holder sealed under a wrong name is found."""
    repo = make_repo(tmp_path)
    text = b"".join(b"line %d of a compressible volume\n" % i for i in range(70000))[: 2 * M]
    (point,) = put_chain(repo, [text])
    out = io.BytesIO()
    write_stream(repo, point, out, zstd_level=None)
    assert len(out.getvalue()) < len(text) // 2  # the stored frames, not the content
    assert image_of(repo, point, tmp_path) == text
    entry = next(e for e in repo.slots(point) if e != fmt.ZERO_SLOT)
    name = fmt.data_name(entry)
    wrong = repo.keys.seal(fmt.KIND_DATA, name.encode(), bytes(CHUNK))
    (tmp_path / "repo" / name).write_bytes(wrong)
    checked = verify(repo, point)
    assert not checked.ok and any("content its id names" in d for d in checked.damaged)
