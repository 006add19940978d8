"""The repository on S3, against a real Ceph radosgw on loopback (tests/s3server.py).

Streams and image files stand in for thin volumes here (the real-kernel suite
runs lvsync from thin volumes into a bucket); the store, its conditional
commit, its failures and many writers at once are the real thing.
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
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from lvdiff.errors import TransientError, UsageError
from lvdiff.repo.crypto import Keys, new_keys
from lvdiff.repo.emit import restore_image
from lvdiff.repo.maintenance import verify
from lvdiff.repo.make import put_stream
from lvdiff.repo.repository import Repository, gc
from lvdiff.repo.s3 import S3Store, parse_location

from ..builders import stream_between
from ..s3server import S3Server, missing_binaries

M = 1 << 20
CHUNK = 256 * 1024
MAIN = "import sys; from lvdiff.cli import {0}; sys.exit({0}())"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Ceph is not installed (no {', '.join(missing)}): run scripts/setup")
    pytest.importorskip("boto3")
    workdir = os.environ.get("LVDIFF_S3_WORKDIR")
    server = S3Server.start(Path(workdir) / "repo" if workdir else tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return {**os.environ}


_n = iter(range(10**6))


def location(s3: S3Server) -> str:
    """A new repository's place in the bucket: one prefix per test."""
    return f"s3+{s3.endpoint}/{s3.bucket}/t{next(_n)}-{os.getpid()}"


def lvrepo(env: dict[str, str], *args: str, stdin: bytes | None = None):  # noqa: ANN201
    return subprocess.run(
        [sys.executable, "-c", MAIN.format("lvrepo_main"), *map(str, args)],
        input=stdin, capture_output=True, env=env, check=False,
    )  # fmt: skip


