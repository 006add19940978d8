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

from . import lvm, tags
from .errors import BaseMismatch
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


def check_base(h: Header, base: lvm.LV) -> str | None:
    """Refuse a target base that is recorded as something other than the stream's BASE.

    Returns a note for the user when the identity matches but cannot prove
    the content (the base is writable), else None.
    """
    return check_recorded(h, base.full_name, recorded_identity(base), base.writable)


def check_recorded(h: Header, label: str, recorded: str | None, writable: bool) -> str | None:
    """The lineage check itself, for anything that records an identity (a tag, an xattr)."""
    assert h.base is not None
    if recorded is None or h.base.identity is None:
        return None  # made by other means, or a 1.x stream: the content check decides
    if recorded != h.base.identity:
        raise BaseMismatch(
            f"{label} holds {recorded}, not this stream's base "
            f"{h.base.name} ({h.base.identity}): apply the streams of a chain in order"
        )
    if writable:
        return (
            f"{label} is writable, so its identity cannot prove it unchanged "
            "since it was restored; the content check decides"
        )
    return None
