"""The lvpatch engine: apply a stream to a new thin snapshot of BASE, atomically.

The target is created tagged ``lvdiff_incomplete``; the tag is cleared only
after every record was applied, END validated, data flushed and NEW's
fingerprint verified.  Any failure before that removes the target, so a
half-written volume never survives (``--in-place`` is the documented
exception: there is nothing to remove).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import BinaryIO

from . import fingerprint as fpr
from . import lvm
from .blockdev import BlockDevice
from .errors import BaseMismatch, LvdiffError, StreamError, UsageError, VerifyFailed
from .stream import Header, RecordType, StreamReader, Totals
from .writer import ChunkWriter


@dataclass
class ApplyOptions:
    base_check: bool = True
    in_place: bool = False
    progress: bool = False


@dataclass
class ApplyResult:
    target: str
    header: Header
    totals: Totals
    sha256: str


def apply_stream(inp: BinaryIO, vg: str, base: str | None = None, pool: str | None = None,
                 name: str | None = None, options: ApplyOptions | None = None,
                 announce: Callable[[Header], None] | None = None) -> ApplyResult:
    """Rebuild NEW in ``vg`` from a stream: see the module docstring for the guarantees."""
    opt = options or ApplyOptions()
    reader = StreamReader(inp)
    h = reader.header
    if announce:
        announce(h)
    lvm.check_name(vg, "VG name")
    if h.kind == "incremental":
        if not base:
            raise UsageError("this is an incremental stream: give the base volume with -l BASE")
    elif not (pool or (opt.in_place and base)):
        raise UsageError("this is a full stream: give the thin pool with -p POOL")
    if opt.in_place and not base:
        raise UsageError("--in-place writes into the -l volume: give -l")

    target: lvm.LV | None = None
    created = False
    ok = False
    stack = ExitStack()
    try:
        if opt.in_place:
            in_place = lvm.get_lv(vg, lvm.check_name(base or "", "LV name"))
            lvm.activate(in_place)
            target_path, label = in_place.dev, in_place.full_name
            thin_target = in_place if in_place.is_thin else None
        else:
            new_name = lvm.check_name(name or h.new["name"], "LV name")
            stack.enter_context(lvm.target_lock(vg, new_name))
            cleanup(vg)
            if lvm.exists(vg, new_name):
                raise UsageError(f"{vg}/{new_name} already exists; name the restored volume "
                                 "differently or remove it first")
            # Let Ctrl-C/SIGTERM wait until the create returns, so the volume is
            # known to us (and removed) rather than left half made.
            with _signals_deferred():
                if h.kind == "incremental":
                    base_lv = lvm.get_thin(vg, base or "")
                    _check_base_identity(h, base_lv)
                    target = lvm.create_snapshot(base_lv, new_name, tags=(lvm.TAG_INCOMPLETE,),
                                                 activation_skip=False)
                else:
                    target = lvm.create_thin(vg, pool or "", new_name, h.volume_size,
                                             tags=(lvm.TAG_INCOMPLETE,))
                created = True
            lvm.activate(target)
            if target.size != h.volume_size and h.kind == "incremental":
                target = lvm.resize(target, h.volume_size)
            target_path, label = target.dev, target.full_name
            thin_target = target

        with BlockDevice(target_path, writable=True, exclusive=True) as dev:
            if dev.size < h.volume_size:
                raise UsageError(f"{label} holds {dev.size} bytes; the stream needs "
                                 f"{h.volume_size}")
            if h.kind == "incremental" and opt.base_check and h.base_fingerprint:
                fp = fpr.Fingerprint.from_dict(h.base_fingerprint)
                if not fpr.verify(fp, dev.read):
                    raise BaseMismatch(f"{vg}/{base} is not the base this stream was made "
                                       f"from ({h.base['name']}, check level {fp.level})")
            fresh = created and h.kind == "full"
            writer = ChunkWriter(dev, _target_chunk(thin_target), h.volume_size, fresh=fresh,
                                 discard=dev.discard_max_bytes > 0 and thin_target is not None,
                                 zero_fallback="write" if thin_target else "zeroout")
            bar = _progress_bar(opt.progress, h.volume_size)
            for rec in reader:
                if rec.type == RecordType.DATA:
                    assert rec.data is not None
                    writer.data(rec.offset, rec.data)
                else:
                    writer.zero(rec.offset, rec.length)
                if bar:
                    bar.update(rec.offset + rec.length - bar.n)
            writer.finish()
            if bar:
                bar.close()
            dev.sync()
            dev.drop_cache()
            if h.new_fingerprint:
                fp = fpr.Fingerprint.from_dict(h.new_fingerprint)
                if not fpr.verify(fp, dev.read):
                    raise VerifyFailed(f"{label} does not match the fingerprint of "
                                       f"{h.new['name']} after writing")
        if target:
            with _signals_deferred():
                lvm.del_tag(target, lvm.TAG_INCOMPLETE)
        ok = True
        return ApplyResult(label, h, reader.totals, reader.sha256)
    finally:
        with stack:
            if not ok and created and target:
                with _signals_deferred():
                    try:
                        lvm.remove(target)
                    except LvdiffError as e:
                        print(f"lvpatch: could not remove the incomplete {target.full_name}: "
                              f"{e}", file=sys.stderr)


def cleanup(vg: str) -> list[str]:
    """Remove targets that a killed lvpatch left tagged incomplete in ``vg``."""
    removed = lvm.remove_stale(vg, lvm.TAG_INCOMPLETE)
    for full_name in removed:
        print(f"lvpatch: removed {full_name}, left incomplete by an interrupted lvpatch",
              file=sys.stderr)
    return removed


def _progress_bar(enabled: bool, total: int):  # noqa: ANN202 - tqdm is imported lazily
    """Position in the volume, on stderr; tqdm is only loaded when asked for."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="lvpatch")


def _check_base_identity(h: Header, base_lv: lvm.LV) -> None:
    if h.base_size is not None and base_lv.size < h.base_size:
        raise BaseMismatch(f"{base_lv.full_name} holds {base_lv.size} bytes; the stream's base "
                           f"{h.base['name']} held {h.base_size}")


def _target_chunk(thin: lvm.LV | None) -> int:
    """The granularity at which the target must be written whole."""
    if thin is None:
        return 4096  # a volume that is not thin: page-sized read-modify-write
    return lvm.get_lv(thin.vg, thin.pool).chunk_size


class _signals_deferred:
    """Hold SIGINT/SIGTERM across a short LVM change, then deliver them."""

    def __enter__(self) -> None:
        self.pending: list[int] = []
        self.saved = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(ValueError):  # not the main thread: nothing to defer
                self.saved[sig] = signal.signal(sig, lambda s, _f: self.pending.append(s))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        for sig in self.pending:
            signal.raise_signal(sig)


__all__ = ["ApplyOptions", "ApplyResult", "StreamError", "apply_stream"]