def versions(seed: int, size: int = 4 * M, n: int = 3) -> list[bytes]:
    rnd = random.Random(seed)
    v = bytearray(rnd.randbytes(size // 2) + bytes(size // 2))
    out = [bytes(v)]
    for _ in range(n - 1):
        at = rnd.randrange(size // CHUNK) * CHUNK
        v[at : at + 4096] = rnd.randbytes(4096)
        out.append(bytes(v))
    return out


def chain_streams(vols: list[bytes], tag: str) -> list[bytes]:
    prev, out, tag = None, [], tag.replace("/", ".")  # an identity has no slash
    for i, v in enumerate(vols):
        out.append(stream_between(prev, v, f"{tag}-{i - 1}", f"{tag}-{i}", level=2))
        prev = v
    return out


def new_repo(spec: str) -> Repository:
    return Repository.create(S3Store(parse_location(spec)), new_keys("none"), CHUNK)


def test_points_from_two_sources_restore_bit_exact_from_a_bucket(s3, env, tmp_path):
    spec = location(s3)
    res = lvrepo(env, "init", spec, "--key-file", tmp_path / "k", "--chunk-size", "256K")
    assert res.returncode == 0, res.stderr.decode()
    key = ["--key-file", str(tmp_path / "k")]
    vols = {"vgA/data": versions(1), "vgB/data": versions(2)}
    for source, vs in vols.items():
        for data in chain_streams(vs, source):
            res = lvrepo(env, "put", spec, "--source", source, *key, stdin=data)
            assert res.returncode == 0, res.stderr.decode()
    points = json.loads(lvrepo(env, "--json", "list", spec, *key).stdout)["points"]
    assert len(points) == 6
    for p in points:
        want = vols[p["source"]["key"]][int(p["identity"].rsplit("-", 1)[1])]
        img = tmp_path / f"{p['point']}.img"
        res = lvrepo(env, "restore", spec, p["point"], "--to-file", img, *key)
        assert res.returncode == 0, res.stderr.decode()
        assert img.read_bytes() == want
    res = lvrepo(env, "verify", spec, *key)
    assert res.returncode == 0, res.stderr.decode()


def test_a_commit_is_create_if_absent(s3, env):
    store = S3Store(parse_location(location(s3)))
    assert store.put("points/x", b"one", exclusive=True)
    assert not store.put("points/x", b"two", exclusive=True)  # refused, kept as it was
    assert store.get("points/x") == b"one"


SYSTEM_PYTHON = Path("/usr/bin/python3")


def test_a_commit_is_create_if_absent_with_debians_own_boto3(s3, env):
    """The .deb runs on Debian's boto3 (1.26), whose PutObject has no IfNoneMatch
    parameter: the header is added by an event hook, and the server must see it."""
    probe = "import boto3, sys; sys.exit(boto3.__version__ >= '1.35')"
    if not SYSTEM_PYTHON.exists() or subprocess.run([SYSTEM_PYTHON, "-c", probe]).returncode:
        pytest.skip("no system python3 with a boto3 older than 1.35")
    script = (
        "import sys; from lvdiff.repo.s3 import S3Store, parse_location;"
        "s = S3Store(parse_location(sys.argv[1]));"
        "print(s.put('p/x', b'one', exclusive=True), s.put('p/x', b'two', exclusive=True),"
        " s.get('p/x'))"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    res = subprocess.run(
        [SYSTEM_PYTHON, "-c", script, location(s3)],
        env={**env, "PYTHONPATH": src}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "False", "b'one'"]


def test_two_writers_at_once_and_a_prune_lose_nothing(s3, env, tmp_path):
    """Two machines writing into one bucket while a third prunes: every point committed
    verifies and restores; identical content is stored once."""
    spec = location(s3)
    new_repo(spec)
    shared = versions(3, n=4)
    streams = {src: chain_streams(shared, src) for src in ("vgA/vm", "vgB/vm")}
    procs = []
    script = (
        "import io, sys; from lvdiff.repo.access import open_repository;"
        "from lvdiff.repo.make import put_stream;"
        "r = open_repository(sys.argv[1]);"
        "[put_stream(r, open(p, 'rb'), sys.argv[2]) for p in sys.argv[3:]]"
    )
    for src, datas in streams.items():
        files = []
        for i, d in enumerate(datas):
            f = tmp_path / f"{src.replace('/', '_')}-{i}.lvd"
            f.write_bytes(d)
            files.append(str(f))
        procs.append(subprocess.Popen([sys.executable, "-c", script, spec, src, *files], env=env))
    pruning = 0
    while any(p.poll() is None for p in procs):  # prune over and over while they write
        res = lvrepo(env, "prune", spec, "--keep-last", "2")
        assert res.returncode == 0, res.stderr.decode()
        pruning += 1
    assert all(p.returncode == 0 for p in procs) and pruning
    res = lvrepo(env, "prune", spec, "--keep-last", "2")
    repo = Repository.open(S3Store(parse_location(spec)), lambda c: Keys(c.id, "none", b"", b""))
    points = repo.points()
    assert sorted(p.source.key for p in points) == ["vgA/vm", "vgA/vm", "vgB/vm", "vgB/vm"]
    for _ in range(2):
        gc(repo, grace=timedelta(0))
    for p in points:
        assert verify(repo, p).ok
        img = tmp_path / f"{p.id.split('-')[-1]}.img"
        restore_image(repo, p, img)
        assert img.read_bytes() == shared[int(p.identity.rsplit("-", 1)[1])]
    data = [o for o in repo.store.list("data/")]
    named = {n for n in repo.referenced(points) if n.startswith("data/")}
    assert {o.name for o in data} == named  # stored once, and nothing unnamed left


def put_started(spec: str, source: str, env: dict, head: bytes) -> subprocess.Popen:
    """`lvrepo put` running, fed the first part of a stream (its stdin left open)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN.format("lvrepo_main"), "put", spec, "--source", source],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(head)
    proc.stdin.flush()
    return proc


def test_a_run_killed_mid_upload_leaves_no_point_and_the_rerun_completes(s3, env, tmp_path):
    spec = location(s3)
    repo = new_repo(spec)
    vol = random.Random(4).randbytes(32 * M)
    data = stream_between(None, vol, "", "big", level=0, zstd_level=None)
    proc = put_started(spec, "vgA/big", env, data[: len(data) // 2])
    deadline = time.monotonic() + 60
    while sum(1 for _ in repo.store.list("data/")) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert repo.points() == []
    stored = sum(1 for _ in repo.store.list("data/"))
    assert stored >= 8
    made = put_stream(repo, io.BytesIO(data), "vgA/big")
    assert made.stats.reused_chunks >= stored  # what the killed run stored, not sent again
    img = tmp_path / "big.img"
    restore_image(repo, made.point, img)
    assert img.read_bytes() == vol


def test_radosgw_stopped_mid_run_is_transient_and_the_rerun_succeeds(s3, env, tmp_path):
    spec = location(s3)
    new_repo(spec)
    vol = random.Random(5).randbytes(48 * M)
    data = stream_between(None, vol, "", "gone", level=0, zstd_level=None)
    proc = put_started(spec, "vgA/x", env, data[: len(data) // 3])
    time.sleep(1)
    s3.stop_rgw()
    try:
        try:
            proc.stdin.write(data[len(data) // 3 :])
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.wait(timeout=600)
        assert proc.returncode == 75, err
        assert len(err.strip().splitlines()) == 1, err
    finally:
        s3.start_rgw()
    res = lvrepo(env, "put", spec, "--source", "vgA/x", stdin=data)
    assert res.returncode == 0, res.stderr.decode()


def test_wrong_credentials_and_a_missing_bucket_are_one_line(s3, env, tmp_path):
    spec = location(s3)
    new_repo(spec)
    bad = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    res = lvrepo(bad, "list", spec)
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "refused" in err, err
    assert "not-the-secret" not in err
    missing = f"s3+{s3.endpoint}/no-such-bucket/x"
    res = lvrepo(env, "list", missing)
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "bucket" in err, err
    nocreds = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    nocreds["AWS_CONFIG_FILE"] = nocreds["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    res = lvrepo(nocreds, "list", spec)
    assert res.returncode == 2 and "credentials" in res.stderr.decode(), res.stderr.decode()


def test_locations_are_read_from_their_spelling():
    loc = parse_location("s3+https://s3.example.net:8443/backups/fleet/host1")
    assert loc.endpoint == "https://s3.example.net:8443"
    assert (loc.bucket, loc.prefix) == ("backups", "fleet/host1/")
    assert parse_location("s3://bucket").prefix == ""
    for bad in ("s3://ab/x", "s3+https://key:secret@host/b/x", "s3+https:///b", "s3://bu$ket/x"):
        with pytest.raises(UsageError):
            parse_location(bad)
    assert TransientError.exit_code == 75
