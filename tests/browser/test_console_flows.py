"""What people do with the console, each in a real browser against the session's `zguard serve`:
generate an image (and be refused a banned prompt), make and revoke an API token, disable a user
whose session is open elsewhere, search and export the audit trail, switch to Chinese; and what a
foreign page cannot do to a signed-in user: post a form to the console (CSRF) or frame it
(clickjacking). Every flow ends with `PageRecord.assert_clean`, having declared the errors it means
to cause.

The admin's one-time code is spent once in this module, and the module waits out its step before
it ends, so the next admin sign-in of the session (test_console_login) gets a fresh code.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Response, expect

from tests.common.browser import PageRecord, watched_page
from zguard.app.console.audit import CSV_COLUMNS
from zguard.app.console.web import translate

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from tests.browser.conftest import ConsoleServer, ConsoleUser

pytestmark = pytest.mark.slow

BANNED = "海报标题：机密文件"  # builtin policy, category confidential
BANNED_TERM = "机密"
FRAME_REFUSAL = "frame-ancestors 'none'"  # in the console error Chromium logs for a refused frame
WITHOUT_TEXTAREAS = """() => {
  const copy = document.documentElement.cloneNode(true);
  copy.querySelectorAll("textarea").forEach((t) => t.remove());
  return copy.outerHTML;
}"""


def path_of(url: str) -> str:
    return urlsplit(url).path


def submit(page: Page, form: str, button: str | None = None) -> Response:
    """Click the form's (named) button; the response of the page it leads to (after redirects)."""
    target = (
        page.locator(form).get_by_role("button", name=button) if button else page.locator(form).get_by_role("button")
    )
    with page.expect_navigation() as navigation:
        target.click()
    response = navigation.value
    assert response is not None
    return response


def sign_in(page: Page, user: ConsoleUser, code: str | None = None) -> None:
    page.goto("/login")
    page.locator("form#login input[name=username]").fill(user.name)
    page.locator("form#login input[name=password]").fill(user.password)
    if code is not None:
        page.locator("form#login input[name=code]").fill(code)
    response = submit(page, "form#login")
    assert (response.status, path_of(page.url)) == (200, "/"), f"{user.name} not signed in: {response.status}"


@pytest.fixture(scope="module", autouse=True)
def _admin_code_spent(console_server: ConsoleServer) -> Iterator[None]:
    yield
    console_server.wait_for_fresh_step(console_server.admin)


class _Attacker(BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, str]] = {}  # path: HTML, set by the fixture

    def do_GET(self) -> None:
        body = self.pages.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write((body or "").encode())

    def log_message(self, *args: object) -> None:  # quiet: pytest shows what matters
        pass


@pytest.fixture(scope="module")
def attacker(console_server: ConsoleServer) -> Iterator[str]:
    """A foreign origin on loopback (another port): a page with a form posting to the console,
    and one framing it. Its icon is a data: URL, so the browser asks this server for nothing else."""
    head = '<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>prize</title></head>'
    _Attacker.pages = {
        "/csrf": f"""{head}<body><form method="post" action="{console_server.url}/account/sessions/revoke-all">
<input type="hidden" name="csrf_token" value="guess"><button type="submit">Claim your prize</button></form></body></html>""",
        "/frame": f"""{head}<body><iframe src="{console_server.url}/login" title="console" width="800" height="600">
</iframe></body></html>""",
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_generator_gets_a_watermarked_image_and_a_banned_prompt_is_refused_by_category(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    sign_in(page, console_server.generator)
    page.goto("/generate")
    page.locator("#prompt").fill("a lighthouse at dawn, watercolour")
    sizes = page.locator("#size option").evaluate_all("options => options.map(o => o.value)")
    page.locator("#size").select_option(min(sizes, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1])))
    page.locator("#num_inference_steps").fill("1")
    response = submit(page, "form#generate")
    assert response.status == 200
    image = page.locator("figure.generated img")
    expect(image).to_have_count(1)
    assert (image.get_attribute("src") or "").startswith("data:image/png;base64,")
    expect(page.locator("figure.generated code.watermark")).to_have_text(re.compile(r"\S+"))

    page.locator("#prompt").fill(BANNED)
    refused = submit(page, "form#generate")
    assert refused.status == 400
    record.expect_error_status(refused)  # Chromium logs a console error for any 4xx document
    category = translate("en", "confidential material")
    expect(page.locator("#prompt-error[role=alert]")).to_contain_text(category)
    expect(page.locator("figure.generated")).to_have_count(0)
    assert page.locator("#prompt").input_value() == BANNED  # the user's own text, given back to edit
    assert BANNED_TERM not in page.evaluate(WITHOUT_TEXTAREAS)
    record.assert_clean()


