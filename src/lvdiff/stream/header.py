"""The stream header: what a stream is a copy of, against which base, and how to check it.

Parsed the way tarfile's ``TarInfo.frombuf`` parses a block: the checksum is
checked by the reader first, then the JSON becomes one complete, typed
:class:`Header` (volume references, identities and fingerprints included)
or a :class:`~lvdiff.errors.CorruptStream` with a one-line reason.  Nothing
downstream interprets raw JSON.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import CorruptStream
from ..fingerprint import LEVELS, LEVELS_SHOWN, Fingerprint
from .layout import MAX_HEADER_LEN, MAX_OFFSET, SECTOR, VERSION, is_int
from .text import escape_for_terminal, shown

_LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_MAX_NAME_LEN = 127
_MAX_META_PAIRS = 1024
_MAX_META_STR = 4096


class StreamKind(enum.StrEnum):
    """What a stream holds: all of NEW, or what differs from BASE (the header's ``kind``)."""

    FULL = "full"
    INCREMENTAL = "incremental"


_KINDS = tuple(StreamKind)
_COMPRESSIONS = ("zstd", "none")


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _this_tool() -> str:
    # Imported late so this module never depends on the package's import order.
    from .. import __version__

    return f"lvdiff {__version__}"


def _check_lvm_name(what: str, value: object) -> None:
    # The regex admits neither "/" nor control characters, so a name cannot
    # escape /dev/VG/ or smuggle terminal escapes into lvm's command line.
    if (
        not isinstance(value, str)
        or len(value) > _MAX_NAME_LEN
        or value in (".", "..")
        or _LVM_NAME.fullmatch(value) is None
    ):
        raise CorruptStream(f"header field {what} is not a valid LVM name: {shown(value)}")


def check_identity(what: str, value: object) -> str:
    """A lineage identity: 1-64 characters that are safe inside an LVM tag."""
    if not isinstance(value, str) or _IDENTITY.fullmatch(value) is None:
        raise CorruptStream(f"{what} is not a valid lineage identity: {shown(value)}")
    return value


def _check_size(what: str, value: object, *, positive: bool) -> None:
    if not is_int(value) or value < (1 if positive else 0) or value > MAX_OFFSET or value % SECTOR:
        kind = "positive" if positive else "non-negative"
        raise CorruptStream(
            f"header field {what} must be a {kind} multiple of {SECTOR} up to 2**63,"
            f" not {shown(value)}"
        )


@dataclass(frozen=True)
class VolumeRef:
    """BASE or NEW as a stream names them.

    ``identity`` is the volume's lineage identity (format 2): what ZFS calls a
    snapshot's GUID.  lvpatch records NEW's on the volume it restores, and
    refuses a base whose recorded identity is not the stream's BASE identity.
    Streams of format 1.x carry none.  Keys this version does not know are
    kept in ``extra`` and written back.
    """

    name: str
    uuid: str
    thin_id: int
    identity: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def validate(self, what: str, need_identity: bool = True) -> None:
        _check_lvm_name(f"{what}.name", self.name)
        if not isinstance(self.uuid, str):
            raise CorruptStream(f"header field {what}.uuid must be a string")
        if not is_int(self.thin_id) or not 0 <= self.thin_id < 2**64:
            raise CorruptStream(
                f"header field {what}.thin_id is not a valid thin id: {shown(self.thin_id)}"
            )
        if self.identity is not None or need_identity:
            check_identity(f"header field {what}.identity", self.identity)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "uuid": self.uuid, "thin_id": self.thin_id}
        if self.identity is not None:
            d["identity"] = self.identity
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, what: str, value: object, major: int) -> VolumeRef:
        if not isinstance(value, dict):
            raise CorruptStream(f"header field {what} must be an object, not {shown(value)}")
        for key in ("name", "uuid", "thin_id") + (("identity",) if major >= 2 else ()):
            if key not in value:
                raise CorruptStream(f"header field {what} lacks {key!r}")
        known = ("name", "uuid", "thin_id", "identity")
        ref = cls(
            value["name"],
            value["uuid"],
            value["thin_id"],
            value.get("identity"),
            {k: v for k, v in value.items() if k not in known},
        )
        ref.validate(what, need_identity=major >= 2)
        return ref


_FIELDS = (
    "kind",
    "volume_size",
    "base_size",
    "chunk_size",
    "vg",
    "pool",
    "transaction_id",
    "base",
    "new",
    "created",
    "tool",
    "meta",
    "compression",
    "detect_level",
    "base_fingerprint",
    "new_fingerprint",
)

# Fields added in later minor versions: absent means null.
_OPTIONAL_FIELDS = ("resume_offset",)


