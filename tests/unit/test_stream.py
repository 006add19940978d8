"""Tests for lvdiff.stream: round trips, and every way a hostile or damaged stream can lie.

The reader guards a root process that writes onto block devices, so most of
these tests build bad streams by hand (with valid checksums where the point is
to reach a deeper check) and assert that the reader refuses them before
yielding anything it should not.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import time
import tracemalloc
import zlib
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lvdiff.errors import CorruptStream, StreamError, TruncatedStream, UnsupportedStream
from lvdiff.fingerprint import Fingerprint
from lvdiff.stream import (
    MAGIC,
    MAX_DATA_LEN,
    MAX_HEADER_LEN,
    VERSION,
    Header,
    Record,
    RecordType,
    StreamDigest,
    StreamReader,
    StreamWriter,
    Totals,
    VolumeRef,
    data_record,
    encode_data,
    encode_zero,
    escape_for_terminal,
)

from ..builders import make_header

KiB = 1024
MiB = 1024 * KiB
SKIPPABLE = 0x01
ZSTD = 0x02

# --------------------------------------------------------------------------- helpers


def header_dict(**overrides: Any) -> dict[str, Any]:
    obj = make_header().to_dict()
    obj.update(overrides)
    return obj


def preamble(raw_json: bytes, major: int = VERSION[0], minor: int = VERSION[1]) -> bytes:
    """Preamble + header + header CRC, with a correct CRC for whatever is given."""
    head = MAGIC + struct.pack(">HHI", major, minor, len(raw_json)) + raw_json
    return head + struct.pack(">I", zlib.crc32(head))


def raw_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def raw_record(
    rtype: int,
    *,
    flags: int = 0,
    payload: bytes = b"",
    offset: int = 0,
    length: int = 0,
    reserved: int = 0,
    stored: int | None = None,
    pcrc: int | None = None,
    major: int = VERSION[0],
) -> bytes:
    """A record with a valid header CRC, so the reader reaches the semantic checks.

    Its payload check is the one of format version ``major``, unless ``pcrc`` is given.
    """
    body = struct.pack(
        ">BBHIQQI",
        rtype,
        flags,
        reserved,
        len(payload) if stored is None else stored,
        offset,
        length,
        payload_check(payload, major) if pcrc is None else pcrc,
    )
    return body + struct.pack(">I", zlib.crc32(body)) + payload


def payload_check(payload: bytes, major: int) -> int:
    """Written out here as FORMAT.md defines it, not taken from the code under test."""
    if major < 3:
        return zlib.crc32(payload)
    return xxhash.xxh3_64_intdigest(payload) & 0xFFFFFFFF if payload else 0


def stream_digest(data: bytes, major: int = VERSION[0]) -> StreamDigest:
    if major < 3:
        return StreamDigest("sha256", hashlib.sha256(data).hexdigest())
    return StreamDigest("xxh128", xxhash.xxh3_128(data).hexdigest())


def end_record(prefix: bytes, counts: tuple[int, int, int, int, int]) -> bytes:
    (major,) = struct.unpack_from(">H", prefix, 8)  # the preamble's
    digest = bytes.fromhex(stream_digest(prefix, major).hex)
    payload = struct.pack(">QQQQQ", *counts) + digest
    return raw_record(RecordType.END, payload=payload, major=major)


def finish(prefix: bytes, counts: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)) -> bytes:
    return prefix + end_record(prefix, counts)


def consume(data: bytes) -> tuple[list[Record], StreamError | None, StreamReader | None]:
    """Read a whole stream; return what was yielded and the error that stopped it."""
    seen: list[Record] = []
    reader = None
    try:
        reader = StreamReader(io.BytesIO(data))
        for record in reader:
            seen.append(record)
    except StreamError as exc:
        return seen, exc, reader
    return seen, None, reader


def refused(data: bytes, kind: type[StreamError] = StreamError) -> StreamError:
    _seen, exc, _reader = consume(data)
    assert exc is not None, "stream was accepted"
    assert isinstance(exc, kind), f"expected {kind.__name__}, got {exc!r}"
    return exc


class Trickle(io.RawIOBase):
    """A pipe-like reader that returns short reads, as sys.stdin.buffer on a pipe can."""

    def __init__(self, data: bytes, seed: int = 0) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data) - self._pos
        n = min(n, self._rng.randint(1, 700))
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk


def build(
    header: Header, records: list[tuple[str, int, Any]], level: int | None = 3
) -> tuple[bytes, StreamDigest, Totals, list[bytes]]:
    """Write a stream with StreamWriter; also return each unit's bytes for position maths.

    records: ("data", offset, bytes) or ("zero", offset, length).
    """
    buf = io.BytesIO()
    writer = StreamWriter(buf, header)
    units = [buf.getvalue()]
    for kind, offset, arg in records:
        rec = encode_data(offset, arg, level) if kind == "data" else encode_zero(offset, arg)
        writer.write_record(rec)
        units.append(rec)
    digest = writer.close()
    data = buf.getvalue()
    units.append(data[sum(map(len, units)) :])
    return data, digest, writer.totals, units


def expected(records: list[tuple[str, int, Any]]) -> list[Record]:
    out = []
    for kind, offset, arg in records:
        if kind == "data":
            out.append(Record(RecordType.DATA, offset, len(arg), bytes(arg)))
        else:
            out.append(Record(RecordType.ZERO, offset, arg, None))
    return out


SMALL_RECORDS: list[tuple[str, int, Any]] = [
    ("data", 0, b"abcd" * 256),  # compressible: stored as zstd
    ("zero", 4096, 8192),
    ("data", 16384, random.Random(1).randbytes(512)),  # incompressible: stored raw
    ("zero", 65536, 512),
]


@pytest.fixture(scope="module")
def small_stream() -> tuple[bytes, list[bytes]]:
    data, _digest, _totals, units = build(make_header(), SMALL_RECORDS)
    return data, units


# --------------------------------------------------------------------------- round trips


def test_small_round_trip(small_stream: tuple[bytes, list[bytes]]) -> None:
    data, units = small_stream
    assert units[1][1] & ZSTD and not units[3][1] & ZSTD  # one of each storage form
    seen, exc, reader = consume(data)
    assert exc is None and reader is not None
    assert seen == expected(SMALL_RECORDS)
    assert reader.header == make_header()
    assert reader.version == VERSION
    assert reader.complete
    assert reader.digest == stream_digest(data)
    assert reader.totals == Totals(2, 2, 1024 + 512, 8192 + 512, len(units[1]) - 32 + 512)


def test_short_reads_from_a_pipe(small_stream: tuple[bytes, list[bytes]]) -> None:
    data, _units = small_stream
    for seed in range(5):
        reader = StreamReader(Trickle(data, seed))
        assert list(reader) == expected(SMALL_RECORDS)
        assert reader.digest == stream_digest(data)


def test_a_stream_cut_inside_a_payload_read_from_a_real_pipe_is_truncated() -> None:
    """A payload bigger than a pipe's capacity arrives in pieces (read into one buffer);
    cut inside it, the reader says the stream is truncated, whatever reads it (raw,
    buffered, or hashing the file as lvpatch does by default: its SHA-256 helper thread
    still holds a view of the last piece when the reader finds the end)."""
    from lvdiff.stream.digest import Digest, HashingReader

    payload = random.Random(3).randbytes(3 << 20)  # incompressible: stored as it is
    out = io.BytesIO()
    w = StreamWriter(out, make_header(volume_size=4 << 20))
    w.write_record(*data_record(0, payload, 3))
    w.close()
    data = out.getvalue()
    for cut in (len(data) // 2, len(data) - 40):
        for wrap in (
            lambda f: f,
            lambda f: io.BufferedReader(f),
            lambda f: HashingReader(io.BufferedReader(f), Digest("sha256")),
            lambda f: HashingReader(f, Digest("sha256")),
        ):
            r, wfd = os.pipe()
            feeder = concurrent.futures.ThreadPoolExecutor(1).submit(
                lambda wfd=wfd, cut=cut: (os.write(wfd, data[:cut]), os.close(wfd))
            )
            with open(r, "rb", buffering=0) as raw, pytest.raises(TruncatedStream):
                list(StreamReader(wrap(raw)))
            feeder.result()
        r, wfd = os.pipe()  # as lvpatch reads its standard input
        feeder = concurrent.futures.ThreadPoolExecutor(1).submit(
            lambda wfd=wfd, cut=cut: (os.write(wfd, data[:cut]), os.close(wfd))
        )
        with open(r, "rb", buffering=0) as raw, pytest.raises(TruncatedStream):
            list(StreamReader(raw, file_digest=Digest("sha256")))
        feeder.result()
    r, wfd = os.pipe()
    feeder = concurrent.futures.ThreadPoolExecutor(1).submit(
        lambda: (os.write(wfd, data), os.close(wfd))
    )
    with open(r, "rb", buffering=0) as raw:
        records = list(StreamReader(raw))
    feeder.result()
    assert bytes(records[0].data) == payload


names = st.from_regex(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,30}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
identities = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", fullmatch=True)
volume_refs = st.builds(VolumeRef, names, st.text(max_size=40), st.integers(0, 2**24), identities)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.text(max_size=10)


def fingerprint_of(draw: st.DrawFn, level: int, size: int) -> Fingerprint | None:
    if level == 0:
        return None
    digest = draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    unit = 512 << draw(st.integers(0, 11))
    if level == 2:
        seed = draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
        return Fingerprint(2, unit, size, digest, seed, draw(st.integers(1, 16384)))
    return Fingerprint(level, unit, size, digest)


@st.composite
def headers(draw: st.DrawFn, volume_size: int) -> Header:
    kind = draw(st.sampled_from(["full", "incremental"]))
    incremental = kind == "incremental"
    extra_keys = st.text(max_size=10).filter(lambda k: k not in make_header().to_dict())
    level = draw(st.integers(0, 3))
    base_size = (
        draw(st.integers(1, 2**40).map(lambda n: n * 512))
        if incremental
        else draw(st.none() | st.integers(0, 2**40).map(lambda n: n * 512))
    )
    return Header(
        kind=kind,
        volume_size=volume_size,
        base_size=base_size,
        chunk_size=512 << draw(st.integers(0, 21)),
        vg=draw(names),
        pool=draw(names),
        transaction_id=draw(st.integers(0, 2**64 - 1)),
        base=draw(volume_refs) if incremental else None,
        new=draw(volume_refs),
        created=draw(st.sampled_from(["2024-05-01T12:00:00Z", "2030-12-31T23:59:59+00:00"])),
        tool=draw(st.text(max_size=30)),
        meta=draw(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=6)),
        compression=draw(st.sampled_from(["zstd", "none"])),
        detect_level=level,
        base_fingerprint=fingerprint_of(draw, level, base_size) if incremental else None,
        new_fingerprint=fingerprint_of(draw, level, volume_size),
        extra=draw(st.dictionaries(extra_keys, json_scalars, max_size=3)),
    )


@st.composite
def record_plans(draw: st.DrawFn) -> tuple[list[tuple[str, int, Any]], int]:
    """Records in increasing order with random gaps, and a volume size that holds them."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    records: list[tuple[str, int, Any]] = []
    pos = 0
    for _ in range(draw(st.integers(0, 12))):
        pos += 512 * draw(st.sampled_from([0, 0, 1, 7, 64]))
        size = 512 * draw(st.integers(1, 64))
        kind = draw(st.sampled_from(["random", "pattern", "zeros", "zero"]))
        if kind == "zero":
            records.append(("zero", pos, size))
        elif kind == "random":
            records.append(("data", pos, rng.randbytes(size)))
        elif kind == "pattern":
            records.append(("data", pos, bytes([rng.randrange(256)]) * 64 * (size // 64)))
        else:
            records.append(("data", pos, bytes(size)))
        pos += size
    volume_size = pos + 512 * draw(st.integers(0 if pos else 1, 100))
    return records, volume_size


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(plan=record_plans(), data=st.data(), level=st.sampled_from([None, 1, 3, 19]))
def test_round_trip(
    plan: tuple[list[tuple[str, int, Any]], int], data: st.DataObject, level: int | None
) -> None:
    records, volume_size = plan
    header = data.draw(headers(volume_size))
    stream, digest, totals, _units = build(header, records, level)
    assert digest == stream_digest(stream)
    trickle = data.draw(st.booleans())
    reader = StreamReader(Trickle(stream, 1) if trickle else io.BytesIO(stream))
    assert reader.header == header
    assert list(reader) == expected(records)
    assert reader.totals == totals
    assert reader.digest == digest
    data_recs = [r for r in records if r[0] == "data"]
    assert totals.data_records == len(data_recs)
    assert totals.data_bytes == sum(len(r[2]) for r in data_recs)
    assert totals.zero_bytes == sum(r[2] for r in records if r[0] == "zero")


@settings(max_examples=40, deadline=2000)
@given(header=headers(4096))
def test_header_json_round_trip(header: Header) -> None:
    raw = header.to_json()
    assert Header.from_json(raw) == header
    assert Header.from_json(raw).to_json() == raw


def test_unknown_header_keys_are_preserved() -> None:
    obj = header_dict(future_field={"x": [1, 2]}, another="y")
    header = Header.from_json(raw_json(obj))
    assert header.extra == {"future_field": {"x": [1, 2]}, "another": "y"}
    assert json.loads(header.to_json()) == obj


def test_meta_order_is_kept_and_lists_accepted() -> None:
    pairs = [["z", "1"], ["a", "2"], ["z", "3"]]
    header = make_header(meta=pairs)
    assert header.meta == [("z", "1"), ("a", "2"), ("z", "3")]
    assert json.loads(header.to_json())["meta"] == pairs


# --------------------------------------------------------------------------- encoders


def test_encode_data_chooses_smaller_form() -> None:
    compressible = encode_data(0, bytes(64 * KiB))
    assert compressible[1] == ZSTD and len(compressible) < 1000
    noise = random.Random(2).randbytes(64 * KiB)
    raw = encode_data(512, noise)
    assert raw[1] == 0 and raw[32:] == noise
    assert encode_data(0, bytes(4096), None)[1] == 0
    assert encode_data(0, memoryview(bytearray(4096))) == encode_data(0, bytes(4096))


@pytest.mark.parametrize(
    ("offset", "size"),
    [(1, 512), (0, 0), (0, 100), (-512, 512), (2**63 + 512, 512), (0, MAX_DATA_LEN + 512)],
)
def test_encode_data_refuses_bad_ranges(offset: int, size: int) -> None:
    with pytest.raises(ValueError):
        encode_data(offset, bytes(max(size, 0)))


@pytest.mark.parametrize(("offset", "length"), [(1, 512), (0, 0), (0, 513), (0, 2**64)])
def test_encode_zero_refuses_bad_ranges(offset: int, length: int) -> None:
    with pytest.raises(ValueError):
        encode_zero(offset, length)


def test_encode_data_is_thread_safe() -> None:
    rng = random.Random(3)
    blocks = [bytes([i]) * 1024 + rng.randbytes(1024) + bytes(30 * KiB) for i in range(64)]
    serial = [encode_data(i * 32 * KiB, b) for i, b in enumerate(blocks)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            futures = [pool.submit(encode_data, i * 32 * KiB, b) for i, b in enumerate(blocks)]
            assert [f.result() for f in futures] == serial


# --------------------------------------------------------------------------- writer misuse


def test_writer_refuses_out_of_order_and_out_of_bounds() -> None:
    writer = StreamWriter(io.BytesIO(), make_header(volume_size=8192))
    writer.write_record(encode_zero(1024, 1024))
    with pytest.raises(ValueError, match="offset 1536"):
        writer.write_record(encode_zero(1536, 512))  # overlaps
    with pytest.raises(ValueError, match="offset 0"):
        writer.write_record(encode_data(0, bytes(512)))  # goes backwards
    with pytest.raises(ValueError, match="beyond"):
        writer.write_record(encode_zero(4096, 8192))
    with pytest.raises(ValueError):
        writer.write_record(b"not a record" * 4)
    writer.write_record(encode_zero(2048, 6144))  # adjacent is fine
    assert writer.totals == Totals(0, 2, 0, 7168, 0)
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_record(encode_zero(8192, 512))


def test_writer_refuses_invalid_header() -> None:
    with pytest.raises(ValueError, match="vg"):
        StreamWriter(io.BytesIO(), make_header(vg="a/b"))
    with pytest.raises(ValueError, match="base"):
        StreamWriter(io.BytesIO(), make_header(kind="incremental", base_size=4096))
    with pytest.raises(ValueError, match="header too large"):
        make_header(meta=[("k", "x" * 4096)] * 300).to_json()


def test_writer_leaves_stream_incomplete_on_error() -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError), StreamWriter(buf, make_header()) as writer:
        writer.write_record(encode_zero(0, 512))
        raise RuntimeError("backup failed")
    refused(buf.getvalue(), TruncatedStream)
    buf = io.BytesIO()
    with StreamWriter(buf, make_header()) as writer:
        writer.write_record(encode_zero(0, 512))
    assert consume(buf.getvalue())[1] is None


def test_reader_iterates_once(small_stream: tuple[bytes, list[bytes]]) -> None:
    reader = StreamReader(io.BytesIO(small_stream[0]))
    list(reader)
    with pytest.raises(ValueError):
        iter(reader)


# --------------------------------------------------------------------------- truncation


def test_every_truncation_is_refused(small_stream: tuple[bytes, list[bytes]]) -> None:
    data, units = small_stream
    ends = []  # stream position at which each yielded record is complete
    pos = len(units[0])
    for unit in units[1:-1]:
        pos += len(unit)
        ends.append(pos)
    want = expected(SMALL_RECORDS)
    for cut in range(len(data)):
        seen, exc, _reader = consume(data[:cut])
        assert isinstance(exc, TruncatedStream), (cut, exc)
        assert "incomplete or truncated" in str(exc)
        # Only records entirely before the cut may have been yielded.
        assert seen == want[: sum(end <= cut for end in ends)], cut


def test_missing_end_record_is_truncation(small_stream: tuple[bytes, list[bytes]]) -> None:
    data, units = small_stream
    exc = refused(data[: -len(units[-1])], TruncatedStream)
    assert str(exc).startswith("stream ends before its END record: incomplete or truncated")


# --------------------------------------------------------------------------- bit flips


def test_every_bit_flip_is_caught_before_later_records(
    small_stream: tuple[bytes, list[bytes]],
) -> None:
    data, units = small_stream
    starts = []
    pos = 0
    for unit in units:
        starts.append(pos)
        pos += len(unit)
    want = expected(SMALL_RECORDS)
    for byte in range(len(data)):
        # unit 0 is preamble+header; unit k (1..) is record k-1; the last is END.
        unit = max(i for i, start in enumerate(starts) if start <= byte)
        allowed = want[: max(unit - 1, 0)]
        for bit in range(8):
            damaged = bytearray(data)
            damaged[byte] ^= 1 << bit
            seen, exc, _reader = consume(bytes(damaged))
            assert exc is not None, (byte, bit)
            assert seen == allowed, (byte, bit)


# --------------------------------------------------------------------------- preamble, header


def test_not_an_lvdiff_stream() -> None:
    for junk in [b"PK\x03\x04" + bytes(40), b"\x89LVDIFX\n" + bytes(40), b"x"]:
        exc = refused(junk)
        assert "not an lvdiff stream" in str(exc)
        assert not isinstance(exc, TruncatedStream)
    refused(b"", TruncatedStream)
    refused(MAGIC[:5], TruncatedStream)


def test_newer_major_version_refused() -> None:
    newer = VERSION[0] + 1
    exc = refused(preamble(make_header().to_json(), major=newer, minor=3), UnsupportedStream)
    assert f"{newer}.3" in str(exc) and "newer lvdiff" in str(exc)
    refused(preamble(make_header().to_json(), major=0), UnsupportedStream)


def test_newer_minor_version_accepted() -> None:
    seen, exc, reader = consume(finish(preamble(make_header().to_json(), minor=9)))
    assert exc is None and reader is not None and reader.version == (VERSION[0], 9)


@pytest.mark.parametrize("header_len", [MAX_HEADER_LEN + 1, 2**32 - 1])
def test_oversized_header_refused_without_reading_it(header_len: int) -> None:
    data = MAGIC + struct.pack(">HHI", 1, 0, header_len)
    exc = refused(data, CorruptStream)  # not TruncatedStream: nothing more was read
    assert "header too large" in str(exc)


@pytest.mark.parametrize("header_len", [0, 1])
def test_tiny_header_refused(header_len: int) -> None:
    refused(MAGIC + struct.pack(">HHI", 1, 0, header_len) + bytes(10), CorruptStream)


def test_header_crc_covers_the_preamble() -> None:
    good = preamble(make_header().to_json())
    bad = bytearray(good)
    bad[10:12] = b"\x00\x05"  # minor version, which alone would be accepted
    refused(bytes(bad), CorruptStream)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",
        b"[]",
        b'"str"',
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nesting past the recursion limit
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b"\xef\xbb\xbf{}",
    ],
)
def test_malformed_header_json_refused(raw: bytes) -> None:
    with pytest.raises(CorruptStream):
        Header.from_json(raw)
    refused(finish(preamble(raw)), CorruptStream)


def test_duplicate_header_keys_refused() -> None:
    raw = make_header().to_json()[:-1] + b',"vg":"other"}'
    with pytest.raises(CorruptStream, match="duplicate"):
        Header.from_json(raw)


BAD_NAMES = [
    "a/b",
    "..",
    ".",
    "",
    "-lead",
    "esc\x1b[2J",
    "nl\n",
    "nul\x00",
    "x" * 128,
    "sp ace",
    "ünï",
    "tab\t",
    7,
    None,
]


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("where", ["vg", "pool", "base.name", "new.name"])
def test_bad_names_refused(where: str, bad: Any) -> None:
    obj = header_dict(
        kind="incremental",
        base_size=4096,
        base={"name": "base", "uuid": "u", "thin_id": 1, "identity": "u"},
    )
    if "." in where:
        obj[where.split(".")[0]]["name"] = bad
    else:
        obj[where] = bad
    with pytest.raises(CorruptStream) as info:
        Header.from_json(raw_json(obj))
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "\x00" not in message


def test_good_names_accepted() -> None:
    for name in ["a", "x" * 127, "+.", "_tmeta", "vg.0-1+_", "..."]:
        assert Header.from_json(raw_json(header_dict(vg=name))).vg == name


REF = {"name": "n", "uuid": "u", "thin_id": 1, "identity": "u"}
FP2 = {
    "level": 2,
    "algorithm": "sha256-of-sha256",
    "unit": 4096,
    "size": MiB,
    "sha256": "ab" * 32,
    "seed": "cd" * 16,
    "samples": 1024,
}


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "partial"},
        {"volume_size": 0},
        {"volume_size": 1000},
        {"volume_size": 2**63 + 512},
        {"volume_size": "4096"},
        {"volume_size": 4096.0},
        {"volume_size": True},
        {"base_size": 100},
        {"chunk_size": 1536},
        {"chunk_size": 256},
        {"transaction_id": -1},
        {"kind": "incremental"},  # no base
        {"kind": "incremental", "base_size": 512, "base": None},
        {"kind": "incremental", "base": {**REF, "name": "b"}},  # no size
        {"base": {**REF, "name": "b"}},  # base in a full stream
        {"new": None},
        {"new": {"name": "n", "uuid": "u", "identity": "u"}},
        {"new": {**REF, "uuid": 5}},
        {"new": {**REF, "thin_id": True}},
        {"new": {"name": "n", "uuid": "u", "thin_id": 1}},  # format 2 names identities
        {"new": {**REF, "identity": ""}},
        {"new": {**REF, "identity": "a b"}},
        {"new": {**REF, "identity": "x" * 65}},
        {"new": {**REF, "identity": "-lead"}},
        # fingerprints must match the detect level and the sizes they describe
        {"detect_level": 2},  # no fingerprint of NEW
        {"new_fingerprint": FP2},  # a fingerprint at level 0
        {"detect_level": 3, "new_fingerprint": FP2},  # level 2 in a level-3 stream
        {"detect_level": 2, "new_fingerprint": {**FP2, "size": 512}},  # not volume_size
        {"detect_level": 2, "new_fingerprint": {**FP2, "seed": 7}},
        {"detect_level": 2, "new_fingerprint": {**FP2, "seed": "ab"}},
        {"detect_level": 2, "new_fingerprint": {**FP2, "samples": 0}},
        {"detect_level": 2, "new_fingerprint": {**FP2, "offsets": [0]}},  # the 1.x form
        {"detect_level": 2, "new_fingerprint": {**FP2, "weight": 1}},  # unknown key
        {  # a full stream has no base fingerprint
            "detect_level": 2,
            "new_fingerprint": FP2,
            "base_fingerprint": {**FP2, "size": 1024},
        },
        {"created": "yesterday"},
        {"created": "2024-05-01T12:00:00"},
        {"created": "2024-05-01T12:00:00+02:00"},
        {"tool": 3},
        {"meta": {"a": "b"}},
        {"meta": [["a"]]},
        {"meta": [["a", 1]]},
        {"meta": [["k", "v" * 4097]]},
        {"meta": [["k", "v"]] * 1025},
        {"compression": "gzip"},
        {"detect_level": 4},
        {"detect_level": -1},
        {"base_fingerprint": []},
        {"new_fingerprint": "abc"},
    ],
)
def test_invalid_header_fields_refused(change: dict[str, Any]) -> None:
    with pytest.raises(CorruptStream) as info:
        Header.from_json(raw_json(header_dict(**change)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("missing", ["kind", "new", "base_fingerprint", "meta"])
def test_missing_header_field_refused(missing: str) -> None:
    obj = header_dict()
    del obj[missing]
    with pytest.raises(CorruptStream, match=missing):
        Header.from_json(raw_json(obj))


def test_meta_may_hold_anything_within_limits() -> None:
    meta = [["\x1b]0;pwned\x07", "line\nbreak\x00"], ["k" * 4096, "v" * 4096]]
    header = Header.from_json(raw_json(header_dict(meta=meta)))
    assert header.meta == [tuple(p) for p in meta]


# --------------------------------------------------------------------------- record checks

VOLUME = 1 * MiB
HEAD = preamble(make_header(volume_size=VOLUME).to_json())


def zero(offset: int, length: int) -> bytes:
    return raw_record(RecordType.ZERO, offset=offset, length=length)


def data(offset: int, payload: bytes, **kw: Any) -> bytes:
    return raw_record(RecordType.DATA, offset=offset, length=len(payload), payload=payload, **kw)


@pytest.mark.parametrize(
    ("records", "needle", "yielded"),
    [
        ([data(0, bytes(1024)), zero(512, 512)], "offset 512", 1),  # overlap
        ([zero(4096, 512), data(0, bytes(512))], "offset 0", 1),  # out of order
        ([zero(4096, 512), zero(4096, 512)], "offset 4096", 1),  # repeated
        ([zero(VOLUME - 512, 1024)], f"offset {VOLUME - 512}", 0),  # past the end
        ([zero(VOLUME, 512)], f"offset {VOLUME}", 0),
        ([zero(0, 2**64 - 512)], "offset 0", 0),
        ([zero(2**64 - 512, 512)], f"offset {2**64 - 512}", 0),
        ([zero(2**63, 2**63)], f"offset {2**63}", 0),  # sum wraps to 0 in 64-bit
        ([zero(512, 2**64 - 512)], "offset 512", 0),  # so does this one
        ([zero(100, 512)], "offset 100", 0),  # unaligned
        ([zero(0, 100)], "offset 0", 0),
        ([zero(0, 0)], "offset 0", 0),
        ([raw_record(RecordType.DATA, offset=0, length=0)], "offset 0", 0),
    ],
)
def test_order_and_bounds(records: list[bytes], needle: str, yielded: int) -> None:
    seen, exc, _reader = consume(HEAD + b"".join(records))
    assert isinstance(exc, CorruptStream), exc
    assert needle in str(exc)
    assert len(seen) == yielded


@pytest.mark.parametrize(
    "record",
    [
        raw_record(RecordType.ZERO, offset=0, length=512, flags=0x04),  # unknown flag
        raw_record(RecordType.ZERO, offset=0, length=512, flags=0x80),
        raw_record(RecordType.ZERO, offset=0, length=512, reserved=1),
        raw_record(RecordType.ZERO, offset=0, length=512, payload=b"x"),  # ZERO with payload
        raw_record(RecordType.ZERO, offset=0, length=512, flags=ZSTD),
        raw_record(RecordType.ZERO, offset=0, length=512, pcrc=1),
        data(0, bytes(512), stored=511),  # raw DATA whose stored length != length
        raw_record(RecordType.DATA, offset=0, length=1024, payload=bytes(512)),
        raw_record(RecordType.DATA, offset=0, length=MAX_DATA_LEN + 512, stored=1),
        raw_record(RecordType.DATA, offset=0, length=512, flags=ZSTD, stored=2**32 - 1),
        data(0, bytes(512), pcrc=0),  # payload CRC mismatch
        raw_record(RecordType.END, offset=512, payload=bytes(72)),
        raw_record(RecordType.END, payload=bytes(71)),
        raw_record(RecordType.END, payload=bytes(72), flags=ZSTD),
    ],
)
def test_malformed_records_refused(record: bytes) -> None:
    seen, exc, _reader = consume(HEAD + record)
    assert isinstance(exc, CorruptStream), exc
    assert seen == []


def test_huge_declared_payload_is_not_read() -> None:
    # A DATA header claiming a 4 GiB payload must be refused from the header alone.
    record = raw_record(RecordType.DATA, offset=0, length=512, flags=ZSTD, stored=2**32 - 1)
    refused(HEAD + record, CorruptStream)


def test_header_crc_mismatch() -> None:
    record = bytearray(zero(0, 512))
    record[-1] ^= 1
    exc = refused(HEAD + bytes(record), CorruptStream)
    assert "checksum" in str(exc)


def rle_frame(total: int, *, declared: int | None = None, byte: int = 0) -> bytes:
    """A hand-built zstd frame of RLE blocks: ``total`` bytes of ``byte``.

    ``declared`` sets the frame content size field (2-byte form, 256..65791);
    None leaves it out, as streaming compressors do.
    """
    if declared is None:
        frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # no FCS, 128 KiB window
    else:
        frame = bytearray(b"\x28\xb5\x2f\xfd\x40\x38") + (declared - 256).to_bytes(2, "little")
    block = 128 * KiB
    remaining = total
    while remaining:
        size = min(block, remaining)
        remaining -= size
        frame += ((size << 3) | (1 << 1) | (remaining == 0)).to_bytes(3, "little")
        frame.append(byte)
    return bytes(frame)


def test_rle_frame_helper_is_valid_zstd() -> None:
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    assert dctx.stream_reader(rle_frame(300 * KiB, byte=7)).read(1 * MiB) == b"\x07" * 300 * KiB
    frame = rle_frame(512, byte=9)
    good = HEAD + raw_record(RecordType.DATA, flags=ZSTD, payload=frame, length=512)
    seen, exc, _r = consume(finish(good, (1, 0, 512, 0, len(frame))))
    assert exc is None and seen == [Record(RecordType.DATA, 0, 512, b"\x09" * 512)]


@pytest.mark.parametrize("declared", [None, 512], ids=["no-content-size", "lying-content-size"])
def test_decompression_bomb_refused(declared: int | None) -> None:
    frame = rle_frame(1024 * MiB, declared=declared)  # 1 GiB of zeros in ~32 KiB
    record = raw_record(RecordType.DATA, flags=ZSTD, payload=frame, length=512)
    tracemalloc.start()
    started = time.monotonic()
    try:
        exc = refused(finish(HEAD + record, (1, 0, 512, 0, len(frame))), CorruptStream)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "offset 0" in str(exc)
    assert peak < 8 * MiB
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "payload",
    [
        rle_frame(256),  # too short
        rle_frame(1024),  # too long, no content size
        rle_frame(1024, declared=1024),  # content size disagrees with the record
        rle_frame(512, declared=512)[:-1],  # frame cut short
        rle_frame(512) + b"\x00",  # trailing byte after the frame
        rle_frame(256) + rle_frame(256),  # two frames
        b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + bytes(4),  # skippable frame
        b"not zstd at all",
        b"\x28\xb5\x2f\xfd",
        b"\x28\xb5\x2f\xfd\x08\x38" + rle_frame(512)[6:],  # reserved bit
        b"\x28\xb5\x2f\xfd\x01\x38\x07" + rle_frame(512)[6:],  # needs dictionary 7
        b"\x28\xb5\x2f\xfd\x00\x88" + rle_frame(512)[6:],  # 128 MiB window
    ],
    ids=[
        "short",
        "long",
        "content-size",
        "cut",
        "trailing",
        "two-frames",
        "skippable-frame",
        "not-zstd",
        "magic-only",
        "reserved-bit",
        "dictionary",
        "huge-window",
    ],
)
def test_bad_zstd_payloads_refused(payload: bytes) -> None:
    record = raw_record(RecordType.DATA, flags=ZSTD, payload=payload, length=512)
    seen, exc, _reader = consume(HEAD + record)
    assert isinstance(exc, CorruptStream), exc
    assert seen == []


def test_unknown_mandatory_record_refused() -> None:
    record = raw_record(0x10, offset=0, length=512, payload=b"future")
    exc = refused(HEAD + zero(0, 512) + record, UnsupportedStream)
    assert "unknown mandatory record type 0x10" in str(exc)


def test_unknown_skippable_record_skipped() -> None:
    skip = raw_record(0x33, flags=SKIPPABLE, offset=12345, length=7, payload=b"future stuff")
    body = HEAD + zero(0, 512) + skip + zero(512, 512)
    seen, exc, reader = consume(finish(body, (0, 2, 0, 1024, 0)))
    assert exc is None and reader is not None
    assert seen == [Record(RecordType.ZERO, 0, 512, None), Record(RecordType.ZERO, 512, 512, None)]
    assert reader.totals == Totals(0, 2, 0, 1024, 0)


def test_unknown_skippable_record_is_still_checked() -> None:
    skip = raw_record(0x33, flags=SKIPPABLE, payload=b"future stuff", pcrc=0)
    refused(HEAD + skip, CorruptStream)
    big = raw_record(0x33, flags=SKIPPABLE, stored=MAX_DATA_LEN + 64 * KiB + 1)
    refused(HEAD + big, CorruptStream)


def test_trailing_garbage_after_end(small_stream: tuple[bytes, list[bytes]]) -> None:
    data, _units = small_stream
    exc = refused(data + b"\x00", CorruptStream)
    assert "after the END" in str(exc)
    refused(data + data, CorruptStream)


def test_spliced_streams_refused() -> None:
    header_a = make_header(new=VolumeRef("a", "ua", 1, "ua"))
    header_b = make_header(new=VolumeRef("b", "ub", 2, "ub"))
    stream_a, _, _, units_a = build(header_a, SMALL_RECORDS)
    stream_b, _, _, units_b = build(header_b, SMALL_RECORDS)
    exc = refused(units_a[0] + stream_b[len(units_b[0]) :], CorruptStream)
    assert "spliced" in str(exc)
    # Records of A, END of B (same records, so same counts; different header hash).
    refused(stream_a[: -len(units_a[-1])] + units_b[-1], CorruptStream)


def test_end_counts_must_match() -> None:
    body = HEAD + zero(0, 512)
    assert consume(finish(body, (0, 1, 0, 512, 0)))[1] is None
    for counts in [(0, 2, 0, 512, 0), (0, 1, 0, 1024, 0), (1, 1, 0, 512, 0), (0, 1, 0, 512, 9)]:
        exc = refused(finish(body, counts), CorruptStream)
        assert "totals" in str(exc)


def test_end_hash_must_match() -> None:
    body = HEAD + zero(0, 512)
    payload = struct.pack(">QQQQQ", 0, 1, 0, 512, 0) + bytes(32)
    refused(body + raw_record(RecordType.END, payload=payload), CorruptStream)


# --------------------------------------------------------------------------- fuzzing

# Bounded in CI; LVDIFF_FUZZ_EXAMPLES=100000 pytest -k fuzz runs longer on demand.
FUZZ_EXAMPLES = int(os.environ.get("LVDIFF_FUZZ_EXAMPLES", "300"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=1000)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(blob: bytes) -> None:
    consume(blob)
    consume(MAGIC + blob)
    consume(HEAD + blob)


@settings(max_examples=FUZZ_EXAMPLES, deadline=1000)
@given(st.data())
def test_fuzz_mutated_stream(fuzz: st.DataObject) -> None:
    stream, _d, _t, _u = build(make_header(), SMALL_RECORDS)
    damaged = bytearray(stream)
    for _ in range(fuzz.draw(st.integers(1, 4))):
        op = fuzz.draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        pos = fuzz.draw(st.integers(0, len(damaged)))
        if op == "set" and pos < len(damaged):
            damaged[pos] = fuzz.draw(st.integers(0, 255))
        elif op == "insert":
            damaged[pos:pos] = fuzz.draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del damaged[pos : pos + fuzz.draw(st.integers(1, 40))]
        else:
            del damaged[pos:]
    assume(bytes(damaged) != stream)
    seen, exc, _reader = consume(bytes(damaged))
    assert exc is not None


u64 = st.integers(0, 2**64 - 1) | st.integers(0, 4096).map(lambda n: n * 512)


@settings(max_examples=FUZZ_EXAMPLES * 4 // 3, deadline=1000)
@given(
    rtype=st.sampled_from([1, 2, 0x7F, 0, 3, 0x80, 0xFF]),
    flags=st.integers(0, 3) | st.integers(0, 255),
    reserved=st.just(0) | st.integers(0, 2**16 - 1),
    offset=u64,
    length=u64,
    payload=st.binary(max_size=1100) | st.sampled_from([bytes(512), rle_frame(512)]),
    stored_delta=st.just(0) | st.integers(-5, 5),
    bad_crc=st.booleans(),
    then_end=st.booleans(),
)
def test_fuzz_record_fields_with_valid_crc(
    rtype: int,
    flags: int,
    reserved: int,
    offset: int,
    length: int,
    payload: bytes,
    stored_delta: int,
    bad_crc: bool,
    then_end: bool,
) -> None:
    record = raw_record(
        rtype,
        flags=flags,
        reserved=reserved,
        offset=offset,
        length=length,
        payload=payload,
        stored=max(0, len(payload) + stored_delta),
        pcrc=0xDEADBEEF if bad_crc else None,
    )
    body = HEAD + zero(0, 512) + record
    consume(body + end_record(body, (0, 1, 0, 512, 0)) if then_end else body)


json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=1000)
@given(field=st.sampled_from(sorted(header_dict())), value=json_values, nested=st.booleans())
def test_fuzz_header_fields(field: str, value: Any, nested: bool) -> None:
    obj = header_dict()
    if nested and isinstance(obj[field], dict):
        obj[field]["name" if "name" in obj[field] else "x"] = value
    else:
        obj[field] = value
    raw = raw_json(obj)
    with contextlib.suppress(CorruptStream):
        Header.from_json(raw)
    consume(finish(preamble(raw)))


# --------------------------------------------------------------------------- terminal safety


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("nul\x00", "nul\\x00"),
        ("csi\x9b31m", "csi\\x9b31m"),  # C1 control, a one-byte CSI on some terminals
        ("del\x7f", "del\\x7f"),
        ("rtl\u202eevil", "rtl\\u202eevil"),  # bidi override
        ("zw\u200bsp", "zw\\u200bsp"),
        ("back\\slash", "back\\\\slash"),
        ("héllo wörld ✓ 日本 😀", "héllo wörld ✓ 日本 😀"),
    ],
)
def test_escape_for_terminal(text: str, shown: str) -> None:
    assert escape_for_terminal(text) == shown


