"""TLS for the listeners: the server context each one serves HTTPS with.

TLS 1.2 is the floor (1.0 and 1.1 are refused in the handshake); Python's defaults choose the
cipher suites (no RC4, 3DES or export ciphers; forward secrecy first). With a client CA the
listener asks for a client certificate and refuses the handshake without one that chains to
that CA (mTLS), before any HTTP request exists: the certificate is the first gate, tokens or
passwords the second.

The private key must not be readable by every account: `key_file_problem` says why not.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from zguard.errors import OperatorError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(OperatorError):
    """A certificate, key or CA file cannot be used; `setting` names which (`tls_key_file`, ...),
    `message` the file and the fix."""

    code = "tls_file_unusable"
    fix = "point the named setting at a readable PEM file (key mode 0600 or 0640 to the service group)"

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def key_file_problem(path: Path) -> str | None:
    """Why the private key at `path` must not be used: missing, or open to every account. Group
    read stays allowed, as for every secret file (0640 root:ai-service, zguard.ops.host_checks)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return f"{path} is readable by every account (mode {stat.S_IMODE(mode):04o}); chmod o-rwx {path} (0600, or 0640 with the service group)"
    return None


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ssl.SSLContext:
    """An SSLContext serving `cert_file`/`key_file` with TLS >= 1.2; with `client_ca_file`,
    client certificates signed by that CA are required. Raises TlsError."""
    problem = key_file_problem(key_file)
    if problem is not None:
        raise TlsError("tls_key_file", problem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            "tls_cert_file", f"{cert_file} / {key_file}: not a matching PEM certificate and key ({exc})"
        ) from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError("tls_client_ca_file", f"{client_ca_file}: not a PEM CA certificate ({exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
