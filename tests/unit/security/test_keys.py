"""Server key files: created once with mode 0600, refused when group or others can read them, and
refused when they hold anything but what they should (short HMAC keys, non-Ed25519 keys)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zguard.security.keys import (
    KEY_BYTES,
    KEY_ID_HEX,
    KeyFileError,
    key_id,
    load_or_create_key,
    load_or_create_private_key,
    load_public_key,
    public_pem,
    read_key,
    read_private_key,
)

SHARED_MODES = [0o640, 0o604, 0o660, 0o644, 0o601, 0o602, 0o610, 0o620, 0o666, 0o670, 0o607]
PRIVATE_MODES = [0o600, 0o400, 0o700]


@pytest.fixture(autouse=True)
def no_umask() -> Iterator[None]:
    """Files get exactly the mode the code asks for, whatever the umask of the test run."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def pem_private(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password) if password is not None else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- 32-byte keys -------------------------------------------------------------------------------


def test_a_new_key_is_32_random_bytes_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    key = load_or_create_key(path)
    assert KEY_BYTES == 32
    assert len(key) == 32
    assert path.read_bytes() == key
    assert mode_of(path) == 0o600
    assert load_or_create_key(tmp_path / "other.key") != key


def test_an_existing_key_is_read_back_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first
    assert read_key(path) == first
    mine = write(tmp_path / "mine.key", b"m" * 40, 0o600)
    assert load_or_create_key(mine) == b"m" * 40  # longer keys are used whole
    assert mine.read_bytes() == b"m" * 40


@pytest.mark.parametrize("mode", PRIVATE_MODES)
def test_a_key_only_its_owner_can_read_is_accepted(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "token.key", b"k" * 32, mode)
    assert read_key(path) == b"k" * 32
    assert load_or_create_key(path) == b"k" * 32


@pytest.mark.parametrize("mode", SHARED_MODES)
def test_a_key_group_or_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "token.key", b"k" * 32, mode)
    with pytest.raises(KeyFileError) as refused:
        read_key(path)
    assert str(refused.value) == f"{path} is readable by group or others (mode {mode:o}); chmod 600 {path}"
    with pytest.raises(KeyFileError):
        load_or_create_key(path)
    assert path.read_bytes() == b"k" * 32  # never rewritten


@pytest.mark.parametrize(("length", "accepted"), [(0, False), (31, False), (32, True), (33, True)])
def test_a_key_shorter_than_32_bytes_is_refused(tmp_path: Path, length: int, accepted: bool) -> None:
    path = write(tmp_path / "token.key", b"s" * length, 0o600)
    if accepted:
        assert read_key(path) == b"s" * length
        return
    with pytest.raises(KeyFileError) as refused:
        read_key(path)
    message = str(refused.value)
    assert message.startswith(f"{path} holds {length} bytes, fewer than 32;")
    assert "32 random bytes" in message


# --- Ed25519 private keys -----------------------------------------------------------------------


def test_a_new_signing_key_is_an_ed25519_pkcs8_pem_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    key = load_or_create_private_key(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert mode_of(path) == 0o600
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = serialization.load_pem_private_key(data, password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert raw(loaded.public_key()) == raw(key.public_key())


def test_an_existing_signing_key_is_read_back_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    first = load_or_create_private_key(path)
    data = path.read_bytes()
    again = load_or_create_private_key(path)
    assert raw(again.public_key()) == raw(first.public_key())
    assert raw(read_private_key(path).public_key()) == raw(first.public_key())
    assert path.read_bytes() == data
    assert raw(load_or_create_private_key(tmp_path / "other.pem").public_key()) != raw(first.public_key())


@pytest.mark.parametrize("mode", PRIVATE_MODES)
def test_a_signing_key_only_its_owner_can_read_is_accepted(tmp_path: Path, mode: int) -> None:
    key = Ed25519PrivateKey.generate()
    path = write(tmp_path / "signing.pem", pem_private(key), mode)
    assert raw(read_private_key(path).public_key()) == raw(key.public_key())


@pytest.mark.parametrize("mode", SHARED_MODES)
def test_a_signing_key_group_or_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "signing.pem", pem_private(Ed25519PrivateKey.generate()), mode)
    with pytest.raises(KeyFileError, match=r"readable by group or others"):
        read_private_key(path)
    with pytest.raises(KeyFileError, match=rf"\(mode {mode:o}\); chmod 600 "):
        load_or_create_private_key(path)


def test_a_non_ed25519_private_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "signing.pem", pem_private(ec.generate_private_key(ec.SECP256R1())), 0o600)
    with pytest.raises(KeyFileError) as refused:
        read_private_key(path)
    message = str(refused.value)
    assert message.startswith(f"{path} holds a EC")  # the class name, e.g. ECPrivateKey
    assert message.endswith("PrivateKey, not an Ed25519 key")
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_private_key(path)


