"""Issue 20, item 3 in a real browser against the session's `zguard serve`: the approver opens a
re-certification campaign from the Re-certification page, sees its grants, downloads the signed
evidence (one zip: the CSV and its signature) and closes the campaign; and item 2: an admin pins
a new model with the CLI, a second admin (their own authenticator, so the session admin's
one-time codes stay untouched) approves it on the Model changes page. The refusals are
tests/functional/test_console_governance.py's."""

from __future__ import annotations

import json
import re
import zipfile
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyotp
import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_console_flows import sign_in, submit
from tests.common.browser import PageRecord

if TYPE_CHECKING:  # a fixture's type only: test modules do not import conftest
    from pathlib import Path

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


def test_a_second_admin_approves_a_pinned_model(
    console: tuple[Page, PageRecord], console_server: ConsoleServer, tmp_path: Path
) -> None:
    # Values at run time only (the module imports none at import time, as the others):
    from tests.browser.conftest import ConsoleUser, _enrol_totp, _zguard

    page, record = console
    server = console_server.process
    password = "Tangerine-walkthrough-93-four-eyes"
    for name in ("pinning-admin", "second-admin"):
        _zguard(server, "user", "add", name, "--role", "admin")
        _zguard(server, "user", "passwd", name, stdin=f"{password}\n")
    token = _zguard(server, "token", "create", "--user", "pinning-admin").strip().splitlines()[-1]
    model = tmp_path / "z-image-turbo-next"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}), encoding="utf-8")
    (model / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 64)
    _zguard(server, "model", "pin", str(model), "--as", "pinning-admin", stdin=f"{token}\n")
    secret = _enrol_totp(server, "second-admin")
    # Enrolment spent this step's code; the server takes the next step's as well (±1 step).
    code = pyotp.TOTP(secret).at(datetime.now(UTC).timestamp() + 30)
    sign_in(page, ConsoleUser("second-admin", password, ("admin",)), code)
    page.locator("#nav-approvals").click()
    expect(page).to_have_url(re.compile(r"/approvals/model-changes$"))
    pending = page.locator("#changes tr.change-pending")
    expect(pending).to_have_count(1)
    expect(pending).to_contain_text("pinning-admin")
    assert submit(page, "#changes form.approve").status == 200
    approved = page.locator("#changes tr.change-approved")
    expect(approved).to_have_count(1)
    expect(approved).to_contain_text("second-admin")
    expect(page.locator("#changes form.approve")).to_have_count(0)
    record.assert_clean()
