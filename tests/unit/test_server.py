"""`check_safe`: which settings `zguard serve` refuses to start with, and what it says."""

from __future__ import annotations

from pathlib import Path
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

    from zguard.server import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


class _FakeServer:
    should_exit = False
    force_exit = False


def test_stop_signals_first_drains_second_forces_duplicate_ignored() -> None:
    import signal

    from zguard.server import StopSignals
    from zguard.services.readiness import ModelState, Readiness

    now = [100.0]
    servers = [_FakeServer(), _FakeServer()]
    readiness = Readiness()
    signals = StopSignals(servers, readiness, grace_s=30, clock=lambda: now[0])  # type: ignore[arg-type]
    assert signals.remaining_s() == 30
    signals(signal.SIGTERM)
    assert all(s.should_exit and not s.force_exit for s in servers)
    assert readiness.state is ModelState.STOPPING
    now[0] += 0.2
    signals(signal.SIGINT)  # the same stop delivered twice (terminal + make): still draining
    assert not any(s.force_exit for s in servers)
    assert signals.remaining_s() == pytest.approx(29.8)
    now[0] += 2
    signals(signal.SIGTERM)  # an operator's second signal: stop now
    assert all(s.force_exit for s in servers)
    assert signals.remaining_s() == 0


def test_demo_token_printed_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import re

    from zguard.server import issue_demo_token
    from zguard.store.database import create_store_engine
    from zguard.store.migrate import upgrade
    from zguard.store.principals import PrincipalStore

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    engine = create_store_engine(f"sqlite:///{tmp_path}/z.db")
    upgrade(engine)
    store = PrincipalStore(engine)
    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    issue_demo_token(Settings.model_validate({"state_dir": str(tmp_path / "state")}), store, bytes(32))
    [token] = set(re.findall(r"zg_[0-9A-Za-z]{42}", out.getvalue()))
    assert f"Authorization: Bearer {token}" in out.getvalue()
    assert not (tmp_path / "state" / "demo-token").exists()
    engine.dispose()
