"""`identity.oidc`: what starts, and what is refused at start with the key and the fix named."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from zguard.config import Settings

GOOD = {
    "enabled": True,
    "issuer": "https://sso.bank.example/realms/bank",
    "client_id": "zguard-console",
    "client_secret": "0123456789abcdef0123",
    "redirect_uri": "https://console.bank.example/login/oidc/callback",
}


def settings(api_auth: bool = True, **oidc: Any) -> Settings:
    return Settings.model_validate({"api_auth": {"enabled": api_auth}, "identity": {"oidc": {**GOOD, **oidc}}})


def refusal(**oidc: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**oidc)
    return str(caught.value)


def test_defaults_and_a_good_section() -> None:
    oidc = settings(role_map={"zg-auditors": "auditor"}, required_amr={"admin": ["mfa"]}).identity.oidc
    assert oidc.scopes == ["openid", "profile", "email"]
    assert (oidc.username_claim, oidc.roles_claim, oidc.leeway_s, oidc.login_timeout_s) == (
        "preferred_username",
        "groups",
        30,
        600,
    )
    assert not Settings().identity.oidc.enabled  # off unless asked for


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"issuer": None}, "identity.oidc.enabled needs issuer"),
        ({"client_secret": None}, "exactly one of client_secret and client_secret_file"),
        ({"client_secret_file": "/etc/zguard/secret"}, "exactly one of client_secret and client_secret_file"),
        ({"client_secret": "short"}, "under 16 characters"),
        ({"issuer": "http://sso.bank.example/realms/bank"}, "identity.oidc.issuer must use https"),
        (
            {"redirect_uri": "http://console.bank.example/login/oidc/callback"},
            "identity.oidc.redirect_uri must use https",
        ),
        ({"redirect_uri": "https://console.bank.example/callback"}, "path /login/oidc/callback"),
        ({"post_logout_redirect_uri": "http://console.bank.example/login"}, "post_logout_redirect_uri must use https"),
        ({"scopes": "profile email"}, "must include openid"),
        ({"algorithms": ["RS256", "HS256"]}, "HS256 refused"),
        ({"algorithms": ["none"]}, "none refused"),
        ({"role_map": {"zg-x": "superuser"}}, "identity.oidc.role_map: unknown role(s) superuser"),
        ({"required_acr": {"root": ["mfa"]}}, "identity.oidc.required_acr: unknown role(s) root"),
        ({"required_amr": {"admin": []}}, "list the accepted values"),
    ],
)
def test_unsafe_or_unusable_settings_are_refused_naming_the_key(change: dict[str, Any], named: str) -> None:
    assert named in refusal(**change)


def test_oidc_needs_authentication_on() -> None:
    with pytest.raises(ValidationError, match=re.escape("identity.oidc.enabled needs api_auth.enabled")):
        settings(api_auth=False)


def test_a_loopback_idp_may_use_plain_http() -> None:
    oidc = settings(issuer="http://127.0.0.1:8080", redirect_uri="http://127.0.0.1:7860/login/oidc/callback")
    assert oidc.identity.oidc.issuer == "http://127.0.0.1:8080"
