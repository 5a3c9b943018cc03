"""Signing in to the console in a real browser: the login form, a refused password, a session cookie
no script can read, signing out. Every response carries the console's CSP, and the browser reports
no console error, CSP violation or request off loopback (`PageRecord.assert_clean`).

One flow per test, each in a fresh browser context, against the session's one `zguard serve`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyotp
import pytest
from playwright.sync_api import Page, Response, expect

from tests.common.browser import PageRecord

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from tests.browser.conftest import ConsoleServer

pytestmark = pytest.mark.slow

SESSION_COOKIE = "zguard-session"  # plain HTTP; over HTTPS the contract leaves the name open
REQUIRED_CSP = ("default-src 'none'", "frame-ancestors 'none'")


def path_of(url: str) -> str:
    return urlsplit(url).path


def assert_console_policy(record: PageRecord) -> None:
    """Every response the browser got carries the required CSP directives, and nothing went wrong."""
    record.settle()
    assert record.responses, "the browser saw no response"
    for response in record.responses:
        policy = response.all_headers().get("content-security-policy", "")
        directives = {" ".join(d.split()) for d in policy.split(";")}
        missing = [d for d in REQUIRED_CSP if d not in directives]
        assert not missing, (
            f"{response.request.method} {response.url} ({response.status}): CSP {policy!r} lacks {missing}"
        )
    record.assert_clean()


def form_target(page: Page, form: str) -> list[str]:
    """[method, path] the form submits with, as the browser resolves them."""
    target: list[str] = page.locator(form).evaluate("f => [f.method, new URL(f.action).pathname]")
    return target


def submit(page: Page, form: str) -> Response:
    """Click the form's submit button; the response of the page it leads to (after redirects)."""
    with page.expect_navigation() as navigation:
        page.locator(form).get_by_role("button").click()
    response = navigation.value
    assert response is not None
    return response


def sign_in(page: Page, username: str, password: str, totp: str | None = None) -> Response:
    page.goto("/login")
    page.locator("form#login input[name=username]").fill(username)
    page.locator("form#login input[name=password]").fill(password)
    if totp is not None:  # a code works once: each test signs in a TOTP user at most once a session
        page.locator("form#login input[name=code]").fill(pyotp.TOTP(totp).now())
    return submit(page, "form#login")


def redirect_status(response: Response) -> tuple[str, str, int] | None:
    """(method, path, status) of the redirect that led to `response`, or None if none did."""
    earlier = response.request.redirected_from
    if earlier is None:
        return None
    answer = earlier.response()
    assert answer is not None
    return earlier.method, path_of(earlier.url), answer.status


def session_cookies(page: Page) -> list[dict[str, object]]:
    return [dict(c) for c in page.context.cookies() if c["name"] == SESSION_COOKIE]


def test_console_answers_in_the_browser(console: tuple[Page, PageRecord]) -> None:
    """The fixtures work: `/healthz` under the console's headers, its icon answered too."""
    page, record = console
    response = page.goto("/healthz")
    assert response is not None
    assert response.status == 200
    assert response.json() == {"status": "ok"}
    assert_console_policy(record)


def test_login_form_is_labelled_and_posts_to_login(console: tuple[Page, PageRecord]) -> None:
    page, record = console
    response = page.goto("/login")
    assert response is not None
    assert response.status == 200
    form = page.locator("form#login")
    expect(form).to_be_visible()
    assert form_target(page, "form#login") == ["post", "/login"]
    for name in ("username", "password"):
        field = form.locator(f"input[name={name}]")
        expect(field).to_have_count(1)
        field_id = field.get_attribute("id")
        assert field_id, f"input[name={name}] has no id for a <label for=...>"
        expect(page.locator(f'label[for="{field_id}"]')).to_be_visible()
    assert form.locator("input[name=password]").get_attribute("type") == "password"
    expect(form.locator("button[type=submit]")).to_have_count(1)
    assert_console_policy(record)


def test_wrong_password_shows_the_form_again_with_an_alert(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    user = console_server.generator  # not the admin the other flows sign in as: its failed-login budget stays whole
    response = sign_in(page, user.name, f"not-{user.password}")
    assert response.status == 401
    record.expect_error_status(response)  # Chromium logs a console error for any 4xx document
    assert path_of(page.url) == "/login"
    expect(page.locator("[role=alert]")).to_be_visible()
    expect(page.locator("form#login")).to_be_visible()
    assert session_cookies(page) == []
    assert_console_policy(record)


def test_right_password_signs_in_with_a_strict_httponly_cookie(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    user = console_server.admin  # with the one-time code admins need by default
    response = sign_in(page, user.name, user.password, user.totp)
    assert redirect_status(response) == ("POST", "/login", 303)
    assert response.status == 200
    assert path_of(page.url) == "/"
    expect(page.locator("h1")).to_be_visible()
    assert form_target(page, "form#logout") == ["post", "/logout"]
    logout_button = page.locator("form#logout").get_by_role("button")
    expect(logout_button).to_be_visible()
    assert logout_button.evaluate("b => b.type") == "submit"
    [cookie] = session_cookies(page)
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert SESSION_COOKIE not in page.evaluate("document.cookie")  # what HttpOnly is for
    assert_console_policy(record)


def test_sign_out_returns_to_login_and_the_session_is_gone(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    user = console_server.generator  # the admin's code is spent by the test above
    sign_in(page, user.name, user.password)
    assert path_of(page.url) == "/"
    response = submit(page, "form#logout")
    assert response.status == 200
    assert path_of(page.url) == "/login"
    again = page.goto("/")
    assert again is not None
    assert redirect_status(again) == ("GET", "/", 303)
    assert again.status == 200  # the login page, not an error page
    assert path_of(page.url) == "/login"
    expect(page.locator("form#login")).to_be_visible()
    assert_console_policy(record)
