"""The repository's cryptography: the object envelope, keyed content ids, key files.

Everything the store holds passes through :meth:`Keys.seal` and :meth:`Keys.open`, and
whoever holds the store is assumed hostile (docs/REPOSITORY.md, "Threat model"). The
primitives are the ``cryptography`` package's AES-256-GCM and scrypt and the standard
library's HMAC-SHA256 and SHA-256; nothing here is a primitive of its own.

The envelope of one object (all integers big-endian)::

    offset  size  field
    0       4     magic b"LVRO"
    4       1     version, 1
    5       1     kind: 1 data chunk, 2 index segment, 3 document
    6       1     flags: bit 0 the payload is a zstd frame, bit 1 encrypted; others 0
    7       1     reserved, 0
    8       4     plain_len: the plaintext's length, at most MAX_PLAIN_LEN
    12            unencrypted: the payload, to the end of the object
                  encrypted: a 12-byte random nonce, then AES-256-GCM(enc_key, nonce,
                  payload, aad = bytes 0..11 + the object's name): ciphertext and 16-byte tag

The payload is the plaintext, or a zstd frame of it (with its content size and checksum)
when that is smaller; compression comes before encryption. Binding the name into the
AEAD's associated data means the store cannot swap two objects, or serve one under
another name or kind, without the tag failing. An unencrypted object has no key to bind
anything with: its only protection is the caller's ``expect_id`` (its name is its hash).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import struct
import threading
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .. import exitcodes
from ..errors import LvdiffError, UsageError
from ..stream.records import zstd_frame_extent
from ..stream.text import shown

MAGIC = b"LVRO"
VERSION = 1
HEADER = struct.Struct(">4sBBBBI")  # magic, version, kind, flags, reserved, plain_len
NONCE_LEN = 12  # AES-GCM's native nonce: random, so 2**32 objects per key stay safe
TAG_LEN = 16
KEY_LEN = 32
# Chunks are at most 16 MiB (init's largest chunk size); index segments are 32 KiB and
# manifests a few KiB. Four times the largest chunk leaves room for bigger documents
# while bounding what one hostile object can make open() allocate and decompress.
MAX_PLAIN_LEN = 64 << 20

MODE_NONE = "none"
MODE_AES = "aes-256-gcm"
MODES = (MODE_NONE, MODE_AES)

KEY_FILE_FORMAT = "lvdiff-repository-key"
KEY_FILE_VERSION = 1
PROTECTION_NONE = "none"
PROTECTION_SCRYPT = "scrypt+aes-256-gcm"
# scrypt's cost, recorded in each file so a later version can raise it: 2**15 x 8 takes
# 32 MiB and about 0.1 s, once per command, and makes each passphrase guess cost as much.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_LEN = 16
# A key file is a few hundred bytes; anything much larger is not one, and is not parsed.
MAX_KEY_FILE = 64 * 1024
# What a key file may ask scrypt for: a damaged or hostile file must not make a command
# allocate gigabytes (scrypt needs 128 * n * r bytes) or spin for minutes.
_SCRYPT_MAX_MEMORY = 1 << 30
_SCRYPT_MAX_P = 16

_KEY_CHECK_CONTEXT = b"lvdiff repository key check\0"
_REPOSITORY_ID = re.compile(r"[0-9a-f]{32}")


class Kind(IntEnum):
    """What an object holds; stored in its header and bound into its tag."""

    CHUNK = 1
    INDEX = 2
    DOCUMENT = 3


class Flag(IntFlag):
    """The envelope's flags byte."""

    ZSTD = 1
    ENCRYPTED = 2


_KNOWN_FLAGS = int(Flag.ZSTD | Flag.ENCRYPTED)  # an int: ~ of an IntFlag drops unknown bits


class DamagedObject(LvdiffError):
    """An object failed a check: altered, truncated, damaged, misnamed, or not ours.

    The message is one line naming the object; ``object_name`` is its name in the store.
    """

    exit_code = exitcodes.BAD_STREAM

    def __init__(self, message: str, object_name: bytes | None = None) -> None:
        super().__init__(message)
        self.object_name = object_name


