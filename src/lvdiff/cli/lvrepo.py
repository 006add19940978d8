"""The lvrepo command: a deduplicating, optionally encrypted repository of backup points."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, exitcodes
from ..errors import UsageError
from ..events import Note
from . import common as c

if TYPE_CHECKING:
    from ..repo.repository import Repository

DESCRIPTION = (
    "Keep backup points of thin volumes in a repository on a directory: deduplicated by "
    "content across points, volumes and machines, compressed, and encrypted and "
    "authenticated when asked. Every point restores, verifies and is pruned on its own."
)
EPILOG = (
    "REPO is a directory (dir:/path or /path) or S3-compatible object storage: "
    "s3://BUCKET/PREFIX on AWS, s3+https://HOST[:PORT]/BUCKET/PREFIX elsewhere (Ceph, "
    "MinIO, B2, Wasabi); S3 credentials and region come only from the usual AWS "
    "environment variables and files. lvsync writes points into such a target; "
    "`lvdiff ... | lvrepo put REPO` makes one from any stream. An encrypted repository's "
    "key file is made by init (in /etc/lvdiff/keys/ unless --key-file says where; with "
    "--passphrase-file or LVDIFF_REPO_PASSPHRASE it is protected by a passphrase): keep a "
    "copy apart (lvrepo key export), as without it nothing can be restored.\n\n"
    + exitcodes.help_table("lvrepo")
)


def lvrepo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvrepo",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_common(p, f"lvrepo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument(
            "repo", metavar="REPO", help="dir:/path, s3://BUCKET/PREFIX or s3+https://HOST/..."
        )
        q.add_argument("--key-file", type=Path, help="the key file (default: KEY_DIR/<id>.key)")
        q.add_argument(
            "--passphrase-file",
            type=Path,
            help="read the key file's passphrase from FILE (or LVDIFF_REPO_PASSPHRASE)",
        )
        c.add_workers(q, "threads that hash, compress, encrypt and store (default 4)")
        return q

    q = command("init", "make a new repository")
    q.add_argument(
        "--encryption",
        choices=["aes-256-gcm", "none"],
        default="aes-256-gcm",
        help="encrypt and authenticate every object (default), or only check content hashes",
    )
    q.add_argument(
        "--chunk-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bytes of a volume per chunk, a power of two from 64K to 16M (default 4M)",
    )
    q = command("list", "list the points, oldest first")
    q.add_argument("--source", help="only this source's (its key, VG UUID/LV, or LV name)")
    q = command("put", "make a point from an lvdiff stream on stdin (full, or from a point)")
    q.add_argument("--source", help="the point's source (default: the stream's VG/NEW)")
    q.add_argument("-i", "--input", type=Path, help="read the stream from FILE, not stdin")
    q = command("restore", "restore a point into a new thin volume, or an image file")
    q.add_argument("point", metavar="POINT", help="the point's id (or a unique prefix) or name")
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("-g", "--vg", help="into a new thin volume in VG (with -p POOL)")
    where.add_argument("--to-file", type=Path, metavar="IMG", help="into a new image file")
    q.add_argument("-p", "--pool", help="the thin pool to restore into")
    q.add_argument("-n", "--name", help="the new volume's name (default: the snapshot's)")
    q.add_argument("--writable", action="store_true", help="leave the volume writable")
    q = command("stream", "write a point as an lvdiff stream on stdout (for lvpatch)")
    q.add_argument("point", metavar="POINT")
    q.add_argument("--from", dest="base", metavar="POINT", help="incremental from this point")
    q.add_argument("-o", "--output", type=Path, help="write the stream to FILE, not stdout")
    q = command("verify", "read and check every chunk of points (exit 3 names damaged ones)")
    q.add_argument("points", nargs="*", metavar="POINT", help="these points (default: all)")
    q.add_argument(
        "--sample",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="check only this fraction of each point's chunks, chosen at random (e.g. 0.1)",
    )
    q = command("prune", "remove points by a retention policy, each source on its own")
    q.add_argument("--source", help="only this source's points")
    q.add_argument("-n", "--dry-run", action="store_true", help="say what would go")
    for period, text in {
        "last": "keep the last N points of each source",
        "hourly": "and the newest of each of the last N hours",
        "daily": "and the newest of each of the last N days",
        "weekly": "and the newest of each of the last N weeks",
        "monthly": "and the newest of each of the last N months",
    }.items():
        q.add_argument(f"--keep-{period}", type=c.count, default=0, metavar="N", help=text)
    q = command("delete", "remove these points (their chunks go at a later gc)")
    q.add_argument("points", nargs="+", metavar="POINT")
    q = command("gc", "delete chunks no point names, a grace period after they were condemned")
    q.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="delete only what a gc condemned at least H hours ago (default 24): longer "
        "than any run that may still write into the repository",
    )
    q = command("key", "print the key file (to keep a copy apart from the repository)")
    q.add_argument("action", choices=["export"])
    return p


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    n, unit = (text[:-1], text[-1].upper()) if text[-1:].upper() in units else (text, "")
    if not n.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(n) * units.get(unit, 1)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction in (0, 1], not {text!r}")
    return value


def open_repo(args: argparse.Namespace) -> Repository:
    from ..repo.access import open_repository

    return open_repository(args.repo, args.key_file, args.passphrase_file)


def lvrepo_main(argv: Sequence[str] | None = None) -> int:
    args = c.parse_args(lvrepo_parser(), argv)
    console = c.Console("lvrepo", c.progress_wanted(args.progress))

    def body() -> int:
        stream_out = args.command == "stream" and args.output is None
        json_to = c.json_destination(args.json, "the stream" if stream_out else None, console)
        return COMMANDS[args.command](args, console, json_to)

    # a repository needs no root; restoring onto LVM does
    need_root = args.command == "restore" and args.vg is not None
    return c.run("lvrepo", body, console, need_root=need_root)


def _workers(args: argparse.Namespace) -> int:
    return args.workers or 4


def _init(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo import format as fmt
    from ..repo.access import key_path, passphrase, store_for
    from ..repo.crypto import dump_key_file, new_keys, write_key_file
    from ..repo.repository import Repository

    keys = new_keys(args.encryption)
    store = store_for(args.repo, create=True)
    path = None
    if args.encryption != "none":
        path = key_path(keys.repository_id, args.key_file)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = passphrase(args.passphrase_file, ask=False)
        write_key_file(path, dump_key_file(keys, secret))
    try:
        repo = Repository.create(store, keys, args.chunk_size or fmt.DEFAULT_CHUNK)
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)  # a key of no repository
        raise
    print(
        f"lvrepo: made repository {repo.config.id} in {args.repo}"
        + (f"; its key is {path}: keep a copy apart (lvrepo key export)" if path else ""),
        file=sys.stderr,
    )
    c.emit_json(
        json_to,
        "lvrepo",
        {"action": "init", "id": repo.config.id, "encryption": args.encryption,
         "chunk_size": repo.config.chunk_size, "key_file": str(path) if path else None},
    )  # fmt: skip
    return 0


def _list(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    repo = open_repo(args)
    points = [p for p in repo.points() if _of_source(p, args.source)]
    if json_to:
        c.emit_json(json_to, "lvrepo", {"action": "list", "points": [p.to_dict() for p in points]})
    else:
        for p in points:
            src = p.source
            print(
                f"{p.id.removeprefix('points/')}\t{src.host}:{src.vg}/{src.lv}\t{p.name}\t"
                f"{p.size}\t{p.time}"
            )
    return 0


def _of_source(point: Any, source: str | None) -> bool:
    return source is None or source in (point.source.key, point.source.lv)


def _put(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo.make import put_stream

    repo = open_repo(args)
    with _open(args.input) as inp:
        made = put_stream(
            repo, inp, args.source, os.uname().nodename, workers=_workers(args), report=console
        )
    console.close()
    p = made.point
    print(f"lvrepo: stored point {p.id.removeprefix('points/')} of {p.name}", file=sys.stderr)
    c.emit_json(json_to, "lvrepo", {"action": "put", **p.to_dict(), "made": made.stats.to_dict()})
    return 0


def _open(path: Path | None) -> Any:
    if path is not None:
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if sys.stdin.isatty():
        raise UsageError("the stream comes on stdin: lvdiff ... | lvrepo put REPO")
    return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115


def _restore(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    import time

    from ..repo.emit import restore_image, restore_volume
    from .lvpatch import outcome

    started = time.monotonic()
    repo = open_repo(args)
    point = repo.find(args.point)
    if args.to_file is not None:
        res = restore_image(repo, point, args.to_file, workers=_workers(args), report=console)
    else:
        if not args.pool:
            raise UsageError("restoring onto LVM needs the thin pool: -g VG -p POOL")
        res = restore_volume(
            repo, point, args.vg, args.pool, args.name, args.writable, _workers(args), console
        )
    console.close()
    print(outcome(res), file=sys.stderr)
    c.emit_json(json_to, "lvrepo", res.to_dict(time.monotonic() - started, res.digest))
    return 0


def _stream(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo.emit import write_stream

    repo = open_repo(args)
    points = repo.points()
    point = repo.find(args.point, points)
    base = repo.find(args.base, points) if args.base else None
    if args.output is None:
        if sys.stdout.isatty():
            raise UsageError("refusing to write a binary stream to a terminal; redirect stdout")
        out = sys.stdout.buffer
        done = write_stream(repo, point, out, base, _workers(args), console)
        out.flush()
    else:
        try:
            with open(args.output, "xb") as f:
                done = write_stream(repo, point, f, base, _workers(args), console)
                os.fsync(f.fileno())
        except FileExistsError:
            raise UsageError(f"{args.output} exists; not overwriting it") from None
        except BaseException:
            args.output.unlink(missing_ok=True)
            raise
    console.close()
    c.emit_json(
        json_to,
        "lvrepo",
        {"action": "stream", "point": point.id.removeprefix("points/"),
         "base": base.id.removeprefix("points/") if base else None,
         "stream_digest": str(done.digest), "data_bytes": done.data_bytes,
         "zero_bytes": done.zero_bytes},
    )  # fmt: skip
    return 0


def _verify(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo.maintenance import verify

    repo = open_repo(args)
    points = repo.points()
    chosen = [repo.find(r, points) for r in args.points] if args.points else points
    seen: set[bytes] = set()
    results = [verify(repo, p, args.sample, _workers(args), console, seen) for p in chosen]
    console.close()
    for r in results:
        state = "ok" if r.ok else f"DAMAGED ({len(r.damaged)}): {r.damaged[0]}"
        print(f"lvrepo: {r.point}: {r.chunks} chunks checked: {state}", file=sys.stderr)
    c.emit_json(json_to, "lvrepo", {"action": "verify", "points": [r.to_dict() for r in results]})
    return exitcodes.DAMAGED if any(not r.ok for r in results) else exitcodes.SUCCESS


def _prune(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo.maintenance import prune
    from ..retention import Retention

    keep = Retention(
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
    )
    repo = open_repo(args)
    gone = prune(repo, keep, args.source, args.dry_run, console)
    c.emit_json(
        json_to,
        "lvrepo",
        {"action": "prune", "dry_run": args.dry_run,
         "removed": [p.id.removeprefix("points/") for p in gone]},
    )  # fmt: skip
    return 0


def _delete(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    repo = open_repo(args)
    points = repo.points()
    chosen = [repo.find(r, points) for r in args.points]  # every name checked first
    for p in chosen:
        repo.delete_point(p)
        console(Note(f"removed point {p.id.removeprefix('points/')} ({p.name})"))
    c.emit_json(
        json_to,
        "lvrepo",
        {"action": "delete", "removed": [p.id.removeprefix("points/") for p in chosen]},
    )
    return 0


def _gc(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo.repository import gc

    repo = open_repo(args)
    res = gc(repo, timedelta(hours=args.grace_hours), console)
    c.emit_json(json_to, "lvrepo", {"action": "gc", **res.to_dict()})
    return 0


def _key(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    from ..repo.access import key_path

    repo = open_repo(args)  # the key must open the repository before it is shown
    if repo.config.encryption == "none":
        raise UsageError(f"{args.repo} is not encrypted: it has no key")
    sys.stdout.write(key_path(repo.config.id, args.key_file).read_text())
    return 0


COMMANDS = {
    "init": _init,
    "list": _list,
    "put": _put,
    "restore": _restore,
    "stream": _stream,
    "verify": _verify,
    "prune": _prune,
    "delete": _delete,
    "gc": _gc,
    "key": _key,
}
