"""One lvsync run: resume what was cut, snapshot, find the common base, send, prune.

A *source* is one volume of one VG (unique by the VG's UUID, see
:mod:`.naming`); a *job* is the sending of some sources to one target.  Each
job keeps its own snapshots of each source, so two jobs of one volume (an
hourly local copy, a nightly off-site one) never remove each other's common
base.  For each source:

1. a restore the target kept from a cut transfer of *this* source is resumed
   when both snapshots it names still exist here (otherwise it is given up);
2. a read-only snapshot is taken (of every source, one right after the other,
   between the pre- and post-snapshot hooks);
3. the newest of this job's snapshots the target holds *by identity* is the
   base (a name can lie; a UUID-based identity cannot); none means a full
   stream;
4. a snapshot identical to that base is removed again: nothing to do;
5. the stream goes to the target under the snapshot's name, resumable;
6. this job's snapshots of the source, and the target's copies of exactly
   this source, are pruned by the retention policy, never the newest common
   pair, and only after success.

Every source ends in its own :class:`Outcome`, whatever happened to the
others; a failure is that source's, and a snapshot whose send never started
is removed again (one whose send started is kept: the target may hold a
resumable part of it).  SIGINT and SIGTERM end the run at once: nothing new
is started.  The target is reached once for its inventory, which the run
keeps up to date itself.  Engines report to the caller (events); nothing
here prints.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .. import exitcodes, lineage, lvm
from ..errors import LvdiffError, TransientError
from ..events import Note, Reporter, ignore
from ..inventory import Held
from ..resume import ResumeToken
from ..retention import Retention
from . import naming
from .naming import Source
from .targets import Receive, Target
from .volumes import LvmVolumes, Send, Volumes


@dataclass
class Job:
    sources: list[tuple[str, str]]  # (vg, lv)
    target: Target
    retention: Retention = field(default_factory=Retention)
    check_level: int = 2
    compress: int | None = 3
    pre_snapshot: str | None = None  # shell commands run around taking the snapshots
    post_snapshot: str | None = None
    dry_run: bool = False
    volumes: Volumes = field(default_factory=LvmVolumes)
    host: str = field(default_factory=naming.this_host)

    @property
    def key(self) -> str:
        """What names this job on its snapshots: its target, whatever the job is called."""
        return naming.job_key(self.target.key)


@dataclass
class Outcome:
    source: str  # VG/LV, as given
    status: str  # synced, unchanged, failed, would-sync
    key: str | None = None  # the source's unique key, VG UUID/LV
    snapshot: str | None = None
    resumed: str | None = None  # a cut transfer of this snapshot was completed first
    resumed_bytes: int | None = None  # what that took: the rest of the stream only
    base: str | None = None
    transient: bool = False
    error: str | None = None
    error_class: str | None = None  # the failure's identity, as data
    exit_code: int = 0  # of the failure: 1, 2 (usage), 75 (transient)...
    sent: dict[str, Any] | None = None
    estimate: dict[str, int] | None = None
    pruned_here: list[str] = field(default_factory=list)
    pruned_there: list[str] = field(default_factory=list)

    def fail(self, err: LvdiffError) -> None:
        self.status, self.error = "failed", " ".join(str(err).split())
        self.error_class, self.exit_code = type(err).__name__, err.exit_code
        self.transient = isinstance(err, TransientError)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run(job: Job, report: Reporter = ignore, now: datetime | None = None) -> list[Outcome]:
    """Sync every source of ``job``; one Outcome per source, whatever failed."""
    return _Run(job, report, (now or datetime.now(UTC)).replace(microsecond=0)).run()


def exit_status(outcomes: list[Outcome]) -> int:
    """0 synced, 1 hard failure, 2 usage or configuration, 3 nothing to do, 75 retry later."""
    failed = [o for o in outcomes if o.status == "failed"]
    if any(not o.transient and o.exit_code != exitcodes.USAGE for o in failed):
        return exitcodes.FAILURE
    if failed and not all(o.transient for o in failed):
        return exitcodes.USAGE
    if failed:
        return exitcodes.TRANSIENT
    if outcomes and all(o.status == "unchanged" for o in outcomes):
        return exitcodes.NOTHING_TO_DO
    return exitcodes.SUCCESS


class _Run:
    """The state of one run: what the source VGs and the target hold, kept current here."""

    def __init__(self, job: Job, report: Reporter, when: datetime) -> None:
        self.job, self.report, self.when = job, report, when
        self.vols = job.volumes
        self.outcomes = {f"{vg}/{lv}": Outcome(f"{vg}/{lv}", "failed") for vg, lv in job.sources}
        self.sources: dict[str, Source] = {}  # by VG/LV, once found
        self.listings: dict[str, list[lvm.LV]] = {}  # by VG: listed once, kept current
        self.held: list[Held] = []  # what the target holds: asked once, kept current
        self.taken: dict[str, lvm.LV] = {}  # this run's snapshots, by VG/LV
        self.started: set[str] = set()  # sources whose send started
        self.same: dict[str, lvm.LV] = {}  # sources whose snapshot equalled this base: dropped
        self.activated: list[lvm.LV] = []  # made active for this run's sends, by this run

    # -- the run

    def run(self) -> list[Outcome]:
        job = self.job
        try:
            with self.vols.job_lock(job.key) as free:
                if not free:
                    raise TransientError(
                        f"another lvsync is sending to {job.target.label} (job {job.key}); "
                        "this run starts nothing"
                    )
                for name in self.outcomes:
                    self._guarded(name, self._find_source)
                self.held = list(job.target.prepare(self.report))
                self._warn_legacy()
                for name in self._live():
                    self._guarded(name, self._resume_pending)
                self._take_snapshots()
                self._find_unchanged()
                self._activate_sends()
                for name in self._live():
                    self._guarded(name, self._sync_one)
        except LvdiffError as e:  # the target or the hooks: every source not yet done
            for o in self.outcomes.values():
                if o.status == "failed" and o.error is None:
                    o.fail(e)
        finally:
            try:
                self._deactivate()
                self._remove_unsent()
            finally:
                job.target.close()
        return list(self.outcomes.values())

    def _live(self) -> list[str]:
        """Sources still going: found, and not failed so far."""
        return [n for n, o in self.outcomes.items() if n in self.sources and o.error is None]

    def _guarded(self, name: str, step) -> None:  # noqa: ANN001 - a step of one source
        """Run one source's step; its failure is that source's outcome, not the run's end.

        KeyboardInterrupt (SIGINT, SIGTERM) is not caught: it ends the run.
        """
        try:
            step(name)
        except LvdiffError as e:
            self.outcomes[name].fail(e)
        except OSError as e:  # from the file system or a pipe: a failure like any other
            self.outcomes[name].fail(LvdiffError(f"{e.strerror or e}"))

    # -- what is where

    def _listing(self, vg: str) -> list[lvm.LV]:
        if vg not in self.listings:
            self.listings[vg] = self.vols.listing(vg)
        return self.listings[vg]

    def _find_source(self, name: str) -> None:
        vg, lv = name.split("/", 1)
        origin = lvm.get_thin(vg, lv, self._listing(vg))
        src = Source(vg, lv, origin.vg_uuid, self.job.host)
        self.sources[name], self.outcomes[name].key = src, src.key

    def _snapshots(self, src: Source) -> list[lvm.LV]:
        """This job's snapshots of ``src``, oldest first."""
        mine = [
            s for s in self._listing(src.vg) if naming.is_ours(src, self.job.key, s.name, s.tags)
        ]
        return sorted(
            mine, key=lambda s: naming.taken_at(s.name) or datetime.min.replace(tzinfo=UTC)
        )

    def _copies(self, src: Source) -> list[Held]:
        """What the target holds of exactly ``src`` from this job: never another machine's,
        another job's or a legacy one."""
        return [h for h in self.held if naming.is_ours(src, self.job.key, h.name, h.tags)]

    def _forget(self, vg: str, name: str) -> None:
        self.listings[vg] = [lv for lv in self._listing(vg) if lv.name != name]

    def _warn_legacy(self) -> None:
        """One note about volumes an older lvsync tagged: kept, never pruned, and how to adopt."""
        lines = []
        for src in self.sources.values():
            here = [
                s.name for s in self._listing(src.vg) if naming.is_legacy(src.lv, s.name, s.tags)
            ]
            there = [h for h in self.held if naming.is_legacy(src.lv, h.name, h.tags)]
            if not here and not there:
                continue
            legacy = naming.LEGACY_PREFIX + src.lv
            adds = " ".join(f"--addtag {t}" for t in src.tags(self.job.key)[1:])
            text = f"{len(here)} snapshot(s) of {src.label} and {len(there)} copies on "
            text += f"{self.job.target.label} carry {legacy} (an older lvsync's tag, which two "
            text += "machines' volumes of one name share): they are kept and never pruned"
            if here:
                names = " ".join(f"{src.vg}/{n}" for n in here)
                text += f"; to hand them to this job: lvchange {adds} --deltag {legacy} {names}"
            ids = {lineage.source_identity(s) for s in self._listing(src.vg) if s.name in here}
            proven = [h.name for h in there if h.identity in ids]
            vg = getattr(self.job.target, "vg", None)  # a dir: target's still restore as they are
            if proven and vg:
                text += (
                    f"; and on the target, the copies whose identity proves them this source's: "
                    f"lvchange {adds} --deltag {legacy} " + " ".join(f"{vg}/{n}" for n in proven)
                )
            lines.append(text)
        for text in lines:
            self.report(Note(text))

    # -- the steps

    def _resume_pending(self, name: str) -> None:
        """Continue a restore the target kept when a transfer of this source was cut."""
        job, src, out = self.job, self.sources[name], self.outcomes[name]
        for h in self._copies(src):
            if h.complete or not h.resume_token:
                continue
            token = ResumeToken.parse(h.resume_token)
            by_identity = {lineage.source_identity(s): s for s in self._snapshots(src)}
            new = by_identity.get(token.new_identity)
            base = by_identity.get(token.base_identity) if token.base_identity else None
            if new is None or (token.base_identity and base is None):
                self.report(
                    Note(f"giving up {job.target.label}/{h.name}: its snapshots are gone here")
                )
                if not job.dry_run:
                    job.target.abandon(h.name)
                    self.held.remove(h)
                continue
            self.report(
                Note(f"resuming {src.vg}/{new.name} to {job.target.label} at byte {token.offset}")
            )
            if job.dry_run:
                out.status = "would-sync"
                continue
            got = job.target.receive(
                self._producer(src, new.name, base.name if base else None, token),
                Receive(h.name, base.name if base else None, src, src.tags(job.key), resume=True),
            )
            self.held[self.held.index(h)] = replace(h, complete=True, resume_token=None)
            out.status, out.resumed = "synced", new.name
            out.resumed_bytes = got.written + got.zeroed

    def _take_snapshots(self) -> None:
        """One read-only snapshot per source, taken one right after the other.

        LVM freezes each filesystem while it snapshots its volume, so each is
        consistent on its own; across volumes the snapshots are a moment apart,
        and the hooks are where an application is made to hold still.  A
        source that cannot be snapshotted fails alone; a failing hook fails
        every source of the run.
        """
        job = self.job
        names = {n: naming.snapshot_name(self.sources[n], job.key, self.when) for n in self._live()}
        if job.dry_run:
            for n, snap in names.items():
                self.report(Note(f"would snapshot {self.sources[n].vg}/{snap}"))
            return
        if not names:
            return
        _hook(job.pre_snapshot, "pre-snapshot")
        try:
            for n, snap in names.items():
                self._guarded(n, lambda n, snap=snap: self._snapshot(n, snap))
        finally:
            _hook(job.post_snapshot, "post-snapshot")
        self._look_up_snapshots()

    def _snapshot(self, name: str, snap: str) -> None:
        src = self.sources[name]
        origin = lvm.get_thin(src.vg, src.lv, self._listing(src.vg))
        self.vols.snapshot(origin, snap, src.tags(self.job.key))
        # enough to remove it by, until the VG is listed again
        self.taken[name] = replace(origin, name=snap, uuid="", thin_id=None, attr="Vri---tz-k")

    def _look_up_snapshots(self) -> None:
        """List each VG that gained snapshots once, after all of them were taken."""
        for vg in sorted({lv.vg for lv in self.taken.values()}):
            names = [n for n, lv in self.taken.items() if lv.vg == vg]
            try:
                self.listings[vg] = self.vols.listing(vg)
                for n in names:
                    self.taken[n] = lvm.get_thin(vg, self.taken[n].name, self.listings[vg])
            except LvdiffError as e:
                for n in names:
                    self.outcomes[n].fail(e)

    def _base(self, name: str) -> lvm.LV | None:
        """The newest of this job's snapshots of the source that the target holds, by
        identity (not this run's)."""
        src, new = self.sources[name], self.taken.get(name)
        have = {h.identity for h in self._copies(src) if h.complete and h.identity}
        common = [s for s in self._snapshots(src) if new is None or s.name != new.name]
        common = [s for s in common if lineage.source_identity(s) in have]
        return common[-1] if common else None

    def _find_unchanged(self) -> None:
        """This run's snapshots identical to their base, removed again: one thin_delta each,
        one reservation per pool, one lvremove per VG."""
        if self.job.dry_run:
            return
        by_pool: dict[tuple[str, str], dict[str, tuple[lvm.LV, lvm.LV]]] = {}
        for name in self._live():
            new, base = self.taken.get(name), self._base(name)
            if new is not None and base is not None:
                by_pool.setdefault((new.vg, new.pool), {})[name] = (base, new)
        for group in by_pool.values():
            try:
                same = self.vols.unchanged(list(group.values()))
            except LvdiffError as e:
                for name in group:
                    self.outcomes[name].fail(e)
                continue
            for name, (base, new) in group.items():
                if new.full_name in same:
                    self.same[name] = base
        for vg in sorted({self.taken[n].vg for n in self.same}):
            names = [n for n in self.same if self.taken[n].vg == vg]
            try:
                self.vols.remove(*(self.taken[n] for n in names))
            except LvdiffError as e:
                for n in names:
                    self.outcomes[n].fail(e)
                continue
            for n in names:
                self._forget(vg, self.taken.pop(n).name)

    def _activate_sends(self) -> None:
        """NEW and BASE of every send of the run made active in one command per VG, and
        deactivated in one at its end, instead of an ``lvchange`` pair for each send (each
        a scan of the VG).  If that one command fails, each send activates its own."""
        if self.job.dry_run:
            return
        by_vg: dict[str, dict[str, lvm.LV]] = {}
        for name in self._live():
            new = self.taken.get(name)
            if new is None or name in self.same:
                continue
            for lv in (new, self._base(name)):
                if lv is not None and not lv.active:
                    by_vg.setdefault(lv.vg, {})[lv.name] = lv
        for lvs in by_vg.values():
            wanted = list(lvs.values())
            try:
                self.activated += self.vols.activate(wanted)
            except LvdiffError as e:
                self.activated += wanted  # some may be active now: deactivated at the end
                self.report(Note(f"could not activate the volumes to send at once ({e})"))

    def _deactivate(self) -> None:
        """What :meth:`_activate_sends` activated and the run did not remove, inactive again."""
        present = {(lv.vg, lv.name) for lvs in self.listings.values() for lv in lvs}
        by_vg: dict[str, list[lvm.LV]] = {}
        for lv in self.activated:
            if (lv.vg, lv.name) in present:
                by_vg.setdefault(lv.vg, []).append(lv)
        self.activated = []
        for vg, lvs in by_vg.items():
            try:
                self.vols.deactivate(lvs)
            except LvdiffError as e:
                self.report(Note(f"could not deactivate the volumes sent from {vg}: {e}"))

    def _sync_one(self, name: str) -> None:
        job, src, out = self.job, self.sources[name], self.outcomes[name]
        new = self.taken.get(name)
        base = self.same.get(name) or self._base(name)
        out.base = base.name if base else None
        there = {h.identity: h.name for h in self._copies(src) if h.complete}
        base_there = there.get(lineage.source_identity(base)) if base else None
        if job.dry_run:
            planned = self.vols.planned(src.vg, src.lv, base.name if base else None)
            estimate = {"bytes_to_read": planned.read_bytes, "bytes_as_zero": planned.zero_bytes}
            out.status, out.estimate = "would-sync", estimate
            kind = f"incremental from {base.name}" if base else "full"
            self.report(
                Note(
                    f"would send {src.label} to {job.target.label}: {kind}, "
                    f"{estimate['bytes_to_read']} bytes"
                )
            )
            self._prune(name, keep_newest=base.name if base else None)
            return
        if base is not None and name in self.same:
            # a transfer resumed in this run was work done, even if nothing changed since
            out.status = "synced" if out.resumed else "unchanged"
            self.report(Note(f"{src.label} has not changed since {base.name}: nothing to send"))
            self._prune(name, keep_newest=base.name)
            return
        assert new is not None
        out.snapshot = new.name
        self.started.add(name)
        got = job.target.receive(
            self._producer(src, new.name, base.name if base else None, None),
            Receive(new.name, base_there, src, src.tags(job.key)),
        )
        self.held.append(
            Held(new.name, got.identity, new.size, True, True, None, list(src.tags(job.key)))
        )
        out.sent, out.status = got.to_dict(), "synced"
        self.report(
            Note(
                f"sent {src.vg}/{new.name} to {job.target.label}"
                + (f" (from {base.name})" if base else " (full)")
            )
        )
        self._prune(name, keep_newest=new.name)

    def _producer(self, src: Source, new: str, base: str | None, resume: ResumeToken | None):  # noqa: ANN202
        return Send(self.vols, src.vg, new, base, resume, self.job.check_level, self.job.compress)

    def _drop(self, name: str) -> None:
        """Remove this run's snapshot of a source again."""
        lv = self.taken.pop(name)
        self.vols.remove(lv)
        self._forget(lv.vg, lv.name)

    def _remove_unsent(self) -> None:
        """Snapshots this run took whose send never started: nothing holds them, so they go."""
        for name in list(self.taken):
            if name in self.started:
                continue
            lv = self.taken[name]
            try:
                self._drop(name)
                self.report(Note(f"removed {lv.full_name}: it was not sent"))
            except LvdiffError as e:
                self.report(Note(f"could not remove {lv.full_name}, which was not sent: {e}"))

    def _prune(self, name: str, keep_newest: str | None) -> None:
        """Retention on both sides, for this job and this source only; the newest common pair
        is always kept."""
        job, src, out = self.job, self.sources[name], self.outcomes[name]
        verb = "would remove " if job.dry_run else "removing "
        pinned = {keep_newest} if keep_newest else set()
        mine = [(s, naming.taken_at(s.name)) for s in self._snapshots(src)]
        keep = job.retention.keep([(s.name, t) for s, t in mine if t], pinned)
        for s, _t in mine:
            if s.name in keep:
                continue
            self.report(Note(verb + s.full_name))
            if not job.dry_run:
                self.vols.remove(s)
                self._forget(s.vg, s.name)
            out.pruned_here.append(s.name)
        if not job.target.prunable:
            return
        theirs = [(h, naming.taken_at(h.name)) for h in self._copies(src) if h.complete]
        keep = job.retention.keep([(h.name, t) for h, t in theirs if t], pinned)
        for h, _t in theirs:
            if h.name in keep:
                continue
            self.report(Note(f"{verb}{job.target.label}/{h.name}"))
            if not job.dry_run:
                job.target.remove(h.name, src)
                self.held.remove(h)
            out.pruned_there.append(h.name)


def _hook(command: str | None, what: str) -> None:
    if not command:
        return
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        raise LvdiffError(f"the {what} hook failed (exit {proc.returncode}): {last}")
