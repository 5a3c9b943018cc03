"""Issue 20, item 3 in a real browser against the session's `zguard serve`: the approver opens a
re-certification campaign from the Re-certification page, sees its grants, downloads the signed
evidence (one zip: the CSV and its signature) and closes the campaign. The model-change page's
four eyes need two admins with their authenticators: tests/functional/test_console_governance.py
drives it through the console app instead."""

from __future__ import annotations

import re
import zipfile
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_console_flows import sign_in, submit
from tests.common.browser import PageRecord

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from tests.browser.conftest import ConsoleServer

pytestmark = pytest.mark.slow


def test_open_export_and_close_a_campaign(console: tuple[Page, PageRecord], console_server: ConsoleServer) -> None:
    page, record = console
    approver = console_server.approver
    assert approver is not None
    quarter = f"{datetime.now(UTC).year + 1}Q2"  # ahead, and no other test opens it

    sign_in(page, approver)
    page.locator("#nav-approvals").click()
    page.locator("#nav-campaigns").click()
    expect(page).to_have_url(re.compile(r"/approvals/campaigns$"))
    page.locator("#quarter").fill(quarter)
    assert submit(page, "form#open-campaign").status == 200
    expect(page).to_have_url(re.compile(r"/approvals/campaigns/\d+$"))
    expect(page.locator("h1")).to_contain_text(quarter)
    expect(page.locator("#campaign-status")).to_contain_text("Open")

    with page.expect_download() as download:
        page.locator("#export-csv").click()
    path = download.value.path()
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
    assert len(names) == 2
    assert names[0].endswith(".csv")
    assert names[1] == names[0] + ".sig"

    assert submit(page, "form#close-campaign").status == 200
    expect(page.locator("#campaign-status")).to_contain_text("Closed")
    expect(page.locator("#close-campaign")).to_have_count(0)
    page.goto("/approvals/campaigns")
    expect(page.locator("#campaigns tr.campaign-closed", has_text=quarter)).to_have_count(1)
    record.assert_clean()
