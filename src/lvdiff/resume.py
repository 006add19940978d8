"""Resume tokens: where an interrupted lvpatch can pick up, and what it was receiving.

Like ZFS's receive_resume_token: the receiving side records the last durable
point on the incomplete volume itself (an LVM tag, so it survives a crash and
``lvs -o+lv_tags`` shows it); the user hands the token to ``lvdiff --resume``,
which re-sends only what lies past that point.  The token pins NEW's content
by its fingerprint (level, seed and digest), so a resumed stream of a NEW
that changed meanwhile is refused on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UsageError

TAG_PREFIX = "lvdiff_resume:"  # LVM tags allow [A-Za-z0-9_+.-/=!:&#]
_TOKEN_RE = re.compile(r"^(\d{1,20}):([123]):(\d{1,20}):([0-9a-f]{32})$")


@dataclass(frozen=True)
class ResumeToken:
    offset: int  # every record ending at or before this byte is durable on the target
    level: int  # detect level of the interrupted stream (1..3)
    seed: int  # its fingerprint seed, so lvdiff can sample the same units
    new_fp: str  # first 128 bits of NEW's fingerprint digest

    def __str__(self) -> str:
        return f"{self.offset}:{self.level}:{self.seed}:{self.new_fp}"

    @classmethod
    def parse(cls, text: str) -> ResumeToken:
        m = _TOKEN_RE.match(text.strip().removeprefix(TAG_PREFIX))
        if not m:
            raise UsageError(f"{text!r} is not an lvpatch resume token")
        return cls(int(m[1]), int(m[2]), int(m[3]), m[4])

    @property
    def tag(self) -> str:
        return TAG_PREFIX + str(self)

    @classmethod
    def from_tags(cls, tags: Iterable[str]) -> ResumeToken | None:
        for t in tags:
            if t.startswith(TAG_PREFIX):
                return cls.parse(t)
        return None

    @classmethod
    def for_stream(cls, offset: int, level: int, new_fingerprint: dict | None) -> ResumeToken:
        """The token for a stream's NEW fingerprint, durable up to ``offset``."""
        if not new_fingerprint:
            raise UsageError(
                "a stream made with -d 0 cannot be resumed: nothing identifies "
                "NEW; make it with -d 1 or more"
            )
        return cls(
            offset,
            level,
            int(new_fingerprint.get("seed") or 0),
            str(new_fingerprint["sha256"])[:32],
        )
