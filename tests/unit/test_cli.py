"""Command-line behaviour that needs no kernel: parsing, refusals, messages."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from lvdiff import cli
from lvdiff.stream import Header

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


def test_describe_escapes_stream_text():
    h = Header(
        kind="full",
        volume_size=1 << 20,
        chunk_size=65536,
        vg="vg",
        pool="pool",
        transaction_id=1,
        new={"name": "vol", "uuid": "u", "thin_id": 1},
        compression="zstd",
        detect_level=2,
        meta=[("k\x1b[31m", "v\nx\x07"), ("url", "http://x:8080")],
    )
    text = cli.describe(h)
    assert "\x1b" not in text and "\x07" not in text and "v\nx" not in text
    assert "url: http://x:8080" in text and "size 1048576 bytes" in text
