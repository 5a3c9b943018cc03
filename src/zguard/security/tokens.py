"""zguard API tokens: how they look, how they are made, and how they are stored.

A token is ``zg_`` + 36 random base62 characters + a 6-character base62 checksum, 45 characters
in all, for example ``zg_4kQ0...Zp81xW``. The shape follows GitHub's tokens:

- **Random part.** 36 characters drawn uniformly from the 62-letter alphabet with `secrets`, i.e.
  36 · log2(62) ≈ 214 bits. The first `DISPLAY_CHARS` (8) of them are the *display prefix*, shown
  in lists and audit events so people can tell their tokens apart; the 28 characters never shown
  still carry ≈ 167 bits, above the 160 we aim for and well above the spec's 128.
- **Checksum.** CRC32 of the random part, in base62, left-padded to 6 characters. CRC32 detects
  every burst error of up to 32 bits, so it catches every single-character typo and every swap of
  two neighbouring characters; it lets a client, a log scrubber or a secret scanner tell a real
  token from a look-alike offline, and lets the server refuse garbage before any lookup. It is
  *not* a secret and gives no protection against forgery; only the stored digest does.
- **Fixed length and alphabet.** So `TOKEN_PATTERN` can find tokens in text with no false splits.

Storage: the server keeps only `token_digest(token, key)`, an HMAC-SHA256 under a server key,
never the token. Why HMAC and not plain SHA-256: with plain SHA-256 anyone holding a copy of the
database (a backup, a replica, a leaked dump) could confirm a guessed or captured token offline;
with HMAC they also need the key, which lives outside the database. A fast hash is right here and
a slow password hash (bcrypt) is not: the tokens are high-entropy, so there is nothing to
brute-force, and a fast deterministic digest lets the server find a token by indexed lookup.

The digest is bound to the label ``zguard-api-token-v1`` so the same server key can never make a
token digest collide with another keyed fingerprint (prompt fingerprints use HMAC too).
Compare digests only with `digests_equal`, which is constant-time.

Everything here is pure: no I/O, no clock, no global state beyond the OS random source.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass, field
from typing import Final

TOKEN_PREFIX: Final = "zg_"  # noqa: S105  (a public marker, not a secret)
ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS: Final = 36
CHECKSUM_CHARS: Final = 6  # 62**6 ≈ 5.7e10 > 2**32, so every CRC32 value fits
DISPLAY_CHARS: Final = 8
TOKEN_LENGTH: Final = len(TOKEN_PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
MIN_KEY_BYTES: Final = 32
"""The server key must be at least this long: 256 bits, the size of the HMAC-SHA256 output."""

TOKEN_PATTERN: Final = re.compile(
    rf"(?<![0-9A-Za-z_]){TOKEN_PREFIX}[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}(?![0-9A-Za-z_])"
)
"""Finds candidate tokens in free text (logs, commits, chat); confirm each with `looks_like_token`.

ASCII look-arounds rather than ``\\b`` so a token glued to Chinese text is still found.
"""

_FULL_TOKEN = re.compile(rf"{TOKEN_PREFIX}[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}")
_DIGEST_LABEL = b"zguard-api-token-v1\x00"


@dataclass(frozen=True)
class IssuedToken:
    """A freshly made token: show `plaintext` to its owner once, store only its digest.

    `plaintext` is left out of ``repr`` so the token cannot reach a log by accident.
    """

    plaintext: str = field(repr=False)
    display_prefix: str
    """``zg_`` and the first `DISPLAY_CHARS` random characters; not secret."""


def new_token() -> IssuedToken:
    """Make a token from the operating system's CSPRNG."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    plaintext = TOKEN_PREFIX + random_part + _checksum(random_part)
    return IssuedToken(plaintext=plaintext, display_prefix=display_prefix(plaintext))


def display_prefix(token: str) -> str:
    """The non-secret part of `token` to show in lists and audit events (``zg_`` + 8 characters)."""
    return token[: len(TOKEN_PREFIX) + DISPLAY_CHARS]


def looks_like_token(text: str) -> bool:
    """True when `text` is exactly one well-formed token with a valid checksum.

    Cheap and offline: a length check, one regular expression, one CRC32. A True answer says the
    text was made by `new_token` (or copied without typos), not that the token exists or is valid.
    """
    if len(text) != TOKEN_LENGTH or _FULL_TOKEN.fullmatch(text) is None:
        return False
    body = text[len(TOKEN_PREFIX) :]
    random_part, checksum = body[:RANDOM_CHARS], body[RANDOM_CHARS:]
    return _checksum(random_part) == checksum


def token_digest(token: str, key: bytes) -> str:
    """The value to store for `token`: hex HMAC-SHA256 under the server `key`.

    Deterministic, so the server can look a presented token up by its digest. Raises ValueError
    when `key` is shorter than `MIN_KEY_BYTES`: a short key would quietly weaken every digest.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the token key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return hmac.new(key, _DIGEST_LABEL + token.encode("utf-8"), hashlib.sha256).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    """Compare two digests in time that does not depend on where they differ."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_CHARS)


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))
