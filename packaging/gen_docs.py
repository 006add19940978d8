#!/usr/bin/env python3
"""Man pages and shell completions for lvdiff and lvpatch, made from their argparse parsers.

So the pages can never disagree with ``--help``: argparse-manpage renders
each parser as troff, shtab writes bash and zsh completion scripts.  Run at
build time (the Debian package's rules, scripts/build-deb) into OUTDIR:

    OUTDIR/man/lvdiff.1  OUTDIR/man/lvpatch.1  OUTDIR/man/lvsync.1  OUTDIR/man/lvrepo.1
    OUTDIR/bash/lvdiff   OUTDIR/bash/lvpatch   OUTDIR/bash/lvsync   OUTDIR/bash/lvrepo
    OUTDIR/zsh/_lvdiff   OUTDIR/zsh/_lvpatch   OUTDIR/zsh/_lvsync   OUTDIR/zsh/_lvrepo

Works with argparse-manpage 1.2 (Debian 12's build_manpages) and 4.x.
usage: gen_docs.py OUTDIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import shtab

try:  # argparse-manpage 2 and later
    from argparse_manpage.manpage import Manpage
except ImportError:  # 1.x, as Debian 12 packages it
    from build_manpages.manpage import Manpage

from lvdiff import __version__
from lvdiff.cli import lvdiff_parser, lvpatch_parser, lvrepo_parser, lvsync_parser

SEE_ALSO = {
    "lvdiff": "lvpatch(1), lvsync(1), lvs(8), thin_delta(8)",
    "lvpatch": "lvdiff(1), lvsync(1), lvs(8)",
    "lvsync": "lvdiff(1), lvpatch(1), lvrepo(1), ssh(1)",
    "lvrepo": "lvdiff(1), lvpatch(1), lvsync(1)",
}
WHAT = {
    "lvdiff": "write the blocks in which a thin volume differs from another as a stream",
    "lvpatch": "rebuild a thin volume (or an image file) from an lvdiff stream",
    "lvsync": "replicate thin volumes: snapshot, send what changed, resume, prune",
    "lvrepo": "a deduplicating, encrypted repository of thin volumes' backup points",
}


def manpage(parser, name: str) -> str:  # noqa: ANN001 - an argparse parser
    parser.prog = name
    text = str(Manpage(parser))
    # what the page is about, on its NAME line (whatis, apropos), and the same header for all
    text = text.replace(f".SH NAME\n{name}\n", f".SH NAME\n{name} \\- {WHAT[name]}\n", 1)
    text = text.replace('"Generated Python Manual"', '"lvdiff manual"', 1)
    return text + f"\n.SH SEE ALSO\n{SEE_ALSO[name]}\n.SH VERSION\n{name} {__version__}\n"


def main(outdir: str) -> int:
    out = Path(outdir)
    for sub in ("man", "bash", "zsh"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, make in (
        ("lvdiff", lvdiff_parser),
        ("lvpatch", lvpatch_parser),
        ("lvsync", lvsync_parser),
        ("lvrepo", lvrepo_parser),
    ):
        (out / "man" / f"{name}.1").write_text(manpage(make(), name))
        (out / "bash" / name).write_text(shtab.complete(make(), shell="bash"))
        (out / "zsh" / f"_{name}").write_text(shtab.complete(make(), shell="zsh"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
