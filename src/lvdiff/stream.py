"""The lvdiff stream format, version 1.0: a writer and a validating reader.

The byte layout is specified in ``docs/FORMAT.md``; this module is its only
implementation, so the two must change together.

The reader is the security boundary of ``lvpatch``: it runs as root and writes
what it yields onto a block device, while the stream may come from anywhere
(a pipe, ``ssh``, a file an attacker left behind).  It therefore checks every
record completely (checksums, order, bounds, decompressed size) *before*
yielding it, reads at most one record at a time so memory stays bounded
whatever the stream claims, and turns every malformed input into a
:class:`~lvdiff.errors.StreamError` rather than a crash.  The END record
carries counts and a SHA-256 of everything before it, so truncation,
reordering and splicing of two streams are caught too, although a consumer
only learns that after it has applied the earlier records; callers that need
all-or-nothing semantics must write into a scratch volume (``lvpatch`` writes
into a new snapshot).

As in :mod:`zipfile` and :mod:`tarfile`, the on-disk structures are explicit
:mod:`struct` layouts, and there is one writer class and one reader class.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypedDict

import zstandard

from .errors import CorruptStream, StreamError, TruncatedStream, UnsupportedStream

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_DATA_LEN",
    "MAX_HEADER_LEN",
    "MAX_STORED_LEN",
    "SECTOR",
    "RecordType",
    "RecordFlag",
    "VolumeRef",
    "Header",
    "Record",
    "Totals",
    "encode_data",
    "encode_zero",
    "escape_for_terminal",
    "StreamWriter",
    "StreamReader",
]

MAGIC = b"\x89LVDIFF\n"
VERSION = (1, 1)

SECTOR = 512
MAX_DATA_LEN = 16 * 1024 * 1024
# zstd can expand incompressible input slightly; the writer never stores such a
# frame (it keeps the raw form instead) but the limit leaves room for it.
MAX_STORED_LEN = MAX_DATA_LEN + 64 * 1024
MIN_HEADER_LEN = 2  # "{}"
MAX_HEADER_LEN = 1024 * 1024
# Offsets and lengths are u64 on the wire, but no block device is that big and
# keeping them below 2**63 means every other implementation can use signed
# 64-bit arithmetic (off_t) without overflow.
MAX_OFFSET = 2**63
# Frames written by encode_data never need a window larger than their content
# (<= 16 MiB); the cap stops a hostile frame from making the decoder allocate
# the zstd default of 128 MiB.
_MAX_ZSTD_WINDOW = 2 * MAX_DATA_LEN

_PREAMBLE = struct.Struct(">8sHHI")
_CRC = struct.Struct(">I")
_RECORD = struct.Struct(">BBHIQQII")
_RECORD_BODY_LEN = 28  # the part of the record header covered by its own CRC
_END_PAYLOAD = struct.Struct(">QQQQQ32s")

_TRUNCATED = "stream ends before its END record: incomplete or truncated"


class RecordType(enum.IntEnum):
    """Record type byte.  Values are part of the format; never renumber."""

    DATA = 0x01
    ZERO = 0x02
    END = 0x7F


class RecordFlag(enum.IntFlag):
    """Record flag bits.  Unknown bits are refused so they stay free for later versions."""

    SKIPPABLE = 0x01
    ZSTD = 0x02


# A plain int: ~ on an IntFlag stays within the flag's own bits, which would
# make every unknown bit look like zero.
_KNOWN_FLAGS = int(RecordFlag.SKIPPABLE | RecordFlag.ZSTD)


# --------------------------------------------------------------------------- helpers


def _crc(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _is_int(value: object) -> bool:
    # bool is an int subclass; a JSON true must not pass as thin_id 1.
    return isinstance(value, int) and not isinstance(value, bool)


def escape_for_terminal(s: str) -> str:
    """Render untrusted text so printing it cannot control the terminal.

    Header strings (meta values, tool, uuid) come from whoever made the stream;
    printed raw, an ESC sequence could rewrite the screen, set the window title
    or hide text, and bidi or zero-width characters could disguise it.  Such
    characters become Python-style escapes.  Backslash is escaped too, so the
    rendering is unambiguous: ``\\x1b`` on screen always means an ESC in the data.
    Ordinary printable Unicode (accented letters, CJK, emoji) is kept, because
    escaping it would make legitimate non-English metadata unreadable.
    """
    out: list[str] = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)


def _shown(value: object, limit: int = 80) -> str:
    """Quote a hostile value for a one-line error message."""
    text = escape_for_terminal(value if isinstance(value, str) else repr(value))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'" if isinstance(value, str) else text


# --------------------------------------------------------------------------- header

_LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
_MAX_NAME_LEN = 127
_MAX_META_PAIRS = 1024
_MAX_META_STR = 4096
_KINDS = ("full", "incremental")
_COMPRESSIONS = ("zstd", "none")


class VolumeRef(TypedDict):
    """The JSON object naming a thin volume (``base`` and ``new`` in the header).

    A TypedDict rather than a dataclass because the header keeps these as the
    plain JSON objects they are on the wire (any extra keys survive a round trip).
    """

    name: str
    uuid: str
    thin_id: int


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _this_tool() -> str:
    # Imported late so this module never depends on the package's import order.
    from . import __version__

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
        raise CorruptStream(f"header field {what} is not a valid LVM name: {_shown(value)}")


def _check_volume_ref(what: str, value: object) -> None:
    if not isinstance(value, dict):
        raise CorruptStream(f"header field {what} must be an object, not {_shown(value)}")
    for key in ("name", "uuid", "thin_id"):
        if key not in value:
            raise CorruptStream(f"header field {what} lacks {key!r}")
    _check_lvm_name(f"{what}.name", value["name"])
    if not isinstance(value["uuid"], str):
        raise CorruptStream(f"header field {what}.uuid must be a string")
    thin_id = value["thin_id"]
    if not _is_int(thin_id) or not 0 <= thin_id < 2**64:
        raise CorruptStream(
            f"header field {what}.thin_id is not a valid thin id: {_shown(thin_id)}"
        )


def _check_size(what: str, value: object, *, positive: bool) -> None:
    if not _is_int(value) or value < (1 if positive else 0) or value > MAX_OFFSET or value % SECTOR:
        kind = "positive" if positive else "non-negative"
        raise CorruptStream(
            f"header field {what} must be a {kind} multiple of {SECTOR} up to 2**63,"
            f" not {_shown(value)}"
        )


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
    """The JSON header: what the stream is a copy of, and against which base.

    Keyword-only so that adding fields in a later minor version cannot shift
    positional arguments under existing callers.  Keys this version does not
    know are kept in :attr:`extra` and written back by :meth:`to_json`, so a
    tool that rewrites a header does not silently drop a newer writer's data.
    """

    kind: str
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
    base_fingerprint: dict[str, Any] | None = None
    new_fingerprint: dict[str, Any] | None = None
    # 1.1: set on a stream that resumes an interrupted transfer: it carries only
    # the records at or past this byte offset, and is applied with lvpatch --resume.
    resume_offset: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON has no tuples; accept [key, value] lists so a header built from
        # parsed JSON compares equal to one built in code.
        if isinstance(self.meta, list | tuple):
            self.meta = [
                tuple(item) if isinstance(item, list | tuple) and len(item) == 2 else item
                for item in self.meta
            ]

    def validate(self) -> None:
        """Raise CorruptStream with a one-line reason if any field is invalid.

        The reader relies on these guarantees (names safe to pass to lvm, sizes
        sector aligned, base present for incremental streams), so a header that
        fails them is treated exactly like a damaged stream.
        """
        if self.kind not in _KINDS:
            raise CorruptStream(
                f"header field kind must be 'full' or 'incremental', not {_shown(self.kind)}"
            )
        _check_size("volume_size", self.volume_size, positive=True)
        if self.base_size is not None or self.kind == "incremental":
            _check_size("base_size", self.base_size, positive=False)
        cs = self.chunk_size
        if not _is_int(cs) or cs < SECTOR or cs > MAX_OFFSET or cs & (cs - 1):
            raise CorruptStream(
                f"header field chunk_size must be a power of two of at least {SECTOR},"
                f" not {_shown(cs)}"
            )
        _check_lvm_name("vg", self.vg)
        _check_lvm_name("pool", self.pool)
        if not _is_int(self.transaction_id) or not 0 <= self.transaction_id < 2**64:
            raise CorruptStream(
                f"header field transaction_id is not valid: {_shown(self.transaction_id)}"
            )
        if self.kind == "full":
            if self.base is not None:
                raise CorruptStream("header field base must be null in a full stream")
        else:
            _check_volume_ref("base", self.base)
        _check_volume_ref("new", self.new)
        self._validate_created()
        if not isinstance(self.tool, str):
            raise CorruptStream("header field tool must be a string")
        self._validate_meta()
        if self.compression not in _COMPRESSIONS:
            raise CorruptStream(
                f"header field compression must be 'zstd' or 'none', not {_shown(self.compression)}"
            )
        if not _is_int(self.detect_level) or not 0 <= self.detect_level <= 3:
            raise CorruptStream(
                f"header field detect_level must be 0..3, not {_shown(self.detect_level)}"
            )
        for name in ("base_fingerprint", "new_fingerprint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise CorruptStream(f"header field {name} must be an object or null")
        if self.resume_offset is not None:
            _check_size("resume_offset", self.resume_offset, positive=False)
            if self.resume_offset > self.volume_size:
                raise CorruptStream("header field resume_offset is past the volume's end")
        if not isinstance(self.extra, dict) or any(
            k in _FIELDS or k in _OPTIONAL_FIELDS for k in self.extra
        ):
            raise CorruptStream("header extra keys must be a dict not shadowing known fields")

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
                f"header field created is not an ISO-8601 UTC time: {_shown(created)}"
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
                    f" {_MAX_META_STR} characters, not {_shown(pair)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, known fields in format order, then extra keys."""
        obj: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        obj["meta"] = [list(pair) for pair in self.meta]
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
    def from_json(cls, raw: bytes | bytearray | memoryview) -> Header:
        """Parse and validate; every failure is a CorruptStream.

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
        header = cls(**known, extra=extra)
        header.validate()
        return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {_shown(key)}")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Record:
    """One validated DATA or ZERO record as yielded by StreamReader.

    ``data`` is the decompressed content (exactly ``length`` bytes) for DATA
    and None for ZERO, whose range reads as zeros.
    """

    type: RecordType
    offset: int
    length: int
    data: bytes | None

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Totals:
    """Counts carried by the END record, so a reader can cross-check what it saw."""

    data_records: int = 0
    zero_records: int = 0
    data_bytes: int = 0
    zero_bytes: int = 0
    stored_bytes: int = 0


def _record_header(
    rtype: int, flags: int, payload: bytes | memoryview, offset: int, length: int
) -> bytes:
    body = _RECORD.pack(rtype, flags, 0, len(payload), offset, length, _crc(payload), 0)
    body = body[:_RECORD_BODY_LEN]
    return body + _CRC.pack(_crc(body))


def _check_range(offset: int, length: int) -> None:
    if not _is_int(offset) or offset < 0 or offset > MAX_OFFSET or offset % SECTOR:
        raise ValueError(f"offset must be a multiple of {SECTOR} in 0..2**63, not {offset!r}")
    if not _is_int(length) or length <= 0 or length > MAX_OFFSET or length % SECTOR:
        raise ValueError(f"length must be a positive multiple of {SECTOR}, not {length!r}")


_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe, and creating one per call
    # costs more than compressing a small chunk; one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_tls, "compressors", None)
    if cache is None:
        cache = _tls.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        # The content checksum lets the reader's decoder verify the output end
        # to end, independently of the CRC over the stored bytes.
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    return cctx


def encode_data(offset: int, data: bytes | memoryview, level: int | None = 3) -> bytes:
    """Complete DATA record bytes (header and payload) for ``data`` at ``offset``.

    Compressed with zstd at ``level`` unless ``level`` is None; the compressed
    form is kept only when it is smaller, so incompressible blocks cost no
    decompression on restore.  Thread-safe: dump compresses in worker threads
    and hands the finished records to a single StreamWriter.
    """
    view = memoryview(data).cast("B")
    length = view.nbytes
    _check_range(offset, length)
    if length > MAX_DATA_LEN:
        raise ValueError(f"DATA record of {length} bytes exceeds MAX_DATA_LEN ({MAX_DATA_LEN})")
    payload: bytes | memoryview = view
    flags = 0
    if level is not None:
        packed = _compressor(level).compress(view)
        if len(packed) < length:
            payload, flags = packed, RecordFlag.ZSTD
    return b"".join((_record_header(RecordType.DATA, flags, payload, offset, length), payload))


def encode_zero(offset: int, length: int) -> bytes:
    """Complete ZERO record bytes: ``[offset, offset+length)`` reads as zeros."""
    _check_range(offset, length)
    return _record_header(RecordType.ZERO, 0, b"", offset, length)


def _write_all(fp: BinaryIO, data: bytes | memoryview) -> None:
    # Buffered files write everything or raise; raw files may write part of
    # it and report how much, or return None when non-blocking and full.
    # Treating None as success would silently drop part of a backup.
    view = memoryview(data)
    while view.nbytes:
        written = fp.write(view)
        if written is None:
            raise BlockingIOError("stream output is non-blocking and not ready")
        if written >= view.nbytes:
            return
        view = view[written:]


def _placement_problem(offset: int, length: int, next_offset: int, volume_size: int) -> str | None:
    """Why a record may not sit at [offset, offset+length), or None.

    One rule for writer and reader: records ascend without overlap (and not
    before a resumed stream's start) and stay inside the volume.
    """
    if offset < next_offset:
        return (
            f"at offset {offset} overlaps or precedes the previous record,"
            f" which ends at {next_offset}"
        )
    if offset + length > volume_size:
        return f"at offset {offset} (length {length}) extends beyond the volume size {volume_size}"
    return None


# --------------------------------------------------------------------------- writer


class StreamWriter:
    """Writes one stream: preamble and header at once, then records, then END.

    The writer enforces the same order and bounds rules as the reader, so a
    bug in the producer fails at backup time instead of at restore time.  Use
    it as a context manager to get END written on success only: a stream left
    behind by a failed backup must stay detectably incomplete.
    """

    def __init__(self, fp: BinaryIO, header: Header) -> None:
        raw = header.to_json()
        head = _PREAMBLE.pack(MAGIC, VERSION[0], VERSION[1], len(raw)) + raw
        head += _CRC.pack(_crc(head))
        self._fp = fp
        self.header = header
        self._hash = hashlib.sha256(head)
        self._next_offset = header.resume_offset or 0
        self._counts = [0, 0, 0, 0, 0]
        self.sha256: str | None = None
        _write_all(fp, head)

    @property
    def totals(self) -> Totals:
        return Totals(*self._counts)

    @property
    def closed(self) -> bool:
        return self.sha256 is not None

    def write_record(self, record: bytes | memoryview) -> None:
        """Append a record made by encode_data or encode_zero.

        Raises ValueError on misuse (out of order, overlapping, beyond the
        volume, not a DATA/ZERO record) before writing anything.
        """
        if self.closed:
            raise ValueError("write_record on a closed StreamWriter")
        view = memoryview(record).cast("B")
        if view.nbytes < _RECORD.size:
            raise ValueError("record is shorter than a record header")
        rtype, _flags, _res, stored, offset, length, _pcrc, hcrc = _RECORD.unpack_from(view)
        if _crc(view[:_RECORD_BODY_LEN]) != hcrc:
            raise ValueError("record header checksum mismatch: not made by encode_data/zero")
        if view.nbytes != _RECORD.size + stored:
            raise ValueError("record length does not match its header")
        if rtype not in (RecordType.DATA, RecordType.ZERO):
            raise ValueError(f"write_record accepts DATA and ZERO records, not type {rtype:#04x}")
        problem = _placement_problem(offset, length, self._next_offset, self.header.volume_size)
        if problem:
            raise ValueError(f"record {problem}")
        _write_all(self._fp, view)
        self._hash.update(view)
        self._next_offset = offset + length
        if rtype == RecordType.DATA:
            self._counts[0] += 1
            self._counts[2] += length
            self._counts[4] += stored
        else:
            self._counts[1] += 1
            self._counts[3] += length

    def close(self) -> str:
        """Write END, flush, and return the hex SHA-256 of the whole stream.

        The digest is over every byte including END, i.e. what ``sha256sum``
        prints for the file, so users can compare it with a copy.  The file
        object is flushed but not closed: the caller opened it.
        """
        if self.sha256 is not None:
            return self.sha256
        payload = _END_PAYLOAD.pack(*self._counts, self._hash.digest())
        end = _record_header(RecordType.END, 0, payload, 0, 0) + payload
        _write_all(self._fp, end)
        self._fp.flush()
        self._hash.update(end)
        self.sha256 = self._hash.hexdigest()
        return self.sha256

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()


# --------------------------------------------------------------------------- reader


def _zstd_frame_extent(frame: bytes, length: int) -> int:
    """Size in bytes of the zstd frame at the start of ``frame``.

    python-zstandard cannot say where a frame ends, and without that a payload
    could carry bytes after its frame that nothing checks.  This walks the
    block headers (RFC 8878, section 3.1.1) without decoding anything.  It
    also refuses a declared content size other than ``length``; the declared
    size is never used to size a buffer.  Raises ValueError on malformed input.
    """
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        raise ValueError("payload is not a zstd frame")
    fhd = frame[4]
    if fhd & 0x08:
        raise ValueError("zstd frame header has its reserved bit set")
    single_segment = (fhd >> 5) & 1
    fcs_size = (single_segment, 2, 4, 8)[fhd >> 6]
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3]
    if fcs_size:
        if len(frame) < pos + fcs_size:
            raise ValueError("zstd frame header is truncated")
        declared = int.from_bytes(frame[pos : pos + fcs_size], "little")
        if fcs_size == 2:
            declared += 256
        if declared != length:
            raise ValueError(f"zstd frame declares {declared} bytes, record says {length}")
        pos += fcs_size
    size = len(frame)
    while True:
        if pos + 3 > size:
            raise ValueError("zstd frame is truncated")
        block = frame[pos] | frame[pos + 1] << 8 | frame[pos + 2] << 16
        pos += 3
        block_type = (block >> 1) & 3
        if block_type == 3:
            raise ValueError("zstd frame has a reserved block type")
        pos += 1 if block_type == 1 else block >> 3  # RLE blocks store one byte
        if block & 1:
            break
    if fhd & 0x04:
        pos += 4  # content checksum
    if pos > size:
        raise ValueError("zstd frame is truncated")
    return pos


class StreamReader:
    """Reads and validates one stream; iterate to get its DATA and ZERO records.

    The preamble and header are read and checked by the constructor, so a
    caller can inspect :attr:`header` (e.g. find the base volume) before any
    record is read.  Iteration yields each record only after all its checks
    passed, and ends normally only after a valid END followed by end of file;
    then :attr:`totals` and :attr:`sha256` describe the whole stream.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._hash = hashlib.sha256()
        self._dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_ZSTD_WINDOW)
        self._next_offset = 0
        self._counts = [0, 0, 0, 0, 0]
        self._started = False
        self._pos = 0  # bytes consumed, for error messages
        self.sha256: str | None = None
        self.complete = False
        self.version, self.header = self._read_header()
        # A resumed stream may not reach back before its resume point.
        self._next_offset = self.header.resume_offset or 0

    @property
    def totals(self) -> Totals:
        """Counts of the records read so far; the stream's totals once complete."""
        return Totals(*self._counts)

    # -- low-level input

    def _read_upto(self, n: int) -> bytes:
        """Up to n bytes, fewer only at EOF; loops because pipes return short reads."""
        first = self._fp.read(n)
        if len(first) == n or not first:
            self._pos += len(first)
            return first
        parts = [first]
        got = len(first)
        while got < n:
            chunk = self._fp.read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self._pos += len(data)
        return data

    def _read_exact(self, n: int, where: str) -> bytes:
        data = self._read_upto(n)
        if len(data) != n:
            raise TruncatedStream(f"{_TRUNCATED} (end of input {where})")
        return data

    # -- preamble and header

    def _read_header(self) -> tuple[tuple[int, int], Header]:
        preamble = self._read_upto(_PREAMBLE.size)
        if preamble[: len(MAGIC)] != MAGIC[: len(preamble)]:
            raise StreamError("not an lvdiff stream (bad magic number)")
        if len(preamble) < _PREAMBLE.size:
            raise TruncatedStream(f"{_TRUNCATED} (end of input inside the preamble)")
        _magic, major, minor, header_len = _PREAMBLE.unpack(preamble)
        if major != VERSION[0]:
            if major > VERSION[0]:
                raise UnsupportedStream(
                    f"stream format version {major}.{minor} was made by a newer lvdiff;"
                    f" this one reads version {VERSION[0]}.x"
                )
            raise UnsupportedStream(f"unsupported stream format version {major}.{minor}")
        if header_len > MAX_HEADER_LEN:
            raise CorruptStream(f"header too large: {header_len} bytes (limit {MAX_HEADER_LEN})")
        if header_len < MIN_HEADER_LEN:
            raise CorruptStream(f"header too small: {header_len} bytes")
        raw = self._read_exact(header_len, "inside the header")
        (crc,) = _CRC.unpack(self._read_exact(_CRC.size, "inside the header checksum"))
        if _crc(preamble + raw) != crc:
            raise CorruptStream("header checksum mismatch")
        header = Header.from_json(raw)
        self._hash.update(preamble)
        self._hash.update(raw)
        self._hash.update(_CRC.pack(crc))
        return (major, minor), header

    # -- records

    def __iter__(self) -> Iterator[Record]:
        if self._started:
            raise ValueError("a StreamReader can be iterated only once")
        self._started = True
        return self._records()

    def _records(self) -> Iterator[Record]:
        while True:
            at = self._pos
            raw = self._read_exact(_RECORD.size, "where a record header was expected")
            rtype, flags, reserved, stored, offset, length, pcrc, hcrc = _RECORD.unpack(raw)
            if _crc(raw[:_RECORD_BODY_LEN]) != hcrc:
                raise CorruptStream(f"record header checksum mismatch at stream byte {at}")
            if flags & ~_KNOWN_FLAGS:
                raise CorruptStream(f"record at offset {offset} has unknown flags {flags:#04x}")
            if reserved:
                raise CorruptStream(f"record at offset {offset} has nonzero reserved bits")
            if rtype == RecordType.DATA:
                yield self._read_data(raw, flags, stored, offset, length, pcrc)
            elif rtype == RecordType.ZERO:
                yield self._read_zero(raw, flags, stored, offset, length, pcrc)
            elif rtype == RecordType.END:
                self._read_end(raw, flags, stored, offset, length, pcrc)
                return
            elif flags & RecordFlag.SKIPPABLE:
                self._skip_unknown(raw, rtype, stored, pcrc)
            else:
                raise UnsupportedStream(
                    f"unknown mandatory record type {rtype:#04x} at stream byte {at}:"
                    f" the stream needs a newer lvdiff"
                )

    def _check_extent(self, kind: str, offset: int, length: int) -> None:
        if offset > MAX_OFFSET or length > MAX_OFFSET:
            raise CorruptStream(
                f"{kind} record at offset {offset} has an impossible offset or length {length}"
            )
        if length == 0:
            raise CorruptStream(f"{kind} record at offset {offset} has zero length")
        if offset % SECTOR or length % SECTOR:
            raise CorruptStream(
                f"{kind} record at offset {offset} (length {length}) is not aligned to {SECTOR}"
            )
        problem = _placement_problem(offset, length, self._next_offset, self.header.volume_size)
        if problem:
            raise CorruptStream(f"{kind} record {problem}")

    def _read_payload(self, stored: int, pcrc: int, what: str) -> bytes:
        payload = self._read_exact(stored, f"inside the payload of the {what}")
        if _crc(payload) != pcrc:
            raise CorruptStream(f"payload checksum mismatch in the {what}")
        return payload

    def _read_data(
        self, raw: bytes, flags: int, stored: int, offset: int, length: int, pcrc: int
    ) -> Record:
        self._check_extent("DATA", offset, length)
        what = f"DATA record at offset {offset}"
        if length > MAX_DATA_LEN:
            raise CorruptStream(f"{what} is longer than {MAX_DATA_LEN} bytes ({length})")
        compressed = bool(flags & RecordFlag.ZSTD)
        if compressed:
            if not 0 < stored <= MAX_STORED_LEN:
                raise CorruptStream(f"{what} has an impossible stored length {stored}")
        elif stored != length:
            raise CorruptStream(f"{what} stores {stored} bytes for a length of {length}")
        payload = self._read_payload(stored, pcrc, what)
        data = self._decompress(payload, length, what) if compressed else payload
        self._hash.update(raw)
        self._hash.update(payload)
        self._next_offset = offset + length
        self._counts[0] += 1
        self._counts[2] += length
        self._counts[4] += stored
        return Record(RecordType.DATA, offset, length, data)

    def _decompress(self, payload: bytes, length: int, what: str) -> bytes:
        """Decompress exactly ``length`` bytes, never materialising more.

        The frame's own content size is not trusted: output is pulled from a
        streaming decoder in requests that add up to at most length + 1 bytes,
        so a frame that expands to gigabytes costs one extra byte to detect.
        Asking for that extra byte also makes the decoder reach the end of the
        frame and verify its content checksum.
        """
        try:
            if _zstd_frame_extent(payload, length) != len(payload):
                raise ValueError("payload has bytes after its zstd frame")
            reader = self._dctx.stream_reader(payload, read_across_frames=False)
            parts: list[bytes] = []
            got = 0
            while got <= length:
                chunk = reader.read(length + 1 - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except (ValueError, zstandard.ZstdError) as exc:
            raise CorruptStream(f"{what}: bad zstd payload: {exc}") from None
        if got != length:
            amount = f"more than {length}" if got > length else f"{got} instead of {length}"
            raise CorruptStream(f"{what} decompresses to {amount} bytes")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_zero(
        self, raw: bytes, flags: int, stored: int, offset: int, length: int, pcrc: int
    ) -> Record:
        self._check_extent("ZERO", offset, length)
        if flags & RecordFlag.ZSTD or stored or pcrc:
            raise CorruptStream(f"ZERO record at offset {offset} has a payload")
        self._hash.update(raw)
        self._next_offset = offset + length
        self._counts[1] += 1
        self._counts[3] += length
        return Record(RecordType.ZERO, offset, length, None)

    def _skip_unknown(self, raw: bytes, rtype: int, stored: int, pcrc: int) -> None:
        what = f"skippable record of type {rtype:#04x}"
        if stored > MAX_STORED_LEN:
            raise CorruptStream(f"{what} has an impossible stored length {stored}")
        payload = self._read_payload(stored, pcrc, what)
        self._hash.update(raw)
        self._hash.update(payload)

    def _read_end(
        self, raw: bytes, flags: int, stored: int, offset: int, length: int, pcrc: int
    ) -> None:
        before_end = self._hash.digest()
        if offset or length or stored != _END_PAYLOAD.size or flags & RecordFlag.ZSTD:
            raise CorruptStream("END record is malformed")
        payload = self._read_payload(stored, pcrc, "END record")
        *counts, digest = _END_PAYLOAD.unpack(payload)
        if digest != before_end:
            raise CorruptStream(
                "stream checksum in END does not match: the stream was altered or spliced"
            )
        if counts != self._counts:
            raise CorruptStream(
                f"END record totals {Totals(*counts)} do not match the records read {self.totals}"
            )
        if self._fp.read(1):
            raise CorruptStream("unexpected data after the END record")
        self._hash.update(raw)
        self._hash.update(payload)
        self.sha256 = self._hash.hexdigest()
        self.complete = True
