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


def test_exit_code_tables_come_from_one_place():
    """--help and the README say what lvdiff.exitcodes says, for every tool."""
    from lvdiff import cli, errors, exitcodes

    readme = (ROOT / "README.md").read_text()
    for tool in ("lvdiff", "lvsync", "lvrepo"):  # lvpatch's is lvdiff's
        assert exitcodes.markdown_table(tool) in readme, tool
    for tool, parser in (
        ("lvdiff", cli.lvdiff_parser()),
        ("lvpatch", cli.lvpatch_parser()),
        ("lvsync", cli.lvsync_parser()),
        ("lvrepo", cli.lvrepo_parser()),
    ):
        assert exitcodes.help_table(tool) in parser.epilog, tool
    codes = {code for table in exitcodes.TABLES.values() for code, _ in table}
    for cls in (errors.LvdiffError, *_subclasses(errors.LvdiffError)):
        assert cls.exit_code in codes, cls


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]
