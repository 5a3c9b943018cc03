from __future__ import annotations

from pathlib import Path

import pytest

from zguard.config import DEFAULT_CONFIG_PATH, Settings
from zguard.config.loader import load_settings, masked_settings
from zguard.config.sizes import check_size, parse_size
from zguard.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
HASH = "$2b$12$8i8ZeW6kD42l.xd8k374x.ch6fqDYAQ/UtnXviq460paZ/YYi0bie"


def load(tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None) -> Settings:
    path = None
    if text is not None:
        path = tmp_path / "zguard.yaml"
        path.write_text(text, encoding="utf-8")
    return load_settings(path, environ=env or {})


def problems(tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return "\n".join(info.value.problems)


def test_defaults_are_loopback_and_documented_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config/zguard.yaml here
    s = load_settings(environ={})
    assert (s.api.host, s.api.port, s.console.host, s.console.port) == ("127.0.0.1", 5000, "127.0.0.1", 7860)
    assert s.model.path is None
    assert s.model.device == "auto"
    assert s.api.docs_enabled is False


def test_env_overrides_yaml_and_parses_scalars(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "api:\n  port: 6000\ngeneration:\n  max_queue: 3\n",
        {"ZGUARD_API__PORT": "15000", "ZGUARD_MODEL__WARMUP": "false"},
    )
    assert s.api.port == 15000
    assert s.generation.max_queue == 3
    assert s.model.warmup is False


def test_top_level_env_key(tmp_path: Path) -> None:
    assert load(tmp_path, env={"ZGUARD_STATE_DIR": "/var/lib/zguard"}).state_dir == Path("/var/lib/zguard")


def test_zguard_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("console:\n  port: 7999\n", encoding="utf-8")
    assert load_settings(None, environ={"ZGUARD_CONFIG": str(path)}).console.port == 7999


def test_named_missing_file_is_an_error_default_missing_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not DEFAULT_CONFIG_PATH.exists()
    load_settings(None, environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ZGUARD_API__PORT": "abc"}, "api.port"),
        ({"ZGUARD_API__PORT": "70000"}, "api.port"),
        ({"ZGUARD_MODEL__DEVICE": "tpu"}, "model.device"),
        ({"ZGUARD_GENERATION__MAX_QUEUE": "-1"}, "generation.max_queue"),
        ({"ZGUARD_GENERATION__TIMEOUT_S": "0"}, "generation.timeout_s"),
        ({"ZGUARD_GENERATION__MAX_SIDE": "1000"}, "generation.max_side"),
        ({"ZGUARD_GENERATION__DEFAULT_SIZE": "big"}, "generation.default_size"),
        ({"ZGUARD_GENERATION__DEFAULT_SIZE": "4096x4096"}, "generation.default_size"),
        ({"ZGUARD_GENERATION__DEFAULT_STEPS": "60"}, "default_steps"),
        ({"ZGUARD_RATE_LIMIT": "10/fortnight"}, "rate_limit"),
        ({"ZGUARD_CONSOLE__PORT": "5000"}, "console.port"),
        ({"ZGUARD_GENERATION__MIN_SIDE": "512", "ZGUARD_GENERATION__MAX_PIXELS": "1024"}, "max_pixels"),
    ],
)
def test_bad_value_names_key_and_how_to_set_it(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    text = problems(tmp_path, env=env)
    assert expected in text
    assert "ZGUARD_" in text or "must" in text


def test_bad_value_message_names_env_variable_and_help(tmp_path: Path) -> None:
    text = problems(tmp_path, env={"ZGUARD_API__PORT": "abc"})
    assert "ZGUARD_API__PORT" in text
    assert "TCP port" in text


def test_unknown_keys_are_refused_with_spelling_hint(tmp_path: Path) -> None:
    text = problems(tmp_path, "api:\n  prot: 5000\n", {"ZGUARD_GENRATION__MAX_QUEUE": "1"})
    assert "api.prot: unknown setting" in text
    assert "genration: unknown setting" in text


def test_client_variables_are_ignored_and_other_strays_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the README's clients read ZGUARD_API_KEY: every zguard command refused to start beside it
    with caplog.at_level("WARNING", logger="zguard.config"):
        settings = load(tmp_path, env={"ZGUARD_API_KEY": "zg_x", "ZGUARD_STATEDIR": "/srv", "ZGUARD_API__PORT": "5001"})
    assert settings.api.port == 5001
    assert settings.state_dir == Path("state")
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring ZGUARD_STATEDIR: it names no setting (see docs/settings.md)"
    ]
    assert "api.key: unknown setting" in problems(tmp_path, env={"ZGUARD_API__KEY": "zg_x"})


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = problems(tmp_path, env={"ZGUARD_API__PORT": "x", "ZGUARD_MODEL__DEVICE": "y"})
    assert "api.port" in text
    assert "model.device" in text


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    assert "line 2" in problems(tmp_path, "api:\n  port: : 5\n")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert "mapping" in problems(tmp_path, "- 1\n- 2\n")