@dataclass(kw_only=True)
class Header:
    """The JSON header, typed.

    Keyword-only so that adding fields in a later minor version cannot shift
    positional arguments under existing callers.  Keys this version does not
    know are kept in :attr:`extra` and written back by :meth:`to_json`, so a
    tool that rewrites a header does not silently drop a newer writer's data.
    """

    kind: StreamKind
    volume_size: int
    base_size: int | None = None
    chunk_size: int
    vg: str
    pool: str
    transaction_id: int
    base: VolumeRef | None = None
    new: VolumeRef
    created: str = field(default_factory=_utc_now)
    tool: str = field(default_factory=_this_tool)
    meta: list[tuple[str, str]] = field(default_factory=list)
    compression: str
    detect_level: int
    base_fingerprint: Fingerprint | None = None
    new_fingerprint: Fingerprint | None = None
    # 1.1: set on a stream that resumes an interrupted transfer: it carries only
    # the records at or past this byte offset, and is applied with lvpatch --resume.
    resume_offset: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The format version the header was read as (or will be written as).
    version: tuple[int, int] = VERSION

    def __post_init__(self) -> None:
        if self.kind in _KINDS:  # read from JSON as a plain string
            self.kind = StreamKind(self.kind)
        # JSON has no tuples; accept [key, value] lists so a header built from
        # parsed JSON compares equal to one built in code.
        if isinstance(self.meta, list | tuple):
            self.meta = [
                tuple(item) if isinstance(item, list | tuple) and len(item) == 2 else item
                for item in self.meta
            ]

    @property
    def incremental(self) -> bool:
        return self.kind == StreamKind.INCREMENTAL

    def validate(self) -> None:
        """Raise CorruptStream with a one-line reason if any field is invalid.

        The reader relies on these guarantees (names safe to pass to lvm, sizes
        sector aligned, base present for incremental streams, fingerprints that
        match the detect level and the sizes they describe), so a header that
        fails them is treated exactly like a damaged stream.
        """
        if self.kind not in _KINDS:
            raise CorruptStream(
                f"header field kind must be 'full' or 'incremental', not {shown(self.kind)}"
            )
        _check_size("volume_size", self.volume_size, positive=True)
        if self.base_size is not None or self.incremental:
            _check_size("base_size", self.base_size, positive=False)
        cs = self.chunk_size
        if not is_int(cs) or cs < SECTOR or cs > MAX_OFFSET or cs & (cs - 1):
            raise CorruptStream(
                f"header field chunk_size must be a power of two of at least {SECTOR},"
                f" not {shown(cs)}"
            )
        _check_lvm_name("vg", self.vg)
        _check_lvm_name("pool", self.pool)
        if not is_int(self.transaction_id) or not 0 <= self.transaction_id < 2**64:
            raise CorruptStream(
                f"header field transaction_id is not valid: {shown(self.transaction_id)}"
            )
        need_identity = self.version[0] >= 2
        if not self.incremental:
            if self.base is not None:
                raise CorruptStream("header field base must be null in a full stream")
        elif not isinstance(self.base, VolumeRef):
            raise CorruptStream("header field base must be an object in an incremental stream")
        else:
            self.base.validate("base", need_identity)
        if not isinstance(self.new, VolumeRef):
            raise CorruptStream("header field new must be an object")
        self.new.validate("new", need_identity)
        self._validate_created()
        if not isinstance(self.tool, str):
            raise CorruptStream("header field tool must be a string")
        self._validate_meta()
        if self.compression not in _COMPRESSIONS:
            raise CorruptStream(
                f"header field compression must be 'zstd' or 'none', not {shown(self.compression)}"
            )
        if not is_int(self.detect_level) or self.detect_level not in LEVELS:
            raise CorruptStream(
                f"header field detect_level must be {LEVELS_SHOWN}, not {shown(self.detect_level)}"
            )
        self._validate_fingerprint("new_fingerprint", self.new_fingerprint, self.volume_size, True)
        self._validate_fingerprint(
            "base_fingerprint", self.base_fingerprint, self.base_size, self.incremental
        )
        if self.resume_offset is not None:
            _check_size("resume_offset", self.resume_offset, positive=False)
            if self.resume_offset > self.volume_size:
                raise CorruptStream("header field resume_offset is past the volume's end")
        if not isinstance(self.extra, dict) or any(
            k in _FIELDS or k in _OPTIONAL_FIELDS for k in self.extra
        ):
            raise CorruptStream("header extra keys must be a dict not shadowing known fields")

    def _validate_fingerprint(
        self, name: str, fp: object, size: int | None, expected: bool
    ) -> None:
        """A fingerprint exists exactly when the level asks for one, at that level and size."""
        if not expected or self.detect_level == 0:
            if fp is not None:
                why = "at detect level 0" if expected else "in a full stream"
                raise CorruptStream(f"header field {name} must be null {why}")
            return
        if not isinstance(fp, Fingerprint):
            raise CorruptStream(
                f"header field {name} is missing: detect level {self.detect_level} needs it"
            )
        if fp.level != self.detect_level:
            raise CorruptStream(
                f"header field {name} is a level-{fp.level} fingerprint in a stream of "
                f"detect level {self.detect_level}"
            )
        if fp.size != size:
            raise CorruptStream(
                f"header field {name} covers {fp.size} bytes, not the volume's {size}"
            )

    def _validate_created(self) -> None:
        created = self.created
        try:
            if not isinstance(created, str) or len(created) > 64:
                raise ValueError
            when = datetime.fromisoformat(created)
            if when.utcoffset() is None or when.utcoffset().total_seconds() != 0:
                raise ValueError
        except ValueError:
            raise CorruptStream(
                f"header field created is not an ISO-8601 UTC time: {shown(created)}"
            ) from None

    def _validate_meta(self) -> None:
        if not isinstance(self.meta, list):
            raise CorruptStream("header field meta must be a list of [key, value] pairs")
        if len(self.meta) > _MAX_META_PAIRS:
            raise CorruptStream(f"header field meta has more than {_MAX_META_PAIRS} pairs")
        for pair in self.meta:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and all(isinstance(s, str) and len(s) <= _MAX_META_STR for s in pair)
            ):
                raise CorruptStream(
                    f"header field meta entries must be [key, value] strings of at most"
                    f" {_MAX_META_STR} characters, not {shown(pair)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, known fields in format order, then extra keys."""
        obj: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        obj["meta"] = [list(pair) for pair in self.meta]
        for name in ("base", "new", "base_fingerprint", "new_fingerprint"):
            if obj[name] is not None:
                obj[name] = obj[name].to_dict()
        for name in _OPTIONAL_FIELDS:
            if getattr(self, name) is not None:
                obj[name] = getattr(self, name)
        obj.update(self.extra)
        return obj

    def to_json(self) -> bytes:
        """Validated UTF-8 JSON; ValueError if the header is unfit to write.

        Writing is a programming error, not a damaged stream, hence ValueError
        rather than the CorruptStream a reader would raise for the same fault.
        """
        if self.version != VERSION:
            raise ValueError(f"this lvdiff writes format {VERSION}, not {self.version}")
        try:
            self.validate()
        except CorruptStream as exc:
            raise ValueError(str(exc)) from exc
        try:
            raw = json.dumps(
                self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"header cannot be encoded as JSON: {exc}") from exc
        if len(raw) > MAX_HEADER_LEN:
            raise ValueError(f"header too large: {len(raw)} bytes (limit {MAX_HEADER_LEN})")
        return raw

    @classmethod
    def from_json(
        cls, raw: bytes | bytearray | memoryview, version: tuple[int, int] = VERSION
    ) -> Header:
        """Parse and validate a header of format ``version``; every failure is a CorruptStream.

        Duplicate keys are refused because JSON parsers disagree on which copy
        wins, and a header that means different things to different tools is
        how verification gets bypassed.
        """
        try:
            obj = json.loads(
                bytes(raw).decode("utf-8"),
                object_pairs_hook=_unique_keys,
                parse_constant=_refuse_constant,
                parse_float=_finite_float,
            )
        except (ValueError, RecursionError) as exc:
            # JSONDecodeError, UnicodeDecodeError and oversized int literals are
            # all ValueErrors; absurd nesting is a RecursionError.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = escape_for_terminal(reason)
            raise CorruptStream(f"header is not valid JSON: {reason}") from None
        if not isinstance(obj, dict):
            raise CorruptStream("header is not a JSON object")
        missing = [name for name in _FIELDS if name not in obj]
        if missing:
            raise CorruptStream(f"header lacks field {missing[0]!r}")
        known = {name: obj[name] for name in _FIELDS}
        known.update({name: obj[name] for name in _OPTIONAL_FIELDS if name in obj})
        extra = {k: v for k, v in obj.items() if k not in known}
        major = version[0]
        if known["base"] is not None:
            known["base"] = VolumeRef.from_dict("base", known["base"], major)
        known["new"] = VolumeRef.from_dict("new", known["new"], major)
        for name in ("base_fingerprint", "new_fingerprint"):
            if known[name] is not None:
                known[name] = Fingerprint.from_dict(known[name], legacy=major < 2)
        header = cls(**known, extra=extra, version=version)
        header.validate()
        return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {shown(key)}")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value
