"""The IdP bearer-JWT verifier and its key cache, without I/O: the JWKS comes from an in-memory
`fetch` that records every URL asked for, and the clocks are the test's.

Every refusal is checked by its stable reason; tests/functional/test_jwt_bearer.py repeats the
attacks through the real app and a JWKS served over loopback, and asserts their audit events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from tests.common.idp import AUDIENCE, IdpKeys, b64, b64_json, hs256
from zguard.config import JwtSettings
from zguard.errors import IdentityProviderUnavailable
from zguard.security.rbac import build_registry
from zguard.services.jwks import FetchFailed, parse_key_set
from zguard.services.jwt_bearer import MAX_TOKEN_CHARS, JwtVerifier, TokenRefused, looks_like_jws

pytestmark = pytest.mark.anyio

ISSUER = "https://sso.bank.example/realms/bank"
JWKS_URL = "https://sso.bank.example/realms/bank/protocol/openid-connect/certs"
DISCOVERY = f"{ISSUER}/.well-known/openid-configuration"
ROLE_MAP = {"zg-generators": "generator", "zg-auditors": "auditor", "zg-viewers": "viewer"}


@pytest.fixture(scope="module")
def idp() -> IdpKeys:
    return IdpKeys(issuer=ISSUER)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIdp:
    """What `JwksCache` fetches through: the discovery document and JWKS by URL, every GET recorded."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.documents: dict[str, Any] = {
            DISCOVERY: {"issuer": ISSUER, "jwks_uri": JWKS_URL},
            JWKS_URL: {"keys": keys},
        }
        self.urls: list[str] = []
        self.down = False
        self.delay_s = 0.0

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down or url not in self.documents:
            raise FetchFailed(f"GET {url}: refused")
        return json.dumps(self.documents[url]).encode()

    @property
    def jwks_fetches(self) -> int:
        return self.urls.count(JWKS_URL)


def verifier(
    fake: FakeIdp, *, monotonic: Clock | None = None, clock: Clock | None = None, **overrides: Any
) -> JwtVerifier:
    settings = JwtSettings.model_validate(
        {"enabled": True, "issuer": ISSUER, "audience": AUDIENCE, "role_map": ROLE_MAP, **overrides}
    )
    return JwtVerifier.from_settings(
        settings,
        build_registry(),
        fetch=fake,
        monotonic=monotonic or Clock(1000.0),
        clock=clock or time.time,
    )


async def refused(v: JwtVerifier, token: str) -> TokenRefused:
    with pytest.raises(TokenRefused) as info:
        await v.verify(token)
    return info.value


# --- accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_good_token_of_each_algorithm_names_the_client_and_its_mapped_roles(idp: IdpKeys, alg: str) -> None:
    fake = FakeIdp(idp.public_jwks())
    verified = await verifier(fake).verify(idp.token(alg, roles=["zg-generators", "zg-viewers", "other-app"]))
    assert verified.principal == "billing-batch"
    assert verified.roles == {"generator", "viewer"}  # unmapped values grant nothing
    assert verified.jti == "jti-0001"
    assert fake.urls == [DISCOVERY, JWKS_URL]  # discovered once, then the keys


