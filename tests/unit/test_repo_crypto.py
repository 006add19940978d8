"""The repository's envelope, ids and key files (lvdiff.repo.crypto) against a hostile store.

Whoever holds the store may change any byte of any object, rename objects, or hand back
one object for another; each test here makes one such change and requires a refusal.
Key files are exercised with real scrypt (n=2**15, about 0.1 s a derivation).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import struct

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lvdiff import exitcodes
from lvdiff.errors import UsageError
from lvdiff.repo.crypto import (
    HEADER,
    MAGIC,
    MAX_PLAIN_LEN,
    MODE_AES,
    MODE_NONE,
    NONCE_LEN,
    TAG_LEN,
    DamagedObject,
    Flag,
    Keys,
    Kind,
    UnsupportedObject,
    WrongKey,
    dump_key_file,
    key_file_needs_passphrase,
    load_key_file,
    new_keys,
    read_key_file,
    write_key_file,
)

NAME = b"data/abc/" + b"ab" * 32
TEXT = bytes(random.Random(1).choice(b"abcdefghij klmnop\n") for _ in range(200_000))
RANDOM = random.Random(2).randbytes(200_000)
PASS = b"correct horse battery staple"


@pytest.fixture(scope="module")
def aes() -> Keys:
    return new_keys(MODE_AES)


@pytest.fixture(scope="module")
def plain() -> Keys:
    return new_keys(MODE_NONE)


@pytest.fixture(scope="module")
def protected(aes: Keys) -> bytes:
    return dump_key_file(aes, PASS)


def header_of(obj: bytes) -> tuple:
    return HEADER.unpack_from(obj)


def unencrypted(kind: int, flags: int, plain_len: int, payload: bytes, version: int = 1) -> bytes:
    """An unencrypted object made by hand, as a hostile store (or a bug) could make one."""
    return HEADER.pack(MAGIC, version, kind, flags, 0, plain_len) + payload


def encrypted(keys: Keys, name: bytes, kind: int, flags: int, plain_len: int, payload: bytes):
    """An encrypted object made by hand with the key: a buggy or hostile key holder's."""
    header = HEADER.pack(MAGIC, 1, kind, flags | Flag.ENCRYPTED, 0, plain_len)
    nonce = os.urandom(NONCE_LEN)
    return header + nonce + AESGCM(keys.enc_key).encrypt(nonce, payload, header + name)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [MODE_NONE, MODE_AES])
@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("content", ["text", "random", "empty"])
@pytest.mark.parametrize("level", [3, None])
def test_round_trip(mode: str, kind: Kind, content: str, level: int | None) -> None:
    keys = new_keys(mode)
    data = {"text": TEXT, "random": RANDOM, "empty": b""}[content]
    obj = keys.seal(kind, NAME, memoryview(data), level)
    magic, version, found_kind, flags, reserved, plain_len = header_of(obj)
    assert (magic, version, found_kind, reserved, plain_len) == (MAGIC, 1, kind, 0, len(data))
    assert bool(flags & Flag.ENCRYPTED) == (mode == MODE_AES)
    # compressed exactly when asked and smaller
    assert bool(flags & Flag.ZSTD) == (content == "text" and level is not None)
    if content == "text" and level is not None:
        assert len(obj) < len(data) // 2
    if mode == MODE_NONE and not flags & Flag.ZSTD:
        assert obj[HEADER.size :] == data  # the payload is the plaintext itself
    if mode == MODE_AES:
        assert data[:64] not in obj or not data
    opened = keys.open(kind, NAME, obj, keys.chunk_id(data))
    assert opened == data and isinstance(opened, bytes)
    assert keys.open(kind, NAME, memoryview(obj)) == data


def test_encryption_uses_a_fresh_nonce_each_time(aes: Keys) -> None:
    one, two = aes.seal(Kind.CHUNK, NAME, TEXT), aes.seal(Kind.CHUNK, NAME, TEXT)
    assert one[HEADER.size : HEADER.size + NONCE_LEN] != two[HEADER.size : HEADER.size + NONCE_LEN]
    assert one != two
    assert aes.open(Kind.CHUNK, NAME, one) == aes.open(Kind.CHUNK, NAME, two) == TEXT


