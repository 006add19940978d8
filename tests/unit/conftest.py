"""Builders the unit tests share: an in-memory model of LVM and of an lvsync target.

lvsync's decisions (common base, resume, prune, what a failure leaves
behind) depend on names, tags, identities and attributes only, so they are
tested against :class:`ModelVolumes` (the job's seam, lvdiff.sync.volumes)
and :class:`ModelTarget` in milliseconds; the real kernel suite runs the same
scenarios on real LVM.  Neither moves data: a "stream" is the identity of
what was sent, and a copy is what lvpatch would leave after a verified
restore (NEW's identity, read-only, lvsync's tags).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, BinaryIO

import pytest

from lvdiff import lineage, tags
from lvdiff.errors import CommandFailed, LvdiffError, TransientError, UsageError
from lvdiff.inventory import Held
from lvdiff.lvm import LV
from lvdiff.plan import PlanTotals
from lvdiff.stream import StreamWriter, VolumeRef, encode_data
from lvdiff.sync.naming import Source
from lvdiff.sync.targets import Receive, Received

from ..builders import make_header

_serial = itertools.count(1)
VOLUME = 1 << 20  # what ModelVolumes.send says each volume holds


def content(vg: str, name: str) -> bytes:
    """The first 64 KiB of a model volume: its VG and name, repeated (the rest is zeros)."""
    unit = f"{vg}/{name};".encode()
    return (unit * (65536 // len(unit) + 1))[:65536]


def thin(vg: str, name: str, attr: str = "Vwi-aotz--", tags_: Sequence[str] = ()) -> LV:
    n = next(_serial)
    return LV(
        vg, name, f"LV-UUID-{n:05d}", attr, 1 << 30, "thin", "pool", n, list(tags_), 0, "",
        False, None, vg_uuid=f"VG-UUID-{vg}",
    )  # fmt: skip


@dataclass
class ModelVolumes:
    """lvdiff.sync.volumes.Volumes in memory: VGs of thin volumes, and what was asked of them."""

    vgs: dict[str, dict[str, LV]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    fail_snapshot: set[str] = field(default_factory=set)  # VG/LV whose snapshot fails
    fail_send: dict[str, BaseException] = field(default_factory=dict)  # snapshot name -> raised
    unchanged_all: bool = False  # every snapshot equals its base
    fail_activate: bool = False  # the run's one activation fails
    locked: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)  # how often each operation was asked
    sent_active: list[bool] = field(default_factory=list)  # NEW and BASE active, per send

    def add(self, vg: str, name: str, **kw: Any) -> LV:
        lv = thin(vg, name, **kw)
        self.vgs.setdefault(vg, {})[name] = lv
        return lv

    def names(self, vg: str) -> list[str]:
        return sorted(self.vgs.get(vg, {}))

    def listing(self, vg: str) -> list[LV]:
        self.calls["listing"] += 1
        if vg not in self.vgs:
            raise UsageError(f"volume group {vg} not found")
        return [LV(**{**lv.__dict__, "tags": list(lv.tags)}) for lv in self.vgs[vg].values()]

    def snapshot(self, origin: LV, name: str, tags_: Sequence[str]) -> LV:
        self.calls["snapshot"] += 1
        if origin.full_name in self.fail_snapshot:
            raise CommandFailed(["lvcreate", "-s", origin.full_name], 5, "  Metadata is full.")
        if name in self.vgs[origin.vg]:
            raise CommandFailed(["lvcreate", name], 5, f'Logical Volume "{name}" already exists')
        self.log.append(f"snapshot {origin.vg}/{name}")
        return self.add(origin.vg, name, attr="Vri---tz-k", tags_=tags_)

    def remove(self, *lvs: LV) -> None:
        self.calls["remove"] += 1
        for lv in lvs:
            self.log.append(f"remove {lv.full_name}")
            del self.vgs[lv.vg][lv.name]

    def activate(self, lvs: Sequence[LV]) -> list[LV]:
        self.calls["activate"] += 1
        if self.fail_activate:
            raise CommandFailed(["lvchange", "-ay"], 5, "  Failed to activate.")
        changed = [lv for lv in lvs if not lv.active]
        for lv in changed:
            lv.attr = lv.attr[:4] + "a" + lv.attr[5:]
            kept = self.vgs[lv.vg][lv.name]
            kept.attr = kept.attr[:4] + "a" + kept.attr[5:]
        self.log.append("activate " + " ".join(lv.full_name for lv in changed))
        return changed

    def deactivate(self, lvs: Sequence[LV]) -> None:
        self.calls["deactivate"] += 1
        for lv in lvs:
            kept = self.vgs[lv.vg][lv.name]
            kept.attr = kept.attr[:4] + "-" + kept.attr[5:]
        self.log.append("deactivate " + " ".join(lv.full_name for lv in lvs))

    def active(self, vg: str) -> list[str]:
        return sorted(n for n, lv in self.vgs.get(vg, {}).items() if lv.active)

    def unchanged(self, pairs: Sequence[tuple[LV, LV]]) -> set[str]:
        self.calls["unchanged"] += 1
        self.log.append("compare " + " ".join(new.full_name for _, new in pairs))
        return {new.full_name for _, new in pairs} if self.unchanged_all else set()

    def send(self, vg, new, base, out: BinaryIO | None, resume, level, compress):  # noqa: ANN001, ANN201
        """A real stream of a 1 MiB volume whose first 64 KiB name it (see :func:`content`)."""
        self.calls["send"] += 1
        self.log.append(f"send {vg}/{new}" + (f" from {base}" if base else " full"))
        if new in self.fail_send:
            raise self.fail_send[new]
        lv = self.vgs[vg][new]
        self.sent_active.append(lv.active and (base is None or self.vgs[vg][base].active))
        identity = lineage.source_identity(lv)
        if out is None:
            return SimpleNamespace(identity=identity)
        b = self.vgs[vg][base] if base else None
        ref = VolumeRef(b.name, b.uuid, b.thin_id or 0, lineage.source_identity(b)) if b else None
        h = make_header(
            kind="incremental" if b else "full",
            volume_size=VOLUME,
            base_size=VOLUME if b else None,
            vg=vg,
            pool="pool",
            base=ref,
            new=VolumeRef(new, lv.uuid, lv.thin_id or 0, identity),
        )
        w = StreamWriter(out, h)
        w.write_record(encode_data(0, content(vg, new), 3))
        digest = w.close()
        return SimpleNamespace(identity=identity, header=h, totals=w.totals, digest=digest)

    def planned(self, vg: str, new: str, base: str | None) -> PlanTotals:
        return PlanTotals() if self.unchanged_all and base else PlanTotals(1, 1 << 20, 0)

    @contextmanager
    def job_lock(self, key: str) -> Iterator[bool]:
        if key in self.locked:
            yield False
            return
        self.locked.add(key)
        try:
            yield True
        finally:
            self.locked.discard(key)


@dataclass(eq=False)
class ModelTarget:
    """lvdiff.sync.targets.Target in memory: the copies a target VG holds.

    ``remove`` follows the rule lvpatch's own prune engine applies (lvsync's
    mark, exactly that source, an identity, complete), so a test sees a
    request to remove anything else as the error it would be.
    """

    label: str = "backup/pool"
    key: str = "local:backup"
    vg: str = "backup"
    prunable: bool = True
    held: list[Held] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)  # names whose transfer is cut (kept resumable)
    unreachable: bool = False
    prepared: int = 0

    def prepare(self, report=None) -> list[Held]:  # noqa: ANN001
        self.prepared += 1
        if self.unreachable:
            raise TransientError(f"cannot reach {self.label}")
        return list(self.held)

    def names(self) -> list[str]:
        return sorted(h.name for h in self.held)

    def receive(self, produce, what: Receive) -> Received:  # noqa: ANN001
        sent = produce(None)
        if what.resume:
            i = next(i for i, h in enumerate(self.held) if h.name == what.name)
            self.held[i] = Held(what.name, sent.identity, 1, True, True, None, self.held[i].tags)
            self.log.append(f"resume {what.name}")
            return Received(what.name, sent.identity, "incremental", 7, 0, None)
        if what.base is not None and what.base not in self.names():
            raise UsageError(f"base {what.base} not found")
        copy_tags = [*what.tags, tags.IDENTITY_PREFIX + sent.identity]
        if what.name in self.cut:
            token = f"1048576:{sent.identity}:-"
            self.held.append(Held(what.name, sent.identity, 1, False, False, token, copy_tags))
            raise TransientError(f"the transfer of {what.name} was cut")
        self.held.append(Held(what.name, sent.identity, 1, True, True, None, copy_tags))
        kind = "incremental" if what.base else "full"
        self.log.append(f"restore {what.name} " + (f"from {what.base}" if what.base else "full"))
        return Received(what.name, sent.identity, kind, 1 << 20, 0, None)

    def remove(self, name: str, source: Source) -> None:
        h = next(h for h in self.held if h.name == name)
        if not (tags.LVSYNC in h.tags and source.tag in h.tags and h.identity and h.complete):
            raise LvdiffError(f"{name} is not a complete copy of {source.tag}")
        self.log.append(f"remove {name}")
        self.held.remove(h)

    def abandon(self, name: str) -> None:
        self.log.append(f"abandon {name}")
        self.held = [h for h in self.held if h.name != name]

    def close(self) -> None:
        pass


@pytest.fixture
def lvm_model() -> ModelVolumes:
    return ModelVolumes()


@pytest.fixture
def target_model() -> ModelTarget:
    return ModelTarget()
