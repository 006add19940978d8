"""What lvsync calls its sources, jobs and snapshots, and the LVM tags that say so.

A snapshot is ``<volume>.<UTC time>.<8 hex digits>``
(``vol0.20261129T020000Z.3fa2c1d9``), read-only, and its copy on a target
has the same name.  The digits are of the source and the job: two machines'
``data`` snapshotted by timers in the same second, or two jobs of one volume,
never ask for one name.  Names are for people; what lvsync acts on is
decided by tags, matched exactly:

- ``lvsync``: made by lvsync.
- ``lvsync_src:<VG UUID>/<LV>``: the *source*.  The VG's UUID makes it unique across machines
  (two hosts' ``pve/vm-100-disk-0`` are two sources) and stable across a
  renamed VG or a reinstalled host; the LV name keeps a volume that was
  recreated under its name the same source.
- ``lvsync_to:<12 hex digits>``: the *job*: which target a snapshot was made
  for (and its copy there), so each job's retention and common base are its
  own (an hourly local job never removes the nightly off-site job's base:
  the hold that ``zfs hold`` or syncoid's per-target snapshot names give).
- ``lvsync_host:<host>/<VG>``: for people reading ``lvs -o+lv_tags``; never
  matched.

Before these, lvsync tagged ``lvsync_source:<LV>``, which two machines'
volumes of one name share: volumes carrying it are someone else's to lvsync
now (kept, never pruned, never resumed or given up).
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import tags

TAG = tags.LVSYNC
SOURCE_PREFIX = tags.LVSYNC_SOURCE_PREFIX
JOB_PREFIX = tags.LVSYNC_JOB_PREFIX
HOST_PREFIX = tags.LVSYNC_HOST_PREFIX
LEGACY_PREFIX = tags.LVSYNC_LEGACY_PREFIX  # before sources were unique: someone else's now
_STAMP = "%Y%m%dT%H%M%SZ"
# the suffix is optional: snapshots of the lvsync before it still read
_NAME_RE = re.compile(r"^(?P<lv>.+)\.(?P<when>\d{8}T\d{6}Z)(?:\.[0-9a-f]{8})?$")
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_+.\-/=!:&#]")  # what LVM allows in a tag
MAX_LV = 127 - len(".20261129T020000Z.3fa2c1d9")


@dataclass(frozen=True)
class Source:
    """One source volume: unique by its VG's UUID and its name, shown by host and VG name."""

    vg: str
    lv: str
    vg_uuid: str
    host: str = ""

    @property
    def key(self) -> str:
        return f"{self.vg_uuid}/{self.lv}"

    @property
    def label(self) -> str:
        return f"{self.vg}/{self.lv}"

    @property
    def tag(self) -> str:
        return SOURCE_PREFIX + self.key

    def tags(self, job: str) -> tuple[str, ...]:
        """The tags of a snapshot of this source made for ``job``, and of its copy on the
        target: both sides read alike, and each job's retention keeps to its own."""
        host = _TAG_CHARS.sub("_", self.host or "unknown")[:200]
        return (TAG, self.tag, JOB_PREFIX + job, f"{HOST_PREFIX}{host}/{self.vg}")

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "host": self.host, "vg": self.vg, "lv": self.lv}


def this_host() -> str:
    return socket.gethostname()


def job_key(target: str) -> str:
    """The tag value of a job: its target, spelled canonically, hashed (tags refuse '@')."""
    return hashlib.sha256(target.encode()).hexdigest()[:12]


def snapshot_name(source: Source, job: str, when: datetime) -> str:
    mark = hashlib.sha256(f"{source.key}|{job}".encode()).hexdigest()[:8]
    return f"{source.lv[:MAX_LV]}.{when.astimezone(UTC).strftime(_STAMP)}.{mark}"


def taken_at(name: str) -> datetime | None:
    """When an lvsync snapshot was taken, from its name; None if it is not one."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m["when"], _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def source_key(lv_tags: list[str]) -> str | None:
    """The source a volume of lvsync's belongs to, from its tags; None if it names none."""
    if TAG not in lv_tags:
        return None
    for t in lv_tags:
        if t.startswith(SOURCE_PREFIX):
            return t.removeprefix(SOURCE_PREFIX)
    return None


def is_ours(source: Source, job: str, name: str, lv_tags: list[str]) -> bool:
    """A snapshot (or a copy of one) ``job`` made of exactly ``source``: only these does that
    job resume, use as a base, or prune; the name must parse too."""
    return (
        source_key(lv_tags) == source.key
        and JOB_PREFIX + job in lv_tags
        and taken_at(name) is not None
    )


def is_legacy(lv: str, name: str, lv_tags: list[str]) -> bool:
    """Made for a volume named ``lv`` by an lvsync before sources were unique."""
    return (
        TAG in lv_tags
        and LEGACY_PREFIX + lv in lv_tags
        and source_key(lv_tags) is None
        and taken_at(name) is not None
    )
