"""IdP bearer JWTs through the real API app, against a JWKS served over loopback.

The IdP is `tests.common.idp.KeyServer`: a stdlib HTTP server on 127.0.0.1 publishing a discovery
document and a JWKS (RSA, EC P-256, Ed25519), counting every GET. An attacker's key server runs
beside it for the `jku`/`x5u`/`jwk` attacks and must never be asked. The `AuthService` is built by
`zguard.serve.wiring.build_auth` from settings with `identity.jwt` on, as `zguard serve` builds
it; each refusal is asserted in the exact error shape AND in the audit trail with its reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.factories import api_client, make_settings, ready_runtime
from tests.common.idp import AUDIENCE, IdpKeys, KeyServer, hs256
from tests.functional.test_errors import assert_error, assert_retry_after
from zguard.app.audit_routes import AUDIT_PATH
from zguard.audit import AuditEvent
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.engine.pipeline import DiffusersEngine
from zguard.serve.wiring import Runtime, build_auth

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))
ROLE_MAP = {"zg-generators": "generator", "zg-auditors": "auditor", "zg-viewers": "viewer"}
GENERATE = {"prompt": "a red bicycle", "size": "16x16", "num_inference_steps": 1, "seed": 1}


@dataclass
class Deployment:
    settings: Settings
    audit: MemoryAuditSink
    runtime: Runtime
    idp: KeyServer
    keys: IdpKeys

    def api(self) -> httpx.AsyncClient:
        return api_client(self.settings, self.runtime)

    def denied(self) -> list[AuditEvent]:
        return self.audit.of_type("auth.denied")

    def reasons(self) -> list[tuple[str | None, str | None, Any]]:
        return [(e.code, e.auth_method, e.detail.get("reason")) for e in self.denied()]


@pytest.fixture
def keys() -> IdpKeys:
    return IdpKeys()


@pytest.fixture
def idp(keys: IdpKeys) -> Iterator[KeyServer]:
    with KeyServer(keys.public_jwks()) as server:
        keys.issuer = server.issuer
        yield server


@pytest.fixture
def attacker() -> Iterator[tuple[IdpKeys, KeyServer]]:
    """An attacker's keys (the IdP's kids, other keys) on a key server of their own."""
    evil = IdpKeys()
    with KeyServer(evil.public_jwks()) as server:
        yield evil, server


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(tmp_path: Path, demo_engine: DiffusersEngine, idp: KeyServer, keys: IdpKeys) -> Iterator[Deploy]:
    runtimes: list[Runtime] = []

    def build(**jwt: Any) -> Deployment:
        settings = make_settings(
            tmp_path / "state",
            api_auth={"enabled": True},
            generation={"min_side": 16},
            identity={
                "jwt": {"enabled": True, "issuer": idp.issuer, "audience": AUDIENCE, "role_map": ROLE_MAP, **jwt}
            },
        )
        audit = MemoryAuditSink()
        runtime = ready_runtime(settings, demo_engine, build_auth(settings, None, KEY, audit=audit))
        runtimes.append(runtime)
        return Deployment(settings, audit, runtime, idp, keys)

    yield build
    for runtime in runtimes:
        runtime.worker.stop(timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def refused(resp: httpx.Response) -> str:
    message = assert_error(resp, 401, "invalid_api_key", error_type="authentication_error")
    assert resp.headers["www-authenticate"].startswith('Bearer realm="zguard"')
    return message


def _claims(keys: IdpKeys, **overrides: Any) -> dict[str, Any]:
    import base64

    part = keys.token(**overrides).split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


# --- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_good_token_calls_the_api_with_its_mapped_roles_and_is_audited(deploy: Deploy, alg: str) -> None:
    d = deploy()
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=bearer(d.keys.token(alg)))
    assert resp.status_code == 200, resp.text
    allowed = d.audit.of_type("access.allowed")
    assert [(e.principal, e.auth_method, e.roles) for e in allowed] == [("jwt:billing-batch", "jwt", ("generator",))]
    assert allowed[0].detail["token"] == "jti:jti-0001"
    assert d.idp.jwks_fetches == 1
    assert d.denied() == []


async def test_a_generator_token_generates_and_is_refused_what_its_roles_lack(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        made = await api.post("/v1/images/generations", json=GENERATE, headers=bearer(d.keys.token("ES256")))
        audit = await api.get(AUDIT_PATH, headers=bearer(d.keys.token("ES256")))
    assert made.status_code == 200, made.text
    assert len(made.json()["data"]) == 1
    message = assert_error(audit, 403, "permission_denied", error_type="permission_error")
    assert "audit:read" in message
    denied = d.audit.of_type("access.denied")
    assert [(e.principal, e.auth_method) for e in denied] == [("jwt:billing-batch", "jwt")]


async def test_an_auditor_token_reads_the_audit_trail(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        resp = await api.get(AUDIT_PATH, headers=bearer(d.keys.token("EdDSA", roles=["zg-auditors"], azp="audit-tool")))
    assert resp.status_code == 200, resp.text


async def test_zguard_api_keys_still_go_their_own_way(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=bearer("zg_not_a_real_key"))
    refused(resp)
    assert d.reasons() == [("invalid_api_key", "bearer", "malformed")]
    assert d.idp.hits.total() == 0  # a zg_ key never reaches the IdP


# --- refused, each audited with its reason -------------------------------------------------------


def _attack(keys: IdpKeys, name: str) -> str:
    claims = _claims(keys)
    if name == "alg_none":
        return keys.sign({"alg": "none", "kid": keys.kid("RS256")}, claims)
    if name == "hs256_with_the_rsa_public_key":
        return hs256({"alg": "HS256", "typ": "JWT", "kid": keys.kid("RS256")}, claims, keys.rsa_public_pem())
    if name == "foreign_issuer":
        return keys.token(iss="https://sso.attacker.example/realms/bank")
    if name == "wrong_audience":
        return keys.token(aud="payments-api")
    if name == "missing_audience":
        return keys.token(aud=None)
    if name == "several_audiences_without_azp":
        return keys.token(aud=[AUDIENCE, "payments-api"], azp=None, sub="svc")
    if name == "expired":
        return keys.token(exp=claims["iat"] - 3600)
    if name == "not_yet_valid":
        return keys.token(nbf=claims["iat"] + 3600)
    if name == "issued_in_the_future":
        return keys.token(iat=claims["iat"] + 3600)
    if name == "kid_path":
        return keys.token(header={"kid": "../../etc/passwd"})
    if name == "kid_sql":
        return keys.token(header={"kid": "' OR 1=1 --"})
    if name == "over_the_length_cap":
        return keys.token(padding="A" * 9000)
    if name == "conflicting_roles":
        return keys.token(roles=["zg-generators", "zg-auditors"])
    raise AssertionError(name)


ATTACKS = [
    ("alg_none", "alg_not_allowed"),
    ("hs256_with_the_rsa_public_key", "alg_not_allowed"),
    ("foreign_issuer", "wrong_issuer"),
    ("wrong_audience", "wrong_audience"),
    ("missing_audience", "wrong_audience"),
    ("several_audiences_without_azp", "missing_azp"),
    ("expired", "expired"),
    ("not_yet_valid", "not_yet_valid"),
    ("issued_in_the_future", "not_yet_valid"),
    ("kid_path", "unknown_kid"),
    ("kid_sql", "unknown_kid"),
    ("over_the_length_cap", "too_long"),
    ("conflicting_roles", "sod_conflict"),
]


@pytest.mark.parametrize(("attack", "reason"), ATTACKS, ids=[a for a, _ in ATTACKS])
async def test_attacks_are_refused_and_audited(deploy: Deploy, attack: str, reason: str) -> None:
    d = deploy()
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=bearer(_attack(d.keys, attack)))
    message = refused(resp)
    assert d.reasons() == [("invalid_api_key", "jwt", reason)]
    assert d.denied()[0].principal is None  # an unverified token names nobody
    if reason == "sod_conflict":
        assert "zg-auditors, zg-generators" in message
    assert set(d.idp.hits) <= {
        "/realms/bank/.well-known/openid-configuration",
        d.idp.jwks_path,
    }


async def test_a_signature_by_a_key_not_in_the_jwks_is_refused(deploy: Deploy) -> None:
    d = deploy()
    stranger = IdpKeys(issuer=d.keys.issuer)  # the IdP's kids, not its keys
    async with d.api() as api:
        for alg in ("RS256", "ES256", "EdDSA"):
            refused(await api.get("/v1/models", headers=bearer(stranger.token(alg))))
    assert d.reasons() == [("invalid_api_key", "jwt", "bad_signature")] * 3


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
async def test_key_pointers_to_an_attackers_server_are_refused_and_never_followed(
    deploy: Deploy, attacker: tuple[IdpKeys, KeyServer], header: str
) -> None:
    evil, evil_server = attacker
    d = deploy()
    value: Any = {
        "jku": evil_server.jwks_url,
        "x5u": f"http://127.0.0.1:{evil_server.port}/cert.pem",
        "jwk": evil.public_jwks()[0],
        "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
    }[header]
    evil.issuer = d.keys.issuer
    token = evil.token("RS256", header={header: value})  # signed by the key the header points at
    async with d.api() as api:
        refused(await api.get("/v1/models", headers=bearer(token)))
    assert d.reasons() == [("invalid_api_key", "jwt", "forbidden_header")]
    assert header in str(d.denied()[0].detail["jwt"])
    assert evil_server.hits.total() == 0  # the attacker's server was never asked
    assert d.idp.hits.total() == 0  # refused before any key was needed


async def test_twenty_concurrent_unknown_kids_cause_exactly_one_jwks_fetch(deploy: Deploy) -> None:
    d = deploy(jwks_url=None, jwks_refresh_cooldown_s=1)
    rotated = IdpKeys(issuer=d.keys.issuer, prefix="rotated")
    d.idp.delay_s = 0.2  # a slow IdP, so the twenty overlap the fetch
    async with d.api() as api:
        answers = await asyncio.gather(
            *(api.get("/v1/models", headers=bearer(rotated.token("ES256"))) for _ in range(20))
        )
        for resp in answers:
            refused(resp)
        assert d.idp.jwks_fetches == 1
        assert d.reasons() == [("invalid_api_key", "jwt", "unknown_kid")] * 20
        # The IdP rotates its keys; after the cooldown the next unknown kid fetches ONE more time for all.
        d.idp.set_keys([*d.keys.public_jwks(), *rotated.public_jwks()])
        await asyncio.sleep(1.1)
        answers = await asyncio.gather(
            *(api.get("/v1/models", headers=bearer(rotated.token("ES256"))) for _ in range(20))
        )
    assert [r.status_code for r in answers] == [200] * 20
    assert d.idp.jwks_fetches == 2


async def test_the_idp_down_with_no_cached_key_is_503_and_audited(deploy: Deploy) -> None:
    d = deploy()
    d.idp.down = True
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=bearer(d.keys.token()))
    message = assert_error(resp, 503, "identity_provider_unavailable", error_type="server_error")
    assert "identity provider" in message
    assert_retry_after(resp)
    assert d.reasons() == [("identity_provider_unavailable", "jwt", "idp_unavailable")]
    assert "HTTP 503" in str(d.denied()[0].detail["jwt"])


async def test_the_idp_down_with_keys_cached_keeps_verifying(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        assert (await api.get("/v1/models", headers=bearer(d.keys.token()))).status_code == 200
        d.idp.down = True
        assert (await api.get("/v1/models", headers=bearer(d.keys.token("EdDSA")))).status_code == 200


async def test_failed_tokens_are_counted_per_address_and_a_valid_one_still_passes(deploy: Deploy) -> None:
    d = deploy()
    expired = d.keys.token(exp=1)
    async with d.api() as api:
        codes = [(await api.get("/v1/models", headers=bearer(expired))).status_code for _ in range(21)]
        good = await api.get("/v1/models", headers=bearer(d.keys.token()))
    assert codes[:20] == [401] * 20  # failed_logins_per_address: 20/minute
    assert codes[20] == 429
    assert good.status_code == 200  # the counter never refuses a valid token
    assert d.denied()[-1].code == "too_many_failed_logins"
    assert d.denied()[-1].detail["reason"] == "expired"
