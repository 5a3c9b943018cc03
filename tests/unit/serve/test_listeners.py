"""`zguard.serve.listeners`: which settings `zguard serve` refuses to start with, and what it says; the
listening socket."""

from __future__ import annotations

from typing import Any

import pytest

from zguard.config import Settings
from zguard.errors import ConfigError
from zguard.serve.listeners import check_safe


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
    assert problems == [
        f"{name}.allow: empty while {name}.host {host} is reachable from the network; "
        f"list the networks that may call the {name} listener, e.g. {name}.allow: [10.20.0.0/16] "
        f"(or ZGUARD_{name.upper()}__ALLOW='[\"10.20.0.0/16\"]')"
    ]


def test_non_loopback_with_an_allowlist_and_authentication_starts() -> None:
    check_safe(Settings.model_validate({"api": {"host": "0.0.0.0", "allow": ["10.0.0.0/8"]}}))


def test_authentication_off_is_refused_off_loopback() -> None:
    problems = refusals(api={"host": "0.0.0.0", "allow": ["10.0.0.0/8"]}, api_auth={"enabled": False})
    assert problems == [
        "api.host: 0.0.0.0 is not a loopback address while api_auth.enabled is false; "
        "set api_auth.enabled: true or bind api.host to 127.0.0.1"
    ]


def test_authentication_off_on_loopback_starts() -> None:
    check_safe(Settings.model_validate({"api_auth": {"enabled": False}}))


def test_every_problem_of_both_listeners_reported_at_once() -> None:
    problems = refusals(
        api={"host": "0.0.0.0", "allow": []}, console={"host": "::", "allow": []}, api_auth={"enabled": False}
    )
    assert [p.split(":")[0] for p in problems] == ["api.host", "api.allow", "console.host", "console.allow"]


def test_listening_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    import socket

    from zguard.serve.listeners import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