def test_seal_refuses_more_than_the_cap(plain: Keys) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        plain.seal(Kind.CHUNK, NAME, bytes(MAX_PLAIN_LEN + 1))


# --- ids ---------------------------------------------------------------------------------


def test_ids_are_keyed_when_encrypted_and_sha256_when_not() -> None:
    a, b = new_keys(MODE_AES), new_keys(MODE_AES)
    sha = hashlib.sha256(TEXT).digest()
    assert len(a.chunk_id(TEXT)) == 32
    assert a.chunk_id(TEXT) != b.chunk_id(TEXT)
    assert sha not in (a.chunk_id(TEXT), b.chunk_id(TEXT))
    assert a.chunk_id(TEXT) == a.chunk_id(memoryview(TEXT)) == a.chunk_id(bytearray(TEXT))
    assert a.chunk_id(TEXT) != a.chunk_id(TEXT[:-1])
    p, q = new_keys(MODE_NONE), new_keys(MODE_NONE)
    assert p.chunk_id(TEXT) == q.chunk_id(memoryview(TEXT)) == sha


# --- a hostile store ---------------------------------------------------------------------


def flips(obj: bytes):
    for i in range(len(obj)):
        for bit in range(8):
            damaged = bytearray(obj)
            damaged[i] ^= 1 << bit
            yield i, bit, bytes(damaged)


@pytest.mark.parametrize("data", [b"hello, repository " * 4, bytes(range(40))])
def test_every_single_bit_flip_of_an_encrypted_object_is_refused(aes: Keys, data: bytes) -> None:
    obj = aes.seal(Kind.DOCUMENT, NAME, data)
    assert aes.open(Kind.DOCUMENT, NAME, obj) == data
    for i, bit, damaged in flips(obj):  # header, nonce, ciphertext and tag
        with pytest.raises(DamagedObject, match="repository object"):
            aes.open(Kind.DOCUMENT, NAME, damaged)
            pytest.fail(f"bit {bit} of byte {i} flipped went unnoticed")


@pytest.mark.parametrize("data", [b"hello, repository " * 4, bytes(range(40))])
def test_every_single_bit_flip_of_an_unencrypted_object_is_refused_by_its_id(
    plain: Keys, data: bytes
) -> None:
    obj = plain.seal(Kind.CHUNK, NAME, data)
    compressed = bool(header_of(obj)[3] & Flag.ZSTD)
    assert compressed == (data[0] == ord("h"))  # one of each
    harmless = []
    for i, bit, damaged in flips(obj):
        try:
            opened = plain.open(Kind.CHUNK, NAME, damaged, plain.chunk_id(data))
        except DamagedObject:
            continue
        # Without a key nothing stops a bit that changes no content (zstd's unused
        # frame-header bit); what open() returns must still be exactly what was sealed.
        assert opened == data, f"bit {bit} of byte {i} flipped changed the content"
        harmless.append(i)
    assert not harmless or (compressed and set(harmless) <= {HEADER.size + 4}), harmless


def test_a_changed_payload_byte_of_an_unencrypted_object_is_refused_by_its_id(
    plain: Keys,
) -> None:
    obj = bytearray(plain.seal(Kind.CHUNK, NAME, RANDOM))
    obj[HEADER.size + 1000] ^= 0x55  # a raw payload: only the id can tell
    with pytest.raises(DamagedObject, match="does not hold the content its id names"):
        plain.open(Kind.CHUNK, NAME, bytes(obj), plain.chunk_id(RANDOM))


