"""Clear failures: source read errors, concurrent runs, bad names, hostile and damaged streams."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import threading

from lvdiff import fingerprint as fpr
from lvdiff.blockdev import BlockDevice
from lvdiff.stream import StreamReader, StreamWriter, VolumeRef, encode_data, encode_zero

from ..builders import make_header
from .lvmrig import IMAGES, LoopVG, lv_names, new_vg_name, sh, thin_tool, tool, write_at

M = 1 << 20


class ErrorVG(LoopVG):
    """A VG whose PV is a loop device over a dm device we can turn into dm-error.

    loop(image) -> dm linear (skipping 1 MiB, so the lower loop shows no PV
    label) -> loop (the PV: the rig's LVM accepts only loop devices).
    """

    def __post_init__(self) -> None:
        self.image = IMAGES / f"{self.name}.img"
        with open(self.image, "wb") as f:
            f.truncate((self.size_mb + 1) << 20)
        self.lower = sh("losetup", "-f", "--show", self.image).strip()
        self.dm = f"{self.name}-under"
        self.sectors = self.size_mb * 2048
        sh("dmsetup", "create", self.dm, "--table", f"0 {self.sectors} linear {self.lower} 2048")
        self.loop = sh("losetup", "-f", "--show", f"/dev/mapper/{self.dm}").strip()
        sh("vgcreate", "-q", "-s", "1m", self.name, self.loop)

    def fail_range(self, start: int, length: int) -> None:
        """Make bytes [start, start+length) of the PV return EIO."""
        s, n = start // 512, length // 512
        table = (
            f"0 {s} linear {self.lower} 2048\n{s} {n} error\n"
            f"{s + n} {self.sectors - s - n} linear {self.lower} {2048 + s + n}\n"
        )
        sh("dmsetup", "suspend", self.dm)
        sh("dmsetup", "reload", self.dm, input=table.encode())
        sh("dmsetup", "resume", self.dm)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    def remove(self) -> None:
        super().remove()
        sh("dmsetup", "remove", self.dm, check=False)
        sh("losetup", "-d", self.lower, check=False)


def test_source_read_error_gives_a_stream_lvpatch_refuses(loop_vg):
    src = ErrorVG(new_vg_name("err"), 160)
    try:
        src.pool(size_mb=64)
        vol = src.thin("vol", 32)
        write_at(vol, 0, random.Random(5).randbytes(16 * M))
        src.snapshot("vol", "snap")
        pe_start = int(
            sh(
                "pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", src.loop
            ).strip()
        )
        ranges = sh(
            "lvs", "-a", "--noheadings", "-o", "seg_pe_ranges", f"{src.name}/pool_tdata"
        ).strip()
        first_pe = int(ranges.split(":")[1].split("-")[0])
        tdata = pe_start + first_pe * M
        src.fail_range(tdata + 8 * M, 4 * M)  # inside the 16 MiB the volume mapped
        stream = IMAGES / "readerr.lvd"
        res = tool("lvdiff", "-d", "0", f"{src.name}/snap", stdout_file=stream)
        err = res.stderr.decode()
        assert res.returncode == 1 and "read error" in err and "Input/output error" in err, err
        assert len(err.strip().splitlines()) == 1
        assert src.held_metadata_root() == "-"
        assert lv_names(src.name) == {"pool", "vol", "snap"}

        dst = loop_vg(prefix="dst")
        dst.pool(size_mb=64)
        res = tool("lvpatch", "-g", dst.name, "-p", "pool", stdin_file=stream)
        assert res.returncode == 3 and "END" in res.stderr.decode(), res.stderr.decode()
        assert lv_names(dst.name) == {"pool"}
    finally:
        src.remove()


def test_concurrent_lvdiff_runs_on_one_pool_are_serialised(loop_vg):
    src = loop_vg(prefix="src")
    src.pool(size_mb=100)
    vol = src.thin("vol", 16)
    write_at(vol, 0, os.urandom(8 * M))
    src.snapshot("vol", "a")
    src.snapshot("vol", "b")
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    def run(name: str) -> None:
        results[name] = tool(
            "lvdiff",
            f"{src.name}/{name}",
            stdout_file=IMAGES / f"conc-{name}.lvd",
        )

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, res in results.items():
        assert res.returncode == 0, res.stderr.decode()
        with open(IMAGES / f"conc-{name}.lvd", "rb") as f:
            r = StreamReader(f)
            assert r.header.new.name == name
            assert sum(rec.length for rec in r) > 0 and r.complete
    assert src.held_metadata_root() == "-"


def test_clear_one_line_errors(loop_vg):
    vg = loop_vg()
    vg.pool("p1", size_mb=40)
    vg.pool("p2", size_mb=40)
    vg.thin("t1", 8, pool="p1")
    vg.thin("t2", 8, pool="p2")
    sh("lvcreate", "-q", "-L", "8m", "-n", "plain", vg.name)

    def fails(code: int, text: str, *args: str) -> None:
        res = tool("lvdiff", *args, stdout_file=IMAGES / "err.lvd")
        err = res.stderr.decode().strip()
        assert res.returncode == code and text in err, err
        assert len(err.splitlines()) == 1, err

    fails(2, "not found", f"{vg.name}/nope")
    fails(2, "not found", "novg/t1")
    fails(2, "not in one thin pool", f"{vg.name}/t1", f"{vg.name}/t2")
    fails(2, "not p2", "-p", "p2", f"{vg.name}/t1")
    fails(2, "not a thin volume", f"{vg.name}/plain")
    fails(2, "needs a volume group", "t1")
    sh("lvchange", "-q", "-an", "-p", "r", f"{vg.name}/plain")
    sh("lvcreate", "-q", "-s", "--thinpool", f"{vg.name}/p1", "-n", "ext", f"{vg.name}/plain")
    fails(2, "external origin", f"{vg.name}/ext")
    # lvm2 reports a snapshot of it with the thin parent as origin, and hands the
    # external origin down: only the device-mapper table tells
    sh("lvcreate", "-q", "-s", "-n", "extsnap", f"{vg.name}/ext")
    fails(2, "external origin", f"{vg.name}/extsnap")
    stream = IMAGES / "t1.lvd"
    assert tool("lvdiff", f"{vg.name}/t1", stdout_file=stream).returncode == 0
    for pool, text in (("nopool", "not found"), ("t2", "not a thin pool")):
        res = tool("lvpatch", "-g", vg.name, "-p", pool, "copy", stdin_file=stream)
        last = res.stderr.decode().strip().splitlines()[-1]  # after the announcement
        assert res.returncode == 2 and last.startswith("lvpatch: error:") and text in last, last
    assert "copy" not in lv_names(vg.name)
    # a stream is read (and refused) before anything is asked of LVM
    res = tool("lvpatch", "-g", "novg", "-p", "pool", stdin=b"\x89LVDIFF\n")
    assert res.returncode == 3 and "truncated" in res.stderr.decode()


def test_unsafe_or_missing_tools_refused(loop_vg, tmp_path):
    vg = loop_vg()
    vg.pool(size_mb=40)
    vg.thin("t", 8)
    real = shutil.which(thin_tool("0.9", "thin_delta"))
    for version, ok in (("1.0.0", False), ("1.0.5", False), ("1.0.6", True)):
        fake = tmp_path / f"thin_delta-{version}"
        fake.write_text(
            f'#!/bin/sh\n[ "$1" = --version ] && echo {version} && exit 0\nexec {real} "$@"\n'
        )
        fake.chmod(0o755)
        res = tool(
            "lvdiff",
            f"{vg.name}/t",
            stdout_file=IMAGES / "v.lvd",
            env={"LVDIFF_THIN_DELTA": str(fake)},
        )
        err = res.stderr.decode()
        if ok:
            assert res.returncode == 0, err
        else:
            assert res.returncode == 2 and version in err and "unsafe" in err, err
    res = tool(
        "lvdiff",
        f"{vg.name}/t",
        stdout_file=IMAGES / "v.lvd",
        env={"LVDIFF_THIN_DELTA": "/nonexistent/thin_delta"},
    )
    assert res.returncode == 2 and "install thin-provisioning-tools" in res.stderr.decode()
    res = tool(
        "lvdiff",
        f"{vg.name}/t",
        stdout_file=IMAGES / "v.lvd",
        env={"PATH": str(tmp_path), "LVDIFF_THIN_DELTA": real},
    )  # no lvm2 commands
    assert res.returncode == 2 and "install lvm2" in res.stderr.decode(), res.stderr.decode()


def test_target_base_with_an_external_origin_gets_zeros_not_discards(loop_vg):
    """A discarded chunk of such a volume would read the origin's data, not zeros."""
    vg = loop_vg()
    vg.pool(size_mb=40)
    sh("lvcreate", "-q", "-L", "8m", "-n", "plain", vg.name)
    write_at(vg.dev("plain"), 0, random.Random(6).randbytes(8 * M))
    sh("lvchange", "-q", "-an", "-p", "r", f"{vg.name}/plain")
    sh(
        "lvcreate",
        "-q",
        "-s",
        "-k",
        "n",
        "--thinpool",
        f"{vg.name}/pool",
        "-n",
        "base",
        f"{vg.name}/plain",
    )
    with BlockDevice(vg.dev("base")) as d:
        base = d.read(0, 8 * M)
    new = bytearray(base)
    new[M : 3 * M] = bytes(2 * M)  # whole chunks of zeros in NEW
    new[5 * M : 5 * M + 4096] = b"n" * 4096

    def fp(buf: bytes) -> fpr.Fingerprint:
        return fpr.compute(3, lambda o, n: buf[o : o + n], len(buf), 65536, "", None)

    out = io.BytesIO()
    w = StreamWriter(
        out,
        make_header(
            kind="incremental",
            volume_size=8 * M,
            base_size=8 * M,
            base=VolumeRef("base", "b", 1, "base-id"),
            new=VolumeRef("new", "n", 2, "new-id"),
            compression="none",
            detect_level=3,
            base_fingerprint=fp(base),
            new_fingerprint=fp(bytes(new)),
        ),
    )
    w.write_record(encode_zero(M, 2 * M))
    w.write_record(encode_data(5 * M, b"n" * 4096, None))
    w.close()
    res = tool("lvpatch", "-g", vg.name, "-l", "base", stdin=out.getvalue())
    err = res.stderr.decode()
    assert res.returncode == 0 and "external origin" in err, err
    with BlockDevice(vg.dev("new")) as d:
        assert d.read(0, 8 * M) == bytes(new)
