"""Chromium for the browser tests: Debian's `chromium` package, installed with apt-get on first use
(never a Playwright browser download), launched headless with every network path but loopback
shut, and pages that record console errors, uncaught exceptions, CSP violations and requests that
left loopback, so that a test ends by asserting there were none.

CSP violations are caught twice: a `securitypolicyviolation` listener added before any page script
runs (kept in `window.__cspViolations` and sent to Python at once, so a violation on a page the
test has since navigated away from is not lost), and the console error Chromium prints for each
("... violates the following Content Security Policy directive ..."), recorded like any other.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, Request, Response

from tests.common.debian import apt_install
from tests.common.unavailable import unavailable

CHROMIUM_PACKAGE = "chromium"
CHROMIUM_PATH = Path("/usr/bin/chromium")  # where Debian's package puts it, when /usr/bin is not on PATH

# Chromium phones home from many places (component updates, safe browsing, variations, metrics,
# DNS prefetch, translate, optimisation hints). The resolver rule is the backstop: every name but
# the loopback literal fails to resolve, so whatever a flag below forgets cannot leave the host.
LOOPBACK_ONLY_ARGS = (
    "--no-sandbox",  # root in a container (CI) has no user namespaces for the sandbox
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-proxy-server",  # an http_proxy in the environment must not see console traffic
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--dns-prefetch-disable",
    "--disable-dev-shm-usage",  # a container's /dev/shm is 64 MiB; Chromium crashes on big pages
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

_RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const violation = {
    directive: event.effectiveDirective,
    blocked: event.blockedURI,
    source: event.sourceFile,
    line: event.lineNumber,
    sample: event.sample,
    page: document.location.href,
  };
  window.__cspViolations.push(violation);
  window.__zguardCspViolation(violation);
});
"""


def find_chromium() -> str | None:
    """The chromium binary on PATH or at Debian's path, or None."""
    found = shutil.which("chromium")
    if found is not None:
        return found
    return str(CHROMIUM_PATH) if CHROMIUM_PATH.is_file() else None


@cache
def _chromium_or_reason() -> tuple[str | None, str | None]:
    """(path, None) once chromium is there, installing it at most once per run; else (None, why)."""
    if (found := find_chromium()) is not None:
        return found, None
    if (reason := apt_install(("--no-install-recommends", CHROMIUM_PACKAGE))) is not None:
        return None, reason
    if (found := find_chromium()) is not None:
        return found, None
    return None, f"{CHROMIUM_PACKAGE} installed, but no chromium on PATH or at {CHROMIUM_PATH}"


def require_chromium() -> str:
    """The path of Debian's chromium, installed if need be; skip (fail under CI=true) when it cannot be."""
    path, reason = _chromium_or_reason()
    if path is None:
        unavailable(f"no chromium for the browser tests: {reason}", remedy=f"apt-get install {CHROMIUM_PACKAGE}")
    return path


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    """Headless `executable` (Debian's chromium) that talks to loopback only."""
    return playwright.chromium.launch(
        executable_path=executable, headless=True, chromium_sandbox=False, args=list(LOOPBACK_ONLY_ARGS)
    )


# Chromium logs this console error for every document or icon that answers 4xx or 5xx.
_FAILED_LOAD = "Failed to load resource: the server responded with a status of "
_ICON_URL = """() => {
  const link = document.querySelector("link[rel~=icon]");
  return link ? link.href : new URL("/favicon.ico", document.location.href).href;
}"""


@dataclass(frozen=True)
class ConsoleError:
    text: str
    url: str

    def __str__(self) -> str:
        return f"{self.text} ({self.url})"


