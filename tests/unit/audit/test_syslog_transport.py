"""The pure parts of the syslog transports: framing, cutting, and TLS settings that cannot be weakened."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from zguard.audit.syslog_transport import (
    TcpTransport,
    TlsTransport,
    UdpTransport,
    cut_utf8,
    octet_counted,
    open_transport,
    tls_context,
)
from zguard.config import SyslogSettings


def test_octet_counting_frames_each_message_with_its_length_in_bytes() -> None:
    assert octet_counted([b"<14>1 a", "<14>1 é\n".encode()]) == b"7 <14>1 a9 <14>1 \xc3\xa9\n"
    assert octet_counted([]) == b""


@pytest.mark.parametrize(
    ("data", "limit", "cut"),
    [
        (b"abc", 5, b"abc"),
        (b"abc", 3, b"abc"),
        (b"abc", 2, b"ab"),
        ("a界".encode(), 3, b"a"),  # never half a character
        ("a界".encode(), 4, "a界".encode()),
        ("界界".encode(), 5, "界".encode()),
        ("😀".encode(), 3, b""),
    ],
)
def test_cut_utf8_ends_on_a_character_boundary(data: bytes, limit: int, cut: bytes) -> None:
    assert cut_utf8(data, limit) == cut
    cut.decode("utf-8")


def test_open_transport_picks_the_configured_kind() -> None:
    assert isinstance(open_transport(SyslogSettings(transport="udp", port=514)), UdpTransport)
    tcp = open_transport(SyslogSettings(transport="tcp", host="collector", port=514))
    assert type(tcp) is TcpTransport
    assert tcp.target == "tcp://collector:514"
    tls = open_transport(SyslogSettings(transport="tls", host="collector"))
    assert isinstance(tls, TlsTransport)
    assert tls.target == "tls://collector:6514"
    with pytest.raises(ValueError, match="sends nothing"):
        open_transport(SyslogSettings())


def test_the_tls_context_always_verifies() -> None:
    context = tls_context(SyslogSettings(transport="tls"))  # the system's CAs
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("weaken", ["no_hostname", "no_verify"])
def test_a_tls_transport_refuses_a_context_that_does_not_verify(weaken: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    if weaken == "no_verify":
        context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="must verify"):
        TlsTransport("collector", 6514, timeout=1, context=context, server_name="collector")


def test_a_client_key_without_its_certificate_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="key_file is set without cert_file"):
        SyslogSettings(transport="tls", key_file=Path("client-key.pem"))
