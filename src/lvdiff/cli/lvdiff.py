"""The lvdiff command: arguments, messages and exit codes over lvdiff.dump."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .. import __version__
from ..errors import UsageError
from ..lvm import parse_lv_spec
from ..stream.digest import Digest, HashingWriter
from . import common as c

if TYPE_CHECKING:
    from ..dump import DumpResult


def lvdiff_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvdiff",
        description="Write the blocks in which thin volume NEW differs from BASE (both in one "
        "thin pool) as a verifiable stream; with NEW alone, a full stream.",
        epilog="Volumes are LV (with -g VG), VG/LV or /dev/VG/LV. A volume that is active and "
        "writable is read through a temporary thin snapshot, so a mounted volume "
        "gives a consistent point in time.\n\n" + c.LINEAGE_HELP + "\n\n" + c.EXIT_CODES,
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
        type=c.level,
        default=2,
        metavar=c.LEVELS_SHOWN,
        help="how lvpatch checks the content of BASE before writing and of the result "
        "after: 0 none, 1 head chunk, 2 random 4 KiB samples over the whole volume "
        "(default), 3 every byte; see below for what each guarantees",
    )
    p.add_argument(
        "--meta",
        "--pair",
        action="append",
        type=c.parse_meta,
        default=[],
        metavar="KEY:VALUE",
        help="record a key:value pair (repeatable; split at the first colon)",
    )
    p.add_argument("-o", "--output", type=Path, help="write the stream to FILE, not stdout")
    p.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="only find out what would be sent: ask the pool's metadata which chunks "
        "differ and report the bytes to read and send, reading no data and writing no "
        "stream (with -v on stderr, with --json as JSON)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="say what was (or would be) sent")
    c.add_digest(p)
    p.add_argument(
        "--compress",
        type=c.compression,
        default=3,
        metavar="zstd[:LEVEL]|none",
        help="compress data records with zstd at LEVEL (1-19, default 3), or not at all; "
        "lvpatch reads either",
    )
    c.add_workers(p, "threads that read and compress (default: the number of CPUs, 2 to 8)")
    p.add_argument(
        "--resume",
        metavar="TOKEN",
        type=c.token,
        help="send only what an interrupted `lvpatch -s` still needs (the token it "
        "printed, or `lvpatch -g VG --resume-token NAME`); same volumes as before, "
        "which must be read-only snapshots",
    )
    c.add_common(p, f"lvdiff {__version__}")
    return p


def describe(res: DumpResult) -> str:
    what = f"{res.vg}/{res.new}" + (f" against {res.vg}/{res.base}" if res.base else " (full)")
    lines = [
        f"lvdiff: {what}: volume {res.volume_size} bytes, chunk {res.chunk_size} bytes, "
        f"{res.ranges} changed ranges",
        f"lvdiff: {'would read' if res.header is None else 'read'} {res.plan.read_bytes} bytes "
        f"of data and send {res.plan.zero_bytes} bytes as zero ranges",
    ]
    return "\n".join(lines)


def _stdout_name() -> str:
    """What to call stdout in the digest line: the file it was redirected to, if it is one.

    ``lvdiff ... > test.diff`` then prints ``SHA256 (test.diff) = ...``, which
    ``sha256sum -c`` checks as it stands.  Anything else (a pipe, a file opened
    for appending, past its start) is ``-``, as sha256sum calls its stdin.
    """
    import stat

    try:
        st = os.fstat(1)
        if not stat.S_ISREG(st.st_mode) or os.lseek(1, 0, os.SEEK_CUR) != 0:
            return "-"
        path = os.readlink("/proc/self/fd/1")
        if path.endswith(" (deleted)") or not os.path.samestat(st, os.stat(path)):
            return "-"
    except OSError:
        return "-"
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def lvdiff_main(argv: Sequence[str] | None = None) -> int:
    args = c.parse_args(lvdiff_parser(), argv)
    if len(args.volumes) > 2:
        lvdiff_parser().error("give BASE NEW, or NEW alone")
    console = c.Console("lvdiff", c.progress_wanted(args.progress))

    def body() -> int:
        from ..dump import DumpOptions, dump

        *base, new = [parse_lv_spec(v, args.vg) for v in args.volumes]
        stream_on_stdout = args.output is None and not args.dry_run
        json_to = c.json_destination(args.json, "the stream" if stream_on_stdout else None, console)
        opts = DumpOptions(
            level=args.detect_level,
            meta=args.meta,
            thin_delta=os.environ.get("LVDIFF_THIN_DELTA", "thin_delta"),
            resume=args.resume,
            zstd_level=args.compress,
            dry_run=args.dry_run,
        )
        if args.workers:
            opts.workers = args.workers
        old = base[0] if base else None
        wanted = c.chosen_digest(args.digest)
        hashed: HashingWriter | None = None

        def run_into(out: BinaryIO) -> DumpResult:
            nonlocal hashed
            if wanted is Digest.SHA256:  # of exactly the bytes that reach the file
                out = hashed = HashingWriter(out, wanted)  # type: ignore[assignment]
            return dump(new, old, out, args.pool, opts, console)

        if args.dry_run:
            with open(os.devnull, "wb") as sink:  # nothing is written to it
                result = dump(new, old, sink, args.pool, opts, console)
            where = None
        elif args.output is None:
            if sys.stdout.isatty():
                raise UsageError(
                    "refusing to write a binary stream to a terminal; "
                    "redirect stdout or use -o FILE"
                )
            where = _stdout_name()
            result = run_into(sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            where = str(args.output)
            try:
                with open(args.output, "xb") as out:
                    result = run_into(out)
                    os.fsync(out.fileno())  # a stream reported written is on disk
            except FileExistsError:
                raise UsageError(f"{args.output} exists; not overwriting it") from None
            except BaseException:
                args.output.unlink(missing_ok=True)
                raise
        console.close()
        shown = None
        if result.digest and wanted:
            shown = hashed.digest() if hashed else result.digest  # xxh128: the stream's own
        if args.verbose or args.dry_run and not json_to:
            print(describe(result), file=sys.stderr)
        if result.totals:
            t = result.totals
            print(
                f"lvdiff: {t.data_records} data records ({t.data_bytes} bytes, "
                f"{t.stored_bytes} stored), {t.zero_records} zero ranges ({t.zero_bytes} bytes)",
                file=sys.stderr,
            )
            if shown and where:
                print(shown.tag_line(where), file=sys.stderr)
        c.emit_json(json_to, "lvdiff", result.to_dict(shown))
        return 0

    return c.run("lvdiff", body, console)
