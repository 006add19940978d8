"""kill -9 of lvdiff and lvpatch: what they leave is recognised and cleaned up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

from .lvmrig import (
    BIN,
    IMAGES,
    committed,
    lv_names,
    lv_tags,
    lvpatch_cut_off,
    sh,
    sha256_of,
    slow_thin_delta,
    tool,
    wait_for,
    write_at,
)

M = 1 << 20


def test_kill9_leftovers_are_recovered(loop_vg, tmp_path):
    rnd = random.Random(3)
    src = loop_vg(prefix="src")
    src.pool(size_mb=120)
    vol = src.thin("vol", 32)
    src.snapshot("vol", "base")
    write_at(vol, 0, rnd.randbytes(24 * M))  # vol stays active and writable
    env = dict(os.environ, LVDIFF_THIN_DELTA=slow_thin_delta(tmp_path))

    # lvdiff killed while it holds the reservation (thin_delta is slow) and temp snapshots
    proc = subprocess.Popen(
        [str(BIN / "lvdiff"), "-d", "1", f"{src.name}/base", f"{src.name}/vol"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: src.held_metadata_root() != "-", "lvdiff to reserve metadata")
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)  # lvdiff, and its thin_delta
    proc.wait()
    proc.stdout.close()
    # base and vol are both active and writable, so each was read through a temp snapshot
    temps = [n for n in lv_names(src.name) if n.startswith("lvdiff_")]
    assert len(temps) == 2 and all(lv_tags(src.name, t) == "lvdiff_temp" for t in temps)
    assert src.held_metadata_root() != "-"

    # the next lvdiff recognises both as its own, cleans up and succeeds
    stream = IMAGES / "recovery.lvd"
    res = tool(
        "lvdiff",
        f"{src.name}/base",
        f"{src.name}/vol",
        stdout_file=stream,
    )
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert "left by a killed lvdiff" in err and "metadata snapshot a killed lvdiff" in err
    assert lv_names(src.name) == {"pool", "vol", "base"}
    assert src.held_metadata_root() == "-"

    # a reservation held by another tool is never released
    sh("dmsetup", "message", src.tpool(), "0", "reserve_metadata_snap")
    held = src.held_metadata_root()
    res = tool(
        "lvdiff",
        f"{src.name}/base",
        f"{src.name}/vol",
        stdout_file=IMAGES / "refused.lvd",
    )
    err = res.stderr.decode()
    assert (
        res.returncode != 0 and f"dmsetup message {src.tpool()} 0 release_metadata_snap" in err
    ), err
    assert src.held_metadata_root() == held
    assert not (IMAGES / "refused.lvd").exists() or (IMAGES / "refused.lvd").stat().st_size == 0
    sh("dmsetup", "message", src.tpool(), "0", "release_metadata_snap")

    # lvpatch killed half-way: the target is visibly incomplete, then cleaned up
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=120)
    dst.thin("base", 32)
    base_sum = sha256_of(dst.dev("base"))
    data = stream.read_bytes()
    created = lambda: "vol" in lv_names(dst.name)  # noqa: E731
    lvpatch_cut_off(data, 1 / 2, created, "-g", dst.name, "-l", "base")
    assert "lvdiff_incomplete" in lv_tags(dst.name, "vol").split(",")  # lvs shows which
    res = tool("lvpatch", "-g", dst.name, "--cleanup")
    assert res.returncode == 0 and "removed" in res.stderr.decode(), res.stderr.decode()
    assert lv_names(dst.name) == {"pool", "base"}
    assert sha256_of(dst.dev("base")) == base_sum

    # killed again, and this time the next lvpatch cleans up by itself and restores
    lvpatch_cut_off(data, 1 / 3, created, "-g", dst.name, "-l", "base")
    res = tool("lvpatch", "-g", dst.name, "-l", "base", stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert committed(dst.name, "vol")
    assert sha256_of(dst.dev("vol")) == sha256_of(src.dev("vol"))
    stream.unlink()


def test_sigterm_cleans_up_at_once(loop_vg, tmp_path):
    src = loop_vg(prefix="src")
    src.pool(size_mb=100)
    vol = src.thin("vol", 32)
    write_at(vol, 0, random.Random(4).randbytes(24 * M))
    env = dict(os.environ, LVDIFF_THIN_DELTA=slow_thin_delta(tmp_path))
    proc = subprocess.Popen(
        [str(BIN / "lvdiff"), f"{src.name}/vol"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: src.held_metadata_root() != "-", "lvdiff to reserve metadata")
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)  # reading stdout lets it reach the handler
    assert proc.returncode == 130, err.decode()
    assert src.held_metadata_root() == "-"
    assert lv_names(src.name) == {"pool", "vol"}  # its temp snapshot is gone

    stream = IMAGES / "term.lvd"
    res = tool("lvdiff", f"{src.name}/vol", stdout_file=stream)
    assert res.returncode == 0, res.stderr.decode()
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=100)
    # SIGTERM while it waits for the rest of the stream
    proc = lvpatch_cut_off(
        stream.read_bytes(),
        1 / 2,
        lambda: "vol" in lv_names(dst.name),
        "-g",
        dst.name,
        "-p",
        "pool",
        sig=signal.SIGTERM,
    )
    err = proc.stderr.read().decode()
    assert proc.returncode == 130 and "interrupted" in err, err
    assert lv_names(dst.name) == {"pool"}, err
    stream.unlink()
