"""lvsync on real LVM, to a real OpenSSH server on loopback and to a directory of streams."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest

from .lvmrig import BIN, IMAGES, discard, lv_names, lv_tags, sh, sha256_of, wait_for, write_at

M = 1 << 20


@pytest.fixture(scope="module")
def sshd():
    """An sshd of our own on 127.0.0.1:2222, its host key made now, root's key authorized."""
    d = IMAGES / "ssh"
    d.mkdir(exist_ok=True)
    for key in ("host_key", "id"):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / key)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    env = " ".join(
        f"{k}={os.environ[k]}"
        for k in ("LVM_SYSTEM_DIR", "DM_DISABLE_UDEV", "LVM_SUPPRESS_FD_WARNINGS")
    )
    (d / "sshd_config").write_text(
        f"Port 2222\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        # PAM decides on root's account: without it sshd calls a root with no password locked
        "KbdInteractiveAuthentication no\nUsePAM yes\nStrictModes no\n"
        f"SetEnv {env}\n"  # the remote lvpatch sees the rig's loop-only LVM, as ours does
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    sh("/usr/sbin/sshd", "-f", d / "sshd_config", "-E", d / "sshd.log")
    wait_for(lambda: (d / "sshd.pid").exists(), "sshd to start", 60)
    options = [
        "--ssh-port", "2222", "--ssh-key", str(d / "id"),
        "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "StrictHostKeyChecking=accept-new",
        "--remote-lvpatch", str(BIN / "lvpatch"),
    ]  # fmt: skip
    yield options
    os.kill(int((d / "sshd.pid").read_text()), signal.SIGTERM)


SLOW_SSH = """#!/usr/bin/python3
# ssh over a slow link: what goes to the server is passed on at 4 MiB/s
import os, subprocess, sys, time
p = subprocess.Popen(["/usr/bin/ssh", *sys.argv[1:]], stdin=subprocess.PIPE)
while chunk := os.read(0, 1 << 18):
    p.stdin.write(chunk)
    p.stdin.flush()
    time.sleep(len(chunk) / (4 << 20))
p.stdin.close()
sys.exit(p.wait())
"""


def lvsync(*args: str | os.PathLike) -> tuple[int, dict, str]:
    res = subprocess.run(
        [str(BIN / "lvsync"), "--json", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    summary = json.loads(res.stdout) if res.stdout.strip() else {}
    return res.returncode, summary, res.stderr


def ours(vg: str) -> list[str]:
    """lvsync's snapshots in vg, oldest first (their names sort by time)."""
    return sorted(n for n in lv_names(vg) if "lvsync" in lv_tags(vg, n))


def change(rnd: random.Random, vol: str, size: int) -> None:
    """Writes, overwrites and a discard, as a day of use would."""
    for _ in range(6):
        off = rnd.randrange(size // 4096) * 4096
        write_at(vol, off, rnd.randbytes(min(rnd.randrange(1, 64) * 4096, size - off)))
    discard(vol, rnd.randrange(size // (64 * 1024)) * 64 * 1024, 64 * 1024)


def same(vg_a, name_a: str, vg_b, name_b: str) -> bool:
    for vg, name in ((vg_a, name_a), (vg_b, name_b)):
        sh("lvchange", "-q", "-ay", "-K", f"{vg.name}/{name}")
    return sha256_of(vg_a.dev(name_a)) == sha256_of(vg_b.dev(name_b))


def test_two_machines_into_one_directory_then_every_chain_restored(loop_vg):
    """Two machines' `vol` into one dir: target, a repository: a source and a point each,
    each restored by `lvsync --restore`; and a dry run changes nothing. (Runs after the
    first, into a directory and a bucket: test_repo.py and test_s3.py.)"""
    rnd = random.Random(52)
    machines = []
    for m in ("a", "b"):
        src = loop_vg(prefix=f"src{m}")
        src.pool(size_mb=100)
        vol = src.thin("vol", 16)
        write_at(vol, 0, rnd.randbytes(4 * M))
        machines.append((src, vol))
    store = IMAGES / "streams"
    for src, _vol in machines:
        code, summary, err = lvsync("--keep-last", "10", f"{src.name}/vol", f"dir:{store}")
        assert code == 0, err
        assert summary["jobs"][0]["volumes"][0]["sent"]["kind"] == "full", summary
    time.sleep(1.1)
    listed = subprocess.run(
        [str(BIN / "lvrepo"), "--json", "list", str(store)], capture_output=True, text=True
    )
    points = json.loads(listed.stdout)["points"]
    keys = {p["source"]["key"] for p in points}
    assert len(points) == 2 and len(keys) == 2, points  # one source per machine
    # a dry run says what it would send, and changes nothing
    src, vol = machines[0]
    change(rnd, vol, 16 * M)
    before = ours(src.name)
    code, summary, err = lvsync("-n", "--keep-last", "10", f"{src.name}/vol", f"dir:{store}")
    volume = summary["jobs"][0]["volumes"][0]
    assert code == 0 and volume["status"] == "would-sync", err
    assert volume["base"] == before[-1] and volume["estimate"]["bytes_to_read"] > 0
    assert ours(src.name) == before
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=200)
    code, summary, err = lvsync("--restore", f"dir:{store}", f"{dst.name}/pool")
    assert code == 0, err
    restored = {c["source"]: c["volumes"] for c in summary["chains"]}
    for src, _vol in machines:
        uuid = sh("vgs", "--noheadings", "-o", "vg_uuid", src.name).strip()
        (name,) = restored[f"{uuid}/vol"]
        assert name == ours(src.name)[-1]
        assert same(src, name, dst, name), name


def remote_starts(log) -> list[str]:  # noqa: ANN001
    """What the far side's lvpatch was asked to do, one line per start."""
    return log.read_text().splitlines() if log.exists() else []


def test_two_machines_two_jobs_each_into_one_vg_and_one_directory(loop_vg, sshd):
    """Issue 18's setting on real LVM: two machines whose volumes share a name, each with an
    hourly job here and a nightly one over a real sshd, all into one backup VG (machine B's
    hourly one into a directory). On the way: retention, a run with nothing to do, a copy
    removed by hand, the link killed mid-transfer and resumed, a source volume removed, a
    target VG of two pools."""
    rnd = random.Random(53)
    vgs, vols, sizes = {}, {}, {"A": 40, "B": 16}
    for m in ("A", "B"):
        vgs[m] = loop_vg(prefix=f"src{m}")
        vgs[m].pool(size_mb=140)
        vols[m] = vgs[m].thin("data", sizes[m])
        write_at(vols[m], 0, rnd.randbytes(4 * M))
    vgs["A"].thin("extra", 8)
    bak = loop_vg(prefix="bak", size_mb=640)
    bak.pool(size_mb=560)
    store = IMAGES / "store-b"
    counted = IMAGES / "counted-lvpatch"  # the far side's lvpatch, counting its starts
    log = IMAGES / "remote-starts.log"
    counted.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {BIN / "lvpatch"} "$@"\n')
    counted.chmod(0o755)
    ssh = [*sshd[:-2], "--remote-lvpatch", str(counted)]
    keep = ["--keep-last", "2"]
    target = f"root@127.0.0.1:{bak.name}/pool"

    def hourly(m: str) -> tuple[int, dict, str]:
        if m == "A":  # into the backup VG, spelled without its pool: its only one is used
            return lvsync(*keep, f"{vgs['A'].name}/data", f"{vgs['A'].name}/extra", bak.name)
        return lvsync(*keep, f"{vgs['B'].name}/data", f"dir:{store}")

    def nightly(m: str) -> tuple[int, dict, str]:
        return lvsync(*ssh, *keep, f"{vgs[m].name}/data", target)

    def outcome(summary: dict, source: str) -> dict:
        return next(v for v in summary["jobs"][0]["volumes"] if v["source"] == source)

    def run(m: str, job) -> dict:  # noqa: ANN001
        change(rnd, vols[m], sizes[m] * M)
        code, summary, err = job(m)
        assert code == 0, err
        data = outcome(summary, f"{vgs[m].name}/data")
        assert data["status"] == "synced" and data["key"].endswith("/data"), err
        if job is nightly or m == "A":  # its copy in the backup VG is the snapshot
            assert same(vgs[m], data["snapshot"], bak, data["snapshot"])
        time.sleep(1.1)  # snapshot names have one-second resolution
        return data

    b_copies = set()
    first = {m: run(m, nightly) for m in ("A", "B")}
    b_copies.add(first["B"]["snapshot"])
    for m in ("A", "B"):
        assert first[m]["base"] is None  # full: the first of that job
        run(m, hourly)
    # one remote start to list, one per stream received: the far side's inventory is asked once
    assert [s.split()[0] for s in remote_starts(log)] == ["--list", "--no-progress"] * 2
    for _ in range(2):  # the hourly jobs run on, keeping their own last two snapshots
        run("A", hourly)
        run("B", hourly)
    second = {}
    for m in ("A", "B"):  # the off-site job stays incremental: its base was held
        second[m] = run(m, nightly)
        assert second[m]["base"] == first[m]["snapshot"]
    b_copies.add(second["B"]["snapshot"])
    for m in ("A", "B"):  # each job holds its own two newest snapshots of each source
        assert len([n for n in ours(vgs[m].name) if n.startswith("data.")]) == 4

    # nothing changed: nothing to do, and no snapshot kept for it
    before = ours(vgs["A"].name)
    code, _summary, err = nightly("A")
    assert code == 3 and ours(vgs["A"].name) == before, err
    time.sleep(1.1)

    # A's newest copy removed by hand on the target: the next run falls back to the older pair
    sh("lvremove", "-q", "-f", f"{bak.name}/{second['A']['snapshot']}")
    data = run("A", nightly)
    assert data["base"] == first["A"]["snapshot"], data

    # the ssh connection killed mid-transfer: the next run resumes, sending only the rest
    write_at(vols["A"], 8 * M, rnd.randbytes(32 * M))  # incompressible
    slow = IMAGES / "slow-link"  # 4 MiB/s towards the server: the kill lands mid-transfer
    slow.mkdir(exist_ok=True)
    (slow / "ssh").write_text(SLOW_SSH)
    (slow / "ssh").chmod(0o755)
    proc = subprocess.Popen(
        [str(BIN / "lvsync"), "--json", *ssh, *keep, f"{vgs['A'].name}/data", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"},
    )

    def started() -> bool:
        return any("lvdiff_incomplete" in lv_tags(bak.name, n) for n in lv_names(bak.name))

    wait_for(started, "the transfer to start")
    time.sleep(2)
    subprocess.run(["pkill", "-KILL", "-x", "ssh"], check=False)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err.decode()  # transient: worth a retry
    cut = next(n for n in lv_names(bak.name) if "lvdiff_incomplete" in lv_tags(bak.name, n))
    assert "lvdiff_resume:" in lv_tags(bak.name, cut)
    time.sleep(1.1)
    code, summary, err = nightly("A")
    data = outcome(summary, f"{vgs['A'].name}/data")
    assert code == 0 and data["resumed"] == cut, err
    assert 0 < data["resumed_bytes"] < 32 * M  # only the rest
    assert same(vgs["A"], cut, bak, cut)
    # retention pruned A's oldest copy there, and never one of B's
    assert data["pruned_there"] == [first["A"]["snapshot"]], data
    assert b_copies <= lv_names(bak.name)

    # machine A's `extra` removed: that source fails alone, `data` still syncs (exit 2); its
    # earlier snapshots are copies of it and stay, and no new one is taken
    sh("lvremove", "-q", "-f", f"{vgs['A'].name}/extra")
    extras = [n for n in ours(vgs["A"].name) if n.startswith("extra.")]
    change(rnd, vols["A"], sizes["A"] * M)
    code, summary, err = hourly("A")
    extra = outcome(summary, f"{vgs['A'].name}/extra")
    assert code == 2 and extra["status"] == "failed" and "not found" in extra["error"], err
    assert outcome(summary, f"{vgs['A'].name}/data")["status"] == "synced"
    assert [n for n in ours(vgs["A"].name) if n.startswith("extra.")] == extras

    # a target VG of two pools is refused before anything is snapshotted
    two = loop_vg(prefix="two", size_mb=128)
    two.pool("p1", size_mb=32)
    two.pool("p2", size_mb=32)
    before = ours(vgs["A"].name)
    code, summary, err = lvsync(*keep, f"{vgs['A'].name}/data", two.name)
    assert code == 2 and "p1, p2" in err and ours(vgs["A"].name) == before, err

    # machine B's directory: its chain restores bit-exact
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=100)
    code, summary, err = lvsync("--restore", f"dir:{store}", f"{dst.name}/pool")
    assert code == 0, err
    (chain,) = summary["chains"]
    assert same(vgs["B"], chain["volumes"][-1], dst, chain["volumes"][-1])
