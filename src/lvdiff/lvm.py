"""Queries and changes to LVM and device-mapper, through their own commands.

Commands run with argument lists (never a shell); ``lvs`` output is read as
JSON.  Every failure raises CommandFailed carrying the command line and the
tool's stderr, which is what an administrator needs to act on it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from . import tags
from .errors import CommandFailed, LvdiffError, UsageError

_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")

LV_FIELDS = (
    "vg_name,lv_name,lv_uuid,lv_attr,lv_size,segtype,pool_lv,thin_id,lv_tags,"
    "chunk_size,discards,zero,transaction_id,lv_active,origin,vg_extent_size,vg_uuid"
)


def run(argv: list[str], input: bytes | None = None) -> str:
    """Run a command; its stdin is never ours (lvpatch's stdin is the stream)."""
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise UsageError(
            f"{argv[0]} not found: install lvm2 (and thin-provisioning-tools)"
        ) from None
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode(errors="replace")


def check_name(name: str, what: str = "name") -> str:
    if not _NAME_RE.match(name) or name in (".", "..") or len(name) > 127:
        raise UsageError(f"invalid LVM {what} {name!r}")
    return name


_TAG_RE = re.compile(r"^[A-Za-z0-9_+.\-/=!:&#]{1,1024}$")


def check_tag(tag: str) -> str:
    reserved = (tags.INCOMPLETE, tags.RESUME_PREFIX, tags.IDENTITY_PREFIX, tags.TEMP)
    if not _TAG_RE.match(tag) or tag.startswith(reserved):
        raise UsageError(f"invalid or reserved LVM tag {tag!r}")
    return tag


def parse_lv_spec(spec: str, vg: str | None) -> tuple[str, str]:
    """``LV`` (needs -g), ``VG/LV`` or ``/dev/VG/LV`` -> (vg, lv)."""
    s = spec.removeprefix("/dev/")
    if "/" in s:
        parts = s.split("/")
        if len(parts) != 2:
            raise UsageError(f"cannot read volume {spec!r}: use LV, VG/LV or /dev/VG/LV")
        v, lv = parts
        if vg and v != vg:
            raise UsageError(f"volume {spec} is not in volume group {vg}")
        return check_name(v, "VG name"), check_name(lv, "LV name")
    if not vg:
        raise UsageError(f"volume {spec!r} needs a volume group: -g VG, or write VG/{spec}")
    return check_name(vg, "VG name"), check_name(spec, "LV name")


def dm_name(vg: str, lv: str) -> str:
    """Device-mapper name: LVM doubles every '-' inside VG and LV names."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


@dataclass
class LV:
    vg: str
    name: str
    uuid: str
    attr: str
    size: int
    segtype: str
    pool: str
    thin_id: int | None
    tags: list[str]
    chunk_size: int
    discards: str
    zero: bool
    transaction_id: int | None
    origin: str = ""
    extent_size: int = 0
    vg_uuid: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.vg}/{self.name}"

    @property
    def dev(self) -> str:
        return f"/dev/{self.vg}/{self.name}"

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a"

    @property
    def writable(self) -> bool:
        return len(self.attr) > 1 and self.attr[1] == "w"

    @property
    def open(self) -> bool:
        """In use: mounted, or held open by a process or another device."""
        return len(self.attr) > 5 and self.attr[5] == "o"

    @property
    def is_thin(self) -> bool:
        return self.segtype == "thin"


def _int(v: str) -> int | None:
    v = v.strip().removesuffix("B")
    return int(v) if v.lstrip("-").isdigit() else None


def lvs(*specs: str) -> list[LV]:
    """Report on VG or VG/LV names; an unknown name raises CommandFailed from lvs."""
    out = run(
        ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", LV_FIELDS, *specs]
    )
    rows = []
    for report in json.loads(out).get("report", []):
        for r in report.get("lv", []):
            rows.append(
                LV(
                    vg=r["vg_name"],
                    name=r["lv_name"],
                    uuid=r["lv_uuid"],
                    attr=r["lv_attr"],
                    size=_int(r["lv_size"]) or 0,
                    segtype=r["segtype"],
                    pool=r["pool_lv"],
                    thin_id=_int(r["thin_id"]),
                    tags=[t for t in r["lv_tags"].split(",") if t],
                    chunk_size=_int(r["chunk_size"]) or 0,
                    discards=r["discards"],
                    zero=r["zero"] in ("zero", "1"),
                    transaction_id=_int(r["transaction_id"]),
                    origin=r.get("origin", ""),
                    extent_size=_int(r.get("vg_extent_size", "")) or 0,
                    vg_uuid=r.get("vg_uuid", ""),
                )
            )
    return rows


def get_lv(vg: str, name: str, listing: Sequence[LV] | None = None) -> LV:
    """One volume: from ``listing`` (an earlier ``lvs_in_vg``) if given, else from lvs.

    Every lvm command costs a metadata scan, so a run that needs several
    volumes of one VG lists it once.
    """
    if listing is not None:
        for lv in listing:
            if lv.vg == vg and lv.name == name:
                return lv
        raise UsageError(f"logical volume {vg}/{name} not found")
    try:
        found = lvs(f"{vg}/{name}")
    except CommandFailed as e:
        if any(m in e.stderr for m in ("not found", "Failed to find", "doesn't exist")):
            raise UsageError(f"logical volume {vg}/{name} not found") from None
        raise
    if len(found) != 1:
        raise UsageError(f"logical volume {vg}/{name} not found")
    return found[0]


def lvs_in_vg(vg: str) -> list[LV]:
    try:
        return lvs(vg)
    except CommandFailed as e:
        raise UsageError(f"volume group {vg} not found: {e.stderr.strip()}") from None


def get_thin(vg: str, name: str, listing: Sequence[LV] | None = None) -> LV:
    lv = get_lv(vg, name, listing)
    if not lv.is_thin or lv.thin_id is None:
        raise UsageError(f"{lv.full_name} is not a thin volume (segment type {lv.segtype})")
    return lv


def get_pool(vg: str, name: str, listing: Sequence[LV] | None = None) -> LV:
    lv = get_lv(vg, name, listing)
    if lv.segtype != "thin-pool":
        raise UsageError(f"{lv.full_name} is not a thin pool (segment type {lv.segtype})")
    return lv


SYS_BLOCK = "/sys/block"


def _dm_node(name: str) -> str | None:
    """``dm-N`` of the active device-mapper device ``name``, read from sysfs (no command)."""
    try:
        entries = os.listdir(SYS_BLOCK)
    except OSError:
        return None
    for node in entries:
        if node.startswith("dm-"):
            try:
                with open(f"{SYS_BLOCK}/{node}/dm/name") as f:
                    if f.read().strip() == name:
                        return node
            except OSError:
                continue
    return None


def external_origin(lv: LV) -> str | None:
    """The device an active thin volume reads its unprovisioned blocks from, if any.

    Decided from the kernel, not from ``lvs``: lvm2 reports a thin snapshot's
    thin parent as its ``origin`` and hands an external origin down to
    snapshots silently, so only the device-mapper table tells.  The thin
    target's arguments are ``pool_dev dev_id [external_origin_dev]``, and the
    kernel lists exactly those devices under the volume's ``slaves`` in sysfs:
    anything there but the pool's own device is the external origin.  Read
    without starting a command; ``dmsetup table`` where sysfs cannot tell.
    """
    node = _dm_node(dm_name(lv.vg, lv.name))
    slaves = f"{SYS_BLOCK}/{node}/slaves"
    if node is None or not os.path.isdir(slaves):
        for line in run(["dmsetup", "table", dm_name(lv.vg, lv.name)]).splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[2] == "thin":
                return fields[5]
        return None
    pools = {f"{dm_name(lv.vg, lv.pool)}-tpool", dm_name(lv.vg, lv.pool)}
    for slave in sorted(os.listdir(slaves)):
        try:
            with open(f"{slaves}/{slave}/dm/name") as f:
                if f.read().strip() in pools:
                    continue
        except OSError:  # not a device-mapper device: not the pool
            pass
        return slave
    return None


def pool_device(vg: str, pool: str) -> str:
    """The dm name of the active thin-pool target of a pool.

    LVM stacks a ``-tpool`` layer under the pool's public device once thin
    volumes are active; a pool that was never used may have only the plain
    one.  Either way the target must be ``thin-pool``.
    """
    for name in (f"{dm_name(vg, pool)}-tpool", dm_name(vg, pool)):
        try:
            fields = run(["dmsetup", "status", name]).split()
        except CommandFailed:
            continue
        if len(fields) > 2 and fields[2] == "thin-pool":
            return name
    raise LvdiffError(f"thin pool {vg}/{pool} is not active (no thin-pool device-mapper target)")


def likely_pool_device(vg: str, pool: str) -> str:
    """The dm name of a pool's thin-pool target as sysfs shows it, without a command: the
    ``-tpool`` layer if it exists.  A guess to try first; :func:`pool_device` proves it."""
    tpool = f"{dm_name(vg, pool)}-tpool"
    return tpool if _dm_node(tpool) else dm_name(vg, pool)


def held_metadata_root(pool_dm: str) -> str:
    """'-' when no metadata snapshot is held, else its block number."""
    fields = run(["dmsetup", "status", pool_dm]).split()
    return fields[6] if len(fields) > 6 else "-"


def pool_out_of_data_space(vg: str, pool: str) -> bool:
    """True when the pool's status says out_of_data_space (or it failed on that)."""
    try:
        fields = run(["dmsetup", "status", pool_device(vg, pool)]).split()
    except LvdiffError:
        return False
    return len(fields) > 7 and fields[7] in ("out_of_data_space", "Fail")


def metadata_device(vg: str, pool: str) -> str:
    return f"/dev/mapper/{dm_name(vg, pool)}_tmeta"


def activate(*lvs: LV) -> list[LV]:
    """Activate those of ``lvs`` that are inactive, in one command (ignoring the
    activation-skip flag); the ones it activated, their ``attr`` updated to match."""
    changed = [lv for lv in lvs if not lv.active]
    if changed:
        run(["lvchange", "-ay", "-K", *(lv.full_name for lv in changed)])
        for lv in changed:
            lv.attr = lv.attr[:4] + "a" + lv.attr[5:]
    return changed


def deactivate(*lvs: LV) -> None:
    if lvs:
        run(["lvchange", "-an", *(lv.full_name for lv in lvs)])


def create_snapshot(
    origin: LV,
    name: str,
    add_tags: Sequence[str] = (),
    activation_skip: bool = True,
    writable: bool = True,
    look_up: bool = True,
) -> LV | None:
    """A thin snapshot of ``origin``, with the permission asked for whatever origin's is.

    With ``look_up`` False nothing is returned and no ``lvs`` runs: a caller that
    makes several lists their VG once afterwards.
    """
    argv = ["lvcreate", "-q", "-s", "-p", "rw" if writable else "r", "-n", name]
    argv += ["-k", "y" if activation_skip else "n"]
    for t in add_tags:
        argv += ["--addtag", t]
    run([*argv, origin.full_name])
    return get_thin(origin.vg, name) if look_up else None


def create_thin(vg: str, pool: str, name: str, size: int, add_tags: Sequence[str] = ()) -> LV:
    argv = ["lvcreate", "-q", "-T", f"{vg}/{pool}", "-V", f"{size}b", "-n", name]
    for t in add_tags:
        argv += ["--addtag", t]
    run(argv)
    return get_thin(vg, name)


@functools.cache
def _lvresize_has_fs_option() -> bool:
    """lvm2 2.03.17 and later check the filesystem on resize unless told --fs ignore."""
    try:
        return "--fs" in run(["lvresize", "--help"])
    except LvdiffError:
        return False


def resize(lv: LV, size: int) -> LV:
    """Make ``lv`` hold ``size`` bytes (rounded up to whole extents), whatever is on it.

    The content is lvpatch's to define, so no filesystem check applies; and a
    size that rounds to the current extent count is already right (lvm2 up to
    2.03.16 calls that an error).
    """
    if lv.extent_size and -(-size // lv.extent_size) * lv.extent_size == lv.size:
        return lv
    argv = ["lvresize", "-q", "-f", "-L", f"{size}b"]
    if _lvresize_has_fs_option():
        argv += ["--fs", "ignore"]
    run([*argv, lv.full_name])
    return get_thin(lv.vg, lv.name)


def remove(*lvs: LV) -> None:
    """Remove ``lvs``, in one command (one metadata commit)."""
    if lvs:
        run(["lvremove", "-q", "-f", "-y", *(lv.full_name for lv in lvs)])


def set_read_only(lv: LV, read_only: bool = True) -> None:
    run(["lvchange", "-q", "-p", "r" if read_only else "rw", lv.full_name])


def set_tags(
    lv: LV, add: Sequence[str] = (), remove: Sequence[str] = (), read_only: bool = False
) -> None:
    """Add and remove tags (and make ``lv`` read-only) in one metadata commit.

    One lvchange is one commit of the VG's metadata: a crash leaves all of
    it done or none, where two commands could leave a read-only volume
    still tagged incomplete.  Updates ``lv.tags`` to match.  A tag both added
    and removed is left alone: lvm2 applies every --addtag before every
    --deltag, so asking for both would delete it.
    """
    add = [t for t in add if t not in lv.tags]
    remove = [t for t in remove if t in lv.tags and t not in add]
    argv = ["lvchange", "-q"]
    if read_only and lv.writable:
        argv += ["-p", "r"]
    for t in add:
        argv += ["--addtag", t]
    for t in remove:
        argv += ["--deltag", t]
    if len(argv) > 2:
        run([*argv, lv.full_name])
        lv.tags = [t for t in lv.tags if t not in remove] + add
        if read_only:
            lv.attr = lv.attr[:1] + "r" + lv.attr[2:]
