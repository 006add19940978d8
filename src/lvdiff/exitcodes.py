"""Exit statuses: one definition, from which every help text and the README's tables come.

As borg's ``constants.py`` holds EXIT_SUCCESS and friends and each error class
carries its ``exit_mcode``, each :class:`lvdiff.errors.LvdiffError` carries one
of these, and ``--help`` (and so the man pages) print :func:`help_table`;
a unit test holds the README's tables to :func:`markdown_table`.

lvsync's 3 means "nothing to do", where lvdiff's and lvpatch's means "bad
stream": lvsync never reports a bad stream as such (a send that fails is a
failure, 1), and monitoring written for syncoid-like tools reads 3 as
"nothing changed".  Each tool's table says what its codes mean.
"""

from __future__ import annotations

SUCCESS = 0
FAILURE = 1  # runtime failure: I/O error, pool full, LVM state
USAGE = 2  # bad arguments or configuration, not root, missing tools, volume not found
BAD_STREAM = 3  # lvdiff/lvpatch: truncated, corrupt, hostile, newer, or not the recorded one
NOTHING_TO_DO = 3  # lvsync: no volume changed since its last sync
DAMAGED = 3  # lvrepo: a point's data failed its check (a bad stream is the same news)
NOT_THE_BASE = 4  # the target is not the stream's base
VERIFY_FAILED = 5  # the written volume does not match NEW's fingerprint
COMMAND_FAILED = 6  # an lvm, dmsetup or thin_delta command failed
TRANSIENT = 75  # EX_TEMPFAIL: worth a retry later
INTERRUPTED = 130  # 128 + SIGINT, also for SIGTERM and SIGHUP

_STREAM_TOOLS: tuple[tuple[int, str], ...] = (
    (SUCCESS, "success"),
    (FAILURE, "runtime failure (I/O error, pool full, LVM or device-mapper state)"),
    (USAGE, "usage error (bad arguments, not root, missing tools, volume not found)"),
    (
        BAD_STREAM,
        "bad stream: truncated, corrupt, hostile, from a newer major version, or not the "
        "one whose digest was expected",
    ),
    (NOT_THE_BASE, "the target is not the stream's base (base check failed)"),
    (VERIFY_FAILED, "the written volume failed verification against NEW's fingerprint"),
    (
        COMMAND_FAILED,
        "an lvm, dmsetup or thin_delta command failed (its command line and stderr shown)",
    ),
    (INTERRUPTED, "interrupted (SIGINT/SIGTERM/SIGHUP); everything was cleaned up"),
)

TABLES: dict[str, tuple[tuple[int, str], ...]] = {
    "lvdiff": _STREAM_TOOLS,
    "lvpatch": _STREAM_TOOLS,
    "lvsync": (
        (SUCCESS, "every volume synced (or, with --dry-run, would be)"),
        (FAILURE, "a volume failed for good (read the message; a retry will not help by itself)"),
        (
            USAGE,
            "usage or configuration error (a source volume not found, a target VG of several "
            "pools)",
        ),
        (NOTHING_TO_DO, "nothing to do: no volume changed since its last sync"),
        (
            TRANSIENT,
            "a transient failure (target unreachable, link dropped, the job already running): "
            "retry later; a cut transfer resumes by itself on the next run",
        ),
        (INTERRUPTED, "interrupted (SIGINT/SIGTERM): the run stopped, starting nothing new"),
    ),
}


TABLES["lvrepo"] = (
    (SUCCESS, "success (verify: every point checked is intact)"),
    (FAILURE, "runtime failure (I/O error, the store failed)"),
    (USAGE, "usage error (bad arguments, no such repository or point, a wrong key)"),
    (DAMAGED, "damaged data: a chunk or an index failed its check (verify names the points)"),
    (INTERRUPTED, "interrupted (SIGINT/SIGTERM): nothing half-made is visible"),
)


def help_table(tool: str) -> str:
    """The ``exit status:`` block of a tool's ``--help`` epilog."""
    lines = ["exit status:"]
    for code, meaning in TABLES[tool]:
        lines.append(f"  {code:<4} {meaning}")
    return "\n".join(lines) + "\n"


def markdown_table(tool: str) -> str:
    """The README's table of a tool's codes, as it must read."""
    rows = ["| code | meaning |", "|------|---------|"]
    rows += [f"| {code} | {meaning} |" for code, meaning in TABLES[tool]]
    return "\n".join(rows) + "\n"