class UnsupportedObject(DamagedObject):
    """An object of a newer envelope version than this lvdiff reads.

    A subclass of DamagedObject because, until it is authenticated, a newer version
    byte is just as likely a damaged one; either way nothing of it is used.
    """


class WrongKey(UsageError):
    """A key, key file or passphrase that does not open this repository."""


def _show_name(name: bytes) -> str:
    return shown(name.decode("utf-8", "backslashreplace"), limit=120)


def _kind_name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return str(kind)


def _damaged(name: bytes, problem: str) -> DamagedObject:
    return DamagedObject(f"repository object {_show_name(name)} {problem}", name)


_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # Not thread-safe, and dearer to make than a small object is to compress:
    # one per thread and level, as stream.records keeps them.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_tls, "compressors", None)
    if cache is None:
        cache = _tls.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        # The content size lets open() check the frame's declared size before a byte is
        # decoded; the checksum checks the output even where no AEAD does.
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_tls, "decompressor", None)
    if dctx is None:
        dctx = _tls.decompressor = zstandard.ZstdDecompressor()
    return dctx


def _check_frame(name: bytes, frame: bytes | memoryview, plain_len: int) -> None:
    """The zstd frame is all of ``frame`` and declares ``plain_len`` bytes (or nothing)."""
    try:
        extent = zstd_frame_extent(frame, plain_len)
    except ValueError as e:
        raise _damaged(name, f"has a bad zstd frame: {e}") from None
    if extent != len(frame):
        raise _damaged(name, f"has {len(frame) - extent} bytes after its zstd frame")


def _decompress(name: bytes, frame: bytes | memoryview, plain_len: int) -> bytes:
    """Exactly ``plain_len`` bytes from the zstd frame that must be all of ``frame``.

    The frame's extent and declared size are checked first, without decoding: the
    decoder sizes its output by the declared size, so a frame declaring more than
    ``plain_len`` (a decompression bomb) must never reach it. A frame declaring
    nothing is decoded into at most ``plain_len + 1`` bytes, so one that expands
    further fails there instead of filling memory.
    """
    _check_frame(name, frame, plain_len)
    try:
        out = _decompressor().decompress(frame, max_output_size=plain_len + 1)
    except zstandard.ZstdError as e:
        raise _damaged(name, f"has a zstd frame that does not decode: {e}") from None
    if len(out) != plain_len:
        raise _damaged(name, f"decompresses to {len(out)} bytes, its header says {plain_len}")
    return out


