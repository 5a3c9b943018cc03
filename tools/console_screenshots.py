"""Screenshots of the console for the docs, in English and Chinese, from a real `zguard serve`.

    .venv/bin/python tools/console_screenshots.py   # rewrites docs/console/<page>-<lang>.png

It starts one server the way the browser tests do (tests.browser.conftest.running_console: a
throw-away state directory, users made with `zguard user add`), signs in as the role each page is
for (admin: home, account, users, system, policy; generator: generate, after one generation;
auditor: audit and verify now), and saves a full-page PNG of each page at a 1280×720 viewport, first in English,
then after switching to 中文 with the console's own language form. Debian's chromium, loopback
only (tests.common.browser). The PNGs are reduced to a 256-colour palette, which keeps the
console's flat colours and text exact enough and each file small enough for the repository.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:  # at run time main() imports them, once the repository is on sys.path
    from playwright.sync_api import Browser, Page
    from tests.browser.conftest import ConsoleServer, ConsoleUser

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs/console"
WIDTH, HEIGHT = 1280, 720  # the viewport; a full-page shot is as tall as the page
LANGUAGES = ("en", "zh-CN")  # the first is the browser's own (Accept-Language); the second is switched to
BUDGET_BYTES = 150_000
PROMPT = "a lighthouse at dawn, watercolour"
PREFERRED_SIZE = "256x256"  # big enough to see in a screenshot; the demo model's noise compresses badly
ADMIN_PAGES: dict[str, str | Callable[[Page], None]] = {
    "home": "/",
    "account": "/account",
    "users": "/users",
    "system": "/system",
    "policy": "/policy",
}


def main() -> int:
    sys.path.insert(0, str(ROOT))  # `tests` is a package of the repository, not of the installed zguard
    from playwright.sync_api import sync_playwright
    from tests.browser.conftest import running_console
    from tests.common.browser import find_chromium, launch_chromium
    from tests.common.fonts import fonts_unavailable

    executable = find_chromium()
    if executable is None:
        print("no chromium: apt-get install --no-install-recommends chromium", file=sys.stderr)
        return 1
    if (reason := fonts_unavailable()) is not None:  # without a CJK font the Chinese pages are boxes
        print(f"no CJK font: {reason}; apt-get install fonts-wqy-microhei", file=sys.stderr)
        return 1
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="zguard-screenshots-") as state,
        running_console(Path(state) / "state") as server,
        sync_playwright() as playwright,
    ):
        chromium = launch_chromium(playwright, executable)
        try:
            session(chromium, server, None, {"login": "/login"})
            session(chromium, server, server.generator, {"generate": generate})
            audit = f"/audit?{urlencode({'principal': server.generator.name})}"  # a short page: one person's events
            session(chromium, server, server.auditor, {"audit": audit, "audit-verify": verify_now})
            session(chromium, server, server.admin, ADMIN_PAGES)
        finally:
            chromium.close()
    too_big = [p.name for p in sorted(OUTPUT.glob("*.png")) if p.stat().st_size > BUDGET_BYTES]
    if too_big:
        print(f"over {BUDGET_BYTES // 1000} KB: {', '.join(too_big)}", file=sys.stderr)
        return 1
    return 0


def session(
    chromium: Browser, server: ConsoleServer, user: ConsoleUser | None, pages: dict[str, str | Callable[[Page], None]]
) -> None:
    """One browser context for `user` (None: signed out): the English pages, then the language
    switch, then the same pages in Chinese. A page is a path, or what to do to get it shown."""
    context = chromium.new_context(base_url=server.url, viewport={"width": WIDTH, "height": HEIGHT}, locale="en-US")
    try:
        page = context.new_page()
        if user is not None:
            sign_in(page, user, server.one_time_code(user) if user.totp else None)
        for lang in LANGUAGES:
            if lang != LANGUAGES[0]:
                switch_language(page, lang)
            for name, how in pages.items():
                if callable(how):
                    how(page)
                else:
                    page.goto(how)
                shoot(page, name, lang)
    finally:
        context.close()


def sign_in(page: Page, user: ConsoleUser, code: str | None = None) -> None:
    page.goto("/login")
    page.locator("form#login input[name=username]").fill(user.name)
    page.locator("form#login input[name=password]").fill(user.password)
    if code is not None:
        page.locator("form#login input[name=code]").fill(code)
    with page.expect_navigation():
        page.locator("form#login").get_by_role("button").click()
    if urlsplit(page.url).path != "/":
        raise SystemExit(f"{user.name} could not sign in: the console answered {page.url}")


def switch_language(page: Page, lang: str) -> None:
    """The console's own language form (a cookie), as a person switches."""
    page.locator("#lang").select_option(lang)
    with page.expect_navigation():
        page.locator("form[action='/language']").get_by_role("button").click()


def generate(page: Page) -> None:
    """/generate showing one image: the demo model at the preferred size, one step."""
    page.goto("/generate")
    page.locator("#prompt").fill(PROMPT)
    sizes: list[str] = page.locator("#size option").evaluate_all("options => options.map(o => o.value)")
    page.locator("#size").select_option(PREFERRED_SIZE if PREFERRED_SIZE in sizes else sizes[0])
    page.locator("#num_inference_steps").fill("1")
    with page.expect_navigation():
        page.locator("form#generate").get_by_role("button").click()
    page.locator("figure.generated img").wait_for()


def verify_now(page: Page) -> None:
    """/audit/verify after a verification of the trail ran to its end."""
    page.goto("/audit/verify")
    with page.expect_navigation():
        page.locator("form#verify-form").get_by_role("button").click()
    page.locator("#verify-result").wait_for()


def shoot(page: Page, name: str, lang: str) -> None:
    page.wait_for_load_state("networkidle")
    target = OUTPUT / f"{name}-{lang}.png"
    page.screenshot(path=target, full_page=True)
    print(f"{target.relative_to(ROOT)}: {_palette(target) // 1024} KiB")


def _palette(path: Path) -> int:
    """Rewrite the PNG with a 256-colour palette; its size in bytes."""
    from PIL import Image

    with Image.open(path) as shot:
        reduced = shot.convert("RGB").quantize(colors=256)
    reduced.save(path, optimize=True)
    return path.stat().st_size


if __name__ == "__main__":
    sys.exit(main())
