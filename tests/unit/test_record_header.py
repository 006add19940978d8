"""RecordHeader and the totals: the 32 bytes in front of every record, and END's counts."""

from __future__ import annotations

import struct
import zlib

import pytest

from lvdiff.stream import RecordFlag, RecordHeader, RecordType, Totals, encode_data, encode_zero
from lvdiff.stream.checksums import CURRENT, LEGACY, Checksums
from lvdiff.stream.records import Tally

# docs/FORMAT.md's example: a ZERO record for the 64 KiB at offset 1 MiB
FORMAT_EXAMPLE = bytes.fromhex(
    "02 00 0000 00000000 0000000000100000 0000000000010000 00000000 610e1928"
)


def test_pack_gives_the_bytes_of_the_format_example() -> None:
    head = RecordHeader(RecordType.ZERO, 0, 0, 0, 1 << 20, 64 << 10, 0)
    assert head.pack() == FORMAT_EXAMPLE
    assert encode_zero(1 << 20, 64 << 10) == FORMAT_EXAMPLE


def test_unpack_names_each_field_at_its_offset() -> None:
    head = RecordHeader.unpack(FORMAT_EXAMPLE)
    assert head == RecordHeader(
        rtype=0x02,
        flags=0,
        reserved=0,
        stored=0,
        offset=0x100000,
        length=0x10000,
        payload_check=0,
        header_check=0x610E1928,
    )


def test_pack_unpack_round_trip() -> None:
    head = RecordHeader(RecordType.DATA, RecordFlag.ZSTD, 0, 1234, 2**62, 16 << 20, 0xDEADBEEF)
    raw = head.pack()
    assert len(raw) == 32
    back = RecordHeader.unpack(raw)
    assert back == head._replace(header_check=zlib.crc32(raw[:28]))
    assert back.pack() == raw
    # every field where docs/FORMAT.md puts it
    assert struct.unpack(">BBHIQQII", raw)[:7] == tuple(head)[:7]


def test_unpack_reads_the_header_at_the_start_of_a_whole_record() -> None:
    record = encode_data(4096, bytes(range(256)) * 2, level=None)
    head = RecordHeader.unpack(memoryview(record))
    assert (head.rtype, head.stored, head.offset, head.length) == (RecordType.DATA, 512, 4096, 512)
    assert head.payload_check == CURRENT.payload(record[32:])


def test_pack_computes_the_header_check_whatever_the_field_says() -> None:
    head = RecordHeader(RecordType.ZERO, 0, 0, 0, 1 << 20, 64 << 10, 0, header_check=12345)
    assert head.pack() == FORMAT_EXAMPLE


def test_the_header_check_covers_the_first_28_bytes() -> None:
    raw = RecordHeader(RecordType.DATA, 0, 0, 512, 8192, 512, 0x01020304).pack()
    assert raw[28:] == zlib.crc32(raw[:28]).to_bytes(4, "big")
    for bit in range(32 * 8):
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError, match="record header checksum mismatch"):
            RecordHeader.unpack(bytes(bad))


@pytest.mark.parametrize("size", [0, 1, 28, 31])
def test_unpack_of_a_short_buffer_says_so(size: int) -> None:
    with pytest.raises(ValueError, match=f"a record header is 32 bytes, not {size}"):
        RecordHeader.unpack(FORMAT_EXAMPLE[:size])


def test_totals_add_up_by_kind() -> None:
    tally = Tally()
    assert tally.totals == Totals()
    tally.add(RecordHeader(RecordType.DATA, 0, 0, 4096, 0, 4096, 7))
    tally.add(RecordHeader(RecordType.ZERO, 0, 0, 0, 4096, 512, 0))
    tally.add(RecordHeader(RecordType.DATA, RecordFlag.ZSTD, 0, 100, 8192, 65536, 9))
    tally.add(RecordHeader(RecordType.ZERO, 0, 0, 0, 1 << 20, 1024, 0))
    tally.add(RecordHeader(RecordType.ZERO, 0, 0, 0, 2 << 20, 2048, 0))
    snapshot = tally.totals
    assert snapshot == Totals(
        data_records=2, zero_records=3, data_bytes=4096 + 65536, zero_bytes=3584, stored_bytes=4196
    )
    tally.add(RecordHeader(RecordType.ZERO, 0, 0, 0, 3 << 20, 512, 0))
    assert snapshot.zero_records == 3  # a snapshot, not a view
    assert tally.totals.zero_records == 4


def test_only_data_and_zero_records_count() -> None:
    tally = Tally()
    for rtype in (RecordType.END, 0x42):
        with pytest.raises(ValueError, match="only DATA and ZERO"):
            tally.add(RecordHeader(rtype, 0, 0, 56, 0, 0, 0))
    assert tally.totals == Totals()


@pytest.mark.parametrize("checks", [CURRENT, LEGACY])
def test_end_payload_round_trip_in_the_order_of_the_format(checks: Checksums) -> None:
    totals = Totals(data_records=1, zero_records=2, data_bytes=3, zero_bytes=4, stored_bytes=5)
    digest = bytes(range(checks.digest_len))
    payload = totals.end_payload(checks.end_payload, digest)
    # docs/FORMAT.md, END: five u64 in this order, then the digest
    assert payload == struct.pack(">QQQQQ", 1, 2, 3, 4, 5) + digest
    assert Totals.from_end_payload(checks.end_payload, payload) == (totals, digest)
