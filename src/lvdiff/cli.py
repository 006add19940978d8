"""Command-line front ends: argument parsing, messages and exit codes only.

All work happens in :mod:`lvdiff.dump` and :mod:`lvdiff.apply`, which other
programs can call directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import LvdiffError, UsageError
from .events import Event, Note, Progress
from .fingerprint import describe_level
from .lvm import get_lv, parse_lv_spec
from .resume import ResumeToken

if TYPE_CHECKING:
    from .apply import ApplyResult

# Each command imports only its own engine (in its main function): a tool's start
# is mostly imports, and lvpatch has no use for thin_delta's parser or lvdiff's pipeline.

EXIT_CODES = """\
exit status:
  0    success
  1    runtime failure (I/O error, pool full, LVM or device-mapper state)
  2    usage error (bad arguments, not root, missing tools, volume not found)
  3    bad stream: truncated, corrupt, hostile or from a newer major version
  4    the target is not the stream's base (base check failed)
  5    the written volume failed verification against NEW's fingerprint
  6    an lvm, dmsetup or thin_delta command failed (its command line and stderr shown)
  130  interrupted (SIGINT/SIGTERM); everything was cleaned up
"""


LEVELS_HELP = "\n".join(f"  {n}  {describe_level(n)}" for n in range(4))
LINEAGE_HELP = (
    "Lineage: every stream names the identity of NEW and of BASE (like a ZFS snapshot's\n"
    "GUID). lvpatch records NEW's on the volume it restores and refuses, whatever the\n"
    "check level, a -l BASE recorded as anything else; a BASE without one (made by other\n"
    "means) is checked by content only, at the stream's level:\n" + LEVELS_HELP
)


class Console:
    """Shows engine events on stderr: notes as lines, progress as a tqdm bar."""

    def __init__(self, prog: str, progress: bool) -> None:
        self.prog, self.progress, self.bar = prog, progress, None

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


def _parse_meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY:VALUE")
    return key, value


def _level(text: str) -> int:
    if text not in ("0", "1", "2", "3"):
        raise argparse.ArgumentTypeError(f"detect level must be 0, 1, 2 or 3, not {text!r}")
    return int(text)


def _compression(text: str) -> int | None:
    """``zstd``, ``zstd:LEVEL`` (1..19) or ``none``: the zstd level, or None."""
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return None
    if name == "zstd" and (not level or (level.isdigit() and 1 <= int(level) <= 19)):
        return int(level or 3)
    raise argparse.ArgumentTypeError(f"compression must be zstd, zstd:1..19 or none, not {text!r}")


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"workers must be 1..64, not {text!r}")
    return int(text)


def _token(text: str) -> ResumeToken:
    try:
        return ResumeToken.parse(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def lvdiff_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvdiff",
        description="Write the blocks in which thin volume NEW differs from BASE (both in one "
        "thin pool) as a verifiable stream; with NEW alone, a full stream.",
        epilog="Volumes are LV (with -g VG), VG/LV or /dev/VG/LV. A volume that is active and "
        "writable is read through a temporary thin snapshot, so a mounted volume "
        "gives a consistent point in time.\n\n" + LINEAGE_HELP + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "volumes",
        nargs="+",
        metavar="BASE NEW",
        help="older volume then newer (as in diff OLD NEW), or NEW alone",
    )
    p.add_argument("-g", "--vg", help="volume group of volumes given by bare LV name")
    p.add_argument("-p", "--pool", help="thin pool the volumes must be in")
    p.add_argument(
        "-d",
        "--detect-level",
        type=_level,
        default=2,
        metavar="0..3",
        help="how lvpatch checks the content of BASE before writing and of the result "
        "after: 0 none, 1 head chunk, 2 random 4 KiB samples over the whole volume "
        "(default), 3 every byte; see below for what each guarantees",
    )
    p.add_argument(
        "--meta",
        "--pair",
        action="append",
        type=_parse_meta,
        default=[],
        metavar="KEY:VALUE",
        help="record a key:value pair (repeatable; split at the first colon)",
    )
    p.add_argument("-o", "--output", type=Path, help="write the stream to FILE, not stdout")
    p.add_argument(
        "--compress",
        type=_compression,
        default=3,
        metavar="zstd[:LEVEL]|none",
        help="compress data records with zstd at LEVEL (1-19, default 3), or not at all; "
        "lvpatch reads either",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="threads that read and compress (default: the number of CPUs, 2 to 8)",
    )
    p.add_argument(
        "--resume",
        metavar="TOKEN",
        type=_token,
        help="send only what an interrupted `lvpatch -s` still needs (the token it "
        "printed, or `lvpatch -g VG --resume-token NAME`); same volumes as before, "
        "which must be read-only snapshots",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--version", action="version", version=f"lvdiff {__version__}")
    return p


def lvpatch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvpatch",
        description="Rebuild a volume from an lvdiff stream read on stdin: as a new thin "
        "snapshot NAME of BASE (incremental stream), or a new thin volume NAME "
        "in POOL (full stream). BASE is left untouched; on any failure NAME is "
        "removed.",
        epilog="NAME defaults to the name of NEW recorded in the stream. The restored volume "
        "is read-only (lvchange -p r), so it stays the snapshot its identity names and can "
        "be the base of the next incremental; mount it read-only, or snapshot it for a "
        "writable copy.\n\n" + LINEAGE_HELP + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="volume to create")
    p.add_argument("-g", "--vg", "--lvgroup", required=True, help="volume group")
    p.add_argument(
        "-l", "--lv", metavar="BASE", help="volume equal to the stream's base (LV or VG/LV)"
    )
    p.add_argument("-p", "--pool", help="thin pool for a full stream")
    p.add_argument("-i", "--input", type=Path, help="read the stream from FILE, not stdin")
    p.add_argument(
        "--no-base-check",
        action="store_true",
        help="do not check that BASE is the stream's base (neither its identity nor "
        "its content) before writing; the result is still verified",
    )
    p.add_argument(
        "--writable",
        action="store_true",
        help="leave the restored volume writable; by default it is made read-only, "
        "since a volume written after its restore is no longer the snapshot it names",
    )
    p.add_argument(
        "--in-place",
        action="store_true",
        help="write into the -l volume itself (for a target that is not thin). "
        "NOT ATOMIC: a failure leaves it half-written",
    )
    p.add_argument(
        "-s",
        "--resumable",
        action="store_true",
        help="if interrupted (stream cut, Ctrl-C, I/O error), keep NAME and print a "
        "resume token instead of removing it",
    )
    p.add_argument(
        "--checkpoint-mib",
        type=int,
        default=1024,
        metavar="MIB",
        help="with -s, make progress durable every MIB mebibytes (default 1024)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue NAME, kept by an interrupted `lvpatch -s`, from a stream made "
        "with `lvdiff --resume TOKEN`",
    )
    p.add_argument(
        "--resume-token", action="store_true", help="only print the resume token of NAME"
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="threads that decompress and check records (default: CPUs, 2 to 4)",
    )
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="only remove volumes an interrupted lvpatch left incomplete in VG "
        "(tagged lvdiff_incomplete), including ones kept for --resume; every "
        "lvpatch run removes those not kept for --resume",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--version", action="version", version=f"lvpatch {__version__}")
    return p


def _fail(prog: str, err: BaseException) -> NoReturn:
    msg = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 1))


def _run(prog: str, body: Callable[[], int], console: Console) -> int:
    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if os.geteuid() != 0:
            raise UsageError(
                f"{prog} must run as root: it reads and writes LVM volumes "
                "and device-mapper metadata"
            )
        return body()
    except KeyboardInterrupt:
        console.close()
        print(f"{prog}: interrupted; cleaned up", file=sys.stderr)
        return 130
    except (LvdiffError, OSError) as e:
        console.close()
        _fail(prog, e)


def _progress_wanted(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def lvdiff_main(argv: Sequence[str] | None = None) -> int:
    args = lvdiff_parser().parse_args(argv)
    if len(args.volumes) > 2:
        lvdiff_parser().error("give BASE NEW, or NEW alone")
    console = Console("lvdiff", _progress_wanted(args.progress))

    def body() -> int:
        from .dump import DumpOptions, dump

        *base, new = [parse_lv_spec(v, args.vg) for v in args.volumes]
        opts = DumpOptions(
            level=args.detect_level,
            meta=args.meta,
            thin_delta=os.environ.get("LVDIFF_THIN_DELTA", "thin_delta"),
            resume=args.resume,
            zstd_level=args.compress,
        )
        if args.workers:
            opts.workers = args.workers
        old = base[0] if base else None
        if args.output is None:
            if sys.stdout.isatty():
                raise UsageError(
                    "refusing to write a binary stream to a terminal; "
                    "redirect stdout or use -o FILE"
                )
            result = dump(new, old, sys.stdout.buffer, args.pool, opts, console)
            sys.stdout.buffer.flush()
            where = "-"
        else:
            where = str(args.output)
            try:
                with open(args.output, "xb") as out:
                    result = dump(new, old, out, args.pool, opts, console)
                    os.fsync(out.fileno())  # a stream reported written is on disk
            except FileExistsError:
                raise UsageError(f"{args.output} exists; not overwriting it") from None
            except BaseException:
                args.output.unlink(missing_ok=True)
                raise
        console.close()
        t = result.totals
        print(
            f"lvdiff: {t.data_records} data records ({t.data_bytes} bytes, "
            f"{t.stored_bytes} stored), {t.zero_records} zero ranges ({t.zero_bytes} bytes)",
            file=sys.stderr,
        )
        print(f"{result.sha256}  {where}", file=sys.stderr)
        return 0

    return _run("lvdiff", body, console)


def outcome(res: ApplyResult) -> str:
    """The last word of lvpatch: what was restored and which checks actually ran."""
    h = res.header
    if res.verified_level:
        checked = f"verified against NEW's fingerprint (level {res.verified_level})"
    else:
        checked = "NOT verified (the stream was made with -d 0)"
    lines = [
        f"lvpatch: {res.target} restored, {checked}"
        + ("; read-only" if res.read_only else "")
        + f" ({res.totals.data_bytes} bytes written, {res.totals.zero_bytes} zeroed)"
    ]
    if h.incremental and res.base_checked:
        lines.append(f"lvpatch: base {res.base_checked}")
    return "\n".join(lines)


def lvpatch_main(argv: Sequence[str] | None = None) -> int:
    args = lvpatch_parser().parse_args(argv)
    console = Console("lvpatch", _progress_wanted(args.progress))

    def body() -> int:
        from .apply import ApplyOptions, apply_stream, cleanup

        if args.resume_token:
            if not args.name:
                raise UsageError("--resume-token needs the volume NAME")
            token = ResumeToken.from_tags(get_lv(args.vg, args.name).tags)
            if token is None:
                raise UsageError(f"{args.vg}/{args.name} has no resume token")
            print(token)
            return 0
        if args.cleanup:
            removed = cleanup(args.vg, console, resumable=True)
            print(f"lvpatch: {len(removed)} incomplete volume(s) removed", file=sys.stderr)
            return 0
        opts = ApplyOptions(
            base_check=not args.no_base_check,
            in_place=args.in_place,
            writable=args.writable,
            resumable=args.resumable or args.resume,
            resume=args.resume,
            checkpoint_bytes=max(1, args.checkpoint_mib) << 20,
        )
        if args.workers:
            opts.workers = args.workers
        if args.input is not None:
            try:
                inp = open(args.input, "rb")  # noqa: SIM115
            except OSError as err:
                raise UsageError(f"cannot read {args.input}: {err.strerror}") from None
        else:
            if sys.stdin.isatty():
                raise UsageError("the stream comes on stdin: lvpatch ... < stream")
            inp = sys.stdin.buffer
        with inp:
            res = apply_stream(
                inp,
                args.vg,
                base=args.lv,
                pool=args.pool,
                name=args.name,
                options=opts,
                report=console,
                announce=console,
            )
        console.close()
        print(outcome(res), file=sys.stderr)
        print(f"{res.sha256}  stream", file=sys.stderr)
        return 0

    return _run("lvpatch", body, console)