@pytest.mark.parametrize("data", [TEXT, RANDOM])
def test_truncated_or_extended_objects_are_refused(aes: Keys, plain: Keys, data: bytes) -> None:
    for keys in (aes, plain):
        obj = keys.seal(Kind.CHUNK, NAME, data)
        ident = keys.chunk_id(data)
        for cut in (0, 4, HEADER.size - 1, HEADER.size, HEADER.size + 1, len(obj) // 2):
            with pytest.raises(DamagedObject):
                keys.open(Kind.CHUNK, NAME, obj[:cut], ident)
        for cut in (1, TAG_LEN, TAG_LEN + 1):
            with pytest.raises(DamagedObject):
                keys.open(Kind.CHUNK, NAME, obj[:-cut], ident)
        with pytest.raises(DamagedObject):
            keys.open(Kind.CHUNK, NAME, obj + b"\0", ident)


def test_an_object_under_another_name_or_kind_is_refused(aes: Keys) -> None:
    obj = aes.seal(Kind.CHUNK, NAME, TEXT)
    other = b"data/abc/" + b"cd" * 32
    with pytest.raises(DamagedObject, match="failed authentication"):
        aes.open(Kind.CHUNK, other, obj)
    with pytest.raises(DamagedObject, match="failed authentication"):
        aes.open(Kind.CHUNK, NAME + b"\0", obj)
    with pytest.raises(DamagedObject, match="is of kind CHUNK, not DOCUMENT"):
        aes.open(Kind.DOCUMENT, NAME, obj)
    # the kind byte rewritten to match: the tag still binds the kind it was sealed as
    forged = bytearray(obj)
    forged[5] = Kind.DOCUMENT
    with pytest.raises(DamagedObject, match="failed authentication"):
        aes.open(Kind.DOCUMENT, NAME, bytes(forged))
    # two objects swapped by the store
    a, b = (
        aes.seal(Kind.DOCUMENT, b"points/a", b'{"a": 1}'),
        aes.seal(Kind.DOCUMENT, b"points/b", b'{"b": 2}'),
    )
    for name, obj in ((b"points/a", b), (b"points/b", a)):
        with pytest.raises(DamagedObject, match="failed authentication"):
            aes.open(Kind.DOCUMENT, name, obj)


def test_an_object_of_another_repository_is_refused(aes: Keys) -> None:
    stranger = new_keys(MODE_AES)
    obj = stranger.seal(Kind.CHUNK, NAME, TEXT)
    with pytest.raises(DamagedObject, match="failed authentication"):
        aes.open(Kind.CHUNK, NAME, obj)


def test_an_unencrypted_object_in_an_encrypted_repository_is_refused(
    aes: Keys, plain: Keys
) -> None:
    # the store replacing an object with one of its own making, or the reverse mix-up
    forged = plain.seal(Kind.DOCUMENT, NAME, b'{"id": "points/a"}')
    with pytest.raises(DamagedObject, match="is not encrypted, but the repository's mode is"):
        aes.open(Kind.DOCUMENT, NAME, forged)
    with pytest.raises(DamagedObject, match="is encrypted, but the repository's mode is none"):
        plain.open(Kind.DOCUMENT, NAME, aes.seal(Kind.DOCUMENT, NAME, b"{}"))


def test_an_unencrypted_object_of_the_wrong_kind_is_refused(plain: Keys) -> None:
    obj = plain.seal(Kind.INDEX, NAME, bytes(64))
    with pytest.raises(DamagedObject, match="is of kind INDEX, not CHUNK"):
        plain.open(Kind.CHUNK, NAME, obj)


@pytest.mark.parametrize("mode", [MODE_NONE, MODE_AES])
def test_a_newer_version_is_refused_naming_it(mode: str) -> None:
    keys = new_keys(mode)
    obj = bytearray(keys.seal(Kind.CHUNK, NAME, TEXT))
    obj[4] = 2
    with pytest.raises(UnsupportedObject, match="envelope version 2, newer than this lvdiff"):
        keys.open(Kind.CHUNK, NAME, bytes(obj))
    obj[4] = 0
    with pytest.raises(DamagedObject, match="unknown envelope version 0") as err:
        keys.open(Kind.CHUNK, NAME, bytes(obj))
    assert not isinstance(err.value, UnsupportedObject)


def test_header_fields_are_checked_one_by_one(plain: Keys) -> None:
    data = b"x" * 100
    cases = {
        "is not a repository object": unencrypted(1, 0, 100, data)[:0] + b"LVRX" + bytes(8),
        "unknown flags 0x04": unencrypted(1, 4, 100, data),
        "nonzero reserved byte": HEADER.pack(MAGIC, 1, 1, 0, 1, 100) + data,
        "more than": unencrypted(1, 0, MAX_PLAIN_LEN + 1, data),
        "holds 100 bytes, its header says 99": unencrypted(1, 0, 99, data),
        "is of kind 9, not CHUNK": unencrypted(9, 0, 100, data),
        "too short for a header": b"LVRO\x01",
    }
    for problem, obj in cases.items():
        with pytest.raises(DamagedObject, match=problem) as err:
            plain.open(Kind.CHUNK, NAME, obj)
        assert err.value.object_name == NAME
        assert "\n" not in str(err.value)
    assert plain.open(Kind.CHUNK, NAME, unencrypted(1, 0, 100, data)) == data


def frame_with_declared_size(data: bytes, declared: int) -> bytes:
    """A zstd frame of ``data`` whose header declares ``declared`` bytes instead."""
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(data))
    fhd = frame[4]
    assert fhd >> 6 == 2 and fhd & 3 == 0  # a 4-byte content size, no dictionary id
    pos = 5 + (0 if fhd & 0x20 else 1)
    assert int.from_bytes(frame[pos : pos + 4], "little") == len(data)
    frame[pos : pos + 4] = declared.to_bytes(4, "little")
    return bytes(frame)