def test_an_auditor_traces_an_image_a_generator_downloaded(
    browser: Browser, console: tuple[Page, PageRecord], console_server: ConsoleServer, tmp_path: Path
) -> None:
    """The generator downloads an image; the auditor uploads it on /audit (the page's one script,
    under script-src 'self' and connect-src 'self') and is told the request that made it."""
    page, record = console
    with watched_page(browser, console_server.url) as (designer, designer_record):
        sign_in(designer, console_server.generator)
        designer.goto("/generate")
        designer.locator("#prompt").fill("a harbour at night")
        sizes = designer.locator("#size option").evaluate_all("options => options.map(o => o.value)")
        traceable = [s for s in sizes if min(int(side) for side in s.split("x")) >= 256]  # a mark needs tiles to read
        designer.locator("#size").select_option(
            min(traceable, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
        )
        designer.locator("#num_inference_steps").fill("1")
        submit(designer, "form#generate")
        watermark_id = designer.locator("figure.generated code.watermark").first.inner_text().strip()
        with designer.expect_download() as download:
            designer.locator("figure.generated a[download]").first.click()
        image = tmp_path / "passed-on.png"
        download.value.save_as(image)
        designer_record.assert_clean()
    sign_in(page, console_server.auditor)
    page.goto("/audit")
    page.locator("#trace-image").set_input_files(str(image))
    page.locator("form#trace-form button[type=submit]").click()
    result = page.locator("#trace-result")
    expect(result).to_contain_text('"found"', timeout=30_000)
    traced = json.loads(result.inner_text())
    assert traced["found"] is True, traced
    assert traced["watermark_id"] == watermark_id
    assert traced["generation"]["principal"] == console_server.generator.name
    record.assert_clean()


def test_a_token_made_in_the_console_works_on_the_api_until_it_is_revoked_there(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    sign_in(page, console_server.generator)
    page.goto("/account/tokens")
    page.locator("form#token-form #label").fill("browser flow")
    page.locator("form#token-form #expires_in").fill("1h")
    assert submit(page, "form#token-form").status == 200
    token = page.locator("input#token").input_value()
    prefix = page.locator("dl code").first.inner_text()
    assert token.startswith(prefix), "the plaintext is shown, once, on this page"
    models = f"{console_server.process.api}/v1/models"
    bearer = {"authorization": f"Bearer {token}"}
    assert httpx.get(models, headers=bearer, timeout=10).status_code == 200

    page.goto("/account/tokens")
    assert token not in page.content()  # never shown again
    assert submit(page, "#tokens", f"Revoke the token {prefix}").status == 200
    assert path_of(page.url) == "/account/tokens"
    refused = httpx.get(models, headers=bearer, timeout=10)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "invalid_api_key"
    record.assert_clean()


def test_disabling_a_user_ends_their_open_session_at_their_next_click(
    browser: Browser, console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    member = console_server.member
    with watched_page(browser, console_server.url) as (theirs, their_record):
        sign_in(theirs, member)
        theirs.goto("/account")
        sign_in(page, console_server.admin, console_server.one_time_code(console_server.admin))
        page.goto("/users")
        with page.expect_navigation():
            page.locator("#principals").get_by_role("link", name=member.name, exact=True).click()
        assert submit(page, "form#enabled-form").status == 200
        expect(page.locator("form#enabled-form").get_by_role("button")).to_have_text("Enable")

        with theirs.expect_navigation():
            theirs.get_by_role("navigation").get_by_role("link", name="Home").click()
        assert path_of(theirs.url) == "/login"
        expect(theirs.locator("form#login")).to_be_visible()
        their_record.assert_clean()
    record.assert_clean()


def test_an_auditor_searches_by_principal_and_downloads_the_csv_export(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    auditor = console_server.auditor
    sign_in(page, auditor)  # the sign-in is itself an event of hers
    page.goto("/audit")
    page.locator("#f-principal").fill(auditor.name)
    assert submit(page, "form#audit-search").status == 200
    assert parse_qs(urlsplit(page.url).query)["principal"] == [auditor.name]
    rows = page.locator("#events tbody tr")
    expect(rows.first).to_be_visible()
    principals = {cells[5] for cells in rows.evaluate_all("rs => rs.map(r => [...r.cells].map(c => c.innerText))")}
    assert principals == {auditor.name}

    with page.expect_download() as download:
        page.locator("#export-csv").click()
    with open(download.value.path(), encoding="utf-8", newline="") as exported:
        header = next(csv.reader(exported))
    assert tuple(header) == CSV_COLUMNS
    record.assert_clean()


def test_a_form_on_a_foreign_origin_cannot_end_the_session(
    console: tuple[Page, PageRecord], console_server: ConsoleServer, attacker: str
) -> None:
    page, record = console
    user = console_server.generator
    sign_in(page, user)
    page.goto(f"{attacker}/csrf")
    refused = submit(page, "form")
    assert refused.status == 403  # the origin check; with no CSRF token the request would fail twice over
    record.expect_error_status(refused)
    assert refused.url.startswith(console_server.url)

    page.goto("/account")
    assert path_of(page.url) == "/account"
    expect(page.locator("header .who")).to_have_text(user.name)
    record.assert_clean()


def test_a_foreign_page_cannot_frame_the_console(console: tuple[Page, PageRecord], attacker: str) -> None:
    page, record = console
    with page.expect_console_message(lambda message: FRAME_REFUSAL in message.text):
        page.goto(f"{attacker}/frame")  # Chromium: "Framing '<console>' violates ... "frame-ancestors 'none'"..."
    record.settle()
    assert len(page.frames) == 2
    for frame in page.frames:
        assert frame.locator("form#login").count() == 0, f"{frame.url} renders the console"
    refusals = [e for e in record.console_errors if FRAME_REFUSAL in e.text]
    assert len(refusals) == 1, record.console_errors
    record.console_errors.remove(refusals[0])  # the one error this flow is about; nothing else may happen
    record.assert_clean()


def test_the_language_switch_shows_the_account_page_in_chinese(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    sign_in(page, console_server.generator)
    page.goto("/account")
    expect(page.locator("h1")).to_have_text(translate("en", "My account"))
    page.locator("#lang").select_option("zh-CN")
    assert submit(page, "form[action='/language']").status == 200
    assert path_of(page.url) == "/account"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    chinese = translate("zh-CN", "My account")
    assert re.search(r"[\u4e00-\u9fff]", chinese), "the catalogue has no Chinese for the heading"
    expect(page.locator("h1")).to_have_text(chinese)
    record.assert_clean()
