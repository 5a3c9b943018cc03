"""Audit events: the one interface every decision is reported through.

`AuditTrail` (zguard.audit.trail) is the sink the server and the CLI use: it commits each event
to the hash-chained audit store before `emit` returns. Events carry metadata only: never a
prompt (a keyed fingerprint at most, see zguard.audit.prompts), an image, a password or a token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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
    # Generation metadata, when the event describes one (see zguard.audit.chain for the layout).
    model: str | None = None
    manifest: str | None = None
    generation: Mapping[str, DetailValue] | None = None
    prompt: Mapping[str, DetailValue] | None = None
    policy: Mapping[str, DetailValue] | None = None
    latency_ms: float | None = None
    images: tuple[Mapping[str, DetailValue], ...] = ()
    http: Mapping[str, DetailValue] | None = None


class AuditSink(Protocol):
    def emit(self, event: AuditEvent) -> None:
        """Record `event` before returning; raise AuditUnavailable when it cannot be recorded."""

    async def record(self, event: AuditEvent) -> object:
        """`emit` for the event loop: await until `event` is recorded."""


_SEVERITY = {"allowed": 0, "done": 0, "denied": 1, "failed": 2}


class RequestRecord:
    """The one audit event a request produces, filled in by each layer that decides something.

    The audit middleware creates it when a request arrives and commits it as one event just
    before the response starts; the network ACL, authentication, authorization, rate limits and
    the route add to it (`merge`, or the fields directly). The most severe outcome wins.
    """

    __slots__ = (
        "auth_method",
        "authenticated",
        "code",
        "decisions",
        "detail",
        "generation",
        "images",
        "latency_ms",
        "manifest",
        "model",
        "outcome",
        "policy",
        "principal",
        "prompt",
        "roles",
        "type",
    )

    def __init__(self) -> None:
        self.type: str | None = None
        self.outcome: Outcome | None = None
        self.code: str | None = None
        self.principal: str | None = None
        self.roles: tuple[str, ...] = ()
        self.auth_method: str | None = None
        # Set once authentication accepted the caller: its refusals are not a stranger's
        # (zguard.audit.strangers samples those).
        self.authenticated = False
        self.decisions: list[str] = []
        self.detail: dict[str, DetailValue] = {}
        self.model: str | None = None
        self.manifest: str | None = None
        self.generation: Mapping[str, DetailValue] | None = None
        self.prompt: Mapping[str, DetailValue] | None = None
        self.policy: Mapping[str, DetailValue] | None = None
        self.latency_ms: float | None = None
        self.images: tuple[Mapping[str, DetailValue], ...] = ()

    def merge(self, event: AuditEvent) -> None:
        """Fold a decision's event into this request's record."""
        self.decisions.append(event.type)
        if event.principal is not None:
            self.principal = event.principal
        if event.roles:
            self.roles = event.roles
        if event.auth_method is not None:
            self.auth_method = event.auth_method
        self.set_outcome(event.outcome, event.code)
        for key, value in event.detail.items():
            if value is not None:
                self.detail[key] = value

    def set_outcome(self, outcome: Outcome, code: str | None = None) -> None:
        if self.outcome is None or _SEVERITY[outcome] >= _SEVERITY[self.outcome]:
            self.outcome = outcome
            if code is not None:
                self.code = code


@runtime_checkable
class AuditReader(Protocol):
    def search(self, **filters: Any) -> list[Any]:
        """Stored events (`zguard.audit.store.StoredEvent`) matching `AuditStore.search`'s filters."""

    def find_watermark(self, watermark_id: str) -> list[Any]:
        """Stored events whose images carry `watermark_id`, oldest first: `AuditStore.find_watermark`."""


def report(sink: AuditSink, record: RequestRecord | None, event: AuditEvent) -> None:
    """A decision about a request goes into its record; one outside any request is its own event."""
    if record is not None:
        record.merge(event)
    else:
        sink.emit(event)