def test_a_zstd_bomb_is_refused(aes: Keys, plain: Keys) -> None:
    big = bytes(1 << 20)  # 1 MiB of zeros: a few dozen bytes compressed
    bomb = frame_with_declared_size(big, 4096)
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(big)
    overdeclared = zstandard.ZstdCompressor(write_content_size=True).compress(big)
    for frame in (bomb, undeclared, overdeclared):
        with pytest.raises(DamagedObject, match="zstd"):
            plain.open(Kind.CHUNK, NAME, unencrypted(1, Flag.ZSTD, 4096, frame))
        # checked after decryption too: the key holder's bug must not become a bomb
        with pytest.raises(DamagedObject, match="zstd"):
            aes.open(Kind.CHUNK, NAME, encrypted(aes, NAME, 1, Flag.ZSTD, 4096, frame))


def test_bytes_after_the_zstd_frame_are_refused(aes: Keys, plain: Keys) -> None:
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(TEXT)
    obj = unencrypted(1, Flag.ZSTD, len(TEXT), frame)
    assert plain.open(Kind.CHUNK, NAME, obj) == TEXT
    with pytest.raises(DamagedObject, match="1 bytes after its zstd frame"):
        plain.open(Kind.CHUNK, NAME, obj + b"!")
    with pytest.raises(DamagedObject, match="bytes after its zstd frame"):
        aes.open(Kind.CHUNK, NAME, encrypted(aes, NAME, 1, Flag.ZSTD, len(TEXT), frame * 2))


def test_a_frame_that_decodes_short_is_refused(plain: Keys) -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT[:1000])
    with pytest.raises(DamagedObject, match="decompresses to 1000 bytes, its header says 2000"):
        plain.open(Kind.CHUNK, NAME, unencrypted(1, Flag.ZSTD, 2000, frame))


def test_errors_have_their_exit_codes() -> None:
    assert DamagedObject("x").exit_code == exitcodes.BAD_STREAM
    assert UnsupportedObject("x").exit_code == exitcodes.BAD_STREAM
    assert WrongKey("x").exit_code == exitcodes.USAGE
    assert issubclass(WrongKey, UsageError)


# --- keys, key checks and key files ------------------------------------------------------


