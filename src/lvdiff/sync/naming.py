"""How lvsync names and tags the snapshots it makes, so people and lvsync can tell them apart.

A snapshot is ``<volume>.<UTC time>`` (``vol0.20261129T020000Z``), read-only,
tagged ``lvsync`` and ``lvsync_source:<volume>``.  The restored copy on the
target has the same name and tags, so both sides read alike; lvsync never
touches a volume without its tags.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

TAG = "lvsync"
SOURCE_PREFIX = "lvsync_source:"
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME_RE = re.compile(r"^(?P<lv>.+)\.(?P<when>\d{8}T\d{6}Z)$")
MAX_LV = 127 - 1 - len("20261129T020000Z")


def snapshot_name(lv: str, when: datetime) -> str:
    return f"{lv[:MAX_LV]}.{when.astimezone(UTC).strftime(_STAMP)}"


def source_tag(lv: str) -> str:
    return SOURCE_PREFIX + lv


def tags_for(lv: str) -> tuple[str, ...]:
    return (TAG, source_tag(lv))


def taken_at(name: str) -> datetime | None:
    """When an lvsync snapshot was taken, from its name; None if it is not one."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m["when"], _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def is_ours(lv: str, name: str, lv_tags: list[str]) -> bool:
    """Made by lvsync for volume ``lv``: the tags say so, and the name parses."""
    return TAG in lv_tags and source_tag(lv) in lv_tags and taken_at(name) is not None
