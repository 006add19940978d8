"""Helpers for real-kernel tests: loop-backed VGs and thin pools that clean up after themselves.

Tests run under ``rig/env.sh`` (inside the throwaway VM or on a server with
dm-thin), which provides a private loop-only LVM configuration and a tmpfs
for images in ``$LVDIFF_RIG_IMAGES``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(os.environ.get("LVDIFF_RIG_IMAGES", "/nonexistent"))
THIN_TOOLS = {
    "0.9": None,  # Debian 12's C++ tools, on PATH
    "1.1": ROOT / ".cache" / "thin-tools-1.1.0" / "usr" / "sbin",
}
_serial = itertools.count()


def sh(*argv: str | int, input: bytes | None = None, check: bool = True) -> str:
    """Run a command (argument list, no shell); fail the test with its stderr."""
    args = [str(a) for a in argv]
    proc = subprocess.run(args, input=input, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} -> exit {proc.returncode}\n{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout.decode(errors="replace")


def slow_thin_delta(folder: Path, seconds: int = 20) -> str:
    """thin_delta 0.9 that first sleeps: lvdiff holds the pool's metadata snapshot meanwhile.

    lvdiff keeps that reservation only while thin_delta runs, so a test that
    interrupts lvdiff while it holds one needs thin_delta to take its time.
    """
    real = shutil.which(thin_tool("0.9", "thin_delta"))
    path = folder / "slow_thin_delta"
    path.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && exec {real} --version\n'
        f'sleep {seconds}\nexec {real} "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


def thin_tool(generation: str, name: str) -> str:
    """Path of `name` (thin_delta, thin_dump) from one tools generation, version-checked."""
    folder = THIN_TOOLS[generation]
    path = name if folder is None else str(folder / name)
    version = sh(path, "--version").strip()
    assert version.startswith(generation + "."), f"{path} is {version}, wanted {generation}.x"
    return path


@dataclass
class LoopVG:
    """A volume group on one loop device whose image lives on the rig's tmpfs."""

    name: str
    size_mb: int = 512
    image: Path = field(init=False)
    loop: str = field(init=False)

    def __post_init__(self) -> None:
        self.image = IMAGES / f"{self.name}.img"
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb << 20)
        self.loop = sh("losetup", "-f", "--show", self.image).strip()
        sh("vgcreate", "-q", "-s", "1m", self.name, self.loop)

    def pool(
        self,
        name: str = "pool",
        size_mb: int = 256,
        chunk_kb: int = 64,
        zero: bool = True,
        metadata_mb: int = 8,
    ) -> str:
        sh(
            "lvcreate",
            "-q",
            "--type",
            "thin-pool",
            "-L",
            f"{size_mb}m",
            "--poolmetadatasize",
            f"{metadata_mb}m",
            "-c",
            f"{chunk_kb}k",
            "-Z",
            "y" if zero else "n",
            "-n",
            name,
            self.name,
        )
        return name

    def thin(self, name: str, size_mb: int, pool: str = "pool") -> str:
        sh("lvcreate", "-q", "-T", f"{self.name}/{pool}", "-V", f"{size_mb}m", "-n", name)
        return self.dev(name)

    def snapshot(self, origin: str, name: str, activate: bool = True) -> str:
        sh("lvcreate", "-q", "-s", "-n", name, f"{self.name}/{origin}")
        if activate:
            sh("lvchange", "-ay", "-K", f"{self.name}/{name}")
        return self.dev(name)

    def dev(self, lv: str) -> str:
        return f"/dev/{self.name}/{lv}"

    def thin_id(self, lv: str) -> int:
        out = sh("lvs", "--noheadings", "-o", "thin_id", f"{self.name}/{lv}")
        return int(out.strip())

    def tpool(self, pool: str = "pool") -> str:
        return f"{self.name.replace('-', '--')}-{pool.replace('-', '--')}-tpool"

    def tmeta(self, pool: str = "pool") -> str:
        return f"/dev/mapper/{self.name.replace('-', '--')}-{pool.replace('-', '--')}_tmeta"

    def held_metadata_root(self, pool: str = "pool") -> str:
        """Field 4 of the thin-pool status: '-' when no metadata snapshot is held."""
        return sh("dmsetup", "status", self.tpool(pool)).split()[6]

    def remove(self) -> None:
        sh("vgremove", "-ff", "-y", self.name, check=False)
        sh("losetup", "-d", self.loop, check=False)
        self.image.unlink(missing_ok=True)


