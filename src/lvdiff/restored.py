"""What a restore reports, onto a volume or into an image file alike.

One type for both (they were near twins), its JSON beside it: lvpatch's
``--json`` and lvsync both read it as data, and only the command line turns
it into words (sqlite-utils' thin ``cli.py`` over its library).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .lineage import BaseCheck
from .stream import Header, StreamDigest, Totals


def mib_per_s(nbytes: int, seconds: float) -> float:
    """A rate for the JSON summaries: MiB/s, one decimal."""
    return round(nbytes / (1 << 20) / seconds, 1) if seconds > 0 else 0.0


@dataclass(frozen=True)
class Restored:
    target: str  # VG/NAME, or the image's path
    header: Header
    totals: Totals
    digest: StreamDigest | None  # of the stream read (its own, or the one asked for)
    base_check: BaseCheck | None  # None for a full stream, or a resumed one (checked before)
    verified_level: int  # level of the check of the result against NEW; 0: none ran
    read_only: bool
    reflinked: bool = False  # an image built on a reflink copy of its base's

    def to_dict(self, seconds: float, digest: StreamDigest | None = None) -> dict[str, Any]:
        """The ``--json`` summary of a restore (keys in the README); ``digest``: the one shown."""
        h, t = self.header, self.totals
        return {
            "action": "restore",
            "target": self.target,
            "kind": h.kind,
            "new": {"name": h.new.name, "identity": h.new.identity, "size": h.volume_size},
            "base": {"name": h.base.name, "identity": h.base.identity} if h.base else None,
            "bytes": {"written": t.data_bytes, "zeroed": t.zero_bytes, "stored": t.stored_bytes},
            "records": {"data": t.data_records, "zero": t.zero_records},
            "stream_digest": str(digest) if digest else None,
            "base_check": str(self.base_check) if self.base_check else None,
            "verified_level": self.verified_level,
            "read_only": self.read_only,
            "seconds": round(seconds, 3),
            "mib_per_s": mib_per_s(t.data_bytes + t.zero_bytes, seconds),
        }
