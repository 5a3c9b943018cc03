"""RFC 4515 filter escaping and RFC 4514 DN escaping (zguard.security.ldap), and the TLS context."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zguard.security.ldap import client_context, endpoint, escape_dn_value, escape_filter_value, fill_filter


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("alice", "alice"),
        ("*)(uid=*", "\\2a\\29\\28uid=\\2a"),
        ("a\\b", "a\\5cb"),
        ("nul\0", "nul\\00"),
        ("line\nfeed", "line\\0afeed"),
        ("张伟", "张伟"),
    ],
)
def test_filter_values_are_escaped(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped


@given(st.text(max_size=40))
def test_an_escaped_value_never_carries_filter_syntax(value: str) -> None:
    escaped = escape_filter_value(value)
    assert not set("*()\0") & set(escaped)
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in escaped)


def test_fill_filter_escapes_every_placeholder() -> None:
    assert fill_filter("(|(uid={username})(mail={username}))", "username", "*") == "(|(uid=\\2a)(mail=\\2a))"


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("Smith, John", "Smith\\, John"),
        ("#1", "\\#1"),
        (" lead", "\\ lead"),
        ("trail ", "trail\\ "),
        ("a=b+c", "a\\=b\\+c"),
    ],
)
def test_dn_values_are_escaped(value: str, escaped: str) -> None:
    assert escape_dn_value(value) == escaped


def test_the_client_context_verifies_chain_and_host_name() -> None:
    context = client_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_endpoints_default_their_port_by_scheme() -> None:
    assert (endpoint("ldaps://dc1").port, endpoint("ldap://dc1").port, endpoint("ldaps://dc1:3269").port) == (
        636,
        389,
        3269,
    )
    assert endpoint("ldaps://dc1").ldaps
    assert not endpoint("ldap://dc1").ldaps
