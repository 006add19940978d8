"""lvsync's configuration: a TOML file of jobs (``/etc/lvdiff/lvsync.toml``).

    [defaults]                      # optional, for every job
    check_level = 2
    compress = "zstd:3"

    [defaults.retention]
    last = 2
    daily = 7

    [job.nightly]
    sources = ["vg0/vol0", "vg0/vol1"]
    target = "backup@nas:vg1/pool0"  # VG[/POOL], [user@]host:VG[/POOL] or dir:/path
    repo_key = "/etc/lvdiff/keys/REPO.key"  # dir: an encrypted repository's key file
    ssh_options = ["-p", "2222"]
    pre_snapshot = "virsh domfsfreeze web"
    post_snapshot = "virsh domfsthaw web"

    [job.nightly.retention]
    weekly = 4

Values are checked when read, each mistake one line naming its key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..fingerprint import LEVELS, LEVELS_SHOWN
from ..retention import Retention
from ..stream.records import parse_compression

DEFAULT_PATH = Path("/etc/lvdiff/lvsync.toml")
_KEYS = {
    "sources",
    "target",
    "ssh_options",
    "remote_lvpatch",
    "repo_key",
    "passphrase_file",
    "check_level",
    "compress",
    "retention",
    "pre_snapshot",
    "post_snapshot",
}


@dataclass
class JobConfig:
    name: str
    sources: list[str]
    target: str
    ssh_options: list[str] = field(default_factory=list)
    remote_lvpatch: str = "lvpatch"
    check_level: int = 2
    compress: str = "zstd:3"
    retention: Retention = field(default_factory=Retention)
    pre_snapshot: str | None = None
    post_snapshot: str | None = None
    repo_key: str | None = None  # a dir: repository's key file, if encrypted
    passphrase_file: str | None = None  # and the file holding that key's passphrase


def load(path: Path) -> dict[str, JobConfig]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"no configuration at {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: {e}") from None
    defaults = doc.get("defaults", {})
    jobs = doc.get("job", {})
    unknown = set(doc) - {"defaults", "job"}
    if not isinstance(defaults, dict):
        raise UsageError(f"{path}: defaults must be a table ([defaults])")
    if unknown:
        raise UsageError(f"{path}: unknown section {sorted(unknown)[0]!r}")
    if not isinstance(jobs, dict) or not jobs:
        raise UsageError(f"{path}: no [job.NAME] tables")
    return {name: _job(path, name, defaults, body) for name, body in jobs.items()}


def _job(path: Path, name: str, defaults: dict[str, Any], body: Any) -> JobConfig:
    where = f"{path}: job {name}"
    if not isinstance(body, dict):
        raise UsageError(f"{where} must be a table")
    merged = {**defaults, **body}
    unknown = set(merged) - _KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    for scope, table in (("defaults", defaults), (f"job {name}", body)):
        if not isinstance(table.get("retention", {}), dict):
            raise UsageError(f"{path}: {scope}: retention must be a table ([...retention])")
    retention = {**defaults.get("retention", {}), **body.get("retention", {})}
    try:
        keep = Retention(**retention)
    except TypeError as e:  # an unknown period
        raise UsageError(f"{where}: retention: {e}") from None
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    sources, target = merged.get("sources"), merged.get("target")
    if not (isinstance(sources, list) and sources and all(isinstance(s, str) for s in sources)):
        raise UsageError(f"{where}: sources must be a list of VG/LV")
    if not isinstance(target, str) or not target:
        raise UsageError(f"{where}: target must be VG[/POOL], [user@]host:VG[/POOL] or dir:/path")
    ssh = merged.get("ssh_options", [])
    if not (isinstance(ssh, list) and all(isinstance(o, str) for o in ssh)):
        raise UsageError(f"{where}: ssh_options must be a list of strings")
    level = merged.get("check_level", 2)
    if not isinstance(level, int) or isinstance(level, bool) or level not in LEVELS:
        raise UsageError(f"{where}: check_level must be {LEVELS_SHOWN}")
    for key in (
        "compress",
        "remote_lvpatch",
        "pre_snapshot",
        "post_snapshot",
        "repo_key",
        "passphrase_file",
    ):
        if key in merged and not isinstance(merged[key], str):
            raise UsageError(f"{where}: {key} must be a string")
    try:
        parse_compression(merged.get("compress", "zstd:3"))
    except ValueError as e:
        raise UsageError(f"{where}: compress: {e}") from None
    return JobConfig(
        name,
        sources,
        target,
        ssh,
        merged.get("remote_lvpatch", "lvpatch"),
        level,
        merged.get("compress", "zstd:3"),
        keep,
        merged.get("pre_snapshot"),
        merged.get("post_snapshot"),
        merged.get("repo_key"),
        merged.get("passphrase_file"),
    )
