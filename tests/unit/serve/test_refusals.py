"""Transport refusals as audit events: bounded per client address and in all, then one count."""

from __future__ import annotations

import asyncio

import pytest

from zguard.audit.memory import MemoryAuditSink
from zguard.serve.refusals import RefusalRecorder
from zguard.serve.transport import Refusal

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusal(client: str, code: str = "malformed_request") -> Refusal:
    return Refusal("api", client, 400, code, "0" * 32, "headers")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_refusal_is_one_event_with_its_facts() -> None:
    audit = MemoryAuditSink()
    RefusalRecorder(audit)(Refusal("console", "10.0.0.1", 431, "request_header_fields_too_large", "ab" * 16, "headers"))
    await settle()
    [event] = audit.events
    assert (event.type, event.outcome, event.code) == ("transport.refused", "denied", "request_header_fields_too_large")
    assert (event.listener, event.client, event.request_id) == ("console", "10.0.0.1", "ab" * 16)
    assert event.http == {"status": 431}
    assert event.detail == {"phase": "headers"}


async def test_one_address_gets_at_most_per_client_events_then_one_count() -> None:
    audit, clock = MemoryAuditSink(), Clock()
    record = RefusalRecorder(audit, per_client=3, total=100, window_s=60, clock=clock)
    for _ in range(50):
        record(refusal("10.0.0.1"))
    record(refusal("10.0.0.2", "request_timeout"))
    await settle()
    assert [e.client for e in audit.events] == ["10.0.0.1"] * 3 + ["10.0.0.2"]
    clock.now += 60
    record(refusal("10.0.0.1"))  # a new window: recorded again, after the count of the last one
    await settle()
    summary = audit.events[4]
    assert summary.type == "transport.refusals_suppressed"
    assert summary.detail == {"suppressed": 47, "codes": "malformed_request:47", "clients": 1, "window_s": 60}
    assert audit.events[5].type == "transport.refused"


async def test_a_flood_from_many_addresses_is_bounded_in_all() -> None:
    audit, clock = MemoryAuditSink(), Clock()
    record = RefusalRecorder(audit, per_client=3, total=20, window_s=60, clock=clock)
    for n in range(5000):
        record(refusal(f"2001:db8::{n:x}"))
    await settle()
    assert len(audit.events) == 20
    assert len(record._by_client) == 20  # the table is bounded by `total`, too


async def test_the_count_comes_at_the_end_of_the_window_even_when_the_flood_stops() -> None:
    audit = MemoryAuditSink()
    record = RefusalRecorder(audit, per_client=1, total=10, window_s=0.05)
    record(refusal("10.0.0.1"))
    record(refusal("10.0.0.1"))
    await asyncio.sleep(0.2)
    assert [e.type for e in audit.events] == ["transport.refused", "transport.refusals_suppressed"]
    assert audit.events[1].detail["suppressed"] == 1


async def test_an_audit_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MemoryAuditSink):
        async def record(self, event: object) -> object:
            raise RuntimeError("store down")

    RefusalRecorder(Broken())(refusal("10.0.0.1"))
    await settle()
    assert "could not record transport.refused" in caplog.text
