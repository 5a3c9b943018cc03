"""`check_safe`: which settings `zguard serve` refuses to start with, and what it says."""

from __future__ import annotations

from typing import Any

import pytest

from zguard.config import Settings
from zguard.errors import ConfigError
from zguard.server import check_safe


def refusals(**sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_safe(Settings.model_validate(sections))
    return info.value.problems


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"api": {"host": "localhost"}, "console": {"host": "::1"}},
        {"api": {"host": "127.0.0.2", "allow": []}},  # loopback with nobody allowed: useless, not unsafe
        {"api": {"allow": ["0.0.0.0/0"]}, "trusted_proxies": ["10.0.0.1"]},
    ],
)
def test_loopback_listeners_start(sections: dict[str, Any]) -> None:
    check_safe(Settings.model_validate(sections))


@pytest.mark.parametrize(("name", "host"), [("api", "0.0.0.0"), ("console", "::"), ("api", "10.1.2.3")])
def test_non_loopback_with_an_empty_allowlist_refuses_to_start(name: str, host: str) -> None:
    problems = refusals(**{name: {"host": host, "allow": []}})
    allow = [p for p in problems if p.startswith(f"{name}.allow:")]
    assert allow == [
        f"{name}.allow: empty while {name}.host {host} is reachable from the network; "
        f"list the networks that may call the {name} listener, e.g. {name}.allow: [10.20.0.0/16] "
        f"(or ZGUARD_{name.upper()}__ALLOW='[\"10.20.0.0/16\"]')"
    ]
    # Until authentication lands, the bind itself is refused too; both are reported at once.
    assert [p for p in problems if p.startswith(f"{name}.host:")]
    assert len(problems) == 2


def test_non_loopback_with_an_allowlist_is_refused_only_for_missing_authentication() -> None:
    problems = refusals(api={"host": "0.0.0.0", "allow": ["10.0.0.0/8"]})
    assert len(problems) == 1
    assert problems[0].startswith("api.host: 0.0.0.0 is not a loopback address")
    assert "authentication" in problems[0]
    assert "bind api.host to 127.0.0.1" in problems[0]


def test_every_problem_of_both_listeners_reported_at_once() -> None:
    problems = refusals(api={"host": "0.0.0.0", "allow": []}, console={"host": "::", "allow": []})
    assert [p.split(":")[0] for p in problems] == ["api.host", "api.allow", "console.host", "console.allow"]
