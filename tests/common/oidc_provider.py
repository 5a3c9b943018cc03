"""A real OpenID provider on loopback for tests: `oidc-provider-mock` (PyPI) in a child process.

The provider is authlib's authorization server behind Flask: discovery, JWKS (RS256), an
authorization endpoint whose form signs in any `sub`, a token endpoint (codes are single use),
RP-initiated logout, and `PUT /users/<sub>` to set the claims its id_tokens carry (groups, acr,
amr, preferred_username). It accepts any client id and secret (no registration), and requires a
nonce. It runs in its own process: its Flask debugger and deprecation warnings stay out of
pytest, and a test can stop it to see the IdP go away.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.common.factories import free_port

_SERVE = """
import sys, warnings
warnings.simplefilter("ignore")
import werkzeug.serving, oidc_provider_mock
app = oidc_provider_mock.app(require_nonce=True)
werkzeug.serving.make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
"""


class MockProvider:
    """One provider process on 127.0.0.1; `issuer` is its URL (its tokens' `iss`)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._child: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.issuer, timeout=10, trust_env=False)

    def start(self) -> MockProvider:
        env = {**os.environ, "AUTHLIB_INSECURE_TRANSPORT": "1"}  # plain HTTP on loopback
        with self._log.open("ab") as log:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _SERVE, str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                raise RuntimeError(f"the OIDC provider exited: {self._log.read_text(errors='replace')[-2000:]}")
            try:
                if self.http.get("/.well-known/openid-configuration").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the OIDC provider did not answer within 30 s")

    def stop(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.terminate()
            self._child.wait(timeout=10)
        self.http.close()

    def __enter__(self) -> MockProvider:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def metadata(self) -> dict[str, Any]:
        document: dict[str, Any] = self.http.get("/.well-known/openid-configuration").json()
        return document

    def user(self, sub: str, **claims: Any) -> None:
        """Set the claims the provider's id_tokens for `sub` carry (beside `sub`)."""
        assert self.http.put(f"/users/{sub}", json=claims).status_code == 204

    def authorize(self, url: str, sub: str) -> str:
        """Sign `sub` in at the authorization URL a client redirected to: the callback URL the
        provider redirects the browser back to (with `code` and `state`)."""
        assert url.startswith(self.issuer + "/"), url
        resp = self.http.post(url.removeprefix(self.issuer), data={"sub": sub})
        assert resp.status_code == 302, resp.text
        return resp.headers["location"]

    def id_token(self, client_id: str, sub: str, *, nonce: str | None = "n") -> str:
        """An id_token for `client_id` (any client: the provider registers none), by the code flow."""
        redirect = "http://127.0.0.1:9/cb"
        query = {"client_id": client_id, "response_type": "code", "redirect_uri": redirect, "scope": "openid profile"}
        query |= {"state": "s"} | ({"nonce": nonce} if nonce is not None else {})
        resp = self.http.post("/oauth2/authorize", params=query, data={"sub": sub})
        assert resp.status_code == 302, resp.text
        code = parse_qs(urlsplit(resp.headers["location"]).query)["code"][0]
        token = self.http.post(
            "/oauth2/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
            auth=(client_id, "any-secret"),
        )
        assert token.status_code == 200, token.text
        value: str = token.json()["id_token"]
        return value
