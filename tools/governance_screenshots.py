"""Screenshots of the four-eyes walkthrough for docs/governance.md, from a real `zguard serve`.

    .venv/bin/python tools/governance_screenshots.py   # rewrites docs/images/governance/*.png

It starts one server on a throw-away state directory with the demo model, `approvals.required`
and a quorum of two, and sets it up the way an operator does (`zguard init`, `user add`, `user
passwd`, `user totp`, `token create`). A second admin's model change is prepared before the start:
a small model directory pinned with `zguard model pin DIR --as alice` (it is not the served
model; the page approves what a restart would load). Then, in Debian's chromium (loopback only,
tests.common.browser), each person signs in for their step:

    rita (generator)    asks on /approvals                         request-form.png
    avery (approver)    approves in the inbox                      approver-inbox.png
    blake (approver)    approves: quorum reached, the grant made
    rita                generates once through the API: the grant's X-Zguard-Grant-* headers (printed)
    avery               the grant history, then the grant report   grant-history.png, grant-report.png
    avery               opens the quarter's campaign, blake confirms, the signed export downloads
                                                                   campaign.png
    bea (admin)         approves alice's model change              model-change.png

Each PNG is 1200 px wide (full page), reduced to a 256-colour palette so that each stays under
150 KB; the script fails if one does not. The grant report is shot only when the console has it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # at run time main() imports them, once the repository is on sys.path
    from playwright.sync_api import Browser, Page
    from tests.common.servers import ZguardProcess

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs/images/governance"
WIDTH, HEIGHT = 1200, 700
BUDGET_BYTES = 150_000
PASSWORD = "walkthrough-Correct-Horse-7"  # noqa: S105 - a throw-away server's users
PEOPLE = {"rita": "generator", "avery": "approver", "blake": "approver", "bea": "admin"}


def main() -> int:
    sys.path.insert(0, str(ROOT))  # `tests` is a package of the repository, not of the installed zguard
    from playwright.sync_api import sync_playwright
    from tests.browser.conftest import _enrol_totp, _zguard
    from tests.common.browser import find_chromium, launch_chromium
    from tests.common.servers import ZguardProcess

    executable = find_chromium()
    if executable is None:
        print("no chromium: apt-get install --no-install-recommends chromium", file=sys.stderr)
        return 1
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zguard-governance-") as tmp:
        state = Path(tmp) / "state"
        server = ZguardProcess(
            state,
            env={
                "ZGUARD_API_AUTH__ENABLED": "true",
                "ZGUARD_APPROVALS__REQUIRED": "true",
                "ZGUARD_APPROVALS__QUORUM": "2",
            },
        )
        _zguard(server, "init", "--admin", "alice")
        for name, role in PEOPLE.items():
            _zguard(server, "user", "add", name, "--role", role)
        for name in ("alice", *PEOPLE):
            _zguard(server, "user", "passwd", name, stdin=f"{PASSWORD}\n")
        totp = _enrol_totp(server, "bea")  # admins sign in with a second factor
        alice_token = _zguard(server, "token", "create", "--user", "alice").strip().splitlines()[-1]
        rita_token = _zguard(server, "token", "create", "--user", "rita").strip().splitlines()[-1]
        model = _next_model(Path(tmp) / "z-image-turbo-next")
        print(_zguard(server, "model", "pin", str(model), "--as", "alice", stdin=f"{alice_token}\n").strip())
        with server, sync_playwright() as playwright:
            server.wait_ready()
            chromium = launch_chromium(playwright, executable)
            try:
                walkthrough(chromium, server, rita_token, totp)
            except Exception:
                print(server.log()[-4000:], file=sys.stderr)
                raise
            finally:
                chromium.close()
            if server.stop() != 0:
                print(server.log()[-4000:], file=sys.stderr)
                return 1
    too_big = [p.name for p in sorted(OUTPUT.glob("*.png")) if p.stat().st_size > BUDGET_BYTES]
    if too_big:
        print(f"over {BUDGET_BYTES // 1000} KB: {', '.join(too_big)}", file=sys.stderr)
        return 1
    return 0


def _next_model(where: Path) -> Path:
    """A small stand-in for the next model release: a diffusers-like layout of a few files."""
    (where / "transformer").mkdir(parents=True)
    (where / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}), encoding="utf-8")
    (where / "transformer" / "config.json").write_text(json.dumps({"num_layers": 30}), encoding="utf-8")
    (where / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 64)
    return where


def walkthrough(chromium: Browser, server: ZguardProcess, rita_token: str, totp: str) -> None:
    import pyotp

    quarter = f"{datetime.now(UTC).year}Q{(datetime.now(UTC).month - 1) // 3 + 1}"
    with person(chromium, server, "rita") as page:
        page.goto("/approvals")
        page.locator("#purpose").fill("Q1 campaign visuals for the retail app")
        page.locator("#business_unit").fill("retail")
        page.locator("#ticket").fill("CHG-1042")
        page.locator("#data_classification").select_option("internal")
        page.locator("#quota_per_day").fill("50")
        page.locator("#quota_total").fill("500")
        page.locator("#validity_days").fill("30")
        shoot(page, "request-form")
        click(page, "form#ask")
    for approver, comment in (("avery", "campaign confirmed with CHG-1042"), ("blake", "")):
        with person(chromium, server, approver) as page:
            page.goto("/approvals/inbox")
            page.locator("#requests form.decide input[name=comment]").first.fill(comment)
            if approver == "avery":
                shoot(page, "approver-inbox")
            click(page, "#requests form.decide", "Approve")
    print(generate(server, rita_token))
    with person(chromium, server, "avery") as page:
        page.goto("/approvals/grants")
        shoot(page, "grant-history")
        report = page.goto("/approvals/report")  # helper C's page, when the console has it
        if report is not None and report.status == 200:
            shoot(page, "grant-report")
        page.goto("/approvals/campaigns")
        page.locator("#quarter").fill(quarter)
        click(page, "form#open-campaign")
        campaign_url = page.url
    with person(chromium, server, "blake") as page:
        page.goto(campaign_url)
        page.locator("#items form.decide input[name=comment]").first.fill("still needed for the Q1 campaign")
        click(page, "#items form.decide")
        shoot(page, "campaign")
        with page.expect_download() as download:
            page.locator("#export-csv").click()
        with zipfile.ZipFile(download.value.path()) as archive:
            print(f"export: {', '.join(sorted(archive.namelist()))}")
    with person(chromium, server, "bea", pyotp.TOTP(totp).now()) as page:
        page.goto("/approvals/model-changes")
        click(page, "#changes form.approve")
        shoot(page, "model-change")


class person:
    """A browser context signed in as `name` (with a TOTP `code` for an admin)."""

    def __init__(self, chromium: Browser, server: ZguardProcess, name: str, code: str | None = None) -> None:
        self.context = chromium.new_context(
            base_url=server.console, viewport={"width": WIDTH, "height": HEIGHT}, locale="en-US", accept_downloads=True
        )
        self.name, self.code = name, code

    def __enter__(self) -> Page:
        page = self.context.new_page()
        page.goto("/login")
        page.locator("form#login input[name=username]").fill(self.name)
        page.locator("form#login input[name=password]").fill(PASSWORD)
        if self.code is not None:
            page.locator("form#login input[name=code]").fill(self.code)
        click(page, "form#login")
        if urlsplit(page.url).path != "/":
            raise SystemExit(f"{self.name} could not sign in: the console answered {page.url}")
        return page

    def __exit__(self, *_exc: object) -> None:
        self.context.close()


def click(page: Page, form: str, button: str | None = None) -> None:
    """Submit `form` with its (named) button, and wait for the page it leads to."""
    target = page.locator(form).first
    chosen = target.get_by_role("button", name=button) if button else target.get_by_role("button").first
    with page.expect_navigation(timeout=120_000):
        chosen.evaluate("b => b.form.requestSubmit(b)")  # the form's own submission, validation included


def generate(server: ZguardProcess, token: str) -> str:
    """One generation through the API as rita: her grant's headers."""
    body = json.dumps({"prompt": "a lighthouse at dawn, watercolour", "size": "256x256", "num_inference_steps": 1})
    request = urllib.request.Request(  # noqa: S310 - the loopback URL of the server this script started
        f"{server.api}/v1/images/generations",
        data=body.encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - as above
        return "\n".join(f"{k}: {v}" for k, v in response.headers.items() if k.lower().startswith("x-zguard-grant"))


def shoot(page: Page, name: str) -> None:
    from PIL import Image

    page.wait_for_load_state("networkidle")
    target = OUTPUT / f"{name}.png"
    page.screenshot(path=target, full_page=True)
    with Image.open(target) as shot:
        reduced = shot.convert("RGB").quantize(colors=256)
    reduced.save(target, optimize=True)
    print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    sys.exit(main())