def test_new_keys() -> None:
    a, b = new_keys(MODE_AES), new_keys(MODE_AES)
    assert len(a.repository_id) == 32 and a.repository_id != b.repository_id
    assert len(a.enc_key) == len(a.id_key) == 32
    assert len({a.enc_key, a.id_key, b.enc_key, b.id_key}) == 4
    none = new_keys(MODE_NONE)
    assert none.enc_key == none.id_key == b"" and not none.encrypted
    with pytest.raises(ValueError):
        new_keys("rot13")
    with pytest.raises(ValueError):
        Keys(a.repository_id, MODE_AES, a.enc_key[:16], a.id_key)
    with pytest.raises(ValueError):
        Keys("not-hex", MODE_NONE, b"", b"")


def test_keys_never_show_in_repr(aes: Keys) -> None:
    text = repr(aes)
    assert aes.repository_id in text
    assert aes.enc_key.hex() not in text and repr(aes.enc_key) not in text
    assert aes.id_key.hex() not in text and repr(aes.id_key) not in text


def test_the_key_check_refuses_a_wrong_key(aes: Keys) -> None:
    check = aes.key_check()
    assert len(check) == 64 and int(check, 16) >= 0
    aes.verify_key_check(check)
    assert new_keys(MODE_AES).key_check() != check
    with pytest.raises(WrongKey, match=r"does not open this repository") as err:
        new_keys(MODE_AES).verify_key_check(check)
    assert "\n" not in str(err.value)
    rid = aes.repository_id
    # the right repository id, but either key damaged (an edited unprotected key file)
    for keys in (
        Keys(rid, MODE_AES, bytes(32), aes.id_key),
        Keys(rid, MODE_AES, aes.enc_key, bytes(32)),
        Keys(rid, MODE_NONE, b"", b""),
        Keys("0" * 32, MODE_AES, aes.enc_key, aes.id_key),
    ):
        with pytest.raises(WrongKey):
            keys.verify_key_check(check)
    for junk in ("", "zz", check.upper() + "é"):
        with pytest.raises(WrongKey):
            aes.verify_key_check(junk)
    plain = new_keys(MODE_NONE)
    plain.verify_key_check(plain.key_check())
    with pytest.raises(WrongKey):
        new_keys(MODE_NONE).verify_key_check(plain.key_check())


def test_an_unprotected_key_file_round_trips(aes: Keys) -> None:
    data = dump_key_file(aes, None)
    doc = json.loads(data)
    assert doc["format"] == "lvdiff-repository-key" and doc["version"] == 1
    assert (doc["repository"], doc["mode"], doc["protection"]) == (
        aes.repository_id,
        MODE_AES,
        "none",
    )
    assert not key_file_needs_passphrase(data)
    assert load_key_file(data, None) == aes
    assert load_key_file(data, b"not needed") == aes


def test_a_protected_key_file_round_trips(aes: Keys, protected: bytes) -> None:
    doc = json.loads(protected)
    assert doc["protection"] == "scrypt+aes-256-gcm"
    assert {k: doc["kdf"][k] for k in "nrp"} == {"n": 2**15, "r": 8, "p": 1}
    for key in (aes.enc_key, aes.id_key):  # neither in clear, in any encoding
        assert key.hex().encode() not in protected and key not in protected
        assert json.dumps(dump_key_file(aes, None).decode()).encode()[:0] == b""
    assert key_file_needs_passphrase(protected)
    assert load_key_file(protected, PASS) == aes
    with pytest.raises(WrongKey, match="wrong passphrase for key file"):
        load_key_file(protected, PASS + b"!")
    with pytest.raises(UsageError, match="protected by a passphrase, and none was given"):
        load_key_file(protected, None)
    with pytest.raises(UsageError, match="empty passphrase"):
        dump_key_file(aes, b"")
    with pytest.raises(ValueError):
        dump_key_file(new_keys(MODE_NONE), None)


def edited(data: bytes, change) -> bytes:
    doc = json.loads(data)
    change(doc)
    return json.dumps(doc).encode()


