"""The shipped front-door configs (deploy/) agree with zguard's own limits and defaults, so an
operator who copies them gets nginx/HAProxy refusing what zguard would refuse, waiting as long as
zguard may take, and overwriting X-Forwarded-For. The configs run for real in
tests/integration/test_scale_out.py; this checks their figures against the settings."""

from __future__ import annotations

import re

import pytest

from tests.common.frontdoor import HAPROXY_CFG, NGINX_CONF, render
from zguard.config import Settings

DEFAULTS = Settings()
NGINX = NGINX_CONF.read_text(encoding="utf-8")
HAPROXY = HAPROXY_CFG.read_text(encoding="utf-8")


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(ms|s|m)?", text).groups()  # type: ignore[union-attr]  # the configs' own syntax
    return int(value) / 1000 if unit == "ms" else int(value) * (60 if unit == "m" else 1)


def _size(text: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([km]?)", text.lower()).groups()  # type: ignore[union-attr]
    return int(value) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]


def test_nginx_refuses_the_bodies_zguard_refuses() -> None:
    (size,) = re.findall(r"^\s*client_max_body_size (\S+);", NGINX, re.MULTILINE)
    assert _size(size) == DEFAULTS.api.max_body_bytes


def test_haproxy_refuses_the_bodies_zguard_refuses() -> None:
    (limit,) = re.findall(r"content-length\) gt (\d+)", HAPROXY)
    assert int(limit) == DEFAULTS.api.max_body_bytes


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("nginx", NGINX, r"READ_TIMEOUT"),
        ("haproxy", HAPROXY, r"SERVER_TIMEOUT"),
    ],
)
def test_the_front_door_waits_longer_than_a_generation_may_take(name: str, text: str, pattern: str) -> None:
    """The timeout is a placeholder; the comment above it names the figure to beat, which is the
    setting's default, and the tests render 150 s."""
    assert "${" + pattern + "}" in text
    assert re.search(rf"generation\.timeout_s[^\n]*\({int(DEFAULTS.generation.timeout_s)} s", text), name


def test_nginx_overwrites_x_forwarded_for_and_never_appends() -> None:
    assert re.search(r"^\s*proxy_set_header X-Forwarded-For \$remote_addr;", NGINX, re.MULTILINE)
    assert "$proxy_add_x_forwarded_for" not in re.sub(r"#[^\n]*", "", NGINX)


def test_haproxy_drops_the_clients_x_forwarded_for_before_adding_its_own() -> None:
    lines = [line.strip() for line in HAPROXY.splitlines()]
    assert lines.index("http-request del-header X-Forwarded-For") < lines.index("option forwardfor")


def test_haproxy_checks_readyz_and_wants_200() -> None:
    assert re.search(r"^\s*option httpchk$", HAPROXY, re.MULTILINE)
    assert re.search(r"http-check send meth GET uri /readyz ", HAPROXY)
    assert re.search(r"^\s*http-check expect status 200$", HAPROXY, re.MULTILINE)


def test_transport_timeouts_match_zguards() -> None:
    (header,) = re.findall(r"^\s*client_header_timeout (\S+);", NGINX, re.MULTILINE)
    (body,) = re.findall(r"^\s*client_body_timeout (\S+);", NGINX, re.MULTILINE)
    assert _seconds(header) == DEFAULTS.api.transport.header_timeout_s
    assert _seconds(body) == DEFAULTS.api.transport.body_idle_timeout_s
    (keep_alive,) = re.findall(r"timeout http-keep-alive (\S+)", HAPROXY)
    assert _seconds(keep_alive) == DEFAULTS.api.transport.keep_alive_timeout_s


def test_the_console_is_not_on_the_public_front_door() -> None:
    for text in (NGINX, HAPROXY):
        assert "NOT published on the public front door" in text
        assert "7860" not in re.sub(r"#[^\n]*", "", text)


def test_every_placeholder_has_a_value_when_rendered() -> None:
    with pytest.raises(KeyError, match="no value for"):
        render(NGINX_CONF, {})
