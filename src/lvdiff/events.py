"""What the engines tell their caller while they work.

As in borg, the engines (dump, apply) never print: they report events to a
callback, and only the command-line layer turns them into text and progress
bars.  A scheduler (lvsync) gets the same events as data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    """Something the operator should read: a cleanup done, a volume kept, a caveat."""

    text: str


@dataclass(frozen=True)
class Progress:
    """Bytes of the volume dealt with so far, out of ``total`` (None: not known)."""

    done: int
    total: int | None


Event = Note | Progress
Reporter = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default reporter: a library caller that asked for nothing hears nothing."""
