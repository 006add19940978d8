"""Lineage identities: which point in a volume's history a stream, or a restored volume, holds.

ZFS gives every snapshot a GUID; an incremental stream names its base's
GUID, and ``zfs recv`` refuses a target whose snapshot has another one, in
O(1) and without reading data.  LVM has no such thing, so lvdiff makes one:

- on the source, a volume's identity is its LVM UUID, which no other volume
  anywhere shares.  A volume in use while it is read (open and writable:
  mounted, or attached to a running VM) is changing, so what was sent is
  identified by the UUID of the temporary snapshot lvdiff read it through:
  that point in time exists nowhere else, so nothing can claim it later.
- a volume lvpatch restored carries the identity of what it holds in a tag
  (``lvdiff_identity:...``).  While it is read-only it can only hold that, so
  sending it on (a chain A -> B -> C) keeps the original identity, as ZFS
  keeps GUIDs across send/recv.
- on the target, lvpatch refuses a ``-l BASE`` whose recorded identity is not
  the stream's BASE identity, whatever the check level.  A volume without one
  (made by other means) is checked by content only.

An identity proves content only while the volume cannot change: LVM lets
anyone write a writable snapshot.  lvpatch makes restored volumes read-only,
and lvdiff resumes a transfer only from read-only volumes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from . import fingerprint as fpr
from . import lvm, tags
from .errors import BaseMismatch
from .events import Note, Reporter, ignore
from .stream import Header


def source_identity(named: lvm.LV, read: lvm.LV | None = None) -> str:
    """The identity of what lvdiff read from volume ``named`` (through ``read``, if another).

    A volume in use (open and writable: mounted, or attached to a VM) is
    changing, so what was read is the temporary snapshot's content alone.
    """
    if read is not None and read.uuid != named.uuid and named.open and named.writable:
        return read.uuid
    recorded = recorded_identity(named)
    if recorded is not None and not named.writable:
        return recorded
    return named.uuid


def recorded_identity(lv: lvm.LV) -> str | None:
    """The identity lvpatch recorded on a volume it restored, if any."""
    for t in tags.with_prefix(lv.tags, tags.IDENTITY_PREFIX):
        return t.removeprefix(tags.IDENTITY_PREFIX)
    return None


def identity_tag(identity: str) -> str:
    return tags.IDENTITY_PREFIX + identity


class Identity(enum.Enum):
    """What a target base's recorded identity said about it."""

    MATCHES = "identity matches"  # recorded, provable, and the stream's BASE
    NONE = ""  # nothing recorded (made by other means), or a 1.x stream: content decides
    UNPROVEN = "identity cannot prove it unchanged"  # recorded, but writable or changed since
    SKIPPED = "not checked (--no-base-check)"


@dataclass(frozen=True)
class BaseCheck:
    """How a target's base was checked before anything was written; the CLI renders it.

    ``content_level`` is the level at which BASE's content was found equal to
    the stream's fingerprint of it; None when no content check ran.
    """

    identity: Identity
    content_level: int | None = None

    def __str__(self) -> str:
        if self.identity is Identity.SKIPPED:
            return self.identity.value
        content = (
            f"content matches at level {self.content_level}"
            if self.content_level is not None
            else "not checked (stream made with -d 0)"
        )
        if self.identity is Identity.MATCHES:
            return f"identity matches, {content.replace('not checked', 'content not checked')}"
        return content


def check_base(
    h: Header,
    label: str,
    recorded: str | None,
    provable: bool,
    read: Callable[[int, int], bytes] | None = None,
    enabled: bool = True,
    report: Reporter = ignore,
) -> BaseCheck:
    """Check that a target base is the stream's BASE: lineage first (O(1)), then content.

    One check for volumes and image files alike.  ``recorded`` is the identity
    the base records (a tag, an extended attribute), ``provable`` whether it
    can prove the base unchanged since (a read-only volume, an image whose
    stamp still matches); ``read`` reads the base's bytes for the content
    check, or is None to check the identity alone (lvpatch does that before
    it creates anything, and the content later, through the new snapshot).
    Raises BaseMismatch before anything is written.
    """
    assert h.base is not None
    if not enabled:
        return BaseCheck(Identity.SKIPPED)
    identity = Identity.NONE
    if recorded is not None and h.base.identity is not None:
        if recorded != h.base.identity:
            raise BaseMismatch(
                f"{label} holds {recorded}, not this stream's base "
                f"{h.base.name} ({h.base.identity}): apply the streams of a chain in order"
            )
        identity = Identity.MATCHES if provable else Identity.UNPROVEN
    if identity is Identity.UNPROVEN and read is None:
        report(
            Note(
                f"{label} is writable, so its identity cannot prove it unchanged "
                "since it was restored; the content check decides"
            )
        )
    fp = h.base_fingerprint
    if read is None or fp is None:
        return BaseCheck(identity)
    if not fpr.verify(fp, read):
        raise BaseMismatch(
            f"{label} is not the base this stream was made from "
            f"({h.base.name}, check level {fp.level})"
        )
    return BaseCheck(identity, fp.level)
