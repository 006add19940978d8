"""lvsync from thin volumes into an S3 bucket: a real Ceph radosgw inside the guest.

The cluster runs on the guest's own loopback (127.0.0.1), so nothing leaves
the VM. Its directory is an ext4 on a loop device: the OSD opens its block
file with O_DIRECT, which tmpfs (where the rig keeps its images) refuses on
the guest's 6.1 kernel.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from ..s3server import S3Server, missing_binaries
from .lvmrig import BIN, IMAGES, lv_attr, sh, sha256_of, write_at
from .test_lvsync import change, ours

M = 1 << 20


@pytest.fixture
def s3(tmp_path: Path):  # noqa: ANN201
    if missing_binaries():
        pytest.skip("Ceph is not installed: run scripts/setup")
    image = IMAGES / "s3.ext4"
    with open(image, "wb") as f:
        f.truncate(12 << 30)  # sparse: the OSD's block file, and its log
    loop = sh("losetup", "-f", "--show", image).strip()
    sh("mkfs.ext4", "-q", "-E", "nodiscard", loop)
    where = tmp_path / "s3"
    where.mkdir()
    sh("mount", loop, where)
    server = None
    try:
        server = S3Server.start(where / "cluster")
        yield server
    finally:
        if server is not None:
            server.stop()
        sh("umount", where, check=False)
        sh("losetup", "-d", loop, check=False)
        image.unlink(missing_ok=True)


def test_lvsync_from_two_sources_into_one_bucket_every_point_out(loop_vg, s3):
    env = {**os.environ, **s3.env(), "NO_PROXY": "127.0.0.1"}
    repo = f"s3+{s3.endpoint}/{s3.bucket}/fleet"
    key = IMAGES / "s3.key"

    def run(tool: str, *args: str | os.PathLike) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / tool), *map(str, args)], capture_output=True, env=env, check=False
        )

    res = run("lvrepo", "init", repo, "--key-file", key)
    assert res.returncode == 0, res.stderr.decode()
    rnd = random.Random(71)
    sources = []
    for m in ("a", "b"):
        vg = loop_vg(prefix=f"s3{m}")
        vg.pool(size_mb=100)
        vol = vg.thin("data", 16)
        write_at(vol, 0, rnd.randbytes(6 * M))
        sources.append((vg, vol))
    names = [f"{vg.name}/data" for vg, _ in sources]
    for night in range(2):  # both sources in one run: what a run costs is the rig's budget
        for _vg, vol in sources:
            if night:
                change(rnd, vol, 16 * M)
        res = run("lvsync", "--json", "--repo-key", key, "--keep-last", "5", *names, repo)
        assert res.returncode == 0, res.stderr.decode()
        volumes = json.loads(res.stdout)["jobs"][0]["volumes"]
        assert [v["sent"]["kind"] for v in volumes] == ["incremental" if night else "full"] * 2
        time.sleep(1.1)
    points = json.loads(run("lvrepo", "--json", "list", repo, "--key-file", key).stdout)["points"]
    assert len(points) == 4 and len({p["source"]["key"] for p in points}) == 2
    dst = loop_vg(prefix="s3dst")
    dst.pool(size_mb=200)
    by_name = {ours_name: vg for vg, _ in sources for ours_name in ours(vg.name)}
    for p in points:
        vg = by_name[p["name"]]
        sh("lvchange", "-q", "-ay", "-K", f"{vg.name}/{p['name']}")
        want = sha256_of(vg.dev(p["name"]))
        res = run(
            "lvrepo", "restore", repo, p["point"], "-g", dst.name, "-p", "pool", "--key-file", key
        )
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(dst.dev(p["name"])) == want and lv_attr(dst.name, p["name"])[1] == "r"
        img = IMAGES / "s3-point.img"
        res = run("lvrepo", "restore", repo, p["point"], "--to-file", img, "--key-file", key)
        assert res.returncode == 0, res.stderr.decode()
        assert sha256_of(str(img)) == want
        img.unlink()
