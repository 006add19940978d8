"""Opening a repository: where it is, where its key is, and the key's passphrase.

One place for what ``lvrepo`` and lvsync's ``dir:`` target both need, so a
repository opens the same way whichever tool opens it.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from ..errors import UsageError
from .crypto import Keys, key_file_needs_passphrase, load_key_file
from .format import Config
from .repository import Repository
from .store import Store, open_dir

KEY_DIR = Path(os.environ.get("LVDIFF_KEY_DIR", "/etc/lvdiff/keys"))


def is_s3(spec: str) -> bool:
    return spec.startswith(("s3://", "s3+https://", "s3+http://"))


def store_for(spec: str, create: bool = False) -> Store:
    """``dir:/path`` or ``/path``, ``s3://BUCKET/PREFIX`` or ``s3+https://HOST/BUCKET/PREFIX``."""
    if is_s3(spec):
        from .s3 import S3Store, parse_location

        return S3Store(parse_location(spec))
    path = spec.removeprefix("dir:")
    if not path:
        raise UsageError("give the repository: dir:/path or s3://BUCKET/PREFIX")
    return open_dir(Path(path), create=create)


def key_path(repository_id: str, given: Path | None = None) -> Path:
    """The key file: as given, else LVDIFF_REPO_KEY, else KEY_DIR/<repository id>.key."""
    env = os.environ.get("LVDIFF_REPO_KEY")
    return given or (Path(env) if env else KEY_DIR / f"{repository_id}.key")


def passphrase(path: Path | None, ask: bool = True) -> bytes | None:
    """From a file, LVDIFF_REPO_PASSPHRASE, or (at a terminal, if ``ask``) asked for."""
    if path is not None:
        try:
            return path.read_bytes().rstrip(b"\n")
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
    env = os.environ.get("LVDIFF_REPO_PASSPHRASE")
    if env is not None:
        return env.encode()
    if not ask or not sys.stdin.isatty():
        return None
    return getpass.getpass("passphrase of the repository's key file: ").encode()


def open_repository(
    spec: str, key_file: Path | None = None, passphrase_file: Path | None = None
) -> Repository:
    """The repository ``spec`` names, opened with its key; a wrong key is one line, exit 2."""

    def keys_for(config: Config) -> Keys:
        if config.encryption == "none":
            return Keys(config.id, "none", b"", b"")
        path = key_path(config.id, key_file)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(
                f"{spec} is encrypted; its key file {path} cannot be read ({e.strerror}): "
                "give it with --key-file"
            ) from None
        protected = key_file_needs_passphrase(data, f"key file {path}")
        secret = passphrase(passphrase_file) if protected else None
        return load_key_file(data, secret, f"key file {path}")

    return Repository.open(store_for(spec), keys_for)
