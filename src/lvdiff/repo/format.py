"""The repository's layout: object names, the config, points and their index segments.

docs/REPOSITORY.md specifies every byte; this module is its only
implementation.  In short:

    config                      plain JSON: format, version, id, chunk size, encryption
    data/<3 hex>/<64 hex>       one chunk of a volume, named by its (keyed) hash
    index/<3 hex>/<64 hex>      one index segment: the chunk names of SEGMENT_SLOTS slots
    points/<time>-<16 hex>      one point's manifest; written once, create-if-absent
    gc/<time>-<16 hex>          what one garbage collection condemned

A volume is cut into fixed slots of ``chunk_size`` bytes (the last may be
shorter).  A point's index names, slot by slot, the chunk holding it, or
nothing for a slot of zeros; the index is cut into segments, each an object
named by its own hash, so two points that differ in a few slots share every
other segment, and a 1 TiB volume's index is read and written a segment at a
time, never whole.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import LvdiffError
from ..fingerprint import Fingerprint

FORMAT = "lvdiff-repository"
VERSION = 1
CONFIG = "config"
ID_LEN = 32  # bytes of a chunk or segment name: SHA-256, or HMAC-SHA256 when encrypted
ZERO_SLOT = bytes(ID_LEN)  # a slot that reads as zeros: nothing stored
SEGMENT_SLOTS = 1024  # slots per index segment: 4 GiB of volume with 4 MiB chunks, 32 KiB
DEFAULT_CHUNK = 4 << 20  # as Proxmox Backup Server's fixed chunks for block images
MIN_CHUNK, MAX_CHUNK = 64 << 10, 16 << 20

KIND_DATA, KIND_INDEX, KIND_DOCUMENT = 1, 2, 3  # what an object holds (its envelope says so)


class BadRepository(LvdiffError):
    """The store holds something this version cannot read as a repository."""


def data_name(chunk_id: bytes) -> str:
    h = chunk_id.hex()
    return f"data/{h[:3]}/{h}"


def index_name(segment_id: bytes) -> str:
    h = segment_id.hex()
    return f"index/{h[:3]}/{h}"


def id_of(name: str) -> bytes:
    """The id a data or index object's name holds."""
    return bytes.fromhex(name.rsplit("/", 1)[-1])


def new_point_name(when: datetime) -> str:
    return f"points/{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Config:
    """The repository's plain description, written once by ``init``."""

    id: str
    chunk_size: int
    encryption: str  # "none" or "aes-256-gcm"
    key_check: str  # proves a key file is this repository's (see repo.crypto)
    created: str

    def to_json(self) -> bytes:
        obj = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return (json.dumps(obj, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Config:
        try:
            obj = json.loads(data)
            if obj.get("format") != FORMAT:
                raise BadRepository(f"{where} is not an lvdiff repository")
            if obj["version"] > VERSION:
                raise BadRepository(
                    f"{where} is a repository of version {obj['version']}; this lvrepo reads "
                    f"version {VERSION}: install a newer lvdiff"
                )
            cfg = cls(
                str(obj["id"]),
                int(obj["chunk_size"]),
                str(obj["encryption"]),
                str(obj["key_check"]),
                str(obj["created"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise BadRepository(f"{where}: its config is damaged ({e})") from None
        if not re.fullmatch(r"[0-9a-f]{32}", cfg.id):
            raise BadRepository(f"{where}: its config names no repository id")
        if not MIN_CHUNK <= cfg.chunk_size <= MAX_CHUNK or cfg.chunk_size & (cfg.chunk_size - 1):
            raise BadRepository(f"{where}: impossible chunk size {cfg.chunk_size}")
        return cfg


@dataclass(frozen=True)
class SourceRef:
    """Which volume a point is of: lvsync's source key (VG UUID/LV), and names for people."""

    key: str
    host: str
    vg: str
    lv: str


@dataclass(frozen=True)
class Point:
    """One snapshot of one source volume, standing alone: restored, verified, pruned alone."""

    id: str  # its object's name, points/...
    source: SourceRef
    name: str  # the snapshot's name
    identity: str  # the snapshot's lineage identity
    size: int
    chunk_size: int
    time: str  # when it was taken, UTC ISO 8601
    fingerprint: Fingerprint | None  # a check of its content, as lvdiff takes it
    segments: list[str]  # hex ids of its index segments, in order
    stats: dict[str, int] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return -(-self.size // self.chunk_size)

    def to_json(self) -> bytes:
        obj = asdict(self)
        obj["version"] = VERSION
        obj["fingerprint"] = self.fingerprint.to_dict() if self.fingerprint else None
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, name: str) -> Point:
        try:
            obj = json.loads(data)
            if obj.pop("version") > VERSION:
                raise BadRepository(f"{name} was written by a newer lvrepo")
            fp = obj.pop("fingerprint")
            src = SourceRef(**obj.pop("source"))
            point = cls(source=src, fingerprint=Fingerprint.from_dict(fp) if fp else None, **obj)
        except BadRepository:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise BadRepository(f"{name}: not a point manifest ({e})") from None
        if point.id != name:
            raise BadRepository(f"{name} holds the manifest of {point.id}")
        if len(point.segments) != -(-point.slots // SEGMENT_SLOTS):
            raise BadRepository(f"{name}: {len(point.segments)} segments for {point.slots} slots")
        return point

    def to_dict(self) -> dict[str, Any]:
        """For ``lvrepo list --json``."""
        return {
            "point": self.id.removeprefix("points/"),
            "source": asdict(self.source),
            "name": self.name,
            "identity": self.identity,
            "size": self.size,
            "time": self.time,
            "check_level": self.fingerprint.level if self.fingerprint else 0,
            "stats": self.stats,
        }


def encode_segment(entries: list[bytes]) -> bytes:
    return b"".join(entries)


def decode_segment(data: bytes, name: str) -> list[bytes]:
    if len(data) % ID_LEN or len(data) > SEGMENT_SLOTS * ID_LEN:
        raise BadRepository(f"{name}: an index segment of {len(data)} bytes")
    return [data[i : i + ID_LEN] for i in range(0, len(data), ID_LEN)]


def segment_of(slot: int) -> int:
    return slot // SEGMENT_SLOTS


def slot_ranges(size: int, chunk: int) -> Iterator[tuple[int, int, int]]:
    """(slot, offset, length) of every slot of a volume of ``size`` bytes."""
    for slot, offset in enumerate(range(0, size, chunk)):
        yield slot, offset, min(chunk, size - offset)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
