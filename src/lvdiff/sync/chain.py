"""Restore the chains kept in a ``dir:`` target: onto a thin pool, or into image files.

Each source has its own folder and manifest, which names each stream's NEW
and BASE identities, so a chain is rebuilt by identity from the newest
stream back to its full stream, then applied in order, each step checked
against the SHA-256 the manifest kept and atomic as lvpatch makes it.

A directory an older lvsync wrote has one manifest for every source, in
which two machines' volumes of one name are told apart only by their
lineage: there, every full stream starts a chain of its own, and the newest
stream that continues it is restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LvdiffError
from ..events import Note, Reporter, ignore
from ..stream.digest import StreamDigest
from ..stream.header import StreamKind
from .naming import LEGACY_PREFIX
from .targets import MANIFEST, DirTarget

Stream = dict[str, Any]  # one manifest entry (docs/FORMAT.md)


@dataclass(frozen=True)
class Chain:
    """The streams that rebuild one copy, full stream first."""

    lv: str
    source: str  # the source's key, or "legacy:<first stream>" for an older lvsync's chain
    streams: list[Stream]

    @property
    def newest(self) -> str:
        return self.streams[-1]["name"]


def chains(store: DirTarget, lv: str | None = None) -> list[Chain]:
    """The newest chain of every source kept in ``store`` (only sources named ``lv``, if given)."""
    found = []
    for manifest in store.manifests():
        streams = store.streams(manifest)
        if not streams:
            continue
        if manifest.parent == store.path:  # an older lvsync's, for every source at once
            found += _legacy_chains(store, streams)
        else:
            key = f"{manifest.parent.parent.name}/{manifest.parent.name}"
            found.append(Chain(manifest.parent.name, key, _back_from(store, streams[-1], streams)))
    found = [c for c in found if lv is None or c.lv == lv]
    if not found:
        raise LvdiffError(f"{store.label} holds no streams" + (f" of {lv}" if lv else ""))
    return found


def _back_from(store: DirTarget, link: Stream, streams: list[Stream]) -> list[Stream]:
    """From ``link`` back to its full stream, by identity."""
    by_identity = {s["identity"]: s for s in streams}
    path = [link]
    while link["kind"] == StreamKind.INCREMENTAL:
        link = by_identity.get(link["base_identity"])
        if link is None:
            raise LvdiffError(
                f"a chain in {store.label} lacks the stream before {path[-1]['name']}: "
                "cannot restore it"
            )
        path.append(link)
    return list(reversed(path))


def _legacy_chains(store: DirTarget, streams: list[Stream]) -> list[Chain]:
    out = []
    for root in (s for s in streams if s["kind"] == StreamKind.FULL):
        newest = root
        for s in streams:  # in the order written: the last that leads back to root wins
            try:
                if _back_from(store, s, streams)[0] is root:
                    newest = s
            except LvdiffError:
                continue
        lv = next(
            (t.split(":", 1)[1] for t in root["tags"] if t.startswith(LEGACY_PREFIX)),
            root["name"].rsplit(".", 1)[0],
        )
        out.append(Chain(lv, f"legacy:{root['name']}", _back_from(store, newest, streams)))
    return out


def restore(
    store: DirTarget,
    chain: Chain,
    vg: str | None = None,
    pool: str | None = None,
    images: Path | None = None,
    report: Reporter = ignore,
) -> list[str]:
    """Apply ``chain`` into ``vg``/``pool``, or into image files in ``images``."""
    done = []
    prev: str | None = None
    for s in chain.streams:
        # a stream that is not the one stored fails (the oldest manifests kept no digest)
        recorded = StreamDigest.parse(s["digest"]) if s.get("digest") else None
        with open(store.path / s["file"], "rb") as inp:
            if images is not None:
                from ..imagefile import restore_to_file

                image = images / f"{s['name']}.img"
                restore_to_file(
                    inp,
                    image,
                    images / f"{prev}.img" if prev else None,
                    report=report,
                    expect_digest=recorded,
                )
            else:
                from ..apply import ApplyOptions, apply_stream

                assert vg is not None
                apply_stream(
                    inp,
                    vg,
                    base=prev,
                    pool=pool,
                    name=s["name"],
                    options=ApplyOptions(tags=tuple(s["tags"]), expect_digest=recorded),
                    report=report,
                )
        report(Note(f"restored {s['name']}"))
        done.append(s["name"])
        prev = s["name"]
    return done


__all__ = ["MANIFEST", "Chain", "chains", "restore"]