@pytest.mark.parametrize(
    "data",
    [
        b"not a key at all",  # ValueError from the PEM loader
        pem_private(Ed25519PrivateKey.generate(), password=b"secret"),  # TypeError: a password is needed
    ],
    ids=["garbage", "encrypted"],
)
def test_an_unreadable_private_key_is_refused(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "signing.pem", data, 0o600)
    with pytest.raises(KeyFileError) as refused:
        read_private_key(path)
    assert str(refused.value).startswith(f"{path} is not an unencrypted PEM private key: ")
    assert refused.value.__cause__ is None  # `from None`: the message says it all
    assert path.read_bytes() == data


# --- Ed25519 public keys ------------------------------------------------------------------------


def test_a_public_key_is_loaded_from_a_public_or_a_private_pem(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    text = public_pem(key.public_key())
    assert text.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert text.endswith("-----END PUBLIC KEY-----\n")
    public = write(tmp_path / "public.pem", text.encode(), 0o644)  # a public key may be shared
    private = write(tmp_path / "private.pem", pem_private(key), 0o600)
    assert raw(load_public_key(public)) == raw(key.public_key())
    assert raw(load_public_key(private)) == raw(key.public_key())
    assert isinstance(load_public_key(public), Ed25519PublicKey)


@pytest.mark.parametrize("kind", ["public", "private"])
def test_a_non_ed25519_public_key_is_refused(tmp_path: Path, kind: str) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    data = (
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if kind == "public"
        else pem_private(other)
    )
    path = write(tmp_path / "key.pem", data, 0o600)
    with pytest.raises(KeyFileError) as refused:
        load_public_key(path)
    message = str(refused.value)
    assert message.startswith(f"{path} holds a EC")
    assert message.endswith("PublicKey, not an Ed25519 key")


@pytest.mark.parametrize(
    "data",
    [b"garbage", pem_private(Ed25519PrivateKey.generate(), password=b"secret")],
    ids=["garbage", "encrypted"],
)
def test_an_unreadable_public_key_is_refused(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "key.pem", data, 0o600)
    with pytest.raises(KeyFileError) as refused:
        load_public_key(path)
    assert str(refused.value).startswith(f"{path} is neither a PEM public key nor a PEM private key: ")
    assert refused.value.__cause__ is None


# --- key ids ------------------------------------------------------------------------------------


def test_a_key_id_is_the_first_16_hex_of_sha256_over_the_raw_public_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    assert KEY_ID_HEX == 16
    name = key_id(key)
    assert name == hashlib.sha256(raw(key)).hexdigest()[:16]
    assert len(name) == 16
    assert int(name, 16) >= 0
    assert key_id(Ed25519PrivateKey.generate().public_key()) != name


@pytest.mark.parametrize("read", [read_key, read_private_key, load_public_key])
def test_a_missing_key_file_is_a_key_file_error_with_a_fix(tmp_path: Path, read: Any) -> None:
    with pytest.raises(KeyFileError) as caught:
        read(tmp_path / "absent.pem")
    assert "absent.pem: cannot read the key" in caught.value.message
    assert "zguard serve" in (caught.value.fix or "")


def test_an_unreadable_key_file_names_the_account_to_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"k" * 32)
    path.chmod(0o600)

    def denied(self: Path) -> bytes:  # what a key owned by another account gives (root reads everything)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(KeyFileError) as caught:
        read_key(path)
    assert "Permission denied" in caught.value.message
    assert "service account" in (caught.value.fix or "")
