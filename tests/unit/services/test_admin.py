"""The pure parts of the admin service: lifetimes, token status, password checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from zguard.services.admin import InvalidInput, check_password, parse_duration, token_status
from zguard.store.principals import PrincipalRecord, TokenRecord

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        (" 1d ", timedelta(days=1)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_durations(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5h", "1w", "5y", "1d2h", "3651d", "１d", "9999999d"])
def test_bad_durations_name_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"90m, 12h, 30d|longer than"):
        parse_duration(text)


def _token(*, revoked: bool = False, expires: timedelta | None = None, enabled: bool = True) -> TokenRecord:
    owner = PrincipalRecord(1, "alice", "user", ("generator",), enabled, NOW, None, None)
    return TokenRecord(
        id=1,
        principal=owner,
        prefix="zg_abcdefgh",
        label=None,
        roles=None,
        created_at=NOW - timedelta(days=1),
        expires_at=None if expires is None else NOW + expires,
        revoked_at=NOW if revoked else None,
        last_used_at=None,
        token_hash="0" * 64,
    )


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (_token(), "active"),
        (_token(expires=timedelta(seconds=1)), "active"),
        (_token(expires=timedelta(0)), "expired"),
        (_token(revoked=True, expires=-timedelta(days=1), enabled=False), "revoked"),
        (_token(expires=-timedelta(days=1), enabled=False), "expired"),
        (_token(enabled=False), "owner disabled"),
    ],
)
def test_token_status(token: TokenRecord, status: str) -> None:
    assert token_status(token, NOW) == status


@pytest.mark.parametrize(
    "password", ["correct horse battery", "b" * 3 + "x9-Q" * 15 + "c" * 9, "é" * 12 + "ü" * 24, "with spaces  "]
)
def test_usable_passwords(password: str) -> None:
    check_password(password, username="alice")


@pytest.mark.parametrize(
    ("password", "words"),
    [
        ("", "empty"),
        ("a" * 73, "72 bytes"),
        ("é" * 37, "72 bytes"),
        ("x", "shorter than 12"),
        ("elevenchars", "shorter than 12"),
        ("password1234", "most common"),
        ("Password123!", "most common"),
        ("P@ssw0rd2026", "most common"),
        ("QWERTYUIOP!!", "most common"),
        ("88888888!!!!", "most common"),
        ("ALICE-rocks-2026", "contains the username"),
        ("aaaaaaaaaaaaaa", "repeated"),
        ("abababababababab", "repeated"),
        ("1q2w1q2w1q2w", "repeated"),
    ],
)
def test_unusable_passwords(password: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        check_password(password, username="alice")


def test_the_minimum_length_is_the_banks_to_set() -> None:
    check_password("a fine passphrase", min_length=8)
    with pytest.raises(InvalidInput, match="shorter than 20"):
        check_password("a fine passphrase", min_length=20)
