"""Which of lvsync's snapshots to keep: the last N, and the newest in each of the last
K hours, days, weeks and months (sanoid's and btrbk's rule), plus whatever the caller pins."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Retention:
    last: int = 2
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"retention {name} must be a whole number >= 0, not {value!r}")

    def keep(
        self, snapshots: Iterable[tuple[str, datetime]], pinned: Iterable[str] = ()
    ) -> set[str]:
        """Names to keep among (name, time); everything ``pinned`` is kept too."""
        newest_first = sorted(snapshots, key=lambda s: s[1], reverse=True)
        kept = {name for name, _ in newest_first[: self.last]}
        periods = (
            (self.hourly, lambda t: (t.year, t.month, t.day, t.hour)),
            (self.daily, lambda t: (t.year, t.month, t.day)),
            (self.weekly, lambda t: tuple(t.isocalendar())[:2]),
            (self.monthly, lambda t: (t.year, t.month)),
        )
        for count, bucket in periods:
            seen: set[tuple[int, ...]] = set()
            for name, when in newest_first:
                b = bucket(when)
                if b not in seen and len(seen) < count:
                    seen.add(b)
                    kept.add(name)
        return kept | set(pinned)
