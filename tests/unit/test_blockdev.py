"""BlockDevice's direct writes: what reaches the file is what was written, in order."""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lvdiff.blockdev import BlockDevice, DeviceError
from lvdiff.directio import ALIGN as DIRECT_ALIGN

M = 1 << 20


def test_direct_and_cached_writes_to_the_same_pages_land_in_order(tmp_path):
    path = tmp_path / "image"
    path.write_bytes(bytes(8 * M))
    a, b, c = os.urandom(6 * M), os.urandom(100), os.urandom(DIRECT_ALIGN)
    with BlockDevice(str(path), writable=True, direct_writes=True) as dev:
        if dev._direct is None:
            pytest.skip(f"{tmp_path} takes no O_DIRECT")
        dev.write(4096 + 100, b)  # cached: a dirty page the direct write below covers
        dev.write(0, a)  # direct, larger than the staging buffer
        assert dev.read(0, len(a)) == a  # the cached page was not written back over it
        dev.write(8192 + 7, b)  # cached, inside what was written direct
        dev.write(7 * M, memoryview(c))  # direct again
        dev.sync()
    want = bytearray(8 * M)
    want[: len(a)] = a
    want[8192 + 7 : 8192 + 7 + len(b)] = b
    want[7 * M : 7 * M + len(c)] = c
    assert path.read_bytes() == want


def test_unaligned_writes_take_the_cache(tmp_path):
    path = tmp_path / "image"
    path.write_bytes(bytes(M))
    data = os.urandom(DIRECT_ALIGN)
    with BlockDevice(str(path), writable=True, direct_writes=True) as dev:
        dev.write(512, data)  # aligned length, unaligned offset
        dev.write(DIRECT_ALIGN * 3, data[:1000])  # aligned offset, unaligned length
    want = bytearray(M)
    want[512 : 512 + len(data)] = data
    want[DIRECT_ALIGN * 3 : DIRECT_ALIGN * 3 + 1000] = data[:1000]
    assert path.read_bytes() == want


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` fail with EFBIG, on any file system (RLIMIT_FSIZE)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_direct_write_fails_every_later_call(tmp_path):
    path = tmp_path / "image"
    path.write_bytes(bytes(M))
    past = 256 * M
    with (
        BlockDevice(str(path), writable=True, direct_writes=True) as dev,
        file_size_limit(128 * M),
    ):
        if dev._direct is None:
            pytest.skip(f"{tmp_path} takes no O_DIRECT")
        dev.write(0, os.urandom(M))  # queued for the I/O thread, like every direct write
        dev.write(past, os.urandom(M))  # fails in the I/O thread, with EFBIG
        for _ in range(2):  # reported, and reported again: nothing is durable after it
            with pytest.raises(DeviceError, match=f"write error on {path} at byte {past}"):
                dev.sync()
        with pytest.raises(DeviceError):
            dev.read(0, 4096)


def test_writes_o_direct_refuses_go_through_the_cache(tmp_path, monkeypatch):
    # An alignment no file system takes stands for one coarser than ours.
    monkeypatch.setattr("lvdiff.directio.ALIGN", 4)
    path = tmp_path / "image"
    path.write_bytes(bytes(M))
    data = os.urandom(2 * DIRECT_ALIGN)
    with BlockDevice(str(path), writable=True, direct_writes=True) as dev:
        if dev._direct is None:
            pytest.skip(f"{tmp_path} takes no O_DIRECT")
        dev.write(100, data)  # EINVAL from O_DIRECT, then written through the cache
        dev.write(3 * DIRECT_ALIGN, data)
        dev.sync()
        assert dev._direct.refused
    want = bytearray(M)
    want[100 : 100 + len(data)] = data
    want[3 * DIRECT_ALIGN : 3 * DIRECT_ALIGN + len(data)] = data
    assert path.read_bytes() == want
