"""The lvpatch command: restore onto LVM or into an image file, or check a stream."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .. import __version__
from ..errors import UsageError
from ..stream import Digest, StreamDigest, escape_for_terminal
from . import common as c

if TYPE_CHECKING:
    from ..restored import Restored
    from ..stream import Header, Pending


def lvpatch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvpatch",
        description="Rebuild a volume from an lvdiff stream read on stdin: as a new thin "
        "snapshot NAME of BASE (incremental stream), or a new thin volume NAME "
        "in POOL (full stream), or an image file (--to-file). BASE is left untouched; "
        "on any failure NAME is removed. --check and --dump only read the stream.",
        epilog="NAME defaults to the name of NEW recorded in the stream. The restored volume "
        "is read-only (lvchange -p r), so it stays the snapshot its identity names and can "
        "be the base of the next incremental; mount it read-only, or snapshot it for a "
        "writable copy. --check, --dump and --to-file need neither root nor LVM.\n\n"
        + c.LINEAGE_HELP
        + "\n\n"
        + c.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="volume to create")
    p.add_argument("-g", "--vg", "--lvgroup", help="volume group (to restore onto LVM)")
    p.add_argument(
        "-l", "--lv", metavar="BASE", help="volume equal to the stream's base (LV or VG/LV)"
    )
    p.add_argument("-p", "--pool", help="thin pool for a full stream")
    p.add_argument("-i", "--input", type=Path, help="read the stream from FILE, not stdin")
    # One mode per run, as in tarfile's and zipfile's own command lines: restoring onto
    # LVM is the default; argparse names any two given together.
    modes = p.add_mutually_exclusive_group()
    modes.add_argument(
        "--to-file",
        type=Path,
        metavar="IMG",
        help="restore into a new sparse image file IMG instead of LVM (a full stream, or an "
        "incremental one with --from-file); readable by losetup and qemu-img",
    )
    p.add_argument(
        "--from-file",
        type=Path,
        metavar="BASE_IMG",
        help="with --to-file: the image of the incremental stream's base (left untouched; "
        "copied by reflink where the filesystem can)",
    )
    modes.add_argument(
        "--check",
        action="store_true",
        help="only read the whole stream and check every record and its END; print its "
        "header and totals (exit 0 if intact, 3 if not)",
    )
    modes.add_argument(
        "--dump",
        action="store_true",
        help="like --check, and print one line per record: type, offset, length, stored size",
    )
    modes.add_argument(
        "--list",
        action="store_true",
        help="only list what VG holds of lvpatch's: restored volumes with their identities, "
        "and restores under way or kept for resuming (with --json, as JSON)",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="add this LVM tag to the restored volume (repeatable)",
    )
    modes.add_argument(
        "--prune",
        metavar="SOURCE_TAG",
        help="only remove NAME, a complete copy lvsync made of the source this tag names "
        "(lvsync_src:<VG UUID>/<LV>): lvsync's retention on a target; any other volume "
        "is refused",
    )
    modes.add_argument(
        "--abandon",
        action="store_true",
        help="only remove NAME, a restore an interrupted lvpatch -s kept for resuming",
    )
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
    modes.add_argument(
        "--resume-token", action="store_true", help="only print the resume token of NAME"
    )
    c.add_digest(
        p,
        "which digest of the stream's bytes to print, as `sha256sum --tag` prints it: "
        "sha256 (default; what lvdiff prints, to compare with the one recorded), xxh128 "
        "(the stream's own: free, catches accidents only) or none",
    )
    p.add_argument(
        "--expect-digest",
        type=c.expected_digest,
        metavar="ALG:HEX",
        help="refuse the stream (exit 3, nothing restored) unless its bytes have this "
        "digest: the sha256:HEX (or xxh128:HEX) lvdiff printed when it was made",
    )
    c.add_workers(p, "threads that decompress and check records (default: CPUs, 2 to 4)")
    modes.add_argument(
        "--cleanup",
        action="store_true",
        help="only remove volumes an interrupted lvpatch left incomplete in VG "
        "(tagged lvdiff_incomplete), including ones kept for --resume; every "
        "lvpatch run removes those not kept for --resume",
    )
    c.add_common(p, f"lvpatch {__version__}")
    return p


def describe_header(h: Header, version: tuple[int, int] | None = None) -> str:
    """What a stream holds, every stream-supplied text escaped for the terminal."""
    e = escape_for_terminal
    lines = [
        f"stream format {version[0]}.{version[1]}" if version else "",
        f"{h.kind} stream of {e(h.vg)}/{e(h.new.name)}"
        + (f" from {e(h.vg)}/{e(h.base.name)}" if h.base else ""),
        f"  source pool {e(h.vg)}/{e(h.pool)}, size {h.volume_size} bytes, "
        f"chunk {h.chunk_size} bytes",
        f"  created {e(h.created)} by {e(h.tool)}, check level {h.detect_level}",
        f"  NEW identity {e(h.new.identity or '(none: format 1)')}",
    ]
    if h.base:
        lines.append(f"  BASE identity {e(h.base.identity or '(none: format 1)')}")
    if h.resume_offset is not None:
        lines.append(f"  resumes at byte {h.resume_offset}")
    lines += [f"  {e(k)}: {e(v)}" for k, v in h.meta]
    return "\n".join(line for line in lines if line)


def outcome(res: Restored) -> str:
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
    if h.incremental and res.base_check:
        lines.append(f"lvpatch: base {res.base_check}")
    return "\n".join(lines)


def _digest(args: argparse.Namespace) -> Digest | None:
    """The digest to compute: the expected one's algorithm, else --digest (None: none)."""
    if args.expect_digest:
        return Digest(args.expect_digest.algorithm)
    return c.chosen_digest(args.digest)


