"""LDAP pieces both the sign-in (zguard.services.ldap_auth) and `zguard doctor` (zguard.ops.ldap_check)
use: value escaping for filters and DNs, and servers whose TLS is always verified.

Decisions written here:
- Values put into a filter are escaped per RFC 4515 section 3: `\\`, `*`, `(`, `)` and NUL, and
  every other control character too, as `\\XX`, so a username such as `*)(uid=*` is one literal
  value. DN values are escaped per RFC 4514 section 2.4 (`escape_dn_value`); zguard never builds
  a DN from what a user typed (it binds as the DN the directory returned), the function is for
  configured names and tests.
- TLS: a client context of Python's defaults (certificate chain and host name checked), TLS 1.2
  at least, trusting `ca_file` or else the system's CAs. ldap3's own `Tls` turns Python's host
  name check off and redoes it with the deprecated `ssl.match_hostname`; `VerifiedTls` replaces
  its socket wrapping with the standard library's, used for LDAPS and StartTLS alike.
- Referrals are never followed (`auto_referrals=False` where connections are made): a referral
  could send the service account's or a user's password to another host.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldap3 import NONE, Server, Tls

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
_FILTER_SPECIAL = {"\\": "\\5c", "*": "\\2a", "(": "\\28", ")": "\\29", "\0": "\\00"}
_DN_SPECIAL = frozenset('"+,;<>\\=')


def escape_filter_value(value: str) -> str:
    """`value` as a literal assertion value in an LDAP filter (RFC 4515)."""
    out = []
    for char in value:
        if char in _FILTER_SPECIAL:
            out.append(_FILTER_SPECIAL[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def fill_filter(template: str, placeholder: str, value: str) -> str:
    """`template` with every `{placeholder}` replaced by `value`, filter-escaped."""
    return template.replace("{" + placeholder + "}", escape_filter_value(value))


def escape_dn_value(value: str) -> str:
    """`value` as the value of one RDN attribute (RFC 4514 section 2.4)."""
    out = []
    for index, char in enumerate(value):
        if char in _DN_SPECIAL or (index == 0 and char in "# ") or (index == len(value) - 1 and char == " "):
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A TLS client context that verifies the chain (to `ca_file`, else the system's CAs) and the host name."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class VerifiedTls(Tls):
    """ldap3's `Tls` with the socket wrapped by `client_context`: chain and host name checked
    during the handshake, for `ldaps://` and StartTLS."""

    def __init__(self, ca_file: Path | None) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = client_context(ca_file)

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        host = connection.server.host
        connection.socket = self._context.wrap_socket(
            connection.socket, server_side=False, server_hostname=host, do_handshake_on_connect=True
        )


def close_connection(connection: Any) -> None:
    """Unbind `connection` and close its socket, whatever state a failure left it in (ldap3 leaves
    the socket of a refused connect or handshake open)."""
    with contextlib.suppress(Exception):  # already unbound or never opened: closing is all that is left
        connection.unbind()
    sock = getattr(connection, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


@dataclass(frozen=True)
class Endpoint:
    """One directory server of the settings: where, and how its TLS starts."""

    url: str
    host: str
    port: int
    ldaps: bool


def endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    ldaps = parts.scheme == "ldaps"
    return Endpoint(url=url, host=parts.hostname or "", port=parts.port or (636 if ldaps else 389), ldaps=ldaps)


def server(point: Endpoint, ca_file: Path | None, timeout_s: float) -> Server:
    """An ldap3 `Server` for `point`: TLS verified by `VerifiedTls`, no schema or root DSE read at bind."""
    return Server(
        point.host,
        port=point.port,
        use_ssl=point.ldaps,
        tls=VerifiedTls(ca_file),
        connect_timeout=timeout_s,
        get_info=NONE,
    )
