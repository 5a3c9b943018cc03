"""A bound on repeated log lines, so a flood of one event cannot fill the disk.

`RepeatedLogFilter` on a handler lets through at most `burst` records with the same logger,
level and message template (the format string, before its arguments) per `interval_s`; the
last one let through says that more are being suppressed. The next time a record passes once
an interval is over, one line per template that had records left out reports how many. Tracebacks
of the records let through are kept; left-out records are never formatted, so they cost little.

Why: under a connection flood at the open-file limit, asyncio logged "socket.accept() out of
system resource" with a traceback up to `backlog` times per accept wake-up (in Python 3.11 its
accept loop goes on after EMFILE), uvicorn logged each malformed request, and 15 s produced
30 MB of log. `zguard.cli.common.setup_logging` installs the filter on every command's handler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

BURST = 20
INTERVAL_S = 60.0
MAX_TEMPLATES = 1024  # templates tracked at once; the oldest is forgotten beyond it
Key = tuple[str, int, str]


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RepeatedLogFilter(logging.Filter):
    def __init__(
        self,
        burst: int = BURST,
        interval_s: float = INTERVAL_S,
        *,
        max_templates: int = MAX_TEMPLATES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self.max_templates = max_templates
        self._clock = clock
        self._windows: dict[Key, _Window] = {}
        self._lock = threading.Lock()  # records come from the event loop and worker threads
        self._next_sweep = clock() + interval_s
        self._reporting = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._reporting, "active", False):
            return True  # our own "suppressed" lines
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, template)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now >= window.start + self.interval_s:
                if window is not None:
                    del self._windows[key]  # re-inserted below, as the newest
                    if window.suppressed:
                        _annotate(record, f"[{window.suppressed} similar messages were suppressed before this one]")
                window = self._windows[key] = _Window(now)
                if len(self._windows) > self.max_templates:
                    del self._windows[next(iter(self._windows))]
            window.passed += 1
            allowed = window.passed <= self.burst
            if not allowed:
                window.suppressed += 1
            elif window.passed == self.burst:
                _annotate(record, f"[similar messages are suppressed for up to {self.interval_s:g} s]")
            due = self._due_reports(now)
        self._report(due)
        return allowed

    def _due_reports(self, now: float) -> list[tuple[Key, int]]:
        """Templates whose interval ended with records left out (forgotten once reported)."""
        if now < self._next_sweep:
            return []
        self._next_sweep = now + self.interval_s
        due = [
            (key, window.suppressed)
            for key, window in self._windows.items()
            if window.suppressed and now >= window.start + self.interval_s
        ]
        for key, _ in due:
            del self._windows[key]
        return due

    def _report(self, due: list[tuple[Key, int]]) -> None:
        self._reporting.active = True
        try:
            for (name, level, template), count in due:
                logging.getLogger(name).log(
                    level, "suppressed %d similar messages in %g s: %.200s", count, self.interval_s, template
                )
        finally:
            self._reporting.active = False


def _annotate(record: logging.LogRecord, note: str) -> None:
    if isinstance(record.msg, str):
        record.msg = f"{record.msg} {note}"
    else:
        record.msg, record.args = f"{record.getMessage()} {note}", None


def limit_repeated_logs(logger: logging.Logger | None = None) -> None:
    """Put a `RepeatedLogFilter` on each handler of `logger` (the root logger by default) that has none."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, RepeatedLogFilter) for existing in handler.filters):
            handler.addFilter(RepeatedLogFilter())
