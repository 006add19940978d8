"""Man pages and completions come from the same parsers as --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_man_pages_and_completions_are_generated(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "gen_docs.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    page = (tmp_path / "man" / "lvpatch.1").read_text()
    assert page.startswith(".TH LVPATCH") and "lvpatch \\- rebuild" in page
    for option in ("\\-\\-to\\-file", "\\-\\-check", "\\-\\-writable", "exit status"):
        assert option in page, option
    assert "\\-\\-dry\\-run" in (tmp_path / "man" / "lvdiff.1").read_text()
    bash = (tmp_path / "bash" / "lvdiff").read_text()
    assert "--compress" in bash and "complete" in bash
    subprocess.run(["bash", "-n", str(tmp_path / "bash" / "lvpatch")], check=True)
    assert "--from-file" in (tmp_path / "zsh" / "_lvpatch").read_text()
