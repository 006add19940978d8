#!/usr/bin/env python3
"""Take down everything the tests stacked on the rig's loop devices, so its tmpfs unmounts.

Tests build loop devices over image files on the rig's tmpfs, LVM volume
groups on those, and sometimes device-mapper or loop devices over *those*
(a PV on a loop over a dm device over a loop, to inject read errors).  A
test that fails half-way can leave any of it, and a loop whose image was
already deleted no longer shows up by file name.  So: find every block
device that depends on our images (loops backed by them, their holders, and
loops backed by any of those, to a fixed point), then unmount, deactivate
and detach from the top down.  Only devices built on our own images are
touched, so this is safe on a real server.  Stdlib only.

usage: rig/teardown.py IMAGES_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SYS = Path("/sys/class/block")


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.stdout


def loop_backing() -> dict[str, str]:
    """loopN -> its backing file as the kernel reports it (may end in " (deleted)")."""
    found = {}
    for dev in SYS.glob("loop*"):
        f = dev / "loop" / "backing_file"
        if f.exists():
            found[dev.name] = f.read_text().strip()
    return found


def ours(images: str) -> set[str]:
    """Names (loop3, dm-5) of every block device that depends on a file under ``images``."""
    backing = loop_backing()
    mine = {n for n, f in backing.items() if f.startswith(images.rstrip("/") + "/")}
    while True:
        more = set(mine)
        for name in mine:
            holders = SYS / name / "holders"
            if holders.is_dir():
                more.update(h.name for h in holders.iterdir())
        nodes = {os.path.realpath(f"/dev/{n}") for n in more}
        nodes |= {
            os.path.realpath(f"/dev/mapper/{dm_name(n)}") for n in more if n.startswith("dm-")
        }
        more.update(n for n, f in backing.items() if os.path.realpath(f) in nodes)
        if more == mine:
            return mine
        mine = more


def dm_name(dev: str) -> str:
    p = SYS / dev / "dm" / "name"
    return p.read_text().strip() if p.exists() else dev


def depth(dev: str, seen: frozenset[str] = frozenset()) -> int:
    """How many devices sit on top of ``dev``: take down the highest first."""
    holders = SYS / dev / "holders"
    if dev in seen or not holders.is_dir():
        return 0
    return max((1 + depth(h.name, seen | {dev}) for h in holders.iterdir()), default=0)


def main(images: str) -> int:
    for line in reversed(run("findmnt", "-rn", "-o", "TARGET").splitlines()):
        if line.startswith(images.rstrip("/") + "/"):
            run("umount", "-l", line)
    # processes a test started and left behind with files open there (a server, say)
    run("fuser", "-k", "-M", "-m", images)
    mine = ours(images)
    if not mine:
        return 0
    devs = [f"/dev/{n}" for n in mine if n.startswith("loop")]
    for vg in set(run("pvs", "--noheadings", "-o", "vg_name", *devs).split()):
        run("vgchange", "-q", "-an", vg)
        run("vgremove", "-q", "-ff", "-y", vg)
    for _ in range(3):  # a device held open a moment longer gets another chance
        for name in sorted(ours(images), key=depth, reverse=True):
            for holder_mount in run("findmnt", "-rn", "-S", f"/dev/{name}", "-o", "TARGET").split():
                run("umount", "-l", holder_mount)
            if name.startswith("dm-"):
                run("dmsetup", "remove", "--retry", dm_name(name))
            else:
                run("losetup", "-d", f"/dev/{name}")
        if not ours(images):
            return 0
    left = ", ".join(sorted(ours(images)))
    print(f"rig: could not take down {left}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
