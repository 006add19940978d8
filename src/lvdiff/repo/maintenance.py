"""Keeping a repository honest and small: verify every chunk of a point, prune by retention.

``verify`` reads every chunk a point names (or a stated sample of them) and
checks it as a restore would; it names the points that are damaged.
``prune`` removes points by a retention policy applied to each source on
its own, so one machine's retention never touches another's points; the
chunks they alone named go at a later ``gc`` (see repo.repository).
"""

from __future__ import annotations

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import LvdiffError
from ..events import Note, Progress, Reporter, ignore
from ..retention import Retention
from . import format as fmt
from .repository import Repository


@dataclass
class Checked:
    """What verifying one point found."""

    point: str
    chunks: int = 0  # checked
    skipped: int = 0  # not in the sample
    damaged: list[str] = field(default_factory=list)  # object names, with why

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, object]:
        return {"point": self.point, "chunks": self.chunks, "skipped": self.skipped,
                "damaged": self.damaged, "ok": self.ok}  # fmt: skip


def verify(
    repo: Repository,
    point: fmt.Point,
    sample: float = 1.0,
    workers: int = 4,
    report: Reporter = ignore,
    seen: set[bytes] | None = None,
) -> Checked:
    """Read and check ``point``'s index and chunks (a random ``sample`` fraction of chunks).

    ``seen`` holds chunks already found sound (shared with other points): each
    is read once per run.
    """
    out = Checked(point.id.removeprefix("points/"))
    seen = set() if seen is None else seen
    try:
        entries = list(_unique(repo.slots(point)))
    except LvdiffError as e:
        out.damaged.append(f"index: {e}")
        return out
    todo = []
    for entry in entries:
        if entry in seen:
            continue
        if sample < 1.0 and random.random() >= sample:
            out.skipped += 1
            continue
        todo.append(entry)

    def check(entry: bytes) -> str | None:
        try:
            repo.read_chunk(entry)
            return None
        except LvdiffError as e:
            return f"{fmt.data_name(entry)}: {e}"

    with ThreadPoolExecutor(workers, thread_name_prefix="lvrepo-verify") as ex:
        for i, (entry, problem) in enumerate(zip(todo, ex.map(check, todo), strict=True)):
            out.chunks += 1
            if problem:
                out.damaged.append(problem)
            else:
                seen.add(entry)
            report(Progress(i + 1, len(todo)))
    if out.damaged:
        report(Note(f"point {out.point} ({point.name}) is damaged: {out.damaged[0]}"))
    return out


def _unique(entries):  # noqa: ANN001, ANN202 - bytes in, bytes out
    known: set[bytes] = set()
    for e in entries:
        if e != fmt.ZERO_SLOT and e not in known:
            known.add(e)
            yield e


def plan_prune(points: list[fmt.Point], keep: Retention) -> list[fmt.Point]:
    """The points ``keep`` does not keep, each source judged alone (never the newest)."""
    by_source: dict[str, list[fmt.Point]] = defaultdict(list)
    for p in points:
        by_source[p.source.key].append(p)
    gone = []
    for mine in by_source.values():
        timed = [(p.id, _time(p)) for p in mine]
        newest = max(timed, key=lambda t: t[1])[0]
        kept = keep.keep(timed, pinned={newest})
        gone += [p for p in mine if p.id not in kept]
    return gone


def prune(
    repo: Repository,
    keep: Retention,
    source: str | None = None,
    dry_run: bool = False,
    report: Reporter = ignore,
) -> list[fmt.Point]:
    """Remove the points ``keep`` does not keep (of ``source`` only, if given)."""
    points = [p for p in repo.points() if source is None or p.source.key == source]
    gone = plan_prune(points, keep)
    for p in gone:
        report(Note(("would remove " if dry_run else "removing ") + f"{p.id} ({p.name})"))
        if not dry_run:
            repo.delete_point(p)
    return gone


def _time(p: fmt.Point) -> datetime:
    return datetime.strptime(p.time, "%Y-%m-%dT%H:%M:%SZ")
