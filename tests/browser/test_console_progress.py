"""The Generate page's progress: in a real browser against the session's `zguard serve`, the
form's POST is held back by the test (Playwright's `page.route`) so the page can be looked at
while it waits: the button disabled, the progress bar shown, the status text in a live region
and the queue polled (static/generate.js, under the console's CSP); then the image arrives."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, Request, Route, expect

from tests.browser.test_console_flows import sign_in
from tests.common.browser import PageRecord
from zguard.app.console.web import translate

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from tests.browser.conftest import ConsoleServer

pytestmark = pytest.mark.slow
HOLD_MS = 1200  # long enough for one poll of the queue (the script polls every second)
# Run by the test through Playwright (not a page script): after each submit, note every 100 ms
# what the page shows into sessionStorage, which outlives the navigation to the answer page.
WATCH = """() => {
  const seen = [];
  const note = () => {
    const status = document.getElementById("generate-status");
    seen.push({
      bar: !document.getElementById("generate-bar").hidden,
      disabled: document.getElementById("generate-submit").disabled,
      live: status.getAttribute("aria-live") === "polite",
      status: status.textContent,
      ticket: document.getElementById("ticket").value,
    });
    sessionStorage.setItem("zguard-progress-seen", JSON.stringify(seen));
  };
  document.getElementById("generate").addEventListener("submit", () => {
    window.setTimeout(note, 50);
    window.setInterval(note, 100);
  });
}"""


def test_a_held_generation_shows_progress_and_then_the_image(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    sign_in(page, console_server.generator)
    page.goto("/generate")
    held: list[str] = []

    def hold_the_post(route: Route, request: Request) -> None:
        # Playwright's locators wait while a navigation is pending, so the page notes what it
        # shows meanwhile (WATCH) and the test reads that once the answer has arrived.
        if request.method == "POST":
            held.append(request.url)
            time.sleep(HOLD_MS / 1000)
        route.continue_()

    page.route("**/generate", hold_the_post)
    page.evaluate(WATCH)
    page.locator("#prompt").fill("a kite over the sea")
    sizes = page.locator("#size option").evaluate_all("options => options.map(o => o.value)")
    page.locator("#size").select_option(min(sizes, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1])))
    page.locator("#num_inference_steps").fill("1")
    with (
        page.expect_response(lambda r: "/console/api/generate/queue?ticket=" in r.url) as polled,
        page.expect_navigation(),
    ):
        page.locator("#generate-submit").click()
    assert len(held) == 1
    assert polled.value.status == 200
    seen = json.loads(page.evaluate("() => sessionStorage.getItem('zguard-progress-seen')") or "[]")
    assert seen, "the page noted nothing while the generation was held"
    assert all(s["bar"] and s["disabled"] and s["live"] for s in seen)
    assert translate("en", "Generating…") in {s["status"] for s in seen}
    assert all(len(s["ticket"]) == 32 and set(s["ticket"]) <= set("0123456789abcdef") for s in seen)
    expect(page.locator("figure.generated img")).to_have_count(1)
    expect(page.locator("#generate-submit")).to_be_enabled()  # the answer page's own form
    expect(page.locator("#generate-bar")).to_be_hidden()
    record.assert_clean()
