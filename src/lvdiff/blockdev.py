"""Block-device I/O: exact reads and writes, size, discard, cache control.

Thin wrappers over os/fcntl calls, kept together so the engines above deal in
offsets and bytes only.  pread/pwrite release the GIL, so worker threads can
read while another thread compresses or writes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .directio import DirectWriter, WriteFailed
from .errors import LvdiffError

BLKGETSIZE64 = 0x80081272
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F


class DeviceError(LvdiffError):
    """An I/O error on a volume, reported with the device and offset."""


class NoSpace(DeviceError):
    """The target ran out of space (a full thin pool fails writes with ENOSPC)."""


def _io_error(e: OSError, what: str, path: str, offset: int) -> DeviceError:
    cls = NoSpace if e.errno == errno.ENOSPC else DeviceError
    return cls(f"{what} {path} at byte {offset}: {os.strerror(e.errno or 0)}")


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range of a regular file (it then reads as zeros); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return fallocate(fd, mode, offset, length) == 0


class BlockDevice:
    """An open block device (or, for tests and --in-place, a regular file).

    ``direct_writes``: aligned writes bypass the page cache (see directio),
    a few in flight at once; every other call first waits for them, so reads,
    discards and flushes see them done.  The rest goes through the cache;
    Linux keeps the two coherent (a direct write flushes and invalidates the
    cached pages it covers).
    """

    def __init__(
        self,
        path: str,
        writable: bool = False,
        exclusive: bool = False,
        direct_writes: bool = False,
    ) -> None:
        self.path = path
        flags = os.O_RDWR if writable else os.O_RDONLY
        if exclusive:
            # On a block device O_EXCL fails with EBUSY while it is mounted or
            # claimed by device-mapper: we never write under a live filesystem.
            flags |= os.O_EXCL
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise DeviceError(f"{path} is in use (mounted or held open exclusively)") from None
            raise DeviceError(f"cannot open {path}: {e.strerror}") from None
        self._sync_failed: str | None = None
        st = os.fstat(self.fd)
        self.is_block = stat.S_ISBLK(st.st_mode)
        self.rdev = st.st_rdev if self.is_block else None
        if self.is_block:
            buf = fcntl.ioctl(self.fd, BLKGETSIZE64, b"\0" * 8)
            self.size = struct.unpack("Q", buf)[0]
        else:
            self.size = st.st_size
        self._direct = DirectWriter.open(path, self.fd) if writable and direct_writes else None

    def close(self) -> None:
        if self._direct:
            self._direct.close()
            self._direct = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BlockDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes; a short read inside the device is an error."""
        self._settle()
        try:
            data = os.pread(self.fd, length, offset)
            if len(data) == length:
                return data
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(self.fd, length - got, offset + got)
                if not more:
                    raise DeviceError(f"{self.path}: unexpected end at byte {offset + got}")
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        except OSError as e:
            raise _io_error(e, "read error on", self.path, offset) from None

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset``; a short read inside the device is an error.

        Reading into a buffer the caller reuses saves a fresh allocation per
        read, and with it a page fault per 4 KiB of data.
        """
        self._settle()
        done, length = 0, buf.nbytes
        try:
            while done < length:
                got = os.preadv(self.fd, [buf[done:]], offset + done)
                if not got:
                    raise DeviceError(f"{self.path}: unexpected end at byte {offset + done}")
                done += got
        except OSError as e:
            raise _io_error(e, "read error on", self.path, offset + done) from None

    def read_once(self, offset: int, length: int) -> bytes:
        """Read, then drop the pages: a backup must not evict a server's working set."""
        data = self.read(offset, length)
        self.drop_cache(offset, length)
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._direct and self._direct.takes(offset, len(view)):
            with self._direct_errors():
                self._direct.write(offset, view)
            return
        self._settle()
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as e:
            raise _io_error(e, "write error on", self.path, offset + done) from None

    def _settle(self) -> None:
        """Wait for direct writes in flight; raise (every time) if one failed."""
        if self._direct:
            with self._direct_errors():
                self._direct.settle()

    @contextmanager
    def _direct_errors(self) -> Iterator[None]:
        """A direct write that failed, even one queued earlier, as the error at its offset."""
        try:
            yield
        except WriteFailed as e:
            raise _io_error(e.error, "write error on", self.path, e.offset) from None

    def discard(self, offset: int, length: int) -> None:
        self._settle()
        try:
            fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("QQ", offset, length))
        except OSError as e:
            raise _io_error(e, "discard failed on", self.path, offset) from None

    def zeroout(self, offset: int, length: int) -> None:
        """Make a range read as zeros on a device that is not thin (BLKZEROOUT).

        A regular file gets zeros written, a slice at a time.
        """
        self._settle()
        if not self.is_block:
            if _punch_hole(self.fd, offset, length):
                return
            zeros = memoryview(bytes(min(length, 4 << 20)))
            end = offset + length
            while offset < end:
                n = min(len(zeros), end - offset)
                self.write(offset, zeros[:n])
                offset += n
            return
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        except OSError as e:
            raise _io_error(e, "zeroing failed on", self.path, offset) from None

    def sync(self) -> None:
        """Flush what was written; once a flush failed, every later one fails too.

        Linux reports a write-back error to each open file once, and the pages
        that failed are no longer dirty: a second fsync returns 0 although the
        data never reached the disk.  A caller that retried (or recorded a
        durable point after "succeeding") would believe lost data was safe.
        """
        self._settle()
        if self._sync_failed:
            raise DeviceError(f"an earlier flush of {self.path} failed: {self._sync_failed}")
        try:
            os.fsync(self.fd)
        except OSError as e:
            err = _io_error(e, "flush failed on", self.path, 0)
            self._sync_failed = str(err)
            raise err from None

    def drop_cache(self, offset: int = 0, length: int = 0) -> None:
        """Forget cached pages (all by default).

        After writing, so verification reads what reached the device; after a
        one-pass read, so a backup does not evict a server's working set.
        """
        self._settle()
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)

    def _queue_attr(self, name: str) -> int:
        if self.rdev is None:
            return 0
        p = Path(f"/sys/dev/block/{os.major(self.rdev)}:{os.minor(self.rdev)}/queue/{name}")
        try:
            return int(p.read_text().strip())
        except (OSError, ValueError):
            return 0

    @property
    def discard_max_bytes(self) -> int:
        """0 when the device does not take discards (e.g. a pool with discards=ignore)."""
        return self._queue_attr("discard_max_bytes")