def test_deployment_guide_security_yaml_loads() -> None:
    s = load_settings(REPO / "config" / "security.yaml", environ={})
    assert s.api_auth.enabled is True
    assert s.api_auth.users[0].username == "designer01"
    assert s.api_auth.users[0].password.get_secret_value().startswith("$2b$")
    assert s.rate_limit == "10/分钟"


def test_shipped_default_config_loads() -> None:
    load_settings(REPO / "config" / "zguard.yaml", environ={})


def test_guide_format_inline(tmp_path: Path) -> None:
    text = f"api_auth:\n  enabled: true\n  users:\n    - username: ops\n      password: '{HASH}'\nrate_limit: 10/分钟\n"
    assert load(tmp_path, text).api_auth.users[0].username == "ops"


def test_plaintext_password_refused_with_how_to_hash(tmp_path: Path) -> None:
    text = problems(tmp_path, "api_auth:\n  users:\n    - username: ops\n      password: hunter2\n")
    assert "api_auth.users.0.password" in text
    assert "bcrypt" in text
    assert "hunter2" not in text


def test_secrets_masked_in_effective_settings(tmp_path: Path) -> None:
    s = load(tmp_path, f"api_auth:\n  users:\n    - username: ops\n      password: '{HASH}'\n")
    dumped = masked_settings(s)
    assert dumped["api_auth"]["users"][0]["password"] == "**********"
    assert HASH not in repr(dumped)
    assert HASH not in repr(s)


@pytest.mark.parametrize(("text", "size"), [("1024x768", (1024, 768)), ("64X64", (64, 64)), ("16×32", (16, 32))])
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "1024", "0x0", "6٤x64", "６４x64", "01x16", "-16x16", "16x16x16", "1e3x16", " 16x16", "999999x16"]
)
def test_parse_size_refuses(text: str) -> None:
    assert parse_size(text) is None


def test_check_size_limits() -> None:
    limits = Settings().generation
    assert check_size((1024, 1024), limits) is None
    assert "multiples of 16" in (check_size((1000, 1024), limits) or "")
    assert "between" in (check_size((32, 1024), limits) or "")
    assert "between" in (check_size((4096, 1024), limits) or "")
    assert "pixels" in (check_size((2048, 2048), limits.model_copy(update={"max_pixels": 1024 * 1024})) or "")


# --- network allowlists ----------------------------------------------------------------------


def test_allowlists_default_to_loopback_and_no_proxies_are_trusted(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.api.allow == ["127.0.0.0/8", "::1/128"]
    assert s.console.allow == ["127.0.0.0/8", "::1/128"]
    assert s.trusted_proxies == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ('["10.0.0.0/8"]', ["10.0.0.0/8"]),
        ('["10.0.0.5", "2001:db8::/32", "::1"]', ["10.0.0.5/32", "2001:db8::/32", "::1/128"]),
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("10.0.0.0/8, 192.168.1.7 ::1", ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]),
        ('["::ffff:10.0.0.0/104"]', ["10.0.0.0/8"]),
        ("[]", []),
    ],
)
def test_allowlist_from_environment_written_as_the_network_it_means(
    tmp_path: Path, env: str, expected: list[str]
) -> None:
    s = load(tmp_path, env={"ZGUARD_API__ALLOW": env, "ZGUARD_CONSOLE__ALLOW": env, "ZGUARD_TRUSTED_PROXIES": env})
    assert s.api.allow == s.console.allow == s.trusted_proxies == expected


