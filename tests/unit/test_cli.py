"""Command-line behaviour that needs no kernel: parsing, refusals, messages."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from lvdiff import cli
from lvdiff.cli.lvpatch import describe_header as describe
from lvdiff.lineage import BaseCheck, Identity
from lvdiff.restored import Restored
from lvdiff.stream import Totals, VolumeRef

from ..builders import make_header

BIN = [sys.executable, "-c", "import sys; from lvdiff.cli import {0}; sys.exit({0}())"]


def run(main: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [a.format(main) for a in BIN] + list(args)
    if user:
        argv = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *argv]
    return subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def test_meta_split_at_first_colon():
    args = cli.lvdiff_parser().parse_args(["--meta", "url:http://x:1/y", "--pair", "a:", "v"])
    assert args.meta == [("url", "http://x:1/y"), ("a", "")]


@pytest.mark.parametrize(
    "argv", [["-d", "4", "v"], ["-d", "x", "v"], ["--meta", "nocolon", "v"], ["a", "b", "c"]]
)
def test_bad_arguments_exit_2(argv):
    res = run("lvdiff_main", *argv)
    assert res.returncode == 2 and "error" in res.stderr


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv")
@pytest.mark.parametrize("main", ["lvdiff_main", "lvpatch_main"])
def test_not_root_is_one_clear_line(main):
    args = ["vg/lv"] if main == "lvdiff_main" else ["-g", "vg", "-l", "base"]
    res = run(main, *args, user="65534")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "must run as root" in res.stderr


def test_help_documents_exit_codes():
    for main in ("lvdiff_main", "lvpatch_main"):
        res = run(main, "--help")
        assert res.returncode == 0 and "exit status:" in res.stdout and "130" in res.stdout
    assert "NOT ATOMIC" in run("lvpatch_main", "--help").stdout


@pytest.mark.parametrize(
    ("argv", "conflict"),
    [
        (["-g", "vg", "--list", "--prune", "lvsync_src:U/v", "n"], "--prune: not allowed with"),
        (["--check", "--to-file", "x.img"], "--to-file: not allowed with argument --check"),
        (["-g", "vg", "--cleanup", "--abandon", "n"], "not allowed with argument --cleanup"),
        (["--dump", "--check"], "not allowed with argument --dump"),
    ],
)
def test_lvpatch_modes_exclude_each_other(argv, conflict):
    """One mode per run; argparse names the two that were given together."""
    res = run("lvpatch_main", *argv)
    assert res.returncode == 2 and conflict in res.stderr


def test_help_says_which_digest_is_printed_and_why():
    for main in ("lvdiff_main", "lvpatch_main"):
        text = " ".join(run(main, "--help").stdout.split())
        assert "--digest {sha256,xxh128,none}" in text and "sha256sum --tag" in text
    text = " ".join(run("lvdiff_main", "--help").stdout.split())
    assert "sha256 (default)" in text and "someone who can alter the file" in text
    assert "--expect-digest ALG:HEX" in " ".join(run("lvpatch_main", "--help").stdout.split())


def test_describe_escapes_stream_text():
    h = make_header(meta=[("k\x1b[31m", "v\nx\x07"), ("url", "http://x:8080")])
    text = describe(h)
    assert "\x1b" not in text and "\x07" not in text and "v\nx" not in text
    assert "url: http://x:8080" in text and "size 1048576 bytes" in text


def test_help_says_what_each_level_guarantees():
    out = run("lvpatch_main", "--help").stdout + run("lvdiff_main", "--help").stdout
    assert "identity" in out and "(1-f)^k" in out and "every byte" in out
    assert "--writable" in out and "read-only" in out


def test_verified_is_said_only_when_a_check_ran():
    h = make_header(kind="incremental", base=VolumeRef("b", "ub", 1, "ub"), base_size=1 << 20)
    d0 = BaseCheck(Identity.NONE)  # a stream made with -d 0: no content check of BASE
    res = Restored(
        target="vg1/n", header=h, totals=Totals(), digest=None, base_check=d0,
        verified_level=0, read_only=True,
    )  # fmt: skip
    text = cli.outcome(res)
    assert "NOT verified" in text and "restored and verified" not in text
    assert "base not checked" in text and "read-only" in text
    both = BaseCheck(Identity.MATCHES, 2)
    res = Restored(
        target="vg1/n", header=h, totals=Totals(), digest=None, base_check=both,
        verified_level=2, read_only=False,
    )  # fmt: skip
    text = cli.outcome(res)
    assert "verified against NEW's fingerprint (level 2)" in text and "read-only" not in text