def _shown(args: argparse.Namespace, digest: StreamDigest | None) -> StreamDigest | None:
    """The digest to print and put in JSON: none with --digest none (unless one was expected)."""
    return digest if args.digest != "none" or args.expect_digest else None


def _input_name(args: argparse.Namespace) -> str:
    return str(args.input) if args.input is not None else "-"


def _open_input(args: argparse.Namespace) -> BinaryIO:
    if args.input is not None:
        try:
            return open(args.input, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as err:
            raise UsageError(f"cannot read {args.input}: {err.strerror}") from None
    if sys.stdin.isatty():
        raise UsageError("the stream comes on stdin: lvpatch ... < stream")
    # Unbuffered, and not sys.stdin itself: the thread that reads the stream may be
    # blocked in read() when the restore is interrupted, and a buffered reader's lock
    # would then keep anything from closing it.
    return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115


def lvpatch_main(argv: Sequence[str] | None = None) -> int:
    args = c.parse_args(lvpatch_parser(), argv)
    console = c.Console("lvpatch", c.progress_wanted(args.progress))
    file_mode = args.check or args.dump or args.to_file is not None

    def body() -> int:
        import time

        started = time.monotonic()
        json_to = c.json_destination(
            args.json, "the records" if args.dump and args.json == "-" else None, console
        )
        if file_mode:
            return _without_lvm(args, console, json_to, started)
        if not args.vg:
            raise UsageError("give the volume group with -g VG (or --to-file IMG)")
        if args.from_file:
            raise UsageError("--from-file goes with --to-file")
        from ..apply import ApplyOptions, apply_stream, cleanup
        from ..lvm import get_lv
        from ..resume import ResumeToken

        if args.resume_token:
            if not args.name:
                raise UsageError("--resume-token needs the volume NAME")
            token = ResumeToken.from_tags(get_lv(args.vg, args.name).tags)
            if token is None:
                raise UsageError(f"{args.vg}/{args.name} has no resume token")
            print(token)
            return 0
        if args.list:
            from ..inventory import inventory

            held = inventory(args.vg)
            if json_to:
                c.emit_json(json_to, "lvpatch", {"action": "list", "vg": args.vg, **held.to_dict()})
            else:
                for h in held.volumes:
                    state = "complete" if h.complete else f"incomplete, resume {h.resume_token}"
                    ro = "read-only" if h.read_only else "writable"
                    print(f"{h.name}\t{h.identity or '-'}\t{h.size}\t{ro}\t{state}")
            return 0
        if args.prune:
            if not args.name:
                raise UsageError("--prune needs the volume NAME")
            from ..apply import prune

            prune(args.vg, args.name, args.prune)
            print(f"lvpatch: removed {args.vg}/{args.name}", file=sys.stderr)
            return 0
        if args.abandon:
            if not args.name:
                raise UsageError("--abandon needs the volume NAME")
            from ..apply import abandon

            abandon(args.vg, args.name)
            print(f"lvpatch: removed {args.vg}/{args.name}", file=sys.stderr)
            return 0
        if args.cleanup:
            removed = cleanup(args.vg, console, resumable=True)
            print(f"lvpatch: {len(removed)} incomplete volume(s) removed", file=sys.stderr)
            c.emit_json(json_to, "lvpatch", {"action": "cleanup", "removed": removed})
            return 0
        opts = ApplyOptions(
            digest=_digest(args),
            expect_digest=args.expect_digest,
            base_check=not args.no_base_check,
            in_place=args.in_place,
            writable=args.writable,
            resumable=args.resumable or args.resume,
            resume=args.resume,
            checkpoint_bytes=max(1, args.checkpoint_mib) << 20,
            tags=tuple(args.tag),
        )
        if args.workers:
            opts.workers = args.workers
        with _open_input(args) as inp:
            res = apply_stream(
                inp,
                args.vg,
                base=args.lv,
                pool=args.pool,
                name=args.name,
                options=opts,
                report=console,
                announce=lambda h: print(f"lvpatch: {describe_header(h)}", file=sys.stderr),
            )
        _report_restore(res, args, console, json_to, started)
        return 0

    return c.run("lvpatch", body, console, need_root=not file_mode)


def _report_restore(
    res: Restored,
    args: argparse.Namespace,
    console: c.Console,
    json_to: str | None,
    started: float,
) -> None:
    """What a restore reports, onto a volume or into an image file alike."""
    import time

    console.close()
    print(outcome(res), file=sys.stderr)
    shown = _shown(args, res.digest)
    if shown:
        print(shown.tag_line(_input_name(args)), file=sys.stderr)
    c.emit_json(json_to, "lvpatch", res.to_dict(time.monotonic() - started, shown))


def _without_lvm(
    args: argparse.Namespace, console: c.Console, json_to: str | None, started: float
) -> int:
    """--check, --dump and --to-file: no root, no LVM."""
    if args.vg or args.lv or args.pool or args.name or args.in_place or args.resume:
        raise UsageError("--check, --dump and --to-file take no -g/-l/-p/NAME/--in-place/--resume")
    if args.from_file and args.to_file is None:
        raise UsageError("--from-file goes with --to-file")
    if args.to_file is not None:
        from ..imagefile import restore_to_file

        with _open_input(args) as inp:
            res = restore_to_file(
                inp,
                args.to_file,
                args.from_file,
                base_check=not args.no_base_check,
                report=console,
                digest=_digest(args),
                expect_digest=args.expect_digest,
                **({"workers": args.workers} if args.workers else {}),
            )
        _report_restore(res, args, console, json_to, started)
        return 0
    from ..stream_check import check_stream

    def line(p: Pending) -> None:
        stored = len(p.payload) if p.payload is not None else 0
        kind = p.type.name + ("/zstd" if p.zstd else "")
        print(f"{kind:<9} offset {p.offset:>16}  length {p.length:>12}  stored {stored:>10}")

    with _open_input(args) as inp:
        res = check_stream(
            inp, line if args.dump else lambda _p: None, _digest(args), args.expect_digest
        )
    t = res.totals
    out = sys.stderr if args.dump else sys.stdout
    if json_to != "-":
        print(describe_header(res.header, res.version), file=out)
        print(
            f"intact: {t.data_records} data records ({t.data_bytes} bytes, {t.stored_bytes} "
            f"stored), {t.zero_records} zero ranges ({t.zero_bytes} bytes)",
            file=out,
        )
        shown = _shown(args, res.digest)
        if shown:
            print(shown.tag_line(_input_name(args)), file=out)
    c.emit_json(json_to, "lvpatch", res.to_dict(_shown(args, res.digest)))
    return 0
