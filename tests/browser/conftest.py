"""Fixtures of the browser tests: one Debian chromium (tests.common.browser) and one real
`zguard serve` per session, with authentication on and users who sign in with a password, set up
the way an operator does it: `zguard init`, `zguard user add`, `zguard user passwd` (the password
piped on stdin), all against the server's own state directory through `ZGUARD_*` variables."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.common.browser import PageRecord, launch_chromium, require_chromium, watched_page
from tests.common.servers import ZguardProcess


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    password: str
    roles: tuple[str, ...]
    totp: str | None = None  # the authenticator key, for a user whose role needs one (admin)


@dataclass(frozen=True)
class ConsoleServer:
    """The session's `zguard serve`: its console's base URL and the users who may sign in:
    `admin` (with a TOTP key), `generator`, `auditor`, and `member`, a generator whom a test may
    disable (the others stay enabled for every test), and `approver` (`approvals:decide` only)."""

    process: ZguardProcess
    admin: ConsoleUser
    generator: ConsoleUser
    auditor: ConsoleUser
    member: ConsoleUser
    # the last TOTP step each user's code was accepted for: the server takes a step once only
    totp_steps: dict[str, int] = field(default_factory=dict)
    approver: ConsoleUser | None = None  # `approvals:decide` only (test_console_approvals)

    @property
    def url(self) -> str:
        return self.process.console

    def one_time_code(self, user: ConsoleUser) -> str:
        """A TOTP code of `user` the server has not accepted yet: waits for the next 30-second
        step when this step's code was used (by enrolment or an earlier sign-in)."""
        assert user.totp is not None, f"{user.name} has no authenticator"
        self.wait_for_fresh_step(user)
        step = _step()
        self.totp_steps[user.name] = step
        return pyotp.TOTP(user.totp).at(step * TOTP_STEP_S)

    def wait_for_fresh_step(self, user: ConsoleUser) -> None:
        """Return once the current TOTP step is later than the last one `user`'s code was used
        for, so that a sign-in with `pyotp.TOTP(key).now()` (test_console_login) is accepted."""
        last = self.totp_steps.get(user.name)
        while last is not None and _step() <= last:
            time.sleep(TOTP_STEP_S - time.time() % TOTP_STEP_S + 0.05)


TOTP_STEP_S = 30  # RFC 6238's default, which zguard uses


def _step() -> int:
    return int(time.time() // TOTP_STEP_S)


def _zguard(server: ZguardProcess, *argv: str, stdin: str | None = None) -> str:
    """`zguard ARGV` as a child process with the server's environment; its stdout, or fail with both streams."""
    done = subprocess.run(
        [sys.executable, "-m", "zguard", *argv],
        env=server.env,
        cwd=server.cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"zguard {' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _enrol_totp(server: ZguardProcess, name: str) -> str:
    """`zguard user totp NAME` as an operator runs it: read the key it prints, answer with a code."""
    with subprocess.Popen(
        [sys.executable, "-m", "zguard", "user", "totp", name],
        env=server.env,
        cwd=server.cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stderr is not None
        assert child.stdin is not None
        first = child.stderr.readline()
        secret = first.rsplit(":", 1)[1].strip()
        child.stdin.write(pyotp.TOTP(secret).now() + "\n")
        child.stdin.close()
        assert child.wait(timeout=120) == 0, first + child.stderr.read()
    return secret


def _password() -> str:
    # random, so no two runs share one; long and irregular enough for the password policy
    return f"console-{secrets.token_urlsafe(18)}"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless chromium for tests/browser (installed with apt-get if need be). Package scope,
    not session: Playwright's sync API runs an event loop on this thread while it is open, and
    the anyio tests that run after this package need the thread's loop free."""
    executable = require_chromium()
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright, executable)
        yield chromium
        chromium.close()


@contextmanager
def running_console(state_dir: Path) -> Iterator[ConsoleServer]:
    """A `zguard serve` with authentication on and its users (each with a password), made the
    way an operator does it; stopped (and its exit status checked) on leaving. Also used by
    tools/console_screenshots.py."""
    server = ZguardProcess(state_dir, env={"ZGUARD_API_AUTH__ENABLED": "true"})
    admin = ConsoleUser("admin", _password(), ("admin",))
    others = (
        ConsoleUser("designer", _password(), ("generator",)),
        ConsoleUser("audrey", _password(), ("auditor",)),
        ConsoleUser("casey", _password(), ("generator",)),
    )
    approver = ConsoleUser("avery", _password(), ("approver",))
    _zguard(server, "init", "--admin", admin.name)
    for user in (*others, approver):
        _zguard(server, "user", "add", user.name, *(arg for role in user.roles for arg in ("--role", role)))
    for user in (admin, *others, approver):
        _zguard(server, "user", "passwd", user.name, stdin=f"{user.password}\n")
    admin = dataclasses.replace(admin, totp=_enrol_totp(server, admin.name))  # admins need one by default
    enrolled = _step()  # enrolment spent this step's code
    with server:
        server.wait_ready()
        yield ConsoleServer(server, admin, *others, totp_steps={admin.name: enrolled}, approver=approver)
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    """One `zguard serve` for the session (`running_console`)."""
    with running_console(tmp_path_factory.mktemp("console") / "state") as server:
        yield server


@pytest.fixture
def console(browser: Browser, console_server: ConsoleServer) -> Iterator[tuple[Page, PageRecord]]:
    """A page on the console in a fresh browser context (no cookies), and what it recorded; the
    test fails if the browser logged an error, a CSP violation or a request off loopback (checked
    here unless the test checked it itself)."""
    with watched_page(browser, console_server.url) as (page, record):
        yield page, record
        if not record.checked:
            record.assert_clean()
