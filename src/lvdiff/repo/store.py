"""Where a repository's objects live: a small interface, and a directory behind it.

Object storage is the target (S3 next), so the interface is what S3 does
well and nothing more: whole objects put, got, listed and deleted by name;
"create if absent" for the one write that must not race (a point's commit);
no rename, no append, no partial rewrite.  An object is never changed once
written: a name stands for one content (a chunk's name is its keyed hash), so
putting it again can only put the same bytes.

The directory backend writes each object under a temporary name and renames
it into place (a reader never sees half an object); :meth:`Store.flush` makes
everything put so far durable with one ``syncfs`` before a point is
committed, instead of an fsync per chunk.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import LvdiffError, UsageError

_TEMP = ".tmp-"  # temporary names: <name>.tmp-<pid>-<random>; never listed, cleaned by gc


class MissingObject(LvdiffError):
    """An object a point needs is not in the store (deleted, or never written)."""

    def __init__(self, name: str, where: str) -> None:
        self.name = name
        super().__init__(f"{where} has no object {name}: the repository lost data it needs")


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    mtime: float  # seconds since the epoch: when it was (last) put


class Store(Protocol):
    label: str  # for people

    def get(self, name: str) -> bytes: ...
    def put(self, name: str, data: bytes | memoryview, exclusive: bool = False) -> bool:
        """Store ``data`` as ``name``; ``exclusive``: only if absent (False if it was there)."""
        ...

    def exists(self, name: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[StoredObject]: ...
    def delete(self, name: str) -> None: ...
    def flush(self) -> None:
        """Make everything put so far durable."""
        ...

    def cleanup(self, older_than: float) -> int:
        """Remove what killed writers left half-written, older than ``older_than`` seconds
        (temporary files; an S3 store's incomplete multipart uploads); how many."""
        ...


class DirStore:
    """A repository in a directory (a local disk, NFS, a mounted NAS share)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"dir:{path}"
        self._made: set[Path] = set()

    def _file(self, name: str) -> Path:
        if not name or name.startswith("/") or ".." in name.split("/") or _TEMP in name:
            raise ValueError(f"not an object name: {name!r}")
        return self.path / name

    def get(self, name: str) -> bytes:
        try:
            return self._file(name).read_bytes()
        except FileNotFoundError:
            raise MissingObject(name, self.label) from None

    def put(self, name: str, data: bytes | memoryview, exclusive: bool = False) -> bool:
        final = self._file(name)
        folder = final.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        tmp = folder / f"{final.name}{_TEMP}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                if exclusive:  # a commit: durable before it is visible
                    f.flush()
                    os.fsync(f.fileno())
            if exclusive:
                try:
                    os.link(tmp, final)  # fails rather than replace
                except FileExistsError:
                    return False
                _sync_dir(folder)
            else:
                os.replace(tmp, final)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return self._file(name).exists()

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose name starts with ``prefix`` (a folder, ending in '/')."""
        top = self.path / prefix
        for folder, _dirs, files in os.walk(top):
            for f in files:
                if _TEMP in f:
                    continue
                p = Path(folder) / f
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # deleted meanwhile
                yield StoredObject(p.relative_to(self.path).as_posix(), st.st_size, st.st_mtime)

    def delete(self, name: str) -> None:
        self._file(name).unlink(missing_ok=True)

    def flush(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc_syncfs(fd) != 0:  # not there (a very old libc): everything then
                os.sync()
        finally:
            os.close(fd)

    def cleanup(self, older_than: float) -> int:
        """Temporary files a killed writer left, older than ``older_than`` seconds, removed."""
        cutoff = time.time() - older_than
        done = 0
        for folder, _dirs, files in os.walk(self.path):
            for f in files:
                p = Path(folder) / f
                try:
                    if _TEMP in f and p.stat().st_mtime < cutoff:
                        p.unlink()
                        done += 1
                except FileNotFoundError:
                    continue
        return done


def open_dir(path: Path, create: bool = False) -> DirStore:
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot make {path}: {e.strerror}") from None
    elif not path.is_dir():
        raise UsageError(f"{path} is not a directory")
    return DirStore(path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_syncfs(fd: int) -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syncfs(fd))
    except (OSError, AttributeError):
        return -errno.ENOSYS