async def test_rfc_9864_ed25519_is_accepted_when_listed(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    v = verifier(fake, algorithms=["Ed25519"])
    token = idp.sign({"alg": "Ed25519", "kid": idp.kid("EdDSA")}, json.loads(_claims(idp.token("EdDSA"))))
    assert (await v.verify(token)).principal == "billing-batch"


def _claims(token: str) -> str:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


async def test_keys_are_cached_and_the_configured_jwks_url_skips_discovery(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    v = verifier(fake, jwks_url=JWKS_URL)
    for _ in range(5):
        await v.verify(idp.token("ES256"))
    assert fake.urls == [JWKS_URL]


async def test_the_principal_falls_back_from_azp_to_client_id_to_sub(idp: IdpKeys) -> None:
    v = verifier(FakeIdp(idp.public_jwks()))
    assert (await v.verify(idp.token(azp=None, client_id="cid-7", sub="uuid-1"))).principal == "cid-7"
    assert (await v.verify(idp.token(azp=None, sub="uuid-1"))).principal == "uuid-1"
    assert (await refused(v, idp.token(azp=None))).reason == "bad_principal"
    assert (await refused(v, idp.token(azp="evil\nname"))).reason == "bad_principal"
    assert (await refused(v, idp.token(azp="x" * 129))).reason == "bad_principal"


async def test_roles_come_from_a_dotted_path_or_a_single_string(idp: IdpKeys) -> None:
    v = verifier(FakeIdp(idp.public_jwks()), roles_claim="realm_access.roles")
    nested = idp.token(roles=None, realm_access={"roles": ["zg-auditors", "offline_access"]})
    assert (await v.verify(nested)).roles == {"auditor"}
    flat = verifier(FakeIdp(idp.public_jwks()), roles_claim="groups")
    assert (await flat.verify(idp.token(groups="zg-viewers"))).roles == {"viewer"}
    assert (await flat.verify(idp.token(groups=None))).roles == frozenset()


async def test_the_leeway_admits_a_little_clock_skew(idp: IdpKeys) -> None:
    now = time.time()
    v = verifier(FakeIdp(idp.public_jwks()), leeway_s=30)
    assert await v.verify(idp.token(exp=int(now) - 10, nbf=int(now) + 10, iat=int(now) + 10))


async def test_several_audiences_are_accepted_with_azp(idp: IdpKeys) -> None:
    v = verifier(FakeIdp(idp.public_jwks()))
    assert (await v.verify(idp.token(aud=[AUDIENCE, "account"]))).principal == "billing-batch"
    assert (await refused(v, idp.token(aud=[AUDIENCE, "account"], azp=None, sub="s"))).reason == "missing_azp"


# --- refused: the header ---------------------------------------------------------------------


async def test_alg_none_is_refused_before_any_key_is_fetched(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    claims = json.loads(_claims(idp.token()))
    refusal = await refused(verifier(fake), idp.sign({"alg": "none", "kid": idp.kid("RS256")}, claims))
    assert refusal.reason == "alg_not_allowed"
    assert fake.urls == []


async def test_hs256_signed_with_the_rsa_public_key_is_refused(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    claims = json.loads(_claims(idp.token()))
    forged = hs256({"alg": "HS256", "kid": idp.kid("RS256")}, claims, idp.rsa_public_pem())
    assert (await refused(verifier(fake), forged)).reason == "alg_not_allowed"


@pytest.mark.parametrize(
    "header",
    [
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIB..."]},
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        {"crit": ["exp"], "exp": 1},
        {"b64": False, "crit": ["b64"]},
        {"zip": "DEF"},
    ],
    ids=["jku", "x5u", "x5c", "jwk", "crit", "b64", "unknown"],
)
async def test_headers_that_point_at_keys_or_extend_the_format_are_refused(
    idp: IdpKeys, header: dict[str, Any]
) -> None:
    fake = FakeIdp(idp.public_jwks())
    refusal = await refused(verifier(fake), idp.token(header=header))
    assert refusal.reason == "forbidden_header"
    assert fake.urls == []  # nothing fetched, least of all the attacker's URL


@pytest.mark.parametrize("kid", ["../../etc/passwd", "' OR 1=1 --", "%2e%2e%2f", "idp-rs256\x00"])
async def test_a_kid_is_only_a_dictionary_key(idp: IdpKeys, kid: str) -> None:
    fake = FakeIdp(idp.public_jwks())
    v = verifier(fake)
    assert (await refused(v, idp.token(header={"kid": kid}))).reason == "unknown_kid"
    assert set(fake.urls) <= {DISCOVERY, JWKS_URL}


async def test_a_kid_of_another_key_type_is_unknown(idp: IdpKeys) -> None:
    """ES256 naming the RSA key's kid: keys are looked up by (kid, key type), so there is none."""
    v = verifier(FakeIdp(idp.public_jwks()))
    token = idp.token("ES256", header={"kid": idp.kid("RS256")})
    assert (await refused(v, token)).reason == "unknown_kid"


async def test_a_jwk_stating_another_alg_is_a_mismatch(idp: IdpKeys) -> None:
    keys = idp.public_jwks()
    keys[0] = {**keys[0], "alg": "RS512"}
    v = verifier(FakeIdp(keys), algorithms=["RS256"])
    assert (await refused(v, idp.token("RS256"))).reason == "alg_key_mismatch"


async def test_over_the_length_cap_is_refused_before_parsing(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    token = idp.token(padding="x" * MAX_TOKEN_CHARS)
    assert (await refused(verifier(fake), token)).reason == "too_long"
    assert fake.urls == []


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d", "eyJ.e30.!!", "bm90IGpzb24.e30.c2ln", "W10.e30.c2ln"])
async def test_malformed_tokens(idp: IdpKeys, token: str) -> None:
    assert (await refused(verifier(FakeIdp(idp.public_jwks())), token)).reason in ("malformed", "forbidden_header")


def test_what_looks_like_a_jws() -> None:
    assert looks_like_jws("aaa.bbb.ccc")
    assert not looks_like_jws("zg_a.b.c")
    assert not looks_like_jws("zg_0123456789")


# --- refused: signature and claims -----------------------------------------------------------


async def test_a_signature_by_a_key_not_in_the_jwks_is_refused(idp: IdpKeys) -> None:
    stranger = IdpKeys(issuer=ISSUER)  # same kids, other keys
    v = verifier(FakeIdp(idp.public_jwks()))
    for alg in ("RS256", "ES256", "EdDSA"):
        assert (await refused(v, stranger.token(alg))).reason == "bad_signature"


async def test_a_changed_payload_breaks_the_signature(idp: IdpKeys) -> None:
    header, _payload, signature = idp.token().split(".")
    tampered = f"{header}.{b64_json({**json.loads(_claims(idp.token())), 'roles': ['zg-auditors']})}.{signature}"
    assert (await refused(verifier(FakeIdp(idp.public_jwks())), tampered)).reason == "bad_signature"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example/realms/bank"}, "wrong_issuer"),
        ({"iss": None}, "wrong_issuer"),
        ({"aud": "another-api"}, "wrong_audience"),
        ({"aud": ["another-api", "account"]}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"exp": None}, "missing_claim"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"iat": int(time.time()) + 3600}, "not_yet_valid"),
    ],
    ids=[
        "foreign_issuer",
        "no_issuer",
        "wrong_aud",
        "wrong_aud_list",
        "no_aud",
        "no_exp",
        "expired",
        "exp_text",
        "nbf_future",
        "iat_future",
    ],
)
async def test_claims_are_pinned(idp: IdpKeys, claims: dict[str, Any], reason: str) -> None:
    assert (await refused(verifier(FakeIdp(idp.public_jwks())), idp.token(**claims))).reason == reason


async def test_roles_that_combine_separated_duties_are_refused_naming_the_values(idp: IdpKeys) -> None:
    refusal = await refused(verifier(FakeIdp(idp.public_jwks())), idp.token(roles=["zg-generators", "zg-auditors"]))
    assert refusal.reason == "sod_conflict"
    assert "zg-auditors, zg-generators" in refusal.message
    assert "separation of duties" in refusal.message


async def test_a_verified_token_is_remembered_until_its_exp_and_no_longer(idp: IdpKeys) -> None:
    wall = Clock(time.time())
    v = verifier(FakeIdp(idp.public_jwks()), clock=wall, leeway_s=0)
    token = idp.token("EdDSA", exp=int(wall.now) + 60)
    first = await v.verify(token)
    assert await v.verify(token) is first  # remembered: no second signature check
    wall.now += 61
    assert (await refused(v, token)).reason == "expired"  # past exp it is verified again, and refused


# --- the key cache -----------------------------------------------------------------------------


async def test_concurrent_unknown_kids_cause_one_fetch_per_cooldown(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    monotonic = Clock(1000.0)
    v = verifier(fake, monotonic=monotonic, jwks_url=JWKS_URL)
    await v.verify(idp.token())
    fake.delay_s = 0.05  # the refetch is slow, so the requests overlap it
    rotated = IdpKeys(issuer=ISSUER, prefix="rotated")
    monotonic.now += 61  # past the cooldown: the first unknown kid may refetch
    results = await asyncio.gather(*(v.verify(rotated.token()) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, TokenRefused) and r.reason == "unknown_kid" for r in results)
    assert fake.jwks_fetches == 2  # the first fill and ONE refetch for all twenty
    assert (await refused(v, rotated.token())).reason == "unknown_kid"  # within the cooldown: no fetch
    assert fake.jwks_fetches == 2


async def test_a_rotated_key_is_found_by_the_refetch(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    monotonic = Clock(1000.0)
    v = verifier(fake, monotonic=monotonic, jwks_url=JWKS_URL)
    await v.verify(idp.token())
    rotated = IdpKeys(issuer=ISSUER, prefix="rotated")
    fake.documents[JWKS_URL] = {"keys": rotated.public_jwks()}
    monotonic.now += 61
    assert (await v.verify(rotated.token("EdDSA"))).principal == "billing-batch"
    # the old key is gone from the set: its tokens stop verifying once the set is read again
    assert (await refused(v, idp.token())).reason == "unknown_kid"


async def test_stale_keys_are_read_again_and_kept_when_the_idp_fails(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    monotonic = Clock(1000.0)
    v = verifier(fake, monotonic=monotonic, jwks_url=JWKS_URL, jwks_cache_s=600)
    await v.verify(idp.token())
    monotonic.now += 601
    fake.down = True
    assert await v.verify(idp.token(jti="2"))  # a failed refresh keeps the cached keys
    assert fake.jwks_fetches == 2
    await v.verify(idp.token(jti="3"))  # ... and is not retried within the cooldown
    assert fake.jwks_fetches == 2


async def test_no_cached_key_and_the_idp_down_is_unavailable(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    fake.down = True
    v = verifier(fake)
    with pytest.raises(IdentityProviderUnavailable) as info:
        await v.verify(idp.token())
    assert info.value.code == "identity_provider_unavailable"
    assert info.value.retry_after >= 1
    with pytest.raises(IdentityProviderUnavailable):  # within the cooldown: refused without asking
        await v.verify(idp.token())
    assert fake.urls == [DISCOVERY]


async def test_a_discovery_document_of_another_issuer_is_not_used(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    fake.documents[DISCOVERY] = {"issuer": "https://evil.example", "jwks_uri": JWKS_URL}
    with pytest.raises(IdentityProviderUnavailable):
        await verifier(fake).verify(idp.token())
    assert fake.urls == [DISCOVERY]


async def test_a_discovered_plain_http_jwks_uri_is_not_fetched(idp: IdpKeys) -> None:
    fake = FakeIdp(idp.public_jwks())
    fake.documents[DISCOVERY] = {"issuer": ISSUER, "jwks_uri": "http://sso.bank.example/certs"}
    with pytest.raises(IdentityProviderUnavailable):
        await verifier(fake).verify(idp.token())
    assert fake.urls == [DISCOVERY]


def test_the_key_set_keeps_only_usable_signature_keys(idp: IdpKeys) -> None:
    rsa_jwk, ec_jwk, ed_jwk = idp.public_jwks()
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()  # noqa: S505 - the weak key to ignore
    small = {"kty": "RSA", "kid": "small", "n": b64(numbers.n.to_bytes(128, "big")), "e": "AQAB"}
    private = {**RSAKey.import_key(idp.rsa).as_dict(private=True), "kid": "private"}
    document = json.dumps(
        {
            "keys": [
                rsa_jwk,
                ec_jwk,
                ed_jwk,
                {**rsa_jwk, "kid": "enc", "use": "enc"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                small,
                private,
                "not a key",
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            ]
        }
    ).encode()
    keys = parse_key_set(document, key_types=frozenset({"RSA", "EC", "OKP"}), max_keys=20)
    assert sorted(str(kid) for kid, _kty in keys.keys) == sorted(idp.kid(a) for a in ("RS256", "ES256", "EdDSA"))
    only_rsa = parse_key_set(document, key_types=frozenset({"RSA"}), max_keys=20)
    assert [kid for kid, _kty in only_rsa.keys] == [idp.kid("RS256")]


def test_a_key_set_over_the_ceiling_or_not_json_is_refused(idp: IdpKeys) -> None:
    many = json.dumps({"keys": [{**idp.public_jwks()[2], "kid": f"k{i}"} for i in range(21)]}).encode()
    with pytest.raises(FetchFailed, match="jwks_max_keys"):
        parse_key_set(many, key_types=frozenset({"OKP"}), max_keys=20)
    for junk in (b"<html>", b"[]", b'{"keys": 1}'):
        with pytest.raises(FetchFailed):
            parse_key_set(junk, key_types=frozenset({"OKP"}), max_keys=20)
