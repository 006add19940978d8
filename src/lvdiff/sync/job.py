"""One lvsync run: resume what was cut, snapshot, find the common base, send, prune.

For each source volume:

1. a restore the target kept from a cut transfer is resumed, when both of
   the snapshots it names still exist here (otherwise it is given up);
2. a read-only snapshot is taken (of every source first, one right after the
   other, between the pre- and post-snapshot hooks);
3. the newest snapshot both sides hold is found *by identity* (a name can
   lie; a UUID-based identity cannot); none means a full stream;
4. a snapshot identical to that base (thin_delta reports nothing) is
   removed again: nothing to do;
5. the stream goes to the target under the snapshot's name, resumable;
6. lvsync's own snapshots of the volume are pruned on both sides by the
   retention policy, never the newest common pair, and only after success.

Engines report to the caller (events), and every volume ends in an
:class:`Outcome`; nothing here prints.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from .. import lineage, lvm
from ..errors import LvdiffError
from ..events import Note, Reporter, ignore
from ..inventory import Held
from ..resume import ResumeToken
from . import naming
from .retention import Retention
from .targets import Receive, Target, TransientError


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
    thin_delta: str = "thin_delta"


@dataclass
class Outcome:
    source: str
    status: str  # synced, unchanged, failed, would-sync
    snapshot: str | None = None
    resumed: str | None = None  # a cut transfer of this snapshot was completed first
    resumed_bytes: int | None = None  # what that took: the rest of the stream only
    base: str | None = None
    transient: bool = False
    error: str | None = None
    sent: dict[str, Any] | None = None
    estimate: dict[str, int] | None = None
    pruned_here: list[str] = field(default_factory=list)
    pruned_there: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run(job: Job, report: Reporter = ignore, now: datetime | None = None) -> list[Outcome]:
    """Sync every source of ``job``; one Outcome per source, whatever failed."""
    when = (now or datetime.now(UTC)).replace(microsecond=0)
    target = job.target
    try:
        target.prepare()
        outcomes = {f"{vg}/{lv}": Outcome(f"{vg}/{lv}", "failed") for vg, lv in job.sources}
        held = target.inventory()
        for vg, lv in job.sources:
            out = outcomes[f"{vg}/{lv}"]
            _guarded(
                out, lambda vg=vg, lv=lv, out=out: _resume_pending(job, vg, lv, held, out, report)
            )
        snapshots = _take_snapshots(job, when, report)
        for vg, lv in job.sources:
            out = outcomes[f"{vg}/{lv}"]
            if out.error:
                continue  # its resume failed: send nothing new on top of a broken transfer
            _guarded(
                out,
                lambda vg=vg, lv=lv, out=out: _sync_one(
                    job, vg, lv, snapshots.get((vg, lv)), target.inventory(), out, report
                ),
            )
        return list(outcomes.values())
    except TransientError as e:
        return [
            Outcome(f"{vg}/{lv}", "failed", transient=True, error=str(e)) for vg, lv in job.sources
        ]
    finally:
        target.close()


def _guarded(out: Outcome, step) -> None:  # noqa: ANN001 - a callable of no arguments
    """Run one volume's step; its failure is that volume's outcome, not the run's end."""
    try:
        step()
    except TransientError as e:
        out.status, out.transient, out.error = "failed", True, str(e)
    except LvdiffError as e:
        out.status, out.error = "failed", str(e)


# -- the steps


def _ours(vg: str, lv: str) -> list[lvm.LV]:
    """lvsync's snapshots of vg/lv, oldest first."""
    mine = [s for s in lvm.lvs_in_vg(vg) if naming.is_ours(lv, s.name, s.tags)]
    return sorted(mine, key=lambda s: naming.taken_at(s.name) or datetime.min.replace(tzinfo=UTC))


def _held_of(lv: str, held: list[Held]) -> list[Held]:
    return [h for h in held if naming.is_ours(lv, h.name, h.tags)]


def _resume_pending(
    job: Job, vg: str, lv: str, held: list[Held], out: Outcome, report: Reporter
) -> None:
    """Continue a restore the target kept when a transfer was cut, or give it up."""
    for h in _held_of(lv, held):
        if h.complete or not h.resume_token:
            continue
        token = ResumeToken.parse(h.resume_token)
        by_identity = {lineage.source_identity(s): s for s in _ours(vg, lv)}
        new = by_identity.get(token.new_identity)
        base = by_identity.get(token.base_identity) if token.base_identity else None
        if new is None or (token.base_identity and base is None):
            report(Note(f"giving up {job.target.label}/{h.name}: its snapshots are gone here"))
            if not job.dry_run:
                job.target.abandon(h.name)
            continue
        report(Note(f"resuming {vg}/{new.name} to {job.target.label} at byte {token.offset}"))
        if job.dry_run:
            out.status = "would-sync"
            continue
        sent = job.target.receive(
            _producer(job, vg, new.name, base.name if base else None, token),
            Receive(h.name, base.name if base else None, resume=True, tags=naming.tags_for(lv)),
        )
        out.status, out.resumed = "synced", new.name
        out.resumed_bytes = sent["bytes"]["written"] + sent["bytes"]["zeroed"]


