"""What the watermark index holds for an event's images (`watermark_ids`), and the in-memory
sink's lookup that tests and tools trace against."""

from __future__ import annotations

from zguard.audit import AuditEvent
from zguard.audit.memory import MemoryAuditSink
from zguard.audit.store import watermark_ids
from zguard.provenance.trace import GENERATION_EVENT, find_generation

A, B = "0123456789abcdef", "fedcba9876543210"


def test_ids_are_the_markers_form_each_once_in_order() -> None:
    images = [{"watermark_id": B}, {"bytes": 3}, {"watermark_id": A}, {"watermark_id": B}]
    assert watermark_ids(images) == [B, A]


def test_anything_else_is_not_indexed() -> None:
    odd = ["0123456789ABCDEF", A[:15], A + "0", " " + A[1:], 0x0123456789ABCDEF, None, ""]
    assert watermark_ids([{"watermark_id": value} for value in odd]) == []
    assert watermark_ids([]) == []


def test_the_memory_sink_finds_generations_by_id() -> None:
    sink = MemoryAuditSink()
    sink.emit(AuditEvent(type="http.request", outcome="allowed"))
    sink.emit(AuditEvent(type="generation.failed", outcome="failed", request_id="x", images=({"watermark_id": A},)))
    sink.emit(AuditEvent(type=GENERATION_EVENT, outcome="done", request_id="y", images=({"watermark_id": A},)))
    assert [e.seq for e in sink.find_watermark(A)] == [2, 3]
    assert sink.find_watermark(B) == []
    body = find_generation(sink, A)
    assert body is not None
    assert body["request_id"] == "y"
    assert find_generation(sink, B) is None
