from __future__ import annotations

import hmac
import math
import zlib

import pytest

from zguard.security import tokens
from zguard.security.tokens import (
    ALPHABET,
    CHECKSUM_CHARS,
    DISPLAY_CHARS,
    MIN_KEY_BYTES,
    RANDOM_CHARS,
    TOKEN_LENGTH,
    TOKEN_PATTERN,
    TOKEN_PREFIX,
    digests_equal,
    looks_like_token,
    new_token,
    token_digest,
)

KEY = b"k" * MIN_KEY_BYTES
OTHER_KEY = b"q" * MIN_KEY_BYTES


def _with_checksum(random_part: str) -> str:
    """An independent checksum: CRC32 as an integer, base62 by int-to-digits, zero-padded."""
    value, digits = zlib.crc32(random_part.encode()), ""
    while value:
        value, digit = divmod(value, 62)
        digits = ALPHABET[digit] + digits
    return TOKEN_PREFIX + random_part + digits.rjust(CHECKSUM_CHARS, "0")


def test_format_length_and_alphabet() -> None:
    issued = new_token()
    token = issued.plaintext
    assert len(token) == TOKEN_LENGTH == 45
    assert token.startswith("zg_")
    assert set(token[3:]) <= set(ALPHABET)
    assert len(ALPHABET) == len(set(ALPHABET)) == 62
    assert looks_like_token(token)
    assert TOKEN_PATTERN.fullmatch(token)


def test_checksum_is_crc32_of_the_random_part_in_fixed_width_base62() -> None:
    token = new_token().plaintext
    assert _with_checksum(token[3 : 3 + RANDOM_CHARS]) == token
    # CRC32 value 0 still takes six characters.
    assert tokens._base62(0, CHECKSUM_CHARS) == "000000"
    assert tokens._base62(2**32 - 1, CHECKSUM_CHARS) == "4gfFC3"


def test_random_part_carries_enough_entropy_even_after_the_display_prefix() -> None:
    hidden_bits = (RANDOM_CHARS - DISPLAY_CHARS) * math.log2(62)
    assert RANDOM_CHARS * math.log2(62) >= 160
    assert hidden_bits >= 160
    assert 62**CHECKSUM_CHARS > 2**32


def test_tokens_are_distinct_and_use_the_whole_alphabet() -> None:
    issued = [new_token().plaintext for _ in range(2000)]
    assert len(set(issued)) == len(issued)
    # The display prefixes are distinct too (a collision among 2000 of 62**8 would be ~1e-8).
    assert len({t[: 3 + DISPLAY_CHARS] for t in issued}) == len(issued)
    seen = {c for t in issued for c in t[3 : 3 + RANDOM_CHARS]}
    assert seen == set(ALPHABET)


def test_display_prefix_is_the_first_eight_random_characters_and_repr_hides_the_token() -> None:
    issued = new_token()
    assert issued.display_prefix == issued.plaintext[:11]
    assert issued.display_prefix.startswith("zg_")
    assert len(issued.display_prefix) == 3 + DISPLAY_CHARS
    assert issued.plaintext not in repr(issued)
    assert issued.plaintext[11:] not in repr(issued)
    assert issued.display_prefix in repr(issued)


@pytest.mark.parametrize("sample", range(5))
def test_checksum_catches_every_single_character_substitution(sample: int) -> None:
    token = new_token().plaintext
    body = token[3:]
    for position in range(len(body)):
        for replacement in ALPHABET:
            if replacement == body[position]:
                continue
            typo = TOKEN_PREFIX + body[:position] + replacement + body[position + 1 :]
            assert not looks_like_token(typo), (sample, position, replacement)


@pytest.mark.parametrize("sample", range(20))
def test_checksum_catches_every_adjacent_transposition(sample: int) -> None:
    token = new_token().plaintext
    body = token[3:]
    for position in range(len(body) - 1):
        a, b = body[position], body[position + 1]
        if a == b:
            continue
        swapped = TOKEN_PREFIX + body[:position] + b + a + body[position + 2 :]
        assert not looks_like_token(swapped), (sample, position)


def test_refuses_wrong_prefix_length_and_characters() -> None:
    token = new_token().plaintext
    body = token[3:]
    for prefix in ("ZG_", "zg-", "gh_", "zgp_", "", "zg"):
        assert not looks_like_token(prefix + body)
    assert not looks_like_token(token[:-1])
    assert not looks_like_token(token + "0")
    assert not looks_like_token(" " + token)
    assert not looks_like_token(token + "\n")
    assert not looks_like_token("")
    assert not looks_like_token("zg_" + "-" * (TOKEN_LENGTH - 3))
    # Full-width digits are \d to Unicode regexes; the alphabet is ASCII only.
    assert not looks_like_token(token[:5] + "１" + token[6:])


def test_pattern_finds_tokens_in_text_but_not_inside_longer_words() -> None:
    a, b = new_token().plaintext, new_token().plaintext
    text = f"export ZG={a}\n请使用{b}。 nope: x{a} {a}x {a}_ {b[:-1]}"
    assert [m.group() for m in TOKEN_PATTERN.finditer(text)] == [a, b]


def test_digest_is_hex_sha256_deterministic_and_depends_on_key_and_token() -> None:
    token = new_token().plaintext
    digest = token_digest(token, KEY)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert token_digest(token, KEY) == digest
    assert token_digest(token, OTHER_KEY) != digest
    assert token_digest(new_token().plaintext, KEY) != digest
    assert token not in digest


def test_digest_is_domain_separated_from_a_plain_hmac_of_the_same_text() -> None:
    import hashlib

    token = new_token().plaintext
    assert token_digest(token, KEY) != hmac.new(KEY, token.encode(), hashlib.sha256).hexdigest()
    assert token_digest(token, KEY) != hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize("key", [b"", b"short", b"x" * (MIN_KEY_BYTES - 1)])
def test_digest_refuses_short_keys(key: bytes) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        token_digest(new_token().plaintext, key)


def test_digests_equal() -> None:
    digest = token_digest(new_token().plaintext, KEY)
    assert digests_equal(digest, digest)
    assert not digests_equal(digest, digest[:-1] + ("0" if digest[-1] != "0" else "1"))
    assert not digests_equal(digest, "")
    assert not digests_equal(digest, "é" * 64)  # non-ASCII does not raise


def test_digests_equal_uses_the_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return True

    monkeypatch.setattr(hmac, "compare_digest", spy)  # tokens calls it through the module
    assert digests_equal("aa", "bb")  # the answer comes from compare_digest, not from ==
    assert calls == [(b"aa", b"bb")]