@dataclass
class PageRecord:
    """What the browser saw in one context: every response, and everything that went wrong
    (console errors, uncaught exceptions, CSP violations, requests off loopback, an icon that
    cannot be loaded); `assert_clean` fails listing all of it.

    The icon is checked, not waited for: Chromium asks for the page's icon (`/favicon.ico` unless
    the page names one) from outside the page, with no request or response event and after the
    load event, and logs a console error when it is refused, sometimes after the test is over.
    So `assert_clean` also fetches the current page's icon itself (with the context's cookies)
    and reports an error status: every run sees what only some runs would.
    """

    responses: list[Response] = field(default_factory=list)
    console_errors: list[ConsoleError] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict[str, Any]] = field(default_factory=list)
    off_loopback: list[str] = field(default_factory=list)
    expected_statuses: list[tuple[str, int]] = field(default_factory=list)
    check_icon: bool = True
    page: Page | None = None
    checked: bool = False

    def expect_error_status(self, response: Response) -> None:
        """`response` was meant to be 4xx/5xx (a refused login answers 401): the console error
        Chromium logs for it is not one of the page's errors. Counts once per call."""
        assert response.status >= 400, f"{response.url} answered {response.status}, not an error"
        self.expected_statuses.append((response.url, response.status))

    def expect_missing_icon(self) -> None:
        """The test opens something that is not a console page (`/healthz`), for which a missing icon is no fault."""
        self.check_icon = False

    def unexpected_console_errors(self, icon: str | None = None) -> list[ConsoleError]:
        """The console errors but those of the expected error statuses (and of `icon`, if missing it is expected)."""
        expected = list(self.expected_statuses)
        unexpected = []
        for error in self.console_errors:
            failed_load = error.text.startswith(_FAILED_LOAD)
            if (
                failed_load
                and not self.check_icon
                and urlsplit(error.url).path in {"/favicon.ico", urlsplit(icon or "").path}
            ):
                continue
            match = next((e for e in expected if failed_load and e[0] == error.url and f" {e[1]} " in error.text), None)
            if match is None:
                unexpected.append(error)
            else:
                expected.remove(match)
        return unexpected

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(ConsoleError(message.text, message.location.get("url", "")))

    def on_response(self, response: Response) -> None:
        self.responses.append(response)

    def on_csp_violation(self, violation: dict[str, Any]) -> None:
        self.csp_violations.append(violation)

    def on_page_error(self, error: Exception) -> None:
        self.page_errors.append(str(error))

    def on_request(self, request: Request) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("http:", "https:", "ws:", "wss:")) and host not in LOOPBACK_HOSTS:
            self.off_loopback.append(request.url)

    def settle(self) -> None:
        """Wait until the page's network is quiet (no request for 500 ms), so what is recorded is complete."""
        if self.page is not None and not self.page.is_closed():
            self.page.wait_for_load_state("networkidle")

    def icon_problems(self) -> tuple[str | None, list[str]]:
        """(the icon's URL, [why it cannot be loaded]) for the page open now."""
        if self.page is None or self.page.is_closed():
            return None, []
        icon: str = self.page.evaluate(_ICON_URL)
        if not self.check_icon or not icon.startswith(("http:", "https:")):
            return icon, []  # a data: icon is the CSP's business
        status = self.page.request.get(icon, max_redirects=0).status
        return icon, [f"{icon} answered {status}: Chromium logs a console error for it"] if status >= 400 else []

    def assert_clean(self) -> None:
        """Fail listing every problem recorded so far; the fixture calls it at teardown unless the test did."""
        self.checked = True
        self.settle()
        icon, icon_problems = self.icon_problems()
        problems = {
            "console errors": [str(error) for error in self.unexpected_console_errors(icon)],
            "uncaught exceptions": self.page_errors,
            "CSP violations": self.csp_violations,
            "requests off loopback": self.off_loopback,
            "icon": icon_problems,
        }
        found = {what: items for what, items in problems.items() if items}
        assert not found, f"the browser reported {found}"


@contextmanager
def watched_page(browser: Browser, base_url: str) -> Iterator[tuple[Page, PageRecord]]:
    """A page in a fresh context (no cookies from other tests) whose problems are recorded."""
    context: BrowserContext = browser.new_context(base_url=base_url, java_script_enabled=True)
    record = PageRecord()
    try:
        context.expose_function("__zguardCspViolation", record.on_csp_violation)
        context.add_init_script(_RECORD_CSP_VIOLATIONS)
        page = record.page = context.new_page()
        page.on("console", record.on_console)
        page.on("pageerror", record.on_page_error)
        context.on("request", record.on_request)
        context.on("response", record.on_response)
        yield page, record
    finally:
        context.close()
