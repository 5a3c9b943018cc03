"""`identity.jwt`: safe defaults, and the refusals at start that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from zguard.config import Settings
from zguard.config.loader import load_settings
from zguard.errors import ConfigError

GOOD = (
    "identity:\n  jwt:\n    enabled: true\n    issuer: https://sso.bank.example/realms/bank\n    audience: zguard-api\n"
)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = tmp_path / "zguard.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env or {})
    return "\n".join(info.value.problems)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "zguard.yaml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, environ=env or {})


def test_off_by_default_with_asymmetric_algorithms() -> None:
    jwt = Settings().identity.jwt
    assert jwt.enabled is False
    assert jwt.algorithms == ["RS256", "ES256", "EdDSA"]
    assert (jwt.leeway_s, jwt.jwks_refresh_cooldown_s, jwt.jwks_max_keys, jwt.timeout_s) == (30, 60.0, 20, 5.0)
    assert jwt.principal_claims == ["azp", "client_id", "sub"]


def test_a_complete_section_loads_and_env_overrides_it(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        GOOD + "    role_map:\n      zg-generators: generator\n",
        {"ZGUARD_IDENTITY__JWT__ALGORITHMS": "ES256,EdDSA", "ZGUARD_IDENTITY__JWT__LEEWAY_S": "10"},
    )
    assert s.identity.jwt.algorithms == ["ES256", "EdDSA"]
    assert s.identity.jwt.leeway_s == 10
    assert s.identity.jwt.role_map == {"zg-generators": "generator"}


@pytest.mark.parametrize("alg", ["none", "HS256", "HS384", "HS512", "hs256", "None"])
def test_none_and_hmac_are_refused(tmp_path: Path, alg: str) -> None:
    text = problems(tmp_path, GOOD + f"    algorithms: [RS256, {alg}]\n")
    assert "identity.jwt.algorithms" in text
    assert f"{alg} refused" in text


def test_unknown_algorithms_and_an_empty_list_are_refused(tmp_path: Path) -> None:
    assert "unknown algorithm(s) RS1" in problems(tmp_path, GOOD + "    algorithms: [RS1]\n")
    assert "at least one algorithm" in problems(tmp_path, GOOD + "    algorithms: []\n")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("identity:\n  jwt:\n    enabled: true\n    audience: zguard-api\n", "needs issuer"),
        ("identity:\n  jwt:\n    enabled: true\n    issuer: https://sso.bank.example/r\n", "needs audience"),
        ("identity:\n  jwt:\n    enabled: true\n", "needs issuer and audience"),
    ],
)
def test_enabled_needs_issuer_and_audience(tmp_path: Path, text: str, words: str) -> None:
    assert words in problems(tmp_path, text)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("issuer", "http://sso.bank.example/realms/bank", "must use https"),
        ("issuer", "sso.bank.example", "must be an https:// URL"),
        ("issuer", "https://user:pw@sso.bank.example/", "credentials"),
        ("jwks_url", "http://10.0.0.5/certs", "must use https"),
        ("jwks_url", "ftp://sso.bank.example/certs", "must be an https:// URL"),
    ],
)
def test_idp_urls_are_https_unless_loopback(tmp_path: Path, key: str, value: str, words: str) -> None:
    text = problems(
        tmp_path,
        GOOD.replace("    issuer: https://sso.bank.example/realms/bank\n", "")
        + f"    {key}: {value}\n"
        + ("" if key == "issuer" else "    issuer: https://sso.bank.example/realms/bank\n"),
    )
    assert f"identity.jwt.{key}" in text
    assert words in text


def test_loopback_http_is_allowed_for_a_test_idp(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "identity:\n  jwt:\n    enabled: true\n    issuer: http://127.0.0.1:8080/realms/bank\n    audience: zguard-api\n",
    )
    assert s.identity.jwt.issuer == "http://127.0.0.1:8080/realms/bank"


@pytest.mark.parametrize(
    ("key", "value"),
    [("leeway_s", "301"), ("jwks_max_keys", "0"), ("timeout_s", "0"), ("jwks_refresh_cooldown_s", "0")],
)
def test_bounds(tmp_path: Path, key: str, value: str) -> None:
    assert f"identity.jwt.{key}" in problems(tmp_path, GOOD + f"    {key}: {value}\n")


def test_role_map_names_known_roles_only(tmp_path: Path) -> None:
    text = problems(tmp_path, GOOD + "    role_map:\n      zg-admins: superuser\n")
    assert "identity.jwt.role_map: unknown role(s) superuser" in text
    assert "known: admin, approver, auditor, generator, viewer" in text


def test_role_map_may_name_a_custom_role(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        GOOD + "    role_map:\n      zg-red: red-team\nroles:\n  - name: red-team\n    inherits: [generator]\n",
    )
    assert s.identity.jwt.role_map == {"zg-red": "red-team"}


def test_tokens_need_authentication_on(tmp_path: Path) -> None:
    text = problems(tmp_path, GOOD + "api_auth:\n  enabled: false\n")
    assert "identity.jwt.enabled needs api_auth.enabled" in text


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    assert "identity.jwt.verify_signature" in problems(tmp_path, GOOD + "    verify_signature: false\n")
