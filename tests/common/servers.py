"""Real servers for tests: `zguard serve` as a child process, or an app on uvicorn in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.common.factories import free_port
from tests.common.polling import wait_until
from zguard.serve.listeners import listener_config


class ZguardProcess:
    """`python -m zguard serve` on free loopback ports, with its own state dir."""

    def __init__(
        self, state_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None, cwd: Path | None = None
    ) -> None:
        self.api_port = free_port()
        self.console_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ZGUARD_")},
            "ZGUARD_STATE_DIR": str(state_dir),
            "ZGUARD_API_AUTH__ENABLED": "false",  # loopback-only local mode; auth tests override it
            "ZGUARD_INTEGRITY__ALLOW_ROOT": "true",  # CI runs as root; test_storage shows the refusal
            "ZGUARD_API__PORT": str(self.api_port),
            "ZGUARD_CONSOLE__PORT": str(self.console_port),
            **(env or {}),
        }
        self.args = args or []
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = state_dir.parent / f"zguard-{self.api_port}.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def start(self) -> ZguardProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zguard", *self.args, "serve"],
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz answered 200; AssertionError (with the log) if zguard exits first."""
        proc = self.proc
        assert proc is not None
        started = time.monotonic()

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"zguard exited with {proc.returncode}:\n{self.log()}")
            return httpx.get(f"{self.api}/readyz", timeout=2).status_code == 200

        wait_until(
            ready, timeout=timeout, ignoring=(httpx.HTTPError,), what=lambda: f"zguard to be ready:\n{self.log()}"
        )
        return time.monotonic() - started

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)

    def __enter__(self) -> ZguardProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port from a background thread."""
    port = free_port()
    config = listener_config(app, grace_s=5)
    config.host, config.port = "127.0.0.1", port
    server = uvicorn.Server(config)  # off the main thread it installs no signal handlers
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, interval=0.01, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
