"""Audit events: the one interface every decision is reported through.

This is the seam the tamper-evident audit trail plugs into (hash chain, durable store, syslog
forwarding); until then `LogAuditSink` writes each event as one JSON line on the `zguard.audit`
logger. Events carry metadata only: never a prompt, an image, a password or a token.
"""

from __future__ import annotations

import json
import logging
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
    """Writes each event as one JSON object on the `zguard.audit` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("zguard.audit")

    def emit(self, event: AuditEvent) -> None:
        if self._log.isEnabledFor(logging.INFO):
            # vars(), not asdict(): no deep copy on every request; the fields are plain values.
            self._log.info("%s", json.dumps(vars(event), ensure_ascii=False, sort_keys=True, default=_plain))


class MemoryAuditSink:
    """Keeps events in a list: for tests and for tools that report what they did."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def of_type(self, prefix: str) -> list[AuditEvent]:
        return [e for e in self.events if e.type.startswith(prefix)]
