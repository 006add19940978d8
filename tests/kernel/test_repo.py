"""lvsync into an encrypted repository on real thin volumes, and every point out again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from .lvmrig import BIN, IMAGES, lv_attr, lv_names, sh, sha256_of, wait_for, write_at
from .test_lvsync import change, lvsync, ours

M = 1 << 20


def lvrepo(*args: str | os.PathLike, stdin=None) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [str(BIN / "lvrepo"), *map(str, args)],
        capture_output=True,
        stdin=stdin,
        check=False,
    )


def test_lvsync_into_an_encrypted_repository_then_every_point_out(loop_vg):
    rnd = random.Random(61)
    src = loop_vg(prefix="src")
    src.pool(size_mb=160)
    tmpl = src.thin("tmpl", 24)
    write_at(tmpl, 0, rnd.randbytes(16 * M))
    src.snapshot("tmpl", "clone")  # a clone of the template: its chunks are stored once
    clone = src.dev("clone")
    write_at(clone, 20 * M, rnd.randbytes(M))
    repo, key = IMAGES / "repo", IMAGES / "repo.key"
    res = lvrepo("init", repo, "--key-file", key)
    assert res.returncode == 0, res.stderr.decode()
    sync = ["--repo-key", str(key), "--keep-last", "10"]
    vols = (f"{src.name}/tmpl", f"{src.name}/clone")

    for run in range(3):  # three nights, a change in each volume between them
        if run:
            change(rnd, tmpl, 24 * M)
            change(rnd, clone, 24 * M)
        code, summary, err = lvsync(*sync, *vols, f"dir:{repo}")
        assert code == 0, err
        sent = {v["source"]: v["sent"] for v in summary["jobs"][0]["volumes"]}
        assert all(s["kind"] == ("incremental" if run else "full") for s in sent.values()), sent
        time.sleep(1.1)
    points = json.loads(lvrepo("--json", "list", repo, "--key-file", key).stdout)["points"]
    assert len(points) == 6
    first_clone = next(p for p in points if p["source"]["lv"] == "clone")
    assert first_clone["stats"]["new_chunks"] < 8, first_clone  # the template's, once
    secret = b"".join(f.read_bytes() for f in repo.rglob("*") if f.is_file())
    assert b"tmpl" not in secret and src.name.encode() not in secret  # no names in the clear

    # every point restores bit-exact into a volume and into an image file
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=400)
    for p in points:
        res = lvrepo("restore", repo, p["point"], "-g", dst.name, "-p", "pool", "--key-file", key)
        assert res.returncode == 0, res.stderr.decode()
        assert lv_attr(dst.name, p["name"])[1] == "r"  # read-only, as lvpatch leaves it
        sh("lvchange", "-q", "-ay", "-K", f"{src.name}/{p['name']}")
        want = sha256_of(src.dev(p["name"]))
        assert sha256_of(dst.dev(p["name"])) == want, p["name"]
        img = IMAGES / f"{p['name']}.img"
        res = lvrepo("restore", repo, p["point"], "--to-file", img, "--key-file", key)
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(str(img)) == want
        img.unlink()

    # a stream between two non-adjacent points of the template, applied by lvpatch onto the
    # restored older one, rebuilds the newer one
    t = [p for p in points if p["source"]["lv"] == "tmpl"]
    stream = IMAGES / "t0-t2.lvd"
    with open(stream, "wb") as out:
        res = subprocess.run(
            [str(BIN / "lvrepo"), "stream", repo, "--from", t[0]["point"], t[2]["point"],
             "--key-file", key],
            stdout=out, stderr=subprocess.PIPE, check=False,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    res = subprocess.run(
        [str(BIN / "lvpatch"), "-g", dst.name, "-l", t[0]["name"], "t2-again"],
        stdin=open(stream, "rb"), capture_output=True, check=False,  # noqa: SIM115
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert "identity matches" in res.stderr.decode()
    assert sha256_of(dst.dev("t2-again")) == sha256_of(src.dev(t[2]["name"]))
    stream.unlink()

    # the middle points pruned (and their chunks collected): the others stay bit-exact
    middle = [p["point"] for p in points if p["name"] in (t[1]["name"],)]
    res = lvrepo("delete", repo, *middle, "--key-file", key)
    assert res.returncode == 0, res.stderr.decode()
    for _ in range(2):  # condemn, then delete (no grace in a test)
        res = lvrepo("gc", repo, "--grace-hours", "0", "--key-file", key)
        assert res.returncode == 0, res.stderr.decode()
    for p in (t[0], t[2]):
        img = IMAGES / "after-prune.img"
        res = lvrepo("restore", repo, p["point"], "--to-file", img, "--key-file", key)
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(str(img)) == sha256_of(src.dev(p["name"]))
        img.unlink()

    # lvsync killed with SIGKILL mid-run: no half point; the rerun stores each chunk once
    write_at(tmpl, 0, rnd.randbytes(20 * M))
    before = {f.name for f in (repo / "data").rglob("*") if f.is_file()}
    proc = subprocess.Popen(
        [str(BIN / "lvsync"), *sync, vols[0], f"dir:{repo}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    def storing() -> bool:
        now = {f.name for f in (repo / "data").rglob("*") if f.is_file()}
        return len(now - before) >= 2

    wait_for(storing, "lvsync to store chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = json.loads(lvrepo("--json", "list", repo, "--key-file", key).stdout)["points"]
    assert len(listed) == len(points) - 1  # nothing half made is visible
    # chunks the killed run stored; a chunk it was writing when killed is only a temporary
    left = {f.name for f in (repo / "data").rglob("*") if f.is_file() and ".tmp-" not in f.name}
    left -= before
    time.sleep(1.1)
    code, summary, err = lvsync(*sync, vols[0], f"dir:{repo}")
    assert code == 0, err
    stats = summary["jobs"][0]["volumes"][0]
    point = json.loads(lvrepo("--json", "list", repo, "--key-file", key).stdout)["points"][-1]
    assert point["stats"]["reused_chunks"] >= len(left), (point, len(left), stats)

    # a flipped byte in a stored chunk: verify names the point, restore refuses it
    chunk = sorted(f for f in (repo / "data").rglob("*") if f.is_file())[0]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    res = lvrepo("verify", repo, "--key-file", key)
    assert res.returncode == 3 and chunk.name in res.stderr.decode(), res.stderr.decode()
    damaged = next(
        line.split(":")[1].strip() for line in res.stderr.decode().splitlines() if "DAMAGED" in line
    )
    names = lv_names(dst.name)
    res = lvrepo(
        "restore", repo, damaged, "-g", dst.name, "-p", "pool", "-n", "x", "--key-file", key
    )
    assert res.returncode == 3, res.stderr.decode()
    assert lv_names(dst.name) == names  # nothing left behind

    # a wrong key: one line, exit 2
    other = IMAGES / "other"
    assert lvrepo("init", other, "--key-file", IMAGES / "other.key").returncode == 0
    res = lvrepo("list", repo, "--key-file", IMAGES / "other.key")
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and "key" in err, err
    assert ours(src.name)  # lvsync kept its own snapshots on the source throughout
