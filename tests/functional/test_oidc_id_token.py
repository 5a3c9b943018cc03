"""The id_token checks of console sign-in (zguard.services.oidc.IdTokenVerifier), on real tokens.

Tokens come from a real OpenID provider on loopback (`oidc-provider-mock`, started once for the
module) through its code flow; its JWKS is fetched over HTTP by the same `JwksCache` the API's
JWT verifier uses. Each refusal is asserted by its stable reason, the one the audit event carries.
Forgeries that no provider would sign (`alg: none`, a header pointing at other keys, a key the
IdP never published) are made by hand (tests.common.idp).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.common.idp import IdpKeys, b64_json
from tests.common.oidc_provider import MockProvider
from zguard.config.identity_oidc import OidcSettings
from zguard.errors import SignInFailed
from zguard.services.jwks import JwksCache
from zguard.services.oidc import IdTokenVerifier
from zguard.services.oidc_provider import jwks_settings

pytestmark = pytest.mark.anyio

CLIENT = "zguard-console"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    with MockProvider(tmp_path_factory.mktemp("oidc") / "provider.log") as idp:
        idp.user("u-1", preferred_username="mei", groups=["zg-designers"])
        yield idp


def verifier(provider: MockProvider, *, shift_s: float = 0, **settings: Any) -> IdTokenVerifier:
    """A verifier of `provider`'s id_tokens for CLIENT whose clock runs `shift_s` from now."""
    oidc = OidcSettings(issuer=provider.issuer, client_id=CLIENT, leeway_s=30, **settings)
    keys = JwksCache(jwks_settings(oidc), key_types=frozenset({"RSA", "EC", "OKP"}))
    return IdTokenVerifier(oidc, keys, clock=lambda: time.time() + shift_s)


def claims_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def refused(check: IdTokenVerifier, token: str, nonce: str = "n") -> str:
    with pytest.raises(SignInFailed) as caught:
        await check.verify(token, nonce)
    assert caught.value.code == "sign_in_failed"
    assert caught.value.status == 401
    return caught.value.reason


async def test_a_good_id_token_gives_its_claims(provider: MockProvider) -> None:
    claims = await verifier(provider).verify(provider.id_token(CLIENT, "u-1", nonce="n-1"), "n-1")
    assert (claims["sub"], claims["preferred_username"], claims["groups"]) == ("u-1", "mei", ["zg-designers"])


async def test_a_wrong_nonce_is_refused(provider: MockProvider) -> None:
    token = provider.id_token(CLIENT, "u-1", nonce="the-other-login")
    assert await refused(verifier(provider), token, nonce="this-login") == "wrong_nonce"


async def test_an_id_token_issued_to_another_client_is_refused(provider: MockProvider) -> None:
    token = provider.id_token("another-app", "u-1")
    assert claims_of(token)["aud"] == ["another-app"]
    assert await refused(verifier(provider), token) == "wrong_audience"


async def test_an_expired_and_a_not_yet_valid_id_token_are_refused(provider: MockProvider) -> None:
    token = provider.id_token(CLIENT, "u-1")
    lifetime = claims_of(token)["exp"] - claims_of(token)["iat"]
    assert await refused(verifier(provider, shift_s=lifetime + 31), token) == "expired"
    await verifier(provider, shift_s=lifetime + 15).verify(token, "n")  # inside the 30 s leeway
    assert await refused(verifier(provider, shift_s=-120), token) == "not_yet_valid"  # iat in our future


async def test_a_foreign_issuer_is_refused(provider: MockProvider) -> None:
    token = provider.id_token(CLIENT, "u-1")
    other = OidcSettings(issuer=provider.issuer + "/realms/other", client_id=CLIENT)
    keys = JwksCache(jwks_settings(provider_settings(provider)), key_types=frozenset({"RSA"}))
    assert await refused(IdTokenVerifier(other, keys), token) == "wrong_issuer"


def provider_settings(provider: MockProvider) -> OidcSettings:
    return OidcSettings(issuer=provider.issuer, client_id=CLIENT)


async def test_a_changed_payload_or_signature_is_refused(provider: MockProvider) -> None:
    header, payload, signature = provider.id_token(CLIENT, "u-1").split(".")
    forged = b64_json({**claims_of(f"{header}.{payload}.x"), "groups": ["zg-admins"]})
    assert await refused(verifier(provider), f"{header}.{forged}.{signature}") == "bad_signature"
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    assert await refused(verifier(provider), f"{header}.{payload}.{flipped}") == "bad_signature"


async def test_forged_headers_and_foreign_keys_are_refused(provider: MockProvider) -> None:
    good = provider.id_token(CLIENT, "u-1")
    claims = claims_of(good)
    evil = IdpKeys()
    check = verifier(provider)
    unsigned = f"{b64_json({'alg': 'none'})}.{b64_json(claims)}."
    assert await refused(check, unsigned) == "alg_not_allowed"
    hs = f"{b64_json({'alg': 'HS256'})}.{b64_json(claims)}.c2ln"
    assert await refused(check, hs) == "alg_not_allowed"
    pointed = evil.sign({"alg": "RS256", "jku": "http://127.0.0.1:9/jwks", "kid": "x"}, claims)
    assert await refused(check, pointed) == "forbidden_header"
    assert await refused(check, evil.sign({"alg": "RS256", "kid": "not-the-idps"}, claims)) == "unknown_kid"
    assert await refused(check, "a.b") == "malformed_id_token"
