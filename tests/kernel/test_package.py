"""The Debian package, installed in the guest, runs the seed README's example.

scripts/test builds it (scripts/build-deb) before this suite; the guest's /usr
and /var are throwaway overlays, so installing it there changes nothing on
the host.  Its tools run on Debian's python3 with Debian's python3-zstandard
(0.20), python3-xxhash (3.2) and python3-tqdm, not the checkout's virtualenv.
"""

from __future__ import annotations

import glob
import os
import subprocess

from .lvmrig import ROOT, sh


def test_debian_package_installs_and_runs_the_seed_example():
    debs = glob.glob(str(ROOT / "results" / "deb" / "lvdiff_*_all.deb"))
    assert len(debs) == 1, "scripts/build-deb makes the package before the real-kernel suite"
    sh("dpkg", "--no-triggers", "-i", debs[0])
    try:
        assert os.path.exists("/usr/share/man/man1/lvpatch.1.gz")
        assert os.path.exists("/usr/share/bash-completion/completions/lvdiff")
        where = sh(
            "/usr/bin/python3", "-c", "import lvdiff, xxhash, zstandard; print(lvdiff.__file__)"
        )
        assert where.startswith("/usr/lib/python3/dist-packages/lvdiff/")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        res = subprocess.run(
            ["bash", str(ROOT / "examples" / "seed-example.sh")],
            env={**env, "LVDIFF_BIN": "/usr/bin"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "restored vg1/vol0 holds the hello file" in res.stdout
        assert "| lvpatch -g vg1 -l sp0" in res.stdout and "hello world" in res.stdout
        assert "test.diff: OK" in res.stdout  # sha256sum -c of the line lvdiff printed
    finally:
        sh("dpkg", "--no-triggers", "-r", "lvdiff", check=False)
