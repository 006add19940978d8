"""Every damaged stream is refused with nothing left behind and BASE unchanged.

Streams are made with the library (no thin_delta involved) against a real
BASE volume, so each truncation point and bit flip is exact.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct

from lvdiff import fingerprint as fpr
from lvdiff.blockdev import BlockDevice
from lvdiff.stream import StreamWriter, VolumeRef, encode_data, encode_zero

from ..builders import make_header
from .lvmrig import committed, lv_names, sha256_of, tool, write_at

M = 1 << 20
SIZE = 8 * M


def make_stream(base: bytes, rnd: random.Random) -> tuple[bytes, bytes]:
    """An incremental stream from ``base`` to a NEW it invents; returns (stream, NEW)."""
    new = bytearray(base)
    records = []
    for off, n in ((0, 64 * 1024), (M + 512, 3 * 4096), (3 * M, M), (6 * M, 512 * 3)):
        data = rnd.randbytes(n)
        new[off : off + n] = data
        records.append(encode_data(off, data, 3 if off == 3 * M else None))
    records.insert(2, encode_zero(2 * M, 256 * 1024))
    new[2 * M : 2 * M + 256 * 1024] = bytes(256 * 1024)
    records.append(encode_zero(7 * M, M))
    new[7 * M :] = bytes(M)

    def fp(buf: bytes) -> fpr.Fingerprint | None:
        return fpr.compute(3, lambda o, n: buf[o : o + n], SIZE, 64 * 1024, "", None)

    h = make_header(
        kind="incremental",
        volume_size=SIZE,
        base_size=SIZE,
        base=VolumeRef("base", "b", 1, "base-id"),
        new=VolumeRef("new", "n", 2, "new-id"),
        detect_level=3,
        base_fingerprint=fp(base),
        new_fingerprint=fp(bytes(new)),
    )
    out = io.BytesIO()
    w = StreamWriter(out, h)
    for r in records:
        w.write_record(r)
    w.close()
    return out.getvalue(), bytes(new)


def boundaries(stream: bytes) -> list[int]:
    """Byte offsets where the header and each record begin, and the stream's end."""
    (hlen,) = struct.unpack(">I", stream[12:16])
    pos = 16 + hlen + 4
    marks = [16, pos]
    while pos < len(stream):
        (stored,) = struct.unpack(">I", stream[pos + 4 : pos + 8])
        pos += 32 + stored
        marks.append(pos)
    return marks


def test_every_truncation_flip_and_splice_is_refused(loop_vg):
    rnd = random.Random(99)
    dst = loop_vg(prefix="dst")
    dst.pool(size_mb=64)
    base_dev = dst.thin("base", SIZE // M)
    write_at(base_dev, 0, rnd.randbytes(5 * M))
    with BlockDevice(base_dev) as d:
        base = d.read(0, SIZE)
    base_sum = sha256_of(base_dev)
    stream, new = make_stream(base, rnd)
    other, _ = make_stream(base, random.Random(1))
    marks = boundaries(stream)
    assert len(marks) == 9 and marks[-1] == len(stream)  # preamble, header, 6 records, END

    def refused(data: bytes, why: str) -> None:
        res = tool("lvpatch", "-g", dst.name, "-l", "base", stdin=data)
        err = res.stderr.decode().strip()
        assert res.returncode == 3, f"{why}: {err}"
        assert len(err.splitlines()[-1]) < 300 and "Traceback" not in err, why
        assert lv_names(dst.name) == {"pool", "base"}, why  # nothing left behind

    for cut in marks[:-1]:  # at every record boundary, including before END
        refused(stream[:cut], f"cut at {cut}")
    refused(stream[: marks[4] + 40], "cut inside a payload")
    for name, pos in (
        ("header JSON", 40),
        ("record header", marks[2] + 9),
        ("payload", marks[3] + 100),
        ("END", len(stream) - 5),
    ):
        flipped = bytearray(stream)
        flipped[pos] ^= 0x04
        refused(bytes(flipped), f"bit flip in {name}")
    # spliced: this stream's header and first records, the other's from there on
    refused(stream[: marks[4]] + other[boundaries(other)[4] :], "spliced")
    assert sha256_of(base_dev) == base_sum  # BASE never changed

    res = tool("lvpatch", "-g", dst.name, "-l", "base", stdin=stream)
    assert res.returncode == 0, res.stderr.decode()
    assert committed(dst.name, "new")
    with BlockDevice(dst.dev("new")) as d:
        assert hashlib.sha256(d.read(0, SIZE)).digest() == hashlib.sha256(new).digest()
