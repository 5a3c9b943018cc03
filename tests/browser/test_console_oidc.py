"""Issue 19, item 1: the whole OpenID Connect sign-in in a real browser, against a real provider.

One `zguard serve` (its own, with `identity.oidc` pointing at the provider, from a settings file
named by `ZGUARD_CONFIG`) and one `oidc-provider-mock` on loopback. Chromium clicks the login
page's button, signs in on the provider's own form, comes back signed in (through the console's
CSP, `SameSite=Strict` session cookie included), and signs out, which ends the provider's
session too (RP-initiated logout with `id_token_hint`) and lands on the console's login page.

The provider's pages link a stylesheet from a CDN; the browser's requests for it are answered
locally (`page.route`) and are the only requests allowed off loopback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Route, expect

from tests.common.browser import watched_page
from tests.common.oidc_provider import MockProvider
from tests.common.servers import ZguardProcess
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.slow

PROVIDER_CDN = "https://cdn.jsdelivr.net/"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ZguardProcess, MockProvider]]:
    root = tmp_path_factory.mktemp("oidc-browser")
    with MockProvider(root / "provider.log") as provider:
        secret = root / "oidc-client-secret"
        secret.write_text("browser-test-secret-0123456789\n", encoding="utf-8")
        secret.chmod(0o600)  # as the host checks want a secret file
        server = ZguardProcess(
            root / "state", env={"ZGUARD_CONFIG": str(root / "zguard.yaml"), "ZGUARD_API_AUTH__ENABLED": "true"}
        )
        (root / "zguard.yaml").write_text(
            "api_auth:\n"
            "  enabled: true\n"
            "identity:\n"
            "  oidc:\n"
            "    enabled: true\n"
            f"    issuer: {provider.issuer}\n"
            "    client_id: zguard-console\n"
            f"    client_secret_file: {secret}\n"
            f"    redirect_uri: {server.console}/login/oidc/callback\n"
            f"    post_logout_redirect_uri: {server.console}/login\n"
            "    label: Bank SSO\n"
            "    role_map: {zg-designers: generator, zg-auditors: auditor}\n",
            encoding="utf-8",
        )
        done = subprocess.run(
            [sys.executable, "-m", "zguard", "init", "--admin", "admin"],
            env=server.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with server:
            server.wait_ready()
            yield server, provider
            assert server.stop() == 0, server.log()


def test_sign_in_with_the_idp_and_sign_out_there_too(
    browser: Browser, deployment: tuple[ZguardProcess, MockProvider]
) -> None:
    server, provider = deployment
    provider.user("u-web-1", preferred_username="wen", groups=["zg-designers", "all-staff"])
    end_session = provider.metadata()["end_session_endpoint"]
    with watched_page(browser, server.console) as (page, record):

        def local_stylesheet(route: Route) -> None:
            route.fulfill(status=200, content_type="text/css", body="")

        page.route(f"{PROVIDER_CDN}**", local_stylesheet)
        page.goto("/login")
        page.locator("#oidc-login").click()
        page.wait_for_url(f"{provider.issuer}/oauth2/authorize?**")
        assert parse_qs(urlsplit(page.url).query)["code_challenge_method"] == ["S256"]

        page.locator("input[name=sub]").fill("u-web-1")
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"{server.console}/")  # the callback's page moved on by itself
        expect(page.locator(".who")).to_have_text("wen")
        who = page.request.get("/console/api/session").json()
        assert (who["name"], who["roles"]) == ("wen", ["generator"])
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["zguard-session"]["httpOnly"]
        assert cookies["zguard-session"]["sameSite"] == "Strict"

        page.locator("form#logout button").click()
        page.wait_for_url(f"{end_session}?**")
        query = parse_qs(urlsplit(page.url).query)
        assert query["client_id"] == ["zguard-console"]
        assert query["id_token_hint"][0].count(".") == 2
        assert query["post_logout_redirect_uri"] == [f"{server.console}/login"]
        page.get_by_role("button", name="End session").click()
        page.wait_for_url(f"{server.console}/login")
        assert page.request.get("/console/api/session").status == 401

        assert {url for url in record.off_loopback if not url.startswith(PROVIDER_CDN)} == set()
        record.off_loopback.clear()  # answered by page.route: they never left the machine
        record.assert_clean()

    store = PrincipalStore(create_store_engine(f"sqlite:///{Path(server.env['ZGUARD_STATE_DIR']) / 'zguard.db'}"))
    principal = store.get_principal("wen")
    assert principal is not None
    assert (principal.source, principal.issuer, principal.subject, principal.roles) == (
        "oidc",
        provider.issuer,
        "u-web-1",
        ("generator",),
    )