@given(st.text())
def test_escape_for_terminal_output_is_printable(text: str) -> None:
    shown = escape_for_terminal(text)
    assert all(ch == " " or ch.isprintable() for ch in shown)


def test_format_2_streams_still_restore() -> None:
    """2.x checks payloads with CRC-32 and the stream with SHA-256; 3.0 with XXH3."""
    head = preamble(make_header().to_json(), major=2, minor=0)
    data = b"\x5a" * 1024
    body = head + raw_record(RecordType.DATA, payload=data, length=1024, major=2)
    body += raw_record(RecordType.ZERO, offset=1024, length=512, major=2)
    stream = finish(body, (1, 1, 1024, 512, 1024))
    seen, exc, reader = consume(stream)
    assert exc is None and reader is not None and reader.version == (2, 0)
    assert seen == [
        Record(RecordType.DATA, 0, 1024, data),
        Record(RecordType.ZERO, 1024, 512, None),
    ]
    assert reader.digest == StreamDigest("sha256", hashlib.sha256(stream).hexdigest())
    # a 2.0 payload check inside a 3.0 stream (and the reverse) is damage
    for major, other in ((2, 3), (3, 2)):
        bad = preamble(make_header().to_json(), major=major)
        bad += raw_record(RecordType.DATA, payload=data, length=1024, major=other)
        exc = refused(finish(bad, (1, 0, 1024, 0, 1024)), CorruptStream)
        assert "payload checksum mismatch" in str(exc)


