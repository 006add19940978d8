"""Exception hierarchy; each class carries the exit code the CLI reports.

The codes are part of the user interface (documented in ``--help`` and the
README), so scripts can tell a corrupt stream from a wrong base.
"""


class LvdiffError(Exception):
    """Base of every error the tools report as a one-line message."""

    exit_code = 1


class UsageError(LvdiffError):
    """Bad command line or environment (not root, missing tool)."""

    exit_code = 2


class StreamError(LvdiffError):
    """The stream cannot be trusted: truncated, corrupt, hostile or unsupported."""

    exit_code = 3


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

    exit_code = 4


class VerifyFailed(LvdiffError):
    """The written volume does not match the fingerprint of NEW."""

    exit_code = 5


class CommandFailed(LvdiffError):
    """An external command (lvm, dmsetup, thin_delta) failed."""

    exit_code = 6

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        detail = " ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
        super().__init__(f"`{' '.join(argv)}` failed (exit {returncode}): {detail}")


class TransientError(LvdiffError):
    """Worth a retry later: the target was unreachable, or the link dropped (EX_TEMPFAIL)."""

    exit_code = 75


class Interrupted(LvdiffError):
    """SIGINT or SIGTERM arrived; cleanup ran."""

    exit_code = 130
