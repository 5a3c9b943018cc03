"""Server keys kept in their own files (never in the settings file): created once, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class KeyFileError(Exception):
    """The key file exists but cannot be used; the message says how to fix it."""


def load_or_create_key(path: Path) -> bytes:
    """Read the key in `path`, creating it (32 random bytes, mode 0600, exclusive) when absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path)
    with os.fdopen(fd, "wb") as handle:
        key = secrets.token_bytes(KEY_BYTES)
        handle.write(key)
    return key


def read_key(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by group or others (mode {mode:o}); chmod 600 {path}")
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise KeyFileError(
            f"{path} holds {len(key)} bytes, fewer than {KEY_BYTES}; replace it with 32 random bytes (every issued API token then stops working)"
        )
    return key