def test_stream_digest_is_what_xxh128sum_prints(
    small_stream: tuple[bytes, list[bytes]], tmp_path: Any
) -> None:
    """Users check a stored copy without lvdiff: the digest line is xxh128sum --tag's."""
    assert shutil.which("xxh128sum"), "scripts/setup installs Debian's xxhash"
    data, _units = small_stream
    f = tmp_path / "s.lvdiff"
    f.write_bytes(data)
    reader = StreamReader(io.BytesIO(data))
    list(reader)
    assert reader.digest is not None
    line = reader.digest.tag_line(str(f))
    tool = subprocess.run(["xxh128sum", "--tag", str(f)], capture_output=True, text=True)
    assert tool.stdout.strip() == line
    (tmp_path / "sums").write_text(line + "\n")
    check = subprocess.run(["xxh128sum", "-c", str(tmp_path / "sums")], capture_output=True)
    assert check.returncode == 0
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    check = subprocess.run(["xxh128sum", "-c", str(tmp_path / "sums")], capture_output=True)
    assert check.returncode != 0


def test_format_1_streams_still_restore() -> None:
    """A 1.x header: no identities, level-2 offsets listed instead of drawn from a seed."""
    obj = header_dict(detect_level=2)
    del obj["new"]["identity"]
    obj["new_fingerprint"] = {
        "level": 2,
        "algorithm": "sha256-of-sha256",
        "unit": 65536,
        "size": obj["volume_size"],
        "sha256": "ab" * 32,
        "offsets": [0, 65536],
        "seed": 7,
    }
    seen, exc, reader = consume(finish(preamble(raw_json(obj), major=1, minor=1)))
    assert exc is None and reader is not None and reader.version == (1, 1)
    assert reader.header.new.identity is None
    fp = reader.header.new_fingerprint
    assert fp is not None and fp.offsets() == [0, 65536]
    # the same header read as 2.0 lacks the identity and has a fingerprint of the old form
    refused(finish(preamble(raw_json(obj))), CorruptStream)
