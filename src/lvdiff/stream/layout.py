"""Byte layout of the lvdiff stream: magic, versions, limits, struct formats, record types.

docs/FORMAT.md specifies every byte; this module holds the numbers that
specification names, so the header, writer and reader share one definition.
"""

from __future__ import annotations

import enum
import struct
import zlib

MAGIC = b"\x89LVDIFF\n"
VERSION = (3, 0)
# 1.x streams (listed fingerprint offsets, no identities) and 2.x (CRC-32 and SHA-256,
# see .checksums) still restore
READABLE_MAJORS = (1, 2, 3)

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
MAX_ZSTD_WINDOW = 2 * MAX_DATA_LEN

PREAMBLE = struct.Struct(">8sHHI")
CRC = struct.Struct(">I")
RECORD = struct.Struct(">BBHIQQII")  # a record header: see records.RecordHeader
RECORD_BODY = struct.Struct(">BBHIQQI")  # its first 28 bytes, which its own CRC covers

TRUNCATED = "stream ends before its END record: incomplete or truncated"


class RecordType(enum.IntEnum):
    """Record type byte.  Values are part of the format; never renumber."""

    DATA = 0x01
    ZERO = 0x02
    END = 0x7F


class RecordFlag(enum.IntFlag):
    """Record flag bits.  Unknown bits are refused so they stay free for later versions."""

    SKIPPABLE = 0x01
    ZSTD = 0x02


# The same values as plain ints, for the checks every record goes through:
# ``flags & RecordFlag.ZSTD`` builds a new RecordFlag (about 1 µs, more than all
# the other checks of a ZERO record), and each ``RecordType.X`` is a lookup
# through the enum's metaclass.
DATA, ZERO, END = int(RecordType.DATA), int(RecordType.ZERO), int(RecordType.END)
SKIPPABLE, ZSTD = int(RecordFlag.SKIPPABLE), int(RecordFlag.ZSTD)
# A plain int also because ~ on an IntFlag stays within the flag's own bits,
# which would make every unknown bit look like zero.
KNOWN_FLAGS = SKIPPABLE | ZSTD

# Unsigned since Python 3.0: used as it is, it costs no call of our own per record.
crc32 = zlib.crc32


def is_int(value: object) -> bool:
    # bool is an int subclass; a JSON true must not pass as thin_id 1.
    return isinstance(value, int) and not isinstance(value, bool)
