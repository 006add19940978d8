"""Command-line front ends: argument parsing, messages and exit codes only.

All work happens in the library (:mod:`lvdiff.dump`, :mod:`lvdiff.apply`,
:mod:`lvdiff.imagefile`, :mod:`lvdiff.stream_check`), which other programs can call
directly.  Each command imports only its own engine, in its main function:
a tool's start is mostly imports.
"""

from .common import EXIT_CODES, Console
from .lvdiff import lvdiff_main, lvdiff_parser
from .lvpatch import lvpatch_main, lvpatch_parser, outcome
from .lvrepo import lvrepo_main, lvrepo_parser
from .lvsync import lvsync_main, lvsync_parser

__all__ = [
    "EXIT_CODES",
    "Console",
    "lvdiff_main",
    "lvdiff_parser",
    "lvpatch_main",
    "lvpatch_parser",
    "outcome",
    "lvsync_main",
    "lvsync_parser",
    "lvrepo_main",
    "lvrepo_parser",
]
