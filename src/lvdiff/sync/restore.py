"""Restore a chain kept in a ``dir:`` target: onto a thin pool, or into image files.

The manifest names each stream's NEW and BASE identities, so the chain is
rebuilt by identity from the newest stream back to its full stream, then
applied in order, each step checked and atomic as lvpatch makes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LvdiffError
from ..events import Note, Reporter, ignore
from ..stream.digest import StreamDigest
from .targets import DirTarget


def chain(store: DirTarget, lv: str) -> list[dict[str, Any]]:
    """The streams that rebuild the newest copy of ``lv``, full stream first."""
    streams = [s for s in store.manifest() if f"lvsync_source:{lv}" in s["tags"]]
    if not streams:
        raise LvdiffError(f"{store.label} holds no streams of {lv}")
    by_identity = {s["identity"]: s for s in streams}
    link = streams[-1]
    path = [link]
    while link["kind"] == "incremental":
        link = by_identity.get(link["base_identity"])
        if link is None:
            raise LvdiffError(f"the chain of {lv} in {store.label} lacks a stream: cannot restore")
        path.append(link)
    return list(reversed(path))


def restore(
    store: DirTarget,
    lv: str,
    vg: str | None = None,
    pool: str | None = None,
    images: Path | None = None,
    report: Reporter = ignore,
) -> list[str]:
    """Apply the chain of ``lv`` into ``vg``/``pool``, or into image files in ``images``."""
    done = []
    prev: str | None = None
    for s in chain(store, lv):
        recorded = StreamDigest.parse(s["digest"])  # a stream that is not the one stored fails
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
