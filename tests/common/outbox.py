"""An in-memory audit outbox for forwarder tests: `OutboxSource` without a database.

`StoredEvent` has the fields of `zguard.audit.store.StoredEvent` that forwarding reads; events get
a canonical JSON body (sort_keys, compact separators, ensure_ascii=False) as the store writes them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    time: float
    type: str
    outcome: str
    body: str
    hash: str


def canonical(fields: dict[str, object]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_event(
    seq: int = 1,
    *,
    type: str = "generation.completed",
    outcome: str = "done",
    when: float = 1_714_564_800.123,
    prev_hash: str = "0" * 64,
    **fields: object,
) -> StoredEvent:
    """One stored event; `fields` go into the body next to the usual keys (which they may replace)."""
    event_id = str(fields.pop("event_id", uuid.uuid4()))
    body_fields: dict[str, object] = {
        "event_id": event_id,
        "seq": seq,
        "time": when,
        "type": type,
        "outcome": outcome,
        "code": None,
        "principal": "alice",
        "roles": ["generator"],
        "client": "10.1.2.3",
        "request_id": f"req-{seq}",
        "listener": "api",
    }
    body_fields.update(fields)
    body = canonical(body_fields)
    digest = hashlib.sha256((prev_hash + body).encode("utf-8", "surrogatepass")).hexdigest()
    return StoredEvent(seq, event_id, when, type, outcome, body, digest)


class MemoryOutbox:
    """Events and cursors in memory; thread-safe. `fail_reads` makes reads raise (a store outage)."""

    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._cursors: dict[str, int] = {}
        self._changed = threading.Condition()
        self.cursor_writes: list[tuple[str, int]] = []
        self.fail_reads: Callable[[], Exception | None] = lambda: None

    def append(self, **fields: object) -> StoredEvent:
        with self._changed:
            seq = len(self._events) + 1
            prev = self._events[-1].hash if self._events else "0" * 64
            event = make_event(seq, prev_hash=prev, when=time.time(), **fields)
            self._events.append(event)
            self._changed.notify_all()
            return event

    def all(self) -> list[StoredEvent]:
        with self._changed:
            return list(self._events)

    # OutboxSource
    def events_after(self, seq: int, limit: int) -> list[StoredEvent]:
        error = self.fail_reads()
        if error is not None:
            raise error
        with self._changed:
            return self._events[seq : seq + limit]  # seq n sits at index n-1

    def cursor(self, name: str) -> int:
        with self._changed:
            return self._cursors.get(name, 0)

    def advance_cursor(self, name: str, seq: int) -> None:
        with self._changed:
            if seq < self._cursors.get(name, 0):
                raise AssertionError(f"cursor {name} moved back from {self._cursors[name]} to {seq}")
            self._cursors[name] = seq
            self.cursor_writes.append((name, seq))

    def head_seq(self) -> int:
        with self._changed:
            return len(self._events)

    def wait_for_events(self, after_seq: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: len(self._events) > after_seq, timeout)