def _take_snapshots(job: Job, when: datetime, report: Reporter) -> dict[tuple[str, str], str]:
    """One read-only snapshot per source, taken one right after the other.

    LVM freezes each filesystem while it snapshots its volume, so each is
    consistent on its own; across volumes the snapshots are a moment apart,
    and the hooks are where an application is made to hold still.
    """
    names = {src: naming.snapshot_name(src[1], when) for src in job.sources}
    if job.dry_run:
        for (vg, _lv), name in names.items():
            report(Note(f"would snapshot {vg}/{name}"))
        return {}
    _hook(job.pre_snapshot, "pre-snapshot")
    made = {}
    try:
        for (vg, lv), name in names.items():
            origin = lvm.get_thin(vg, lv)
            lvm.create_snapshot(origin, name, add_tags=naming.tags_for(lv), writable=False)
            made[(vg, lv)] = name
    finally:
        _hook(job.post_snapshot, "post-snapshot")
    return made


def _hook(command: str | None, what: str) -> None:
    if not command:
        return
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        raise LvdiffError(f"the {what} hook failed (exit {proc.returncode}): {last}")


def _sync_one(
    job: Job, vg: str, lv: str, new: str | None, held: list[Held], out: Outcome, report: Reporter
) -> None:
    mine = _ours(vg, lv)
    have = {h.identity for h in held if h.complete and h.identity}
    common = [s for s in mine if s.name != new and lineage.source_identity(s) in have]
    base = common[-1] if common else None
    out.base = base.name if base else None
    there = {h.identity: h.name for h in held if h.complete}
    base_there = there.get(lineage.source_identity(base)) if base else None
    if job.dry_run:
        estimate = _estimate(job, vg, lv, base.name if base else None)
        out.status, out.estimate = "would-sync", estimate
        kind = f"incremental from {base.name}" if base else "full"
        report(
            Note(
                f"would send {vg}/{lv} to {job.target.label}: {kind}, "
                f"{estimate['bytes_to_read']} bytes"
            )
        )
        _prune(job, vg, lv, out, report, keep_newest=base.name if base else None)
        return
    assert new is not None
    out.snapshot = new
    if base is not None and _unchanged(job, vg, base.name, new):
        lvm.remove(lvm.get_lv(vg, new))
        # a transfer resumed in this run was work done, even if nothing changed since
        out.status, out.snapshot = ("synced" if out.resumed else "unchanged"), None
        report(Note(f"{vg}/{lv} has not changed since {base.name}: nothing to send"))
        _prune(job, vg, lv, out, report, keep_newest=base.name)
        return
    out.sent = job.target.receive(
        _producer(job, vg, new, base.name if base else None, None),
        Receive(new, base_there, tags=naming.tags_for(lv)),
    )
    out.status = "synced"
    report(
        Note(
            f"sent {vg}/{new} to {job.target.label}"
            + (f" (from {base.name})" if base else " (full)")
        )
    )
    _prune(job, vg, lv, out, report, keep_newest=new)


def _producer(job: Job, vg: str, new: str, base: str | None, resume: ResumeToken | None):  # noqa: ANN202
    from ..dump import DumpOptions, dump

    def produce(out: BinaryIO) -> Any:
        opts = DumpOptions(
            level=job.check_level, thin_delta=job.thin_delta, zstd_level=job.compress, resume=resume
        )
        return dump((vg, new), (vg, base) if base else None, out, options=opts)

    return produce


def _dry(job: Job, vg: str, new: str, base: str | None) -> Any:
    import os

    from ..dump import DumpOptions, dump

    opts = DumpOptions(level=0, thin_delta=job.thin_delta, dry_run=True)
    with open(os.devnull, "wb") as sink:
        return dump((vg, new), (vg, base) if base else None, sink, options=opts)


def _estimate(job: Job, vg: str, lv: str, base: str | None) -> dict[str, int]:
    """What a run now would send: the live volume stands in for its snapshot."""
    res = _dry(job, vg, lv, base)
    return {"bytes_to_read": res.plan.read_bytes, "bytes_as_zero": res.plan.zero_bytes}


def _unchanged(job: Job, vg: str, base: str, new: str) -> bool:
    res = _dry(job, vg, new, base)
    same_size = lvm.get_lv(vg, base).size == lvm.get_lv(vg, new).size
    return res.plan.read_bytes == 0 and res.plan.zero_bytes == 0 and same_size


def _prune(
    job: Job, vg: str, lv: str, out: Outcome, report: Reporter, keep_newest: str | None
) -> None:
    """Retention on both sides; the newest common snapshot is always kept."""
    pinned = {keep_newest} if keep_newest else set()
    mine = [(s.name, naming.taken_at(s.name)) for s in _ours(vg, lv)]
    keep = job.retention.keep([(n, t) for n, t in mine if t], pinned)
    for name, _t in mine:
        if name not in keep:
            report(Note(("would remove " if job.dry_run else "removing ") + f"{vg}/{name}"))
            if not job.dry_run:
                lvm.remove(lvm.get_lv(vg, name))
            out.pruned_here.append(name)
    if not job.target.prunable:
        return
    theirs = [
        (h.name, naming.taken_at(h.name))
        for h in _held_of(lv, job.target.inventory())
        if h.complete
    ]
    keep = job.retention.keep([(n, t) for n, t in theirs if t], pinned)
    for name, _t in theirs:
        if name not in keep:
            report(
                Note(
                    ("would remove " if job.dry_run else "removing ") + f"{job.target.label}/{name}"
                )
            )
            if not job.dry_run:
                job.target.remove(name, naming.tags_for(lv))
            out.pruned_there.append(name)


def exit_status(outcomes: list[Outcome]) -> int:
    """0 synced, 1 hard failure, 3 nothing to do, 75 transient failure worth a retry."""
    if any(o.status == "failed" and not o.transient for o in outcomes):
        return 1
    if any(o.transient for o in outcomes):
        return 75
    if outcomes and all(o.status == "unchanged" for o in outcomes):
        return 3
    return 0
