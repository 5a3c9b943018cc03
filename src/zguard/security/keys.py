"""Server keys kept in their own files (never in the settings file): created once, mode 0600.

Two kinds: 32 random bytes (HMAC keys: API tokens, prompt fingerprints, watermark ids) and
Ed25519 private keys in PEM/PKCS#8 (audit checkpoints, manifest and label signatures). Every
refusal is a `KeyFileError` whose message names the file and the command that fixes it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zguard.errors import OperatorError

KEY_BYTES = 32
KEY_ID_HEX = 16  # hex digits of SHA-256 over the raw public key that name an Ed25519 key


class KeyFileError(OperatorError):
    """The key file exists but cannot be used; the message says how to fix it."""

    code = "key_file_unusable"
    fix = "make the key file private to the service account (chmod 600 FILE) or replace it as the message says"


def _unreadable(path: Path, exc: OSError) -> KeyFileError:
    """The refusal for a key file that cannot be opened, with what to check."""
    why = exc.strerror or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        hint = "check the setting that names it; `zguard serve` creates the server's own keys on first start"
    elif isinstance(exc, PermissionError):
        hint = "run the command as the service account that owns it (sudo -u zguard ...)"
    else:
        hint = "check the file and the disk"
    return KeyFileError(f"{path}: cannot read the key ({why})", fix=hint)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _refuse_if_shared(path: Path) -> None:
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by group or others (mode {mode:o}); chmod 600 {path}")


def _create_exclusive(path: Path) -> int | None:
    """A new file's descriptor (mode 0600), or None when the file already exists."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None


def load_or_create_key(path: Path) -> bytes:
    """Read the key in `path`, creating it (32 random bytes, mode 0600, exclusive) when absent."""
    fd = _create_exclusive(path)
    if fd is None:
        return read_key(path)
    with os.fdopen(fd, "wb") as handle:
        key = secrets.token_bytes(KEY_BYTES)
        handle.write(key)
    return key


def read_key(path: Path) -> bytes:
    _refuse_if_shared(path)
    key = _read(path)
    if len(key) < KEY_BYTES:
        raise KeyFileError(
            f"{path} holds {len(key)} bytes, fewer than {KEY_BYTES}; replace it with 32 random bytes (every issued API token then stops working)"
        )
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in `path` (PEM, PKCS#8), created mode 0600 when absent."""
    fd = _create_exclusive(path)
    if fd is None:
        return read_private_key(path)
    key = Ed25519PrivateKey.generate()
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return key


def read_private_key(path: Path) -> Ed25519PrivateKey:
    _refuse_if_shared(path)
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key (PEM), or the public half of a private key file."""
    data = _read(path)
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is neither a PEM public key nor a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short name of an Ed25519 key recorded beside what it signed: SHA-256 of the raw key, 16 hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def derive_key(key: bytes, purpose: bytes) -> bytes:
    """A key for one `purpose` from a server key (HMAC-SHA-256): one secret file to keep, and no
    two uses that share a key."""
    return hmac.new(key, b"zguard derived key\0" + purpose, hashlib.sha256).digest()
