"""The pure parts of console sign-in (zguard.services.oidc): PKCE and the sealed transaction."""

from __future__ import annotations

import secrets

from zguard.services.oidc import Transaction, TransactionSeal


def test_the_pkce_challenge_is_rfc_7636s() -> None:
    # RFC 7636 Appendix B's example verifier and its S256 challenge
    example = Transaction("s", "n", "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", 0)
    assert example.challenge() == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_each_transaction_is_new_and_long() -> None:
    one, two = Transaction.new(1.0), Transaction.new(1.0)
    assert len({one.state, one.nonce, one.verifier, two.state, two.nonce, two.verifier}) == 6
    assert min(len(one.state), len(one.nonce)) >= 43  # 32 random bytes
    assert 43 <= len(one.verifier) <= 128  # RFC 7636 4.1


def test_a_sealed_transaction_opens_only_unchanged_and_under_its_key() -> None:
    seal = TransactionSeal(secrets.token_bytes(32))
    transaction = Transaction.new(1_700_000_000)
    cookie = seal.seal(transaction)
    assert seal.open(cookie) == transaction
    assert transaction.state not in cookie
    assert transaction.verifier not in cookie
    assert seal.seal(transaction) != cookie  # a fresh nonce each time
    flipped = cookie[:20] + ("A" if cookie[20] != "A" else "B") + cookie[21:]
    assert seal.open(flipped) is None
    assert TransactionSeal(secrets.token_bytes(32)).open(cookie) is None
    for junk in ("", "!!!", "A" * 2000, "AAAA"):
        assert seal.open(junk) is None
