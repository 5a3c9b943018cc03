"""HTTPS on both listeners and mTLS on the API, over a real `zguard serve` with a throwaway PKI."""

from __future__ import annotations

import contextlib
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.common.pki import Pki, make_pki
from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess
from zguard.config import ApiSettings, ConsoleSettings, Settings
from zguard.errors import ConfigError
from zguard.ops.host_checks import secret_files
from zguard.security.tls import MINIMUM_VERSION
from zguard.serve.listeners import example_call, listener_tls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZguardProcess]:
    env = {
        "ZGUARD_API__TLS_CERT_FILE": str(pki.server_cert),
        "ZGUARD_API__TLS_KEY_FILE": str(pki.server_key),
        "ZGUARD_API__TLS_CLIENT_CA_FILE": str(pki.ca),
        "ZGUARD_CONSOLE__TLS_CERT_FILE": str(pki.server_cert),
        "ZGUARD_CONSOLE__TLS_KEY_FILE": str(pki.server_key),
    }
    proc = ZguardProcess(tmp_path_factory.mktemp("tls") / "state", env=env).start()
    try:

        def up() -> bool:
            if ready(proc, pki):
                return True
            assert proc.proc is not None
            assert proc.proc.poll() is None, proc.log()
            return False

        wait_until(up, timeout=120, interval=0.1, what=lambda: f"zguard to be ready over HTTPS:\n{proc.log()}")
        yield proc
        assert proc.stop() == 0
    finally:
        proc.__exit__()


def ready(proc: ZguardProcess, pki: Pki) -> bool:
    """The console's status over HTTPS (the API's /readyz would need a client certificate)."""
    with contextlib.suppress(httpx.HTTPError):
        status = httpx.get(f"https://127.0.0.1:{proc.console_port}/api/status", verify=client(pki, cert=False))
        return status.is_success and status.json()["ready"] is True
    return False


def client(pki: Pki, *, cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def test_console_serves_https_and_the_log_says_so(server: ZguardProcess, pki: Pki) -> None:
    resp = httpx.get(f"https://127.0.0.1:{server.console_port}/healthz", verify=client(pki, cert=False))
    assert resp.json() == {"status": "ok"}
    assert f"console listening on https://127.0.0.1:{server.console_port}" in server.log()
    with pytest.raises(httpx.HTTPError):  # plain HTTP on a TLS port gets no HTTP answer
        httpx.get(f"http://127.0.0.1:{server.console_port}/healthz")


def test_tls_1_1_is_refused_and_1_2_accepted(server: ZguardProcess, pki: Pki) -> None:
    for version, accepted in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True)):
        context = client(pki, cert=False)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so only the server can be what refuses 1.1
        with warnings.catch_warnings():  # Python deprecates TLS 1.1 itself, which is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        with socket.create_connection(("127.0.0.1", server.console_port), timeout=5) as raw:
            if accepted:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    assert tls.version() == "TLSv1.2"
            else:
                with pytest.raises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname="localhost")


def test_api_requires_a_client_certificate_from_the_ca(server: ZguardProcess, pki: Pki) -> None:
    url = f"https://127.0.0.1:{server.api_port}/v1/models"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=client(pki, cert=False))
    resp = httpx.get(url, verify=client(pki, cert=True))
    assert resp.status_code == 200
    assert resp.json()["data"][0]["id"] == "z-image-turbo"


def test_certificate_without_key_and_readable_key_are_refused(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set both"):
        ConsoleSettings(tls_cert_file=pki.server_cert)
    with pytest.raises(ValueError, match="client certificates need TLS"):
        ApiSettings(tls_client_ca_file=pki.ca)
    readable = tmp_path / "key.pem"
    readable.write_bytes(pki.server_key.read_bytes())
    readable.chmod(0o644)
    with pytest.raises(ConfigError, match=r"console\.tls_key_file: .* readable by every account"):
        listener_tls(ConsoleSettings(tls_cert_file=pki.server_cert, tls_key_file=readable), "console")
    readable.chmod(0o640)  # group read: root-owned, the service's group reads it (as zguard install lays out)
    assert listener_tls(ConsoleSettings(tls_cert_file=pki.server_cert, tls_key_file=readable), "console") is not None
    context = listener_tls(ApiSettings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca), "api")  # fmt: skip
    assert context is not None
    assert context.minimum_version == MINIMUM_VERSION
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_doctor_and_serve_check_the_tls_keys_as_secret_files(pki: Pki, tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "console": {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)},
        }
    )
    assert secret_files(settings)["console.tls_key_file"] == pki.server_key
    assert "api.tls_key_file" not in secret_files(settings)


def test_the_start_up_hint_uses_https_and_a_client_certificate(pki: Pki, tmp_path: Path) -> None:
    tls = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)}
    settings = Settings.model_validate(
        {"state_dir": str(tmp_path), "api": {**tls, "tls_client_ca_file": str(pki.ca)}, "console": tls}
    )
    hint = example_call(settings)
    assert hint.startswith("curl -s https://127.0.0.1:5000/")
    assert "--cert <client.pem> --key <client-key.pem>" in hint
    assert "(console: https://127.0.0.1:7860/)" in hint
