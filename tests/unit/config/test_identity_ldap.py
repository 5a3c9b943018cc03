"""`identity.ldap` settings: TLS only, filter templates, what `enabled` needs, roles known."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from zguard.config import Settings
from zguard.config.identity_ldap import LdapSettings

ENABLED = {
    "enabled": True,
    "url": "ldaps://dc1.bank.example:636",
    "bind_dn": "CN=svc-zguard,OU=Service,DC=bank,DC=example",
    "bind_password": "secret",
    "user_base_dn": "OU=Staff,DC=bank,DC=example",
    "group_base_dn": "OU=Groups,DC=bank,DC=example",
}


def refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        LdapSettings.model_validate(values)
    return str(caught.value)


def test_a_complete_section_validates_and_keeps_the_password_secret() -> None:
    settings = LdapSettings.model_validate(ENABLED)
    assert settings.bind_password is not None
    assert "secret" not in repr(settings)
    assert settings.bind_password.get_secret_value() == "secret"


def test_plain_ldap_without_starttls_is_refused_and_accepted_with_it() -> None:
    assert "plain LDAP" in refusal(**{**ENABLED, "url": "ldap://dc1.bank.example"})
    assert "plain LDAP" in refusal(**{**ENABLED, "failover_urls": ["ldap://dc2.bank.example"]})
    assert LdapSettings.model_validate({**ENABLED, "url": "ldap://dc1.bank.example", "start_tls": True}).start_tls
    assert "start_tls is for ldap://" in refusal(**{**ENABLED, "start_tls": True})


@pytest.mark.parametrize(
    "url", ["https://dc1.bank.example", "ldaps://", "ldaps://u:p@dc1", "ldaps://dc1/dc=bank", "ldaps://dc1:99999"]
)
def test_urls_other_than_a_bare_ldap_server_are_refused(url: str) -> None:
    assert "identity.ldap.url" in refusal(**{**ENABLED, "url": url})


@pytest.mark.parametrize(
    ("key", "template", "needs"),
    [
        ("user_filter", "(uid=alice)", "{username}"),
        ("user_filter", "uid={username}", "parentheses"),
        ("user_filter", "(&(uid={username})(x={other}))", "only the placeholder"),
        ("group_filter", "(member=x)", "{dn}"),
    ],
)
def test_filter_templates_need_their_placeholder_in_one_filter(key: str, template: str, needs: str) -> None:
    assert needs in refusal(**{**ENABLED, key: template})


def test_enabled_names_what_it_is_missing() -> None:
    message = refusal(enabled=True, url="ldaps://dc1")
    for key in ("bind_dn", "user_base_dn", "bind_password or bind_password_file", "group_base_dn"):
        assert key in message
    assert "not both" in refusal(**{**ENABLED, "bind_password_file": "/run/secret"})
    member_of = {**ENABLED, "group_base_dn": None, "group_membership": "member_of"}
    assert LdapSettings.model_validate(member_of).group_membership == "member_of"


def test_role_map_roles_must_exist_and_authentication_be_on(tmp_path: Any) -> None:
    base = {"state_dir": str(tmp_path), "integrity": {"allow_root": True}}
    with pytest.raises(ValidationError, match=r"identity\.ldap\.role_map: unknown role"):
        Settings.model_validate(
            {**base, "api_auth": {"enabled": True}, "identity": {"ldap": {**ENABLED, "role_map": {"g": "wizard"}}}}
        )
    with pytest.raises(ValidationError, match=r"needs api_auth\.enabled"):
        Settings.model_validate({**base, "api_auth": {"enabled": False}, "identity": {"ldap": ENABLED}})
    ok = Settings.model_validate(
        {**base, "api_auth": {"enabled": True}, "identity": {"ldap": {**ENABLED, "role_map": {"g": "auditor"}}}}
    )
    assert ok.identity.ldap.role_map == {"g": "auditor"}