def new_vg_name(prefix: str = "vg") -> str:
    return f"lvdt{prefix}{os.getpid()}x{next(_serial)}"


def write_at(dev: str, offset: int, data: bytes) -> None:
    """Write and flush past the page cache, so thin metadata sees the blocks."""
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(dev: str, offset: int, length: int) -> None:
    sh("blkdiscard", "-o", offset, "-l", length, dev)


def sha256_of(dev: str) -> str:
    h = hashlib.sha256()
    with open(dev, "rb", buffering=0) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def tool(
    name: str,
    *args: str | int,
    generation: str = "0.9",
    stdin: bytes | None = None,
    stdin_file: Path | None = None,
    stdout_file: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the lvdiff or lvpatch command as a user would, with one thin_delta generation."""
    env = {**os.environ, "LVDIFF_THIN_DELTA": thin_tool(generation, "thin_delta"), **(env or {})}
    inp = open(stdin_file, "rb") if stdin_file else None  # noqa: SIM115
    out = open(stdout_file, "wb") if stdout_file else None  # noqa: SIM115
    try:
        return subprocess.run(
            [str(BIN / name), *map(str, args)],
            env=env,
            cwd=cwd,
            check=False,
            input=stdin,
            stdin=inp if stdin is None else None,
            stdout=out or subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        for f in (inp, out):
            if f:
                f.close()


def lv_names(vg: str) -> set[str]:
    return set(sh("lvs", "--noheadings", "-o", "lv_name", vg).split())


def lv_tags(vg: str, lv: str) -> str:
    return sh("lvs", "--noheadings", "-o", "lv_tags", f"{vg}/{lv}").strip()


def committed(vg: str, lv: str) -> bool:
    """lvpatch finished with it: it carries its identity and nothing else of ours."""
    found = lv_tags(vg, lv).split(",")
    return len(found) == 1 and found[0].startswith("lvdiff_identity:")


def lv_attr(vg: str, lv: str) -> str:
    return sh("lvs", "--noheadings", "-o", "lv_attr", f"{vg}/{lv}").strip()


def lv_uuid(vg: str, lv: str) -> str:
    return sh("lvs", "--noheadings", "-o", "lv_uuid", f"{vg}/{lv}").strip()


def resize(vg: str, lv: str, size_mb: int) -> None:
    """Resize a volume whatever is on it (lvm2 2.03.17+ checks filesystems unless told not to)."""
    fs = ["--fs", "ignore"] if "--fs" in sh("lvresize", "--help") else []
    sh("lvresize", "-q", "-f", *fs, "-L", f"{size_mb}m", f"{vg}/{lv}")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def lvpatch_cut_off(
    data: bytes, fraction: float, until: Callable[[], bool], *args: str, sig: int = signal.SIGKILL
) -> subprocess.Popen[bytes]:
    """Start lvpatch, feed it part of a stream, and signal it once ``until()`` holds.

    Returns the process after it exited; its stdin is closed only then, so the
    signal (not the end of input) is what stopped it.
    """
    proc = subprocess.Popen(
        [str(BIN / "lvpatch"), *args], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(data[: int(len(data) * fraction)])
    proc.stdin.flush()
    wait_for(until, "lvpatch to get going")
    time.sleep(1)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    proc.stdin.close()
    return proc
