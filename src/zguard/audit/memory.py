"""An audit sink that keeps events in memory: for tests, and for tools that record nothing.

It is not a trail (no chain, nothing durable), so `zguard serve` never uses it; the app factories
and `build_runtime` take the sink they are given and have no default.
"""

from __future__ import annotations

import json
from typing import Any

from zguard.audit import AuditEvent
from zguard.audit.chain import canonical, event_body
from zguard.audit.store import StoredEvent


class MemoryAuditSink:
    """Keeps events in a list: a test double, and the sink of `zguard docs`, which serves no request.
    `search` serves them like the store does (no chain: this is not a trail). Production wiring
    never falls back to it: `build_runtime` requires its audit sink."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def record(self, event: AuditEvent) -> AuditEvent:
        self.events.append(event)
        return event

    def search(
        self,
        *,
        principal: str | None = None,
        outcome: str | None = None,
        type_prefix: str | None = None,
        after_seq: int | None = None,
        limit: int = 100,
        **_: object,
    ) -> list[Any]:
        found = []
        for seq, event in enumerate(self.events, start=1):
            if (after_seq is not None and seq <= after_seq) or (principal is not None and event.principal != principal):
                continue
            if (outcome is not None and event.outcome != outcome) or (
                type_prefix is not None and not event.type.startswith(type_prefix)
            ):
                continue
            body = canonical(event_body(event, seq=seq, event_id=f"{seq:032x}", time_ms=int(event.time * 1000)))
            found.append(StoredEvent(seq, f"{seq:032x}", event.time, event.type, event.outcome, body, ""))
            if len(found) >= limit:
                break
        return found

    def find_watermark(self, watermark_id: str) -> list[Any]:
        # A scan: this sink holds a test's or a tool's few events, not a trail.
        return [
            stored
            for stored in self.search(limit=len(self.events))
            if any(image.get("watermark_id") == watermark_id for image in json.loads(stored.body).get("images") or ())
        ]

    def of_type(self, prefix: str) -> list[AuditEvent]:
        """Events of a type starting with `prefix`, or request events holding such a decision."""
        return [e for e in self.events if e.type.startswith(prefix) or _decided(e, prefix)]


def _decided(event: AuditEvent, prefix: str) -> bool:
    decisions = event.detail.get("decisions")
    return isinstance(decisions, str) and any(d.startswith(prefix) for d in decisions.split(","))
