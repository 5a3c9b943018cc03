"""Audit events: the one interface every decision is reported through.

This is the seam the tamper-evident audit trail plugs into (hash chain, durable store, syslog
forwarding); until then `LogAuditSink` writes each event as one JSON line on the `zguard.audit`
logger. Events carry metadata only: never a prompt, an image, a password or a token.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Outcome = Literal["allowed", "denied", "done", "failed"]
DetailValue = str | int | float | bool | None


@dataclass(frozen=True)
class AuditEvent:
    """What was decided, about whom, from where. `type` is dotted: `auth.denied`, `user.disabled`."""

    type: str
    outcome: Outcome
    code: str | None = None
    request_id: str | None = None
    listener: str | None = None
    client: str | None = None
    principal: str | None = None
    roles: tuple[str, ...] = ()
    auth_method: str | None = None
    detail: Mapping[str, DetailValue] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


def _plain(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else str(value)


class AuditSink(Protocol):
    def emit(self, event: AuditEvent) -> None:
        """Record `event`. Must not raise for ordinary events; the audit trail decides durability."""


class LogAuditSink:
    """Writes each event as one JSON object on the `zguard.audit` logger.

    With `background=True` (the server) a request only puts its event on a queue; one writer
    thread serialises and logs them in order, and `close()` drains the queue at shutdown. This
    keeps log formatting and I/O (about 35 µs an event) off the request path. It is a stopgap with
    the log's durability; the audit trail replaces it with events committed before the response.
    With `background=False` (the CLI) `emit` writes at once and a failure reaches the caller.
    """

    def __init__(self, logger: logging.Logger | None = None, *, background: bool = False) -> None:
        self._log = logger or logging.getLogger("zguard.audit")
        self._background = background
        self._queue: queue.SimpleQueue[AuditEvent | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        if not self._background:
            self._write(event)
            return
        if self._writer is None:
            self._start()
        self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)
            writer.join(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="zguard-audit-log", daemon=True)
                self._writer.start()

    def _drain(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self._write(event)
            except Exception:  # a bad event must not stop the writer
                logging.getLogger("zguard").exception("could not write an audit event of type %s", event.type)

    def _write(self, event: AuditEvent) -> None:
        # vars(), not asdict(): no deep copy; the fields are plain values.
        self._log.info("%s", json.dumps(vars(event), ensure_ascii=False, sort_keys=True, default=_plain))


class MemoryAuditSink:
    """Keeps events in a list: for tests and for tools that report what they did."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def of_type(self, prefix: str) -> list[AuditEvent]:
        return [e for e in self.events if e.type.startswith(prefix)]