def test_an_edited_protected_key_file_is_refused(protected: bytes) -> None:
    other = new_keys(MODE_AES).repository_id
    edits = {
        "repository": lambda d: d.update(repository=other),
        "n": lambda d: d["kdf"].update(n=2**14),
        "salt": lambda d: d["kdf"].update(salt="A" * 22 + "=="),
        "nonce": lambda d: d.update(nonce="A" * 16),
        "sealed": lambda d: d.update(
            sealed=("B" if d["sealed"][0] == "A" else "A") + d["sealed"][1:]
        ),
    }
    for what, change in edits.items():
        with pytest.raises(
            WrongKey, match=r"wrong passphrase for key file \(or the file was altered\)"
        ):
            load_key_file(edited(protected, change), PASS)
            pytest.fail(f"an edited {what} went unnoticed")
    refused = {
        "version": lambda d: d.update(version=2),
        "protection": lambda d: d.update(protection="rot13"),
        "mode": lambda d: d.update(mode="none"),
        "extra": lambda d: d.update(note="trust me"),
        "missing": lambda d: d.pop("nonce"),
        "kdf name": lambda d: d["kdf"].update(name="pbkdf2"),
        "huge n": lambda d: d["kdf"].update(n=2**30),
        "odd n": lambda d: d["kdf"].update(n=3000),
        "short salt": lambda d: d["kdf"].update(salt="AAAA"),
        "bad base64": lambda d: d.update(nonce="!!!!"),
        "float version": lambda d: d.update(version=1.0),
    }
    for what, change in refused.items():
        with pytest.raises(UsageError) as err:
            load_key_file(edited(protected, change), PASS, "key file /k")
            pytest.fail(f"an edited {what} went unnoticed")
        assert "\n" not in str(err.value) and "key file /k" in str(err.value), what
    with pytest.raises(UsageError, match="newer than this lvdiff reads"):
        load_key_file(edited(protected, refused["version"]), PASS)


def test_damaged_or_foreign_key_files_are_refused_in_one_line(aes: Keys) -> None:
    good = dump_key_file(aes, None)
    for data in (
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"format": "something else"}',
        good[: len(good) // 2],
        edited(good, lambda d: d.update(enc_key=d["enc_key"][:-4])),
        edited(good, lambda d: d.update(id_key=7)),
        edited(good, lambda d: d.update(repository="R" * 32)),
        b" " * 100_000,
    ):
        with pytest.raises(UsageError) as err:
            load_key_file(data, None, "key file /k")
        assert not isinstance(err.value, WrongKey)
        assert "\n" not in str(err.value) and str(err.value).startswith("key file /k ")


def test_an_edited_unprotected_key_file_fails_the_key_check(aes: Keys) -> None:
    data = edited(dump_key_file(aes, None), lambda d: d.update(id_key="A" * 43 + "="))
    with pytest.raises(WrongKey):
        load_key_file(data, None).verify_key_check(aes.key_check())


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_write_key_file_makes_a_0600_file_and_never_overwrites(
    tmp_path, protected: bytes, aes: Keys, umask: int
) -> None:
    path = tmp_path / "key"
    old = os.umask(umask)  # the mode must not depend on the caller's umask
    try:
        write_key_file(path, protected)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == protected
    assert read_key_file(path, PASS) == aes
    with pytest.raises(UsageError, match="already exists: lvdiff never overwrites a key file"):
        write_key_file(path, b"something else")
    assert path.read_bytes() == protected
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="already exists"):
        write_key_file(link, protected)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(WrongKey, match=f"wrong passphrase for key file {path}"):
        read_key_file(path, b"guess")


def test_header_layout_is_the_documented_one(aes: Keys) -> None:
    obj = aes.seal(Kind.INDEX, NAME, RANDOM, None)
    assert obj[:4] == b"LVRO" and obj[4:8] == bytes([1, 2, Flag.ENCRYPTED, 0])
    assert struct.unpack(">I", obj[8:12])[0] == len(RANDOM)
    assert len(obj) == 12 + NONCE_LEN + len(RANDOM) + TAG_LEN
    nonce, sealed = obj[12:24], obj[24:]
    assert AESGCM(aes.enc_key).decrypt(nonce, sealed, obj[:12] + NAME) == RANDOM
