"""`zguard doctor`'s IdP checks (zguard.ops.identity_checks) against IdPs on loopback.

A stdlib key server (tests.common.idp.KeyServer: a discovery document and a JWKS whose contents
a test changes) stands in for `identity.jwt`'s IdP, and the real OpenID provider
(`oidc-provider-mock`) for `identity.oidc`'s. Kept out of tests/unit: these tests do I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.common.factories import free_port, make_settings
from tests.common.idp import AUDIENCE, IdpKeys, KeyServer
from tests.common.oidc_provider import MockProvider
from zguard.config.identity import IdentitySettings
from zguard.ops.doctor import run_checks
from zguard.ops.identity_checks import idp_findings


@pytest.fixture
def idp() -> Iterator[KeyServer]:
    with KeyServer(IdpKeys().public_jwks()) as server:
        yield server


def jwt_identity(issuer: str, **jwt: object) -> IdentitySettings:
    return IdentitySettings.model_validate({"jwt": {"enabled": True, "issuer": issuer, "audience": AUDIENCE, **jwt}})


def oidc_identity(issuer: str) -> IdentitySettings:
    oidc = {
        "enabled": True,
        "issuer": issuer,
        "client_id": "zguard-console",
        "client_secret": "console-secret-0123456789",
        "redirect_uri": "http://127.0.0.1:7860/login/oidc/callback",
    }
    return IdentitySettings.model_validate({"oidc": oidc})


def verdicts(identity: IdentitySettings) -> list[tuple[str, str]]:
    return [(f.check, f.severity) for f in idp_findings(identity)]


def test_nothing_is_checked_while_the_sections_are_off() -> None:
    assert idp_findings(IdentitySettings()) == []


def test_a_reachable_idp_with_keys_passes(idp: KeyServer) -> None:
    findings = idp_findings(jwt_identity(idp.issuer))
    assert [(f.check, f.severity) for f in findings] == [("jwt_discovery", "pass"), ("jwt_jwks", "pass")]
    assert "3 usable signing key(s)" in findings[1].message


def test_another_issuer_in_the_discovery_document_fails_naming_both(idp: KeyServer) -> None:
    discovery = idp.documents[
        f"{idp.issuer.removeprefix(f'http://127.0.0.1:{idp.port}')}/.well-known/openid-configuration"
    ]
    discovery["issuer"] = idp.issuer + "/"
    [finding] = idp_findings(jwt_identity(idp.issuer))
    assert (finding.check, finding.severity) == ("jwt_discovery", "fail")
    assert repr(idp.issuer + "/") in finding.message
    assert repr(idp.issuer + "/") in str(finding.fix)


def test_a_jwks_without_usable_keys_fails(idp: KeyServer) -> None:
    idp.set_keys([{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, {**IdpKeys().public_jwks()[0], "use": "enc"}])
    findings = idp_findings(jwt_identity(idp.issuer))
    assert [(f.check, f.severity) for f in findings] == [("jwt_discovery", "pass"), ("jwt_jwks", "fail")]
    assert "2 key(s), none usable" in findings[1].message
    assert findings[1].fix


def test_a_configured_jwks_url_is_checked_without_discovery(idp: KeyServer) -> None:
    assert verdicts(jwt_identity(idp.issuer, jwks_url=idp.jwks_url)) == [("jwt_jwks", "pass")]
    idp.down = True
    [finding] = idp_findings(jwt_identity(idp.issuer, jwks_url=idp.jwks_url))
    assert (finding.severity, "HTTP 503" in finding.message) == ("fail", True)


def test_an_unreachable_idp_fails_with_a_fix() -> None:
    [finding] = idp_findings(oidc_identity(f"http://127.0.0.1:{free_port()}"))
    assert (finding.check, finding.severity) == ("oidc_discovery", "fail")
    assert "ConnectError" in finding.message
    assert "reaches" in str(finding.fix)


def test_the_real_provider_passes_the_oidc_checks(tmp_path: Path) -> None:
    with MockProvider(tmp_path / "provider.log") as provider:
        assert verdicts(oidc_identity(provider.issuer)) == [("oidc_discovery", "pass"), ("oidc_jwks", "pass")]


def test_doctor_runs_them(idp: KeyServer, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "state",
        identity={"jwt": {"enabled": True, "issuer": idp.issuer, "audience": AUDIENCE}},
        api_auth={"enabled": True},
    )
    checks = {f.check: f.severity for f in run_checks(settings)}
    assert (checks["jwt_discovery"], checks["jwt_jwks"]) == ("pass", "pass")