@dataclass(frozen=True)
class Keys:
    """A repository's identity and keys: what a key file holds.

    ``enc_key`` encrypts objects (AES-256-GCM); ``id_key`` names chunks (HMAC-SHA256).
    Two keys rather than one, so that a chunk's name reveals nothing that could help
    with its ciphertext. Both are empty for an unencrypted repository. The keys are
    kept out of ``repr`` so a traceback or a log line never shows them.
    """

    repository_id: str
    mode: str
    enc_key: bytes = field(repr=False)
    id_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.repository_id, str) or not _REPOSITORY_ID.fullmatch(
            self.repository_id
        ):
            raise ValueError(f"repository id must be 32 hex digits, not {self.repository_id!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        want = KEY_LEN if self.mode == MODE_AES else 0
        for label, key in (("enc_key", self.enc_key), ("id_key", self.id_key)):
            if not isinstance(key, bytes) or len(key) != want:
                raise ValueError(f"{label} must be {want} bytes for mode {self.mode}")

    @property
    def encrypted(self) -> bool:
        return self.mode == MODE_AES

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        """The 32-byte id of a content: its name in the store.

        HMAC-SHA256 under ``id_key`` when encrypted, so the store, lacking the key,
        cannot confirm a guess of what a chunk holds by hashing the guess; plain
        SHA-256 otherwise (what ``sha256sum`` prints for the chunk). Both hash a
        memoryview in place, and OpenSSL runs without the GIL for large inputs, so
        worker threads hash in parallel.
        """
        if self.id_key:
            return hmac.digest(self.id_key, plaintext, "sha256")
        return hashlib.sha256(plaintext).digest()

    def seal(
        self,
        kind: int,
        name: bytes,
        plaintext: bytes | memoryview,
        compress_level: int | None = 3,
    ) -> bytes:
        """The object as stored under ``name`` (see the module's docstring for the layout).

        Compressed with zstd at ``compress_level`` (None: never) when that makes it
        smaller, so incompressible chunks cost no decompression on restore; then
        encrypted, with the header and ``name`` authenticated alongside, when the
        repository is. Thread-safe.
        """
        kind = Kind(kind)
        view = memoryview(plaintext).cast("B")
        plain_len = view.nbytes
        if plain_len > MAX_PLAIN_LEN:
            # A caller's bug: fail when storing, not years later when restoring.
            raise ValueError(f"object of {plain_len} bytes exceeds {MAX_PLAIN_LEN}")
        payload: bytes | memoryview = view
        flags = Flag(0)
        if compress_level is not None:
            packed = _compressor(compress_level).compress(view)
            if len(packed) < plain_len:
                payload, flags = packed, Flag.ZSTD
        if not self.encrypted:
            return b"".join((HEADER.pack(MAGIC, VERSION, kind, flags, 0, plain_len), payload))
        header = HEADER.pack(MAGIC, VERSION, kind, flags | Flag.ENCRYPTED, 0, plain_len)
        nonce = os.urandom(NONCE_LEN)
        sealed = AESGCM(self.enc_key).encrypt(nonce, payload, header + name)
        return b"".join((header, nonce, sealed))

    def open(
        self,
        kind: int,
        name: bytes,
        obj: bytes | memoryview,
        expect_id: bytes | None = None,
    ) -> bytes:
        """The plaintext of an object read from ``name``, after every check; else DamagedObject.

        Checked before anything is returned: the header (magic, a version this lvdiff
        reads, ``kind``, no unknown flag, the repository's encryption, the length cap),
        the AEAD tag over header, name and payload, the zstd frame (its declared size,
        no bytes after it, its checksum, exactly ``plain_len`` bytes out, never more
        decoded than that), and, given ``expect_id``, that the plaintext's
        :meth:`chunk_id` is ``expect_id``. For an unencrypted repository that last check
        is the only one that catches a changed byte of a raw payload, so callers pass
        the id wherever the name is one. Thread-safe.
        """
        payload, flags, plain_len = self._unseal(kind, name, obj)
        if flags & Flag.ZSTD:
            plaintext = _decompress(name, payload, plain_len)
        elif len(payload) != plain_len:
            raise _damaged(name, f"holds {len(payload)} bytes, its header says {plain_len}")
        else:
            plaintext = payload if isinstance(payload, bytes) else bytes(payload)
        if expect_id is not None and not hmac.compare_digest(self.chunk_id(plaintext), expect_id):
            raise _damaged(name, "does not hold the content its id names")
        return plaintext

    def open_frame(
        self, kind: int, name: bytes, obj: bytes | memoryview, expect_id: bytes
    ) -> tuple[bytes | memoryview, bool]:
        """An encrypted object's payload as stored: (its zstd frame, True) or (its
        plaintext, False), after the checks that need no decoding; for a restore, which
        hands the frame on to lvpatch's decoder instead of decoding it twice.

        The AEAD tag already proves the payload is what a key holder sealed under this
        name, and the name is the content's keyed id, so recomputing the id proves
        nothing more against anyone without the key (borg 2 reasons the same way for its
        AEAD modes); ``verify`` still recomputes it. The frame's extent and declared
        size are checked here, and the decoder refuses any other output length and a
        wrong zstd checksum. An unencrypted repository has no tag: its objects go
        through :meth:`open`, every check included.
        """
        if not self.encrypted:
            return self.open(kind, name, obj, expect_id), False
        payload, flags, plain_len = self._unseal(kind, name, obj)
        if not flags & Flag.ZSTD:
            if len(payload) != plain_len:
                raise _damaged(name, f"holds {len(payload)} bytes, its header says {plain_len}")
            return payload, False
        _check_frame(name, payload, plain_len)
        return payload, True

    def _unseal(
        self, kind: int, name: bytes, obj: bytes | memoryview
    ) -> tuple[bytes | memoryview, int, int]:
        """The payload (decrypted and authenticated when encrypted), flags and plain_len,
        after every check of the header."""
        kind = Kind(kind)
        view = memoryview(obj).cast("B")
        if view.nbytes < HEADER.size:
            raise _damaged(name, f"is {view.nbytes} bytes, too short for a header")
        magic, version, found_kind, flags, reserved, plain_len = HEADER.unpack_from(view)
        if magic != MAGIC:
            raise _damaged(name, f"is not a repository object (magic {magic!r})")
        if version != VERSION:
            if version > VERSION:
                raise UnsupportedObject(
                    f"repository object {_show_name(name)} is of envelope version {version},"
                    f" newer than this lvdiff reads ({VERSION}): upgrade lvdiff",
                    name,
                )
            raise _damaged(name, f"has an unknown envelope version {version}")
        if found_kind != kind:
            raise _damaged(name, f"is of kind {_kind_name(found_kind)}, not {kind.name}")
        if flags & ~_KNOWN_FLAGS:
            raise _damaged(name, f"has unknown flags 0x{flags:02x}")
        if reserved:
            raise _damaged(name, f"has a nonzero reserved byte 0x{reserved:02x}")
        if plain_len > MAX_PLAIN_LEN:
            raise _damaged(name, f"declares {plain_len} bytes, more than {MAX_PLAIN_LEN}")
        encrypted = bool(flags & Flag.ENCRYPTED)
        if encrypted != self.encrypted:
            # Refusing an unencrypted object in an encrypted repository stops the store
            # from replacing an object with one of its own making.
            state = "encrypted" if encrypted else "not encrypted"
            raise _damaged(name, f"is {state}, but the repository's mode is {self.mode}")
        payload: bytes | memoryview = view[HEADER.size :]
        if encrypted:
            if payload.nbytes < NONCE_LEN + TAG_LEN:
                raise _damaged(name, f"is {view.nbytes} bytes, too short for a nonce and tag")
            header = bytes(view[: HEADER.size])
            nonce = bytes(payload[:NONCE_LEN])
            try:
                payload = AESGCM(self.enc_key).decrypt(nonce, payload[NONCE_LEN:], header + name)
            except InvalidTag:
                raise _damaged(
                    name,
                    "failed authentication: altered, damaged, or stored under another name",
                ) from None
        return payload, flags, plain_len

    def key_check(self) -> str:
        """A value for the repository's plaintext config, proving a key file is its own.

        Stored at ``init``, checked (:meth:`verify_key_check`) before anything is read or
        written, so a wrong key file is refused at once in one line rather than as a
        damaged first object, or worse, as chunks stored under ids nothing will find.
        HMAC-SHA256 keyed with both keys (so a damaged copy of either is caught) over the
        mode and repository id; the keyed hash reveals nothing of the keys. An
        unencrypted repository's (empty key) checks only its mode and id.
        """
        message = b"%s%s\0%s" % (
            _KEY_CHECK_CONTEXT,
            self.mode.encode(),
            self.repository_id.encode(),
        )
        return hmac.digest(self.enc_key + self.id_key, message, "sha256").hex()

    def verify_key_check(self, value: str) -> None:
        """Raise WrongKey unless ``value`` (the config's key check) is this key's."""
        if not hmac.compare_digest(self.key_check().encode(), str(value).encode()):
            raise WrongKey(
                f"the key of repository {self.repository_id} does not open this repository"
                " (its key check differs): wrong or damaged key file"
            )


def new_keys(mode: str) -> Keys:
    """Fresh keys for a new repository (``init``): a random UUID4 and, encrypted, two keys.

    The keys come from os.urandom, the kernel's CSPRNG, which is what the ``cryptography``
    package itself recommends for keys and nonces.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    size = KEY_LEN if mode == MODE_AES else 0
    return Keys(uuid.uuid4().hex, mode, os.urandom(size), os.urandom(size))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _canonical(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _kek(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_LEN, n=n, r=r, p=p).derive(passphrase)


def dump_key_file(keys: Keys, passphrase: bytes | None) -> bytes:
    """A key file for ``keys``: one UTF-8 JSON object (``init`` and ``key export``).

    Fields: ``format`` ("lvdiff-repository-key"), ``version`` (1), ``repository``,
    ``mode``, ``protection``. Without a passphrase (protection "none") ``enc_key`` and
    ``id_key`` follow in base64: anyone who reads the file can read the repository, so
    keep it as a private ssh key is kept (mode 0600, owned by root, never in the store).
    With one ("scrypt+aes-256-gcm"): ``kdf`` (``name`` "scrypt", ``n``, ``r``, ``p``,
    ``salt``), ``nonce``, and ``sealed``: AES-256-GCM under scrypt(passphrase) of
    enc_key + id_key, with every other field (canonical JSON) as associated data, so
    none of them can be edited unnoticed.
    """
    if not keys.encrypted:
        raise ValueError("an unencrypted repository has no keys to keep in a key file")
    doc: dict[str, object] = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "repository": keys.repository_id,
        "mode": keys.mode,
    }
    if passphrase is None:
        doc |= {
            "protection": PROTECTION_NONE,
            "enc_key": _b64(keys.enc_key),
            "id_key": _b64(keys.id_key),
        }
    else:
        if not passphrase:
            raise UsageError("an empty passphrase protects nothing: give one, or none")
        salt = os.urandom(SALT_LEN)
        doc |= {
            "protection": PROTECTION_SCRYPT,
            "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                    "salt": _b64(salt)},
        }  # fmt: skip
        nonce = os.urandom(NONCE_LEN)
        kek = _kek(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        sealed = AESGCM(kek).encrypt(nonce, keys.enc_key + keys.id_key, _canonical(doc))
        doc |= {"nonce": _b64(nonce), "sealed": _b64(sealed)}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _parse_key_file(data: bytes, source: str) -> dict[str, object]:
    """The key file's JSON, checked for format, version and exactly its fields."""

    def bad(problem: str) -> UsageError:
        return UsageError(f"{source} {problem}")

    if len(data) > MAX_KEY_FILE:
        raise bad(f"is {len(data)} bytes: not an lvdiff repository key file")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
        raise bad("is not an lvdiff repository key file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
        raise bad("is not an lvdiff repository key file")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise bad(f"has an invalid version {shown(version)}")
    if version > KEY_FILE_VERSION:
        raise bad(
            f"is of key file version {version}, newer than this lvdiff reads"
            f" ({KEY_FILE_VERSION}): upgrade lvdiff"
        )
    protection = doc.get("protection")
    if protection == PROTECTION_NONE:
        fields = {"enc_key", "id_key"}
    elif protection == PROTECTION_SCRYPT:
        fields = {"kdf", "nonce", "sealed"}
    else:
        raise bad(f"has an unknown protection {shown(protection)}")
    expected = {"format", "version", "repository", "mode", "protection"} | fields
    if set(doc) != expected:
        odd = sorted(set(doc) ^ expected)
        raise bad(f"is damaged: unexpected or missing fields {', '.join(map(shown, odd))}")
    if doc["mode"] != MODE_AES:
        raise bad(f"has an unknown mode {shown(doc['mode'])}")
    repository = doc["repository"]
    if not isinstance(repository, str) or not _REPOSITORY_ID.fullmatch(repository):
        raise bad(f"has an invalid repository id {shown(repository)}")
    return doc


def _b64_field(doc: dict[str, object], key: str, size: int | None, source: str) -> bytes:
    value = doc[key]
    try:
        if not isinstance(value, str):
            raise ValueError
        raw = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error is one
        raise UsageError(f"{source} is damaged: {key} is not base64") from None
    if size is not None and len(raw) != size:
        raise UsageError(f"{source} is damaged: {key} is {len(raw)} bytes, not {size}")
    return raw


def key_file_needs_passphrase(data: bytes, source: str = "key file") -> bool:
    """Whether the key file is passphrase-protected: whether to ask for one at all."""
    return _parse_key_file(data, source)["protection"] == PROTECTION_SCRYPT


def load_key_file(data: bytes, passphrase: bytes | None, source: str = "key file") -> Keys:
    """The keys a key file holds (:func:`dump_key_file`'s inverse).

    ``source`` names the file in messages. A wrong passphrase, or an edited field of a
    protected file (indistinguishable to AES-GCM), raises WrongKey; a file that is not a
    key file, is damaged, is newer, or is protected while no passphrase is given raises
    UsageError, each in one line. A passphrase given for an unprotected file is not
    needed and is ignored. An unprotected file's keys are not authenticated by the file
    itself: :meth:`Keys.verify_key_check` against the repository's config catches an
    altered one.
    """
    doc = _parse_key_file(data, source)
    repository, mode = str(doc["repository"]), str(doc["mode"])
    if doc["protection"] == PROTECTION_NONE:
        enc_key = _b64_field(doc, "enc_key", KEY_LEN, source)
        id_key = _b64_field(doc, "id_key", KEY_LEN, source)
        return Keys(repository, mode, enc_key, id_key)
    if passphrase is None:
        raise UsageError(f"{source} is protected by a passphrase, and none was given")
    kdf = doc["kdf"]
    if not isinstance(kdf, dict) or set(kdf) != {"name", "n", "r", "p", "salt"}:
        raise UsageError(f"{source} is damaged: kdf is not scrypt's n, r, p and salt")
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    if kdf["name"] != "scrypt" or not all(type(v) is int and v >= 1 for v in (n, r, p)):
        raise UsageError(f"{source} is damaged: kdf is not scrypt with positive n, r and p")
    if n < 2 or n & (n - 1) or 128 * n * r > _SCRYPT_MAX_MEMORY or p > _SCRYPT_MAX_P:
        raise UsageError(
            f"{source} asks scrypt for n={n}, r={r}, p={p}: n must be a power of two,"
            f" 128*n*r at most {_SCRYPT_MAX_MEMORY} bytes and p at most {_SCRYPT_MAX_P}"
        )
    salt = _b64_field(kdf, "salt", None, source)
    if not SALT_LEN <= len(salt) <= 64:
        raise UsageError(f"{source} is damaged: its salt is {len(salt)} bytes")
    nonce = _b64_field(doc, "nonce", NONCE_LEN, source)
    sealed = _b64_field(doc, "sealed", 2 * KEY_LEN + TAG_LEN, source)
    fixed = {k: v for k, v in doc.items() if k not in ("nonce", "sealed")}
    try:
        keys = AESGCM(_kek(passphrase, salt, n, r, p)).decrypt(nonce, sealed, _canonical(fixed))
    except InvalidTag:
        raise WrongKey(f"wrong passphrase for {source} (or the file was altered)") from None
    return Keys(repository, mode, keys[:KEY_LEN], keys[KEY_LEN:])


def read_key_file(path: Path, passphrase: bytes | None) -> Keys:
    """:func:`load_key_file` of the file at ``path``, named in every message."""
    with open(path, "rb") as f:
        data = f.read(MAX_KEY_FILE + 1)
    return load_key_file(data, passphrase, f"key file {path}")


def write_key_file(path: Path, data: bytes) -> None:
    """Create the key file ``path`` holding ``data``: mode 0600, durable, never over another.

    Exclusive creation (O_EXCL, which also refuses a symlink at ``path``): losing a
    repository's key loses the repository, so an existing key file is refused with a
    UsageError rather than replaced. The file and its directory are fsynced before this
    returns, so a crash right after ``init`` cannot leave a repository without its key.
    A failed write removes the partial file.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(
            f"key file {path} already exists: lvdiff never overwrites a key file"
        ) from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask left
        view = memoryview(data)
        while view.nbytes:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    dir_fd = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
