"""Known-answer vectors for API tokens: their shape, their CRC32 checksum and their stored digest.

These vectors pin a persisted and wire format: issued tokens sit in clients' configuration and
secret scanners for years, and the database holds only `token_digest` of each. A vector that no
longer matches means the format changed: that needs a new digest label (`zguard-api-token-v2`) or
token prefix (a version bump) and a migration that keeps issued tokens working, never a quiet edit
of the constants here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import zlib
from collections.abc import Sequence

import pytest

from zguard.security import tokens
from zguard.security.tokens import (
    ALPHABET,
    TOKEN_PREFIX,
    display_prefix,
    looks_like_token,
    new_token,
    token_digest,
)

KEY = bytes(range(32))

# The random part chosen so its CRC32 is easy to check by hand.
RANDOM_PART = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CRC32 = 0x1A65_7BE2
CHECKSUM = "0TyBiU"
TOKEN = "zg_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0TyBiU"
TOKEN_DIGEST = "66e736c3c7af68cd7df9a1247d6fb687e0421d0e10376ac72cb86ba91f0ca028"

# `new_token` under a fixed stand-in for `secrets.choice` (the i-th draw picks ALPHABET[(17 i + 5) % 62]).
DRAWN_TOKEN = "zg_5MduBSj0HYp6NevCTk1IZq7OfwDUl2Jar8Pg4cJxdj"
DRAWN_DISPLAY = "zg_5MduBSj0"
DRAWN_DIGEST = "e30c9e2237c199b19ad22909eb95ec78d6523e197fab94dc6029628fa353fa27"


def test_alphabet_and_prefix() -> None:
    assert TOKEN_PREFIX == "zg_"
    assert ALPHABET == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_checksum_is_crc32_in_six_base62_digits() -> None:
    assert zlib.crc32(RANDOM_PART.encode("ascii")) == CRC32
    assert tokens._checksum(RANDOM_PART) == CHECKSUM
    # Base62, most significant digit first, zero-padded to six.
    value, digits = CRC32, ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = ALPHABET[digit] + digits
    assert digits == CHECKSUM
    assert tokens._checksum("") == "000000"
    assert tokens._checksum("z" * 36) == "1ej79G"


def test_token_text() -> None:
    assert TOKEN == TOKEN_PREFIX + RANDOM_PART + CHECKSUM
    assert len(TOKEN) == 45
    assert looks_like_token(TOKEN)
    assert display_prefix(TOKEN) == "zg_01234567"


def test_digest_is_hmac_sha256_over_label_nul_token() -> None:
    assert token_digest(TOKEN, KEY) == TOKEN_DIGEST
    expected = hmac.new(KEY, b"zguard-api-token-v1\x00" + TOKEN.encode(), hashlib.sha256).hexdigest()
    assert expected == TOKEN_DIGEST


def test_new_token_under_a_fixed_random_source(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = itertools.count()
    calls: list[Sequence[str]] = []

    def choice(seq: Sequence[str]) -> str:
        calls.append(seq)
        return seq[(next(draws) * 17 + 5) % len(seq)]

    monkeypatch.setattr(secrets, "choice", choice)  # what `new_token` draws each character with
    issued = new_token()
    monkeypatch.undo()
    assert len(calls) == 36
    assert all(seq == ALPHABET for seq in calls)
    assert issued.plaintext == DRAWN_TOKEN
    assert issued.display_prefix == DRAWN_DISPLAY
    assert DRAWN_TOKEN[3:39] == "".join(ALPHABET[(17 * i + 5) % 62] for i in range(36))
    assert DRAWN_TOKEN[39:] == tokens._checksum(DRAWN_TOKEN[3:39])
    assert looks_like_token(DRAWN_TOKEN)
    assert token_digest(DRAWN_TOKEN, KEY) == DRAWN_DIGEST
