"""Exception hierarchy; each class carries the exit code the CLI reports.

The codes are part of the user interface (defined in :mod:`lvdiff.exitcodes`,
from which ``--help`` and the README's tables come), so scripts can tell a
corrupt stream from a wrong base.  A class's name is its identity when a
failure crosses a process boundary (``--json``'s ``error.class``).
"""

from . import exitcodes


class LvdiffError(Exception):
    """Base of every error the tools report as a one-line message."""

    exit_code = exitcodes.FAILURE


class UsageError(LvdiffError):
    """Bad command line or environment (not root, missing tool)."""

    exit_code = exitcodes.USAGE


class StreamError(LvdiffError):
    """The stream cannot be trusted: truncated, corrupt, hostile or unsupported."""

    exit_code = exitcodes.BAD_STREAM


class TruncatedStream(StreamError):
    """The stream ended before a valid END record."""


class CorruptStream(StreamError):
    """A checksum, length, order or bounds check failed."""


class DigestMismatch(CorruptStream):
    """The stream is intact but is not the one whose digest the operator recorded."""


class UnsupportedStream(StreamError):
    """A newer major version or an unknown mandatory record."""


class BaseMismatch(LvdiffError):
    """The target volume is not the base the stream was made against."""

    exit_code = exitcodes.NOT_THE_BASE


class VerifyFailed(LvdiffError):
    """The written volume does not match the fingerprint of NEW."""

    exit_code = exitcodes.VERIFY_FAILED


class CommandFailed(LvdiffError):
    """An external command (lvm, dmsetup, thin_delta) failed."""

    exit_code = exitcodes.COMMAND_FAILED

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        detail = " ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
        super().__init__(f"`{' '.join(argv)}` failed (exit {returncode}): {detail}")


class TransientError(LvdiffError):
    """Worth a retry later: the target was unreachable, or the link dropped (EX_TEMPFAIL)."""

    exit_code = exitcodes.TRANSIENT


class Interrupted(LvdiffError):
    """SIGINT or SIGTERM arrived; cleanup ran."""

    exit_code = exitcodes.INTERRUPTED
