"""API calls with a real OpenID provider's tokens (`identity.jwt` against `oidc-provider-mock`).

tests/functional/test_jwt_bearer.py covers the attacks with a key server whose tokens the tests
forge; here the keys, the discovery document and the tokens are a real provider's (authlib's
authorization server on loopback, tests.common.oidc_provider): zguard discovers its JWKS from the
issuer, verifies its RS256 signatures, pins `iss` and `aud`, and maps its `groups` claim to roles.
The provider issues opaque access tokens and no client-credentials grant, so its JWTs here are
id_tokens: signed, with `iss`, `aud` (the client id), `azp`, `exp` and `iat` like an access token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.common.factories import api_client, make_settings, ready_runtime
from tests.common.oidc_provider import MockProvider
from zguard.audit.memory import MemoryAuditSink
from zguard.engine.pipeline import DiffusersEngine
from zguard.serve.wiring import build_auth

pytestmark = pytest.mark.anyio

CLIENT = "payments-batch"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    with MockProvider(tmp_path_factory.mktemp("oidc") / "provider.log") as idp:
        yield idp


@pytest.fixture
async def api(
    tmp_path: Path, demo_engine: DiffusersEngine, provider: MockProvider
) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryAuditSink]]:
    settings = make_settings(
        tmp_path,
        api_auth={"enabled": True},
        identity={
            "jwt": {
                "enabled": True,
                "issuer": provider.issuer,
                "audience": CLIENT,
                "principal_claims": ["azp", "sub"],
                "roles_claim": "groups",
                "role_map": {"zg-viewers": "viewer", "zg-auditors": "auditor", "zg-generators": "generator"},
            }
        },
    )
    audit = MemoryAuditSink()
    runtime = ready_runtime(settings, demo_engine, build_auth(settings, None, bytes(32), audit=audit))
    async with api_client(settings, runtime) as client:
        yield client, audit
    runtime.worker.stop(timeout=10)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_the_providers_token_calls_the_api_with_its_groups_as_roles(
    api: tuple[httpx.AsyncClient, MemoryAuditSink], provider: MockProvider
) -> None:
    client, audit = api
    provider.user("svc-payments", groups=["zg-viewers", "staff"])
    token = provider.id_token(CLIENT, "svc-payments")
    models = await client.get("/v1/models", headers=_bearer(token))
    assert models.status_code == 200, models.text
    allowed = audit.of_type("access.allowed")[-1]
    # its id_token names one audience and no `azp`, so `sub` names the system (principal_claims)
    assert (allowed.principal, allowed.auth_method, allowed.roles) == ("jwt:svc-payments", "jwt", ("viewer",))
    audit_read = await client.get("/v1/audit/events", headers=_bearer(token))  # a viewer reads no audit trail
    assert audit_read.json()["error"]["code"] == "permission_denied"


async def test_tokens_for_another_client_or_with_separated_duties_are_refused(
    api: tuple[httpx.AsyncClient, MemoryAuditSink], provider: MockProvider
) -> None:
    client, audit = api
    provider.user("svc-other", groups=["zg-viewers"])
    other = await client.get("/v1/models", headers=_bearer(provider.id_token("another-app", "svc-other")))
    assert other.json()["error"]["code"] == "invalid_api_key"
    provider.user("svc-both", groups=["zg-auditors", "zg-generators"])
    both = await client.get("/v1/models", headers=_bearer(provider.id_token(CLIENT, "svc-both")))
    assert both.json()["error"]["code"] == "invalid_api_key"
    reasons = [event.detail.get("reason") for event in audit.of_type("auth.denied")]
    assert reasons == ["wrong_audience", "sod_conflict"]
