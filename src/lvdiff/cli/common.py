"""What both commands share: exit codes, help texts, argument types, the console, JSON out.

Only this package prints.  The engines report events (lvdiff.events) that
the Console renders; results come back as objects that the commands turn
into a last line of text, or into one JSON object for monitoring.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

from .. import exitcodes
from ..errors import Interrupted, LvdiffError, UsageError
from ..events import Event, Note, Progress
from ..fingerprint import LEVELS, LEVELS_SHOWN, describe_level
from ..resume import ResumeToken
from ..stream.digest import Digest, StreamDigest

JSON_VERSION = 2  # of the --json summaries; a new key is compatible, a changed one bumps it

EXIT_CODES = exitcodes.help_table("lvdiff")  # lvpatch's is the same

LEVELS_HELP = "\n".join(f"  {n}  {describe_level(n)}" for n in LEVELS)
LINEAGE_HELP = (
    "Lineage: every stream names the identity of NEW and of BASE (like a ZFS snapshot's\n"
    "GUID). lvpatch records NEW's on the volume it restores and refuses, whatever the\n"
    "check level, a -l BASE recorded as anything else; a BASE without one (made by other\n"
    "means) is checked by content only, at the stream's level:\n" + LEVELS_HELP
)


class Console:
    """Shows engine events on stderr: notes as lines, progress as a tqdm bar.

    ``json_to`` is where the command's JSON goes once it is known, so that a
    failure is written there too, as data (see :func:`run`).
    """

    def __init__(self, prog: str, progress: bool) -> None:
        self.prog, self.progress, self.bar = prog, progress, None
        self.json_to: str | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Note):
            text = f"{self.prog}: {event.text}"
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr)
        elif isinstance(event, Progress) and self.progress:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=event.total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=self.prog,
                    file=sys.stderr,
                )
            self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_wanted(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def add_common(p: argparse.ArgumentParser, version: str) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr, with a total and time left where known "
        "(default: when stderr is a terminal)",
    )
    p.add_argument(
        "--json",
        action="store_const",
        const="-",
        help="write a summary as one JSON object to stdout (when stdout is free), or to "
        "FILE with --json=FILE (keys in the README); a failure writes "
        '{"error": {"class", "exit", "message"}} there instead',
    )
    # --json=FILE arrives here (see parse_args): a bare --json never takes the next argument
    p.add_argument("--json-file", dest="json", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=version)


DIGEST_HELP = (
    "which digest of the stream's bytes to print on stderr, as `sha256sum --tag` (or "
    "`xxh128sum --tag`) prints it, so `sha256sum -c` checks a stored copy: sha256 "
    "(default) is the one to record and compare out of band, since only a cryptographic "
    "digest means anything against someone who can alter the file; xxh128 is the "
    "stream's own, free to compute, that catches accidents only; none prints nothing"
)


def add_digest(p: argparse.ArgumentParser, text: str = DIGEST_HELP) -> None:
    p.add_argument(
        "--digest",
        choices=[*(d.value for d in Digest), "none"],
        default=Digest.SHA256.value,
        help=text,
    )


def chosen_digest(name: str) -> Digest | None:
    return None if name == "none" else Digest(name)


def expected_digest(text: str) -> StreamDigest:
    try:
        return StreamDigest.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, reading ``--json=FILE`` as the file to write JSON to.

    ``--json`` once took an optional FILE, so ``lvsync --json vg/lv TARGET``
    silently wrote its JSON to a file named ``vg/lv``: now a bare ``--json``
    means stdout and only ``--json=FILE`` names a file.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    fixed: list[str] = []
    for i, a in enumerate(args):
        if a == "--":
            fixed += args[i:]
            break
        fixed += ["--json-file", a.removeprefix("--json=")] if a.startswith("--json=") else [a]
    return p.parse_args(fixed)


def add_workers(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--workers", type=workers, default=None, metavar="N", help=text)


def parse_meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY:VALUE")
    return key, value


def level(text: str) -> int:
    if text not in {str(n) for n in LEVELS}:
        raise argparse.ArgumentTypeError(f"detect level must be {LEVELS_SHOWN}, not {text!r}")
    return int(text)


def compression(text: str) -> int | None:
    """``zstd``, ``zstd:LEVEL`` (1..19) or ``none``: the zstd level, or None."""
    from ..stream.records import parse_compression

    try:
        return parse_compression(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def count(text: str) -> int:
    """A whole number >= 0 (how many to keep)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return int(text)


def workers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"workers must be 1..64, not {text!r}")
    return int(text)


def token(text: str) -> ResumeToken:
    try:
        return ResumeToken.parse(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_destination(arg: str | None, stdout_busy: str | None, console: Console) -> str | None:
    """Where --json goes: a file, "-" for stdout, or None; refuse stdout when it is busy.

    The console remembers it, so that a failure from here on is written there too.
    """
    if arg == "-" and stdout_busy:
        raise UsageError(f"--json=FILE is needed here: stdout carries {stdout_busy}")
    console.json_to = arg
    return arg


def emit_json(dest: str | None, command: str, obj: dict[str, Any]) -> None:
    if dest is None:
        return
    from .. import __version__

    head = {"version": JSON_VERSION, "command": command, "tool": f"{command} {__version__}"}
    text = json.dumps({**head, **obj}, sort_keys=False)
    if dest == "-":
        print(text, flush=True)
    else:
        Path(dest).write_text(text + "\n")


def error_object(err: BaseException) -> dict[str, Any]:
    """A failure as data: its class (its identity across a process boundary), exit status, text.

    lvsync reads this from the far side's ``lvpatch --json`` to tell a cut
    transfer from a hard failure, as borg's remote protocol sends the
    exception class: never by matching the words of a message.
    """
    if isinstance(err, KeyboardInterrupt):
        err = Interrupted("interrupted; cleaned up")
    msg = " ".join(str(err).split()) or type(err).__name__
    return {
        "class": type(err).__name__,
        "exit": getattr(err, "exit_code", exitcodes.FAILURE),
        "message": msg,
    }


def fail(prog: str, err: BaseException, json_to: str | None = None) -> NoReturn:
    obj = error_object(err)
    print(f"{prog}: error: {obj['message']}", file=sys.stderr)
    emit_json(json_to, prog, {"error": obj})
    sys.exit(obj["exit"])


def run(prog: str, body: Callable[[], int], console: Console, need_root: bool = True) -> int:
    """Run a command body: root check, SIGTERM as Ctrl-C, one-line errors, exit codes.

    With --json, a failure also becomes ``{"error": ...}`` (:func:`error_object`).
    """

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)  # a dropped ssh session hangs up its command
    try:
        if need_root and os.geteuid() != 0:
            raise UsageError(
                f"{prog} must run as root: it reads and writes LVM volumes "
                "and device-mapper metadata"
            )
        return body()
    except KeyboardInterrupt as e:
        console.close()
        print(f"{prog}: interrupted; cleaned up", file=sys.stderr)
        with suppress(OSError):  # stdout may be the pipe that broke
            emit_json(console.json_to, prog, {"error": error_object(e)})
        return Interrupted.exit_code
    except (LvdiffError, OSError) as e:
        console.close()
        fail(prog, e, console.json_to)
