"""The source side of an lvsync run: the handful of volume operations it needs, behind one seam.

lvsync's decisions (which snapshot is the common base, what to resume or
give up, what retention removes, what a failure leaves behind) depend only
on names, tags, identities and attributes.  The job reaches LVM and the
lvdiff engine only through a :class:`Volumes`, so those decisions are tested
in milliseconds against an in-memory one (tests/unit/test_sync_job.py) and
on the real kernel through :class:`LvmVolumes`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from .. import locks, lvm
from ..plan import PlanTotals
from ..resume import ResumeToken


class Sent(Protocol):
    """What sending a stream reports back (lvdiff.dump.DumpResult has these)."""

    @property
    def plan(self) -> PlanTotals: ...


class Volumes(Protocol):
    def listing(self, vg: str) -> list[lvm.LV]:
        """Every volume of ``vg`` (UsageError if there is no such VG)."""
        ...

    def snapshot(self, origin: lvm.LV, name: str, tags: Sequence[str]) -> None:
        """A new read-only thin snapshot of ``origin``, tagged; the caller lists its VG
        again once it has taken them all (one ``lvs``, not one per snapshot)."""
        ...

    def remove(self, *lvs: lvm.LV) -> None:
        """Remove ``lvs`` (of one VG), in one command."""
        ...

    def activate(self, lvs: Sequence[lvm.LV]) -> list[lvm.LV]:
        """Make the inactive ones of ``lvs`` (of one VG) active, in one command; those it
        activated, marked active.  A send finds them active and leaves them so."""
        ...

    def deactivate(self, lvs: Sequence[lvm.LV]) -> None:
        """Deactivate ``lvs`` (of one VG), in one command."""
        ...

    def unchanged(self, pairs: Sequence[tuple[lvm.LV, lvm.LV]]) -> set[str]:
        """The full names of the NEWs of the (BASE, NEW) pairs that hold what their BASE
        holds, from the pool's metadata alone (one reservation per pool)."""
        ...

    def send(
        self,
        vg: str,
        new: str,
        base: str | None,
        out: BinaryIO,
        resume: ResumeToken | None,
        level: int,
        compress: int | None,
    ) -> Sent:
        """Write the stream from ``base`` (None: full) to ``new`` into ``out``."""
        ...

    def planned(self, vg: str, new: str, base: str | None) -> PlanTotals:
        """What that stream would carry, from the pool's metadata alone."""
        ...

    def prepare(self, vg: str, new: str, base: str | None) -> AbstractContextManager[Any]:
        """NEW (and BASE) ready to be read where thin_delta says they differ: a
        lvdiff.dump.Prepared, for a target that reads the volume itself (a repository)."""
        ...

    def job_lock(self, key: str) -> AbstractContextManager[bool]:
        """Held while a run of job ``key`` works; False at once if another run holds it."""
        ...


@dataclass(frozen=True)
class Send:
    """What a job asks a target to take: a stream of NEW (from BASE) written into a file
    when called, or, for a target that reads the volume itself, the volumes prepared."""

    volumes: Volumes
    vg: str
    new: str
    base: str | None
    resume: ResumeToken | None
    level: int
    compress: int | None

    def __call__(self, out: BinaryIO) -> Any:
        return self.volumes.send(
            self.vg, self.new, self.base, out, self.resume, self.level, self.compress
        )

    def prepared(self) -> AbstractContextManager[Any]:
        return self.volumes.prepare(self.vg, self.new, self.base)


class LvmVolumes:
    """The real thing: LVM's commands and the lvdiff engine."""

    def __init__(self, thin_delta: str = "thin_delta") -> None:
        self.thin_delta = thin_delta
        # thin_delta's ranges of the pairs that did change, for their sends: (vg, new, base)
        self._compared: dict[tuple[str, str, str], Any] = {}

    def listing(self, vg: str) -> list[lvm.LV]:
        return lvm.lvs_in_vg(vg)

    def snapshot(self, origin: lvm.LV, name: str, tags: Sequence[str]) -> None:
        lvm.create_snapshot(origin, name, add_tags=tags, writable=False, look_up=False)

    def remove(self, *lvs: lvm.LV) -> None:
        lvm.remove(*lvs)

    def activate(self, lvs: Sequence[lvm.LV]) -> list[lvm.LV]:
        return lvm.activate(*lvs)

    def deactivate(self, lvs: Sequence[lvm.LV]) -> None:
        lvm.deactivate(*lvs)

    def unchanged(self, pairs: Sequence[tuple[lvm.LV, lvm.LV]]) -> set[str]:
        from ..dump import compare

        same = set()
        for name, c in compare(pairs, self.thin_delta).items():
            if c.same:
                same.add(name)
                c.ranges.close()
            else:  # its send starts from these ranges: no second reservation
                self._compared[(c.new.vg, c.new.name, c.base.name)] = c
        return same

    def send(
        self,
        vg: str,
        new: str,
        base: str | None,
        out: BinaryIO,
        resume: ResumeToken | None,
        level: int,
        compress: int | None,
    ) -> Sent:
        from ..dump import DumpOptions, dump

        compared = self._compared.pop((vg, new, base), None) if base else None
        opts = DumpOptions(
            level=level,
            thin_delta=self.thin_delta,
            zstd_level=compress,
            resume=resume,
            compared=compared,
        )
        return dump((vg, new), (vg, base) if base else None, out, options=opts)

    def planned(self, vg: str, new: str, base: str | None) -> PlanTotals:
        from ..dump import DumpOptions, dump

        opts = DumpOptions(level=0, thin_delta=self.thin_delta, dry_run=True)
        with open(os.devnull, "wb") as sink:
            return dump((vg, new), (vg, base) if base else None, sink, options=opts).plan

    def prepare(self, vg: str, new: str, base: str | None) -> AbstractContextManager[Any]:
        from ..dump import DumpOptions, prepare

        compared = self._compared.pop((vg, new, base), None) if base else None
        opts = DumpOptions(level=0, thin_delta=self.thin_delta, compared=compared)
        return prepare((vg, new), (vg, base) if base else None, options=opts)

    def job_lock(self, key: str) -> AbstractContextManager[bool]:
        return locks.job_lock(key)
