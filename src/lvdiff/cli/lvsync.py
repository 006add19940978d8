"""The lvsync command: nightly replication as one command, over lvdiff.sync."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__, exitcodes
from ..errors import UsageError
from ..events import Note
from . import common as c

EXIT_CODES = exitcodes.help_table("lvsync")

GUARANTEES = """\
What a run guarantees: each source gets a read-only snapshot NAME.YYYYmmddTHHMMSSZ, tagged
lvsync; LVM freezes a mounted filesystem while it snapshots its volume, so each snapshot is
consistent on its own. Several volumes are snapshotted one right after the other, not at one
instant: quiesce the application with --pre-snapshot/--post-snapshot (e.g. virsh
domfsfreeze / domfsthaw) where several volumes must agree. Do not fsfreeze a volume's own
filesystem in the hook: LVM's snapshot then fails. The base is the newest snapshot both sides
hold by identity; lvsync prunes only volumes carrying its tags, never the newest common pair,
and nothing on a target it failed to reach."""


def lvsync_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvsync",
        description="Replicate thin volumes to another VG, another machine (ssh) or a "
        "repository (a directory or S3): snapshot, send what changed since the newest "
        "snapshot both sides share, resume cut transfers, prune by a retention policy.",
        epilog="TARGET is VG[/POOL] here, [user@]host:VG[/POOL] over ssh (the other side "
        "runs its own lvpatch, of the same version), or a repository: dir:/path, "
        "s3://BUCKET/PREFIX or s3+https://HOST[:PORT]/BUCKET/PREFIX (points restored with "
        "lvrepo restore; --restore reads the stream folders of an older lvsync's dir:). "
        "A full stream needs the POOL.\n\n" + GUARANTEES + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("volumes", nargs="*", metavar="VG/LV... TARGET", help="what to send, and where")
    p.add_argument(
        "-c", "--config", type=Path, help="run the jobs in this TOML file (/etc/lvdiff/lvsync.toml)"
    )
    p.add_argument("--job", action="append", default=[], help="with --config: only this job")
    p.add_argument(
        "-d",
        "--check-level",
        type=c.level,
        default=None,
        metavar=c.LEVELS_SHOWN,
        help="lvdiff's content check level (default 2)",
    )
    p.add_argument("--compress", default=None, metavar="zstd[:LEVEL]|none", help="default zstd:3")
    keep_help = {
        "last": "keep the last N of lvsync's snapshots of a volume (default 2)",
        "hourly": "also keep the newest snapshot of each of the last N hours",
        "daily": "also keep the newest snapshot of each of the last N days",
        "weekly": "also keep the newest snapshot of each of the last N weeks",
        "monthly": "also keep the newest snapshot of each of the last N months",
    }
    for period, text in keep_help.items():
        p.add_argument(f"--keep-{period}", type=c.count, default=None, metavar="N", help=text)
    p.add_argument(
        "-o", "--ssh-option", action="append", default=[], metavar="OPTION", help="passed to ssh -o"
    )
    p.add_argument("--ssh-port", type=int, help="passed to ssh -p")
    p.add_argument("--ssh-key", type=Path, help="passed to ssh -i")
    p.add_argument(
        "--remote-lvpatch",
        default=None,
        metavar="CMD",
        help="lvpatch on the target (default lvpatch)",
    )
    p.add_argument(
        "--repo-key",
        type=Path,
        metavar="FILE",
        help="dir: an encrypted repository's key file (default /etc/lvdiff/keys/<id>.key)",
    )
    p.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="dir: the file holding that key file's passphrase (or LVDIFF_REPO_PASSPHRASE)",
    )
    p.add_argument("--pre-snapshot", metavar="CMD", help="run (sh -c) before the snapshots")
    p.add_argument("--post-snapshot", metavar="CMD", help="run (sh -c) after the snapshots")
    p.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="say what would be snapshotted, sent (with its size) and pruned; change nothing",
    )
    p.add_argument(
        "--restore",
        metavar="dir:PATH",
        help="restore the newest copy of each volume kept in a dir: target onto VG/POOL "
        "(the one positional argument), or into image files with --to-dir",
    )
    p.add_argument("--lv", action="append", default=[], help="with --restore: only this volume")
    p.add_argument("--to-dir", type=Path, help="with --restore: write image files here")
    c.add_common(p, f"lvsync {__version__}")
    return p


def _jobs(args: argparse.Namespace) -> list[Any]:
    from ..retention import Retention
    from ..sync.config import DEFAULT_PATH, JobConfig, load

    if args.volumes:
        if args.config or args.job:
            raise UsageError("give either VG/LV... TARGET or --config, not both")
        if len(args.volumes) < 2:
            raise UsageError("give the volumes to send, then the TARGET")
        configs = [JobConfig("command line", args.volumes[:-1], args.volumes[-1])]
    else:
        found = load(args.config or DEFAULT_PATH)
        unknown = [j for j in args.job if j not in found]
        if unknown:
            raise UsageError(f"no job {unknown[0]!r} in the configuration")
        configs = [found[j] for j in (args.job or found)]
    for cfg in configs:  # the command line overrides the file
        if args.check_level is not None:
            cfg.check_level = args.check_level
        if args.compress is not None:
            cfg.compress = args.compress
        keep = {
            p: getattr(args, f"keep_{p}") for p in ("last", "hourly", "daily", "weekly", "monthly")
        }
        if any(v is not None for v in keep.values()):
            base = cfg.retention.__dict__
            cfg.retention = Retention(
                **{k: (v if v is not None else base[k]) for k, v in keep.items()}
            )
        if args.remote_lvpatch:
            cfg.remote_lvpatch = args.remote_lvpatch
        cfg.repo_key = str(args.repo_key) if args.repo_key else cfg.repo_key
        if args.passphrase_file:
            cfg.passphrase_file = str(args.passphrase_file)
        cfg.ssh_options = cfg.ssh_options + [
            *[x for o in args.ssh_option for x in ("-o", o)],
            *(["-p", str(args.ssh_port)] if args.ssh_port else []),
            *(["-i", str(args.ssh_key)] if args.ssh_key else []),
        ]
        cfg.pre_snapshot = args.pre_snapshot or cfg.pre_snapshot
        cfg.post_snapshot = args.post_snapshot or cfg.post_snapshot
    return configs


def lvsync_main(argv: Sequence[str] | None = None) -> int:
    args = c.parse_args(lvsync_parser(), argv)
    console = c.Console("lvsync", c.progress_wanted(args.progress))

    def body() -> int:
        from ..lvm import parse_lv_spec
        from ..sync import job as runner
        from ..sync.volumes import LvmVolumes

        json_to = c.json_destination(args.json, None, console)
        if args.restore:
            return _restore(args, console, json_to)
        summaries, codes = [], []
        volumes = LvmVolumes(os.environ.get("LVDIFF_THIN_DELTA", "thin_delta"))
        for cfg in _jobs(args):
            job = runner.Job(
                sources=[parse_lv_spec(s, None) for s in cfg.sources],
                target=_target(cfg),
                retention=cfg.retention,
                check_level=cfg.check_level,
                compress=c.compression(cfg.compress),
                pre_snapshot=cfg.pre_snapshot,
                post_snapshot=cfg.post_snapshot,
                dry_run=args.dry_run,
                volumes=volumes,
            )
            outcomes = runner.run(job, console)
            for o in outcomes:
                line = f"lvsync: {o.source}: {o.status}"
                if o.error:
                    line += f": {o.error}"
                print(line, file=sys.stderr)
            summaries.append(
                {
                    "job": cfg.name,
                    "target": job.target.label,
                    "volumes": [o.to_dict() for o in outcomes],
                }
            )
            codes.append(runner.exit_status(outcomes))
        c.emit_json(json_to, "lvsync", {"dry_run": args.dry_run, "jobs": summaries})
        # the worst first: what monitoring must act on
        for code in (exitcodes.FAILURE, exitcodes.USAGE, exitcodes.TRANSIENT):
            if code in codes:
                return code
        nothing = codes and all(code == exitcodes.NOTHING_TO_DO for code in codes)
        return exitcodes.NOTHING_TO_DO if nothing else exitcodes.SUCCESS

    return c.run("lvsync", body, console)


def _target(cfg: Any) -> Any:
    """The job's target; a repository gets its key, and the job's check level."""
    from ..sync.targets import RepoTarget, parse_target

    target = parse_target(cfg.target, cfg.ssh_options, cfg.remote_lvpatch)
    if isinstance(target, RepoTarget):
        target.level = cfg.check_level
        target.key_file = Path(cfg.repo_key) if cfg.repo_key else None
        target.passphrase_file = Path(cfg.passphrase_file) if cfg.passphrase_file else None
    return target


def _restore(args: argparse.Namespace, console: c.Console, json_to: str | None) -> int:
    """The newest copy of each source a dir: target keeps: the newest point of each in its
    repository, and each chain of stream files an older lvsync wrote there."""
    from ..sync.chain import chains, restore
    from ..sync.targets import DirTarget

    if not args.restore.startswith("dir:"):
        raise UsageError("--restore reads a dir: target: --restore dir:/path")
    path = Path(args.restore[4:])
    if args.to_dir:
        if args.volumes:
            raise UsageError("--to-dir restores into files: give no VG/POOL")
        args.to_dir.mkdir(parents=True, exist_ok=True)
    elif len(args.volumes) != 1 or "/" not in args.volumes[0]:
        raise UsageError("--restore needs where: VG/POOL (or --to-dir DIR)")
    vg, _, pool = args.volumes[0].partition("/") if args.volumes else ("", "", "")
    store = DirTarget(path)
    found = []
    if store.manifests():
        found = [c for lv in args.lv for c in chains(store, lv)] if args.lv else chains(store)
    done = []
    for chain in found:
        if args.to_dir:
            names = restore(store, chain, images=args.to_dir, report=console)
        else:
            names = restore(store, chain, vg=vg, pool=pool, report=console)
        done.append({"source": chain.source, "lv": chain.lv, "volumes": names})
    done += _restore_points(args, path, vg, pool, console)
    if not done:
        which = " of that --lv" if args.lv else ""
        raise UsageError(f"dir:{path} holds nothing to restore{which}")
    c.emit_json(
        json_to,
        "lvsync",
        # "restored" (LV -> names) as before; "chains" tells two sources of one LV name apart
        {"action": "restore", "restored": {d["lv"]: d["volumes"] for d in done}, "chains": done},
    )
    return 0


def _restore_points(
    args: argparse.Namespace, path: Path, vg: str, pool: str, console: c.Console
) -> list[dict[str, Any]]:
    from ..repo.format import CONFIG

    if not (path / CONFIG).exists():
        return []
    from ..repo.access import open_repository
    from ..repo.emit import restore_image, restore_volume

    repo = open_repository(str(path), args.repo_key, args.passphrase_file)
    newest: dict[str, Any] = {}
    for p in repo.points():  # oldest first: the last one seen of a source is its newest
        if not args.lv or p.source.lv in args.lv:
            newest[p.source.key] = p
    done = []
    for key, p in newest.items():
        if args.to_dir:
            restore_image(repo, p, args.to_dir / f"{p.name}.img", report=console)
        else:
            restore_volume(repo, p, vg, pool, report=console)
        console(Note(f"restored {p.name} ({key})"))
        done.append({"source": key, "lv": p.source.lv, "volumes": [p.name]})
    return done
