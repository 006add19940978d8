"""Resume tokens: where an interrupted lvpatch can pick up, and what it was receiving.

Like ZFS's receive_resume_token: the receiving side records the last durable
point on the incomplete volume itself (an LVM tag, so it survives a crash and
``lvs -o+lv_tags`` shows it); the user hands the token to ``lvdiff --resume``,
which re-sends only what lies past that point.

The token pins NEW, and BASE for an incremental, by lineage identity, not by
a sample of their content: lvdiff resumes only from volumes that cannot
change (read-only), whose identity then stands for exactly one content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from . import tags
from .errors import UsageError
from .stream import SECTOR

_ID = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
_TOKEN_RE = re.compile(rf"^(\d{{1,19}}):({_ID}):({_ID}|-)$")
_FULL = "-"


@dataclass(frozen=True)
class ResumeToken:
    offset: int  # every record ending at or before this byte is durable on the target
    new_identity: str  # lineage identity of the NEW being restored
    base_identity: str | None  # and of its BASE; None for a full stream

    def __str__(self) -> str:
        return f"{self.offset}:{self.new_identity}:{self.base_identity or _FULL}"

    @classmethod
    def parse(cls, text: str) -> ResumeToken:
        m = _TOKEN_RE.match(text.strip().removeprefix(tags.RESUME_PREFIX))
        if not m or int(m[1]) % SECTOR or int(m[1]) >= 1 << 63:
            raise UsageError(f"{text!r} is not an lvpatch resume token")
        return cls(int(m[1]), m[2], None if m[3] == _FULL else m[3])

    @property
    def tag(self) -> str:
        return tags.RESUME_PREFIX + str(self)

    @classmethod
    def from_tags(cls, lv_tags: Iterable[str]) -> ResumeToken | None:
        for t in lv_tags:
            if t.startswith(tags.RESUME_PREFIX):
                return cls.parse(t)
        return None
