"""Configuration hygiene findings of `zguard scan` (pure: settings in, findings out)."""

from __future__ import annotations

from zguard.config import Settings
from zguard.ops.review import config_hygiene

WEAK = "$2b$04$" + "a" * 53
STRONG = "$2b$12$" + "a" * 53


def codes(settings: Settings) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in config_hygiene(settings)}


def test_loopback_defaults_are_clean() -> None:
    assert codes(Settings(api_auth={"users": [{"username": "u", "password": STRONG}]})) == set()


def test_exposed_listeners_without_tls_or_allowlist_auth_off_and_weak_hashes() -> None:
    settings = Settings(
        api={"host": "10.0.0.5", "allow": ["0.0.0.0/0"]},
        console={"host": "10.0.0.5", "allow": ["10.1.0.0/16"]},
        api_auth={"enabled": False, "users": [{"username": "weak", "password": WEAK}]},
    )
    assert codes(settings) == {
        ("listener_without_tls", "api.host"),
        ("listener_without_allowlist", "api.allow"),
        ("listener_without_tls", "console.host"),
        ("auth_disabled", "api_auth.enabled"),
        ("weak_bcrypt_cost", "api_auth.users weak"),
    }


def test_tls_settles_the_tls_finding() -> None:
    settings = Settings(
        console={"host": "10.0.0.5", "allow": ["10.1.0.0/16"], "tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}
    )
    assert codes(settings) == set()
