"""Headers and streams the tests build, shared by the unit and the real-kernel tests.

As sqlite-utils' and borg's test suites share their builders: a header is
made here with every field valid and the test overrides what it is about,
so a new required field touches one place, not a dozen.
"""

from __future__ import annotations

import io
import os
from typing import Any

from lvdiff import fingerprint as fpr
from lvdiff.stream import Header, StreamWriter, VolumeRef, encode_data, encode_zero

KiB = 1024
MiB = 1024 * KiB


def make_header(**overrides: Any) -> Header:
    """A valid header of a full stream of a 1 MiB volume at check level 0; an incremental one
    needs its ``base`` and ``base_size`` given too."""
    fields: dict[str, Any] = {
        "kind": "full",
        "volume_size": 1 * MiB,
        "chunk_size": 64 * KiB,
        "vg": "vg0",
        "pool": "pool0",
        "transaction_id": 7,
        "new": VolumeRef("root-snap.2", "AbCd-1234", 3, "AbCd-1234"),
        "created": "2024-05-01T12:00:00Z",
        "tool": "lvdiff 0.1.0",
        "meta": [("host", "alpha"), ("note", "nightly")],
        "compression": "zstd",
        "detect_level": 0,
    }
    fields.update(overrides)
    return Header(**fields)


def fingerprint(buf: bytes | None, level: int, seed: str | None = None) -> fpr.Fingerprint | None:
    """The fingerprint lvdiff would take of ``buf`` at ``level`` (None at level 0 or no buf)."""
    if buf is None or not level:
        return None
    return fpr.compute(
        level, lambda o, n: buf[o : o + n], len(buf), 65536, seed or os.urandom(16).hex()
    )


def stream_between(
    base: bytes | None,
    new: bytes,
    base_id: str = "base-id",
    new_id: str = "new-id",
    level: int = 2,
    grain: int = 64 * KiB,
    zstd_level: int | None = 3,
    **header: Any,
) -> bytes:
    """A stream that turns ``base`` into ``new`` (a full one when base is None).

    Each ``grain`` that differs is one record: ZERO when it is all zeros, else
    DATA; with real fingerprints of both at ``level``.
    """
    h = make_header(
        kind="incremental" if base is not None else "full",
        volume_size=len(new),
        base_size=len(base) if base is not None else None,
        base=VolumeRef("b", "ub", 1, base_id) if base is not None else None,
        new=VolumeRef("n", "un", 2, new_id),
        vg="src",
        pool="pool",
        transaction_id=1,
        compression="zstd" if zstd_level else "none",
        detect_level=level,
        base_fingerprint=fingerprint(base, level),
        new_fingerprint=fingerprint(new, level),
        **header,
    )
    out = io.BytesIO()
    w = StreamWriter(out, h)
    old = base if base is not None else bytes(len(new))
    for off in range(0, len(new), grain):
        piece, was = new[off : off + grain], old[off : off + grain]
        if piece == was:
            continue
        if any(piece):
            w.write_record(encode_data(off, piece, zstd_level))
        else:
            w.write_record(encode_zero(off, len(piece)))
    w.close()
    return out.getvalue()
