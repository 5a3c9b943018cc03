"""`identity.scim`: off by default, and the refusals at start that name the key and the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.unit.config.test_identity_settings import load, problems
from zguard.config import Settings
from zguard.ops.scim_check import scim_finding

DIGEST = hashlib.sha256(b"a provisioning secret").hexdigest()


def scim_yaml(body: str) -> str:
    return "identity:\n  scim:\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def test_off_by_default_with_safe_bounds() -> None:
    scim = Settings().identity.scim
    assert scim.enabled is False
    assert scim.token_sha256 == []
    assert (scim.max_page_size, scim.max_body_bytes, scim.client_name) == (100, 16384, "idp")


def test_a_working_section_loads_from_yaml_and_the_environment(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        scim_yaml(f"enabled: true\ntoken_sha256: [{DIGEST}]\ngroup_role_map: {{zg-auditors: auditor}}"),
        env={"ZGUARD_IDENTITY__SCIM__CLIENT_NAME": "entra"},
    )
    assert settings.identity.scim.group_role_map == {"zg-auditors": "auditor"}
    assert settings.identity.scim.client_name == "entra"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("enabled: true", "token_sha256"),
        ("token_sha256: [the-secret-itself]", "token_sha256"),
        (f"token_sha256: [{DIGEST.upper()}]", "token_sha256"),
        (f"token_sha256: [{DIGEST}, {DIGEST}, {DIGEST}]", "token_sha256"),
        ("client_name: Entra ID", "client_name"),
        ("group_role_map: {zg-ops: superuser}", "superuser"),
        ('group_role_map: {" ": viewer}', "group_role_map"),
        ("max_body_bytes: 1048576", "max_body_bytes"),
        ("max_page_size: 0", "max_page_size"),
        ("failed_attempts_per_address: lots", "failed_attempts_per_address"),
        ("password: x", "password"),
    ],
)
def test_unusable_settings_are_refused_naming_the_key(tmp_path: Path, body: str, named: str) -> None:
    assert named in problems(tmp_path, scim_yaml(body))


def test_doctor_warns_when_the_secret_would_cross_the_network_in_clear(tmp_path: Path) -> None:
    assert scim_finding(Settings()) is None
    plain = load(tmp_path, scim_yaml(f"enabled: true\ntoken_sha256: [{DIGEST}]"))
    finding = scim_finding(plain)
    assert finding is not None
    assert finding.severity == "warn"
    assert finding.fix is not None
    assert "tls_cert_file" in finding.fix
    proxied = load(tmp_path, scim_yaml(f"enabled: true\ntoken_sha256: [{DIGEST}]") + "trusted_proxies: [10.0.0.0/8]\n")
    passed = scim_finding(proxied)
    assert passed is not None
    assert passed.severity == "pass"
