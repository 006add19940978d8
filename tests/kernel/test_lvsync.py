"""lvsync on real LVM, to a real OpenSSH server on loopback and to a directory of streams."""

from __future__ import annotations

import hashlib
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


def test_over_ssh_runs_resumes_falls_back_and_prunes(loop_vg, sshd):
    rnd = random.Random(51)
    src = loop_vg(prefix="src")
    src.pool(size_mb=200)
    vol = src.thin("vol", 48)
    write_at(vol, 0, rnd.randbytes(8 * M))
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=300)
    target = f"root@127.0.0.1:{dst.name}/pool"
    args = [*sshd, "--keep-last", "2", f"{src.name}/vol", target]

    for run in range(5):  # five nights, each bit-exact, two kept on each side
        if run:
            change(rnd, vol, 48 * M)
        code, summary, err = lvsync(*args)
        assert code == 0, err
        newest = ours(src.name)[-1]
        assert summary["jobs"][0]["volumes"][0]["snapshot"] == newest
        assert same(src, newest, dst, newest), f"run {run}"
        time.sleep(1.1)  # snapshot names have one-second resolution
    assert ours(src.name) == ours(dst.name) and len(ours(src.name)) == 2
    assert all(lv_tags(dst.name, n).count("lvdiff_identity:") == 1 for n in ours(dst.name))

    # nothing changed: nothing to do, and no snapshot kept for it
    before = ours(src.name)
    code, _summary, err = lvsync(*args)
    assert code == 3 and ours(src.name) == before, err
    time.sleep(1.1)

    # the newest copy removed by hand on the target: the run falls back to the older pair
    sh("lvremove", "-q", "-f", f"{dst.name}/{before[-1]}")
    change(rnd, vol, 48 * M)
    code, summary, err = lvsync(*args)
    volume = summary["jobs"][0]["volumes"][0]
    assert code == 0 and volume["base"] == before[0], err
    assert same(src, volume["snapshot"], dst, volume["snapshot"])
    time.sleep(1.1)

    # the ssh connection killed mid-transfer: the next run resumes, sending only the rest
    write_at(vol, 8 * M, rnd.randbytes(40 * M))  # incompressible
    slow = IMAGES / "slow-link"  # 4 MiB/s towards the server: the kill lands mid-transfer
    slow.mkdir(exist_ok=True)
    (slow / "ssh").write_text(SLOW_SSH)
    (slow / "ssh").chmod(0o755)
    proc = subprocess.Popen(
        [str(BIN / "lvsync"), "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"},
    )

    def started() -> bool:
        return any("lvdiff_incomplete" in lv_tags(dst.name, n) for n in lv_names(dst.name))

    wait_for(started, "the transfer to start")
    time.sleep(3)
    subprocess.run(["pkill", "-KILL", "-x", "ssh"], check=False)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err.decode()  # transient: worth a retry
    cut = next(n for n in lv_names(dst.name) if "lvdiff_incomplete" in lv_tags(dst.name, n))
    assert "lvdiff_resume:" in lv_tags(dst.name, cut)
    time.sleep(1.1)
    code, summary, err = lvsync(*args)
    volume = summary["jobs"][0]["volumes"][0]
    assert code == 0 and volume["resumed"] == cut, err
    assert 0 < volume["resumed_bytes"] < 40 * M  # less than the whole stream again
    assert same(src, cut, dst, cut)
    assert ours(src.name) == ours(dst.name) and len(ours(dst.name)) == 2


def test_to_a_directory_then_the_whole_chain_restored(loop_vg):
    rnd = random.Random(52)
    src = loop_vg(prefix="src")
    src.pool(size_mb=100)
    vol = src.thin("vol", 16)
    write_at(vol, 0, rnd.randbytes(4 * M))
    store = IMAGES / "streams"
    for run in range(5):
        if run:
            change(rnd, vol, 16 * M)
        code, _summary, err = lvsync("--keep-last", "10", f"{src.name}/vol", f"dir:{store}")
        assert code == 0, err
        time.sleep(1.1)
    manifest = json.loads((store / "manifest.json").read_text())["streams"]
    assert [s["kind"] for s in manifest] == ["full"] + ["incremental"] * 4
    for s in manifest:  # each stream's SHA-256 is kept, to check it by
        digest = hashlib.sha256((store / s["file"]).read_bytes()).hexdigest()
        assert s["digest"] == f"sha256:{digest}"
    # a dry run says what it would send, and changes nothing
    change(rnd, vol, 16 * M)
    before = ours(src.name)
    code, summary, err = lvsync("-n", "--keep-last", "10", f"{src.name}/vol", f"dir:{store}")
    volume = summary["jobs"][0]["volumes"][0]
    assert code == 0 and volume["status"] == "would-sync", err
    assert volume["base"] == before[-1] and volume["estimate"]["bytes_to_read"] > 0
    assert ours(src.name) == before
    assert json.loads((store / "manifest.json").read_text())["streams"] == manifest
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=100)
    code, summary, err = lvsync("--restore", f"dir:{store}", f"{dst.name}/pool")
    assert code == 0, err
    assert summary["restored"]["vol"] == ours(src.name)
    for name in ours(src.name):
        assert same(src, name, dst, name), name
