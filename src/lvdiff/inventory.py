"""What a volume group holds of lvpatch's: restored volumes and their identities, and
restores under way or kept for resuming (``lvpatch --list``).

lvsync asks a target for this, over ssh, to find the newest snapshot both
sides share by identity (never by name alone) and to resume a cut transfer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import lvm, tags
from .lineage import recorded_identity
from .resume import ResumeToken


@dataclass(frozen=True)
class Held:
    name: str
    identity: str | None  # what it holds (for an incomplete one: what it is becoming)
    size: int
    read_only: bool
    complete: bool  # False: a restore under way, or kept for --resume
    resume_token: str | None
    tags: list[str]  # all of its LVM tags

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Inventory:
    """What a VG holds of lvpatch's, and its thin pools (where a full stream can go)."""

    volumes: list[Held]
    pools: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"volumes": [h.to_dict() for h in self.volumes], "pools": self.pools}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Inventory:
        """As ``lvpatch --list --json`` writes it; ValueError when it is not that."""
        try:
            volumes = [Held(**v) for v in obj["volumes"]]
            pools = [str(p) for p in obj.get("pools", [])]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not an lvpatch inventory: {e}") from None
        return cls(volumes, pools)


def inventory(vg: str, listing: list[lvm.LV] | None = None) -> Inventory:
    """lvpatch's volumes in ``vg``, in the order lvs lists them, and its thin pools."""
    held = []
    found = lvm.lvs_in_vg(vg) if listing is None else listing
    for lv in found:
        identity = recorded_identity(lv)
        incomplete = tags.INCOMPLETE in lv.tags
        if identity is None and not incomplete:
            continue
        token = ResumeToken.from_tags(lv.tags) if incomplete else None
        held.append(
            Held(
                lv.name,
                identity,
                lv.size,
                not lv.writable,
                not incomplete,
                str(token) if token else None,
                list(lv.tags),
            )
        )
    return Inventory(held, [lv.name for lv in found if lv.segtype == "thin-pool"])
