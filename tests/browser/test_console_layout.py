"""Issue 18, item 6: the console at a laptop's 1280×720 and a phone's 390×844 — nothing wider than
the window (tables scroll inside themselves), every control labelled — and signing in with the
keyboard alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from tests.common.browser import PageRecord

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from tests.browser.conftest import ConsoleServer

pytestmark = pytest.mark.slow

VIEWPORTS = ({"width": 1280, "height": 720}, {"width": 390, "height": 844})
PAGES = ("/", "/generate", "/account", "/account/tokens", "/account/password")
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"
WIDEST = """() => [...document.body.querySelectorAll("*")]
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 4).map((e) => e.tagName + "#" + e.id + "." + e.className + ":" + Math.round(e.getBoundingClientRect().right))"""
UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea")]
  .filter((c) => c.type !== "hidden" && !(c.labels && c.labels.length) && !c.getAttribute("aria-label"))
  .map((c) => c.outerHTML)"""


def test_keyboard_alone_signs_in_and_reaches_every_page_without_overflow(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    user = console_server.generator
    page.goto("/login")
    expect(page.locator("#username")).to_be_focused()  # autofocus: typing starts at once
    page.keyboard.type(user.name)
    page.keyboard.press("Tab")
    expect(page.locator("#password")).to_be_focused()
    page.keyboard.type(user.password)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/")
    for viewport in VIEWPORTS:
        page.set_viewport_size(viewport)
        for path in ("/login", *PAGES):
            page.goto(path)
            wide = page.evaluate(WIDEST)
            assert page.evaluate(OVERFLOW) <= 0, f"{path} is wider than {viewport['width']} px: {wide}"
            assert page.evaluate(UNLABELLED) == [], path
    record.assert_clean()


def test_the_audit_pages_fit_a_phone_and_a_laptop(
    console: tuple[Page, PageRecord], console_server: ConsoleServer
) -> None:
    page, record = console
    auditor = console_server.auditor
    page.goto("/login")
    page.locator("#username").fill(auditor.name)
    page.locator("#password").fill(auditor.password)
    with page.expect_navigation():
        page.locator("form#login button[type=submit]").click()
    for viewport in VIEWPORTS:
        page.set_viewport_size(viewport)
        for path in ("/audit", "/system", "/policy"):
            page.goto(path)
            assert page.evaluate(OVERFLOW) <= 0, f"{path} is wider than {viewport['width']} px: {page.evaluate(WIDEST)}"
            assert page.evaluate(UNLABELLED) == [], path
    record.assert_clean()
