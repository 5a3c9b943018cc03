"""Issue 20, item 4 in a real browser against the session's `zguard serve`: the designer asks to
use the served model on /approvals, the approver approves it in the inbox, and the designer's
page then shows the active grant."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_console_flows import sign_in, submit
from tests.common.browser import PageRecord

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from tests.browser.conftest import ConsoleServer

pytestmark = pytest.mark.slow


def sign_out(page: Page) -> None:
    submit(page, "form#logout")


def test_request_approve_and_the_grant_shows(console: tuple[Page, PageRecord], console_server: ConsoleServer) -> None:
    page, record = console
    approver = console_server.approver
    assert approver is not None
    purpose = "poster drafts for the branch opening"

    sign_in(page, console_server.generator)
    page.locator("#nav-approvals").click()
    expect(page).to_have_url(re.compile(r"/approvals$"))
    page.locator("#purpose").fill(purpose)
    page.locator("#business_unit").fill("retail")
    page.locator("#data_classification").select_option("internal")
    page.locator("#quota_per_day").fill("5")
    page.locator("#quota_total").fill("20")
    page.locator("#validity_days").fill("7")
    assert submit(page, "form#ask").status == 200
    mine = page.locator("#my-requests tr", has_text=purpose)
    expect(mine).to_have_class("request-pending")
    sign_out(page)

    sign_in(page, approver)
    page.locator("#nav-approvals").click()
    expect(page).to_have_url(re.compile(r"/approvals/inbox$"))
    row = page.locator("#requests tr", has_text=purpose)
    assert submit(page, f"#{row.get_attribute('id')} form.decide", "Approve").status == 200
    expect(page.locator("#requests tr", has_text=purpose)).to_have_count(0)  # no longer pending
    sign_out(page)

    sign_in(page, console_server.generator)
    page.goto("/approvals")
    expect(page.locator("#my-grants tr.grant-active")).to_have_count(1)
    expect(page.locator("#my-grants tr.grant-active")).to_contain_text("20 / 20")
    record.assert_clean()