def test_allowlist_from_yaml(tmp_path: Path) -> None:
    s = load(tmp_path, "api:\n  allow: [10.20.0.0/16, '2001:db8::/32']\ntrusted_proxies:\n  - 10.0.0.1\n")
    assert s.api.allow == ["10.20.0.0/16", "2001:db8::/32"]
    assert s.console.allow == ["127.0.0.0/8", "::1/128"]
    assert s.trusted_proxies == ["10.0.0.1/32"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"ZGUARD_API__ALLOW": '["10.0.0.0/8", "10.0.0.300"]'},
            "api.allow: entry 1: '10.0.0.300' is not an IP network",
        ),
        ({"ZGUARD_CONSOLE__ALLOW": "localhost"}, "console.allow: entry 0: 'localhost' is not an IP network"),
        ({"ZGUARD_API__ALLOW": "10.1.2.3/8"}, "write 10.0.0.0/8 for the whole network, or 10.1.2.3 alone"),
        ({"ZGUARD_TRUSTED_PROXIES": '["lb.internal"]'}, "trusted_proxies: entry 0: 'lb.internal'"),
        ({"ZGUARD_API__ALLOW": "[1, 2]"}, "api.allow.0"),
        ({"ZGUARD_API__ALLOW": "{a: 1}"}, "api.allow"),
    ],
)
def test_bad_allowlist_entry_stops_start_up_naming_key_and_entry(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    text = problems(tmp_path, env=env)
    assert expected in text
    assert "ZGUARD_" in text
    assert "For further information" not in text


def test_every_bad_allowlist_entry_reported_at_once(tmp_path: Path) -> None:
    text = problems(tmp_path, "api:\n  allow: [nope, 10.0.0.0/8, 10.1.2.3/8]\nconsole:\n  allow: [x]\n")
    assert "api.allow: entry 0: 'nope'" in text
    assert "entry 2: '10.1.2.3/8' has host bits set" in text
    assert "console.allow: entry 0: 'x'" in text
    assert "ZGUARD_API__ALLOW" in text
    assert "CIDR" in text


def test_bad_list_item_names_the_variable_holding_the_list(tmp_path: Path) -> None:
    text = problems(tmp_path, env={"ZGUARD_API__ALLOW": '["10.0.0.0/8", 5]'})
    assert "api.allow.1:" in text
    assert "ZGUARD_API__ALLOW)" in text
    assert "ZGUARD_API__ALLOW__1" not in text


def test_guide_users_generate_by_default_and_roles_must_exist(tmp_path: Path) -> None:
    ok = load(tmp_path, f"api_auth:\n  users:\n    - username: ops\n      password: '{HASH}'\n")
    assert ok.api_auth.users[0].roles == ["generator"]
    text = problems(
        tmp_path, f"api_auth:\n  users:\n    - username: ops\n      password: '{HASH}'\n      roles: [root]\n"
    )
    assert "api_auth.users.0.roles: unknown role(s) root" in text


def test_user_roles_obey_separation_of_duties(tmp_path: Path) -> None:
    text = problems(
        tmp_path, f"api_auth:\n  users:\n    - username: ops\n      password: '{HASH}'\n      roles: [admin, auditor]\n"
    )
    assert "api_auth.users.0.roles" in text


def test_custom_roles(tmp_path: Path) -> None:
    s = load(tmp_path, "roles:\n  - name: redteam\n    permissions: [images:generate]\n    inherits: [viewer]\n")
    assert "redteam" in s.role_registry().roles
    assert "roles: custom role 'x' combines" in problems(
        tmp_path, "roles:\n  - name: x\n    permissions: [images:generate, audit:export]\n"
    )
    assert "unknown" in problems(tmp_path, "roles:\n  - name: x\n    permissions: [images:destroy]\n")


def test_duplicate_config_usernames_refused(tmp_path: Path) -> None:
    user = f"    - username: ops\n      password: '{HASH}'\n"
    assert "ops more than once" in problems(tmp_path, "api_auth:\n  users:\n" + user + user)


@pytest.mark.parametrize(
    "key", ["FAILED_LOGINS_PER_USER_ADDRESS", "FAILED_LOGINS_PER_USER", "FAILED_LOGINS_PER_ADDRESS"]
)
def test_failed_login_limits_are_rates(tmp_path: Path, key: str) -> None:
    assert f"api_auth.{key.lower()}" in problems(tmp_path, env={f"ZGUARD_API_AUTH__{key}": "lots"})


# --- rate limits -----------------------------------------------------------------------------


def test_rate_limits_defaults_and_environment(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.rate_limits.storage.get_secret_value() == "memory://"
    assert (s.rate_limits.strategy, s.rate_limits.max_concurrent_per_principal) == ("moving-window", 2)
    assert (s.rate_limits.per_role, s.rate_limits.per_principal) == ({}, {})
    s = load(
        tmp_path,
        env={
            "ZGUARD_RATE_LIMIT": "10/分钟;100/小时;1000/天",
            "ZGUARD_RATE_LIMITS__STORAGE": "redis://:pw@127.0.0.1:6379/3",
            "ZGUARD_RATE_LIMITS__PER_ROLE": "{generator: 5/minute}",
            "ZGUARD_RATE_LIMITS__STRATEGY": "sliding-window-counter",
        },
    )
    assert s.rate_limit == "10/分钟;100/小时;1000/天"
    assert s.rate_limits.per_role == {"generator": "5/minute"}
    assert "pw" not in str(masked_settings(s))  # the Redis URL may hold a password


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rate_limits:\n  storage: memcached://127.0.0.1:11211\n", "rate_limits.storage: must be memory://"),
        ("rate_limits:\n  storage: 'redis://'\n", "needs a host"),
        ("rate_limits:\n  strategy: fixed-window\n", "rate_limits.strategy"),
        ("rate_limits:\n  max_concurrent_per_principal: 0\n", "rate_limits.max_concurrent_per_principal"),
        ("rate_limits:\n  per_role:\n    generator: 10/fortnight\n", "generator: unknown time unit"),
        ("rate_limits:\n  per_role:\n    wizard: 10/minute\n", "unknown role(s) wizard"),
        ("rate_limits:\n  per_principal:\n    svc: '10,000/day'\n", "svc:"),
        ("rate_limit: 10/minute;20/minute\n", "rate_limit"),
    ],
)
def test_bad_rate_limit_settings_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_bad_redis_url_is_not_echoed(tmp_path: Path) -> None:
    text = problems(tmp_path, env={"ZGUARD_RATE_LIMITS__STORAGE": "http://user:s3cret@example"})
    assert "s3cret" not in text


def test_settings_users_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    users = f"api_auth:\n  users:\n    - {{username: Bob, password: '{HASH}'}}\n    - {{username: bob, password: '{HASH}'}}\n"
    assert "names Bob, bob more than once (names are compared without case)" in problems(tmp_path, users)
