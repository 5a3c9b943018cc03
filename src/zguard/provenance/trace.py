"""From an image back to the request that produced it: decode the watermark, find the
`generation.completed` audit event whose `images[*].watermark_id` matches, read the label.

The lookup goes through the audit store's watermark index (`AuditReader.find_watermark`, the
`audit_watermarks` table written with each event): the id is random, so without it every
generation event would be read. The images themselves were never kept.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from zguard.audit import AuditEvent, DetailValue
from zguard.provenance.labels import read_label
from zguard.provenance.watermark import Watermarker, WatermarkFound

GENERATION_EVENT = "generation.completed"
TRACED_EVENT = "provenance.traced"
# What a trace shows of the generation event: who, when, from where, with what, and the verdict.
SHOWN_FIELDS = (
    "time",
    "request_id",
    "event_id",
    "seq",
    "principal",
    "roles",
    "auth_method",
    "listener",
    "client",
    "model",
    "manifest",
    "generation",
    "policy",
    "outcome",
)
MAX_PIXELS = 64_000_000  # a decompression bomb is refused before decoding


class GenerationEvents(Protocol):
    def find_watermark(self, watermark_id: str) -> list[Any]:
        """Stored events (`zguard.audit.store.StoredEvent`) whose images carry `watermark_id`,
        oldest first: `AuditStore.find_watermark`."""


class NotAnImage(ValueError):
    """The bytes are not an image Pillow can open (or it is larger than `MAX_PIXELS`)."""


@dataclass(frozen=True)
class TraceResult:
    mark: WatermarkFound | None
    event: dict[str, Any] | None  # the generation event's body, when found
    label: dict[str, str] | None = None
    image_size: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.event is not None

    def summary(self) -> dict[str, Any]:
        """Plain JSON for the CLI's --json and the API."""
        return {
            "found": self.found,
            "watermark_id": self.mark.hex_id if self.mark is not None else None,
            "scale": list(self.mark.scale) if self.mark is not None else None,
            "generation": {k: self.event.get(k) for k in SHOWN_FIELDS} if self.event is not None else None,
            "label": self.label,
            "notes": self.notes,
        }


def open_image(blob: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(blob))
        if image.width * image.height > MAX_PIXELS:
            raise NotAnImage(f"the image has more than {MAX_PIXELS} pixels")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        if isinstance(exc, NotAnImage):
            raise
        raise NotAnImage("the data is not an image this server can read") from None
    return image


def find_generation(reader: GenerationEvents, watermark_id: str) -> dict[str, Any] | None:
    """The oldest generation event whose images carry `watermark_id` (16 hex digits), or None."""
    for stored in reader.find_watermark(watermark_id):
        if not stored.type.startswith(GENERATION_EVENT):
            continue
        # The body, not the index, decides: the index only says where to look.
        body: dict[str, Any] = json.loads(stored.body)
        if any(image.get("watermark_id") == watermark_id for image in body.get("images") or ()):
            return body
    return None


def trace(blob: bytes, watermarker: Watermarker, reader: GenerationEvents) -> TraceResult:
    """Decode and look up; raise NotAnImage."""
    image = open_image(blob)
    label = read_label(image)
    mark = watermarker.detect(image)
    notes = []
    if mark is None:
        notes.append("no zguard watermark found")
        return TraceResult(None, None, label, image.size, notes)
    event = find_generation(reader, mark.hex_id)
    if event is None:
        notes.append("the watermark is valid but no audit event carries its id (purged, or another installation)")
    if label is not None and event is not None and label.get("ProduceID") != event.get("request_id"):
        notes.append("the metadata label names another request than the watermark")
    return TraceResult(mark, event, label, image.size, notes)


def traced_event(result: TraceResult, *, principal: str | None, source: str, **context: Any) -> AuditEvent:
    """The audit event every trace leaves: who asked, what was found."""
    detail: dict[str, DetailValue] = {
        "source": source,
        "found": result.found,
        "watermark_id": result.mark.hex_id if result.mark is not None else None,
        "traced_request_id": result.event.get("request_id") if result.event is not None else None,
        "traced_event_id": result.event.get("event_id") if result.event is not None else None,
        "width": result.image_size[0],
        "height": result.image_size[1],
    }
    return AuditEvent(
        type=TRACED_EVENT,
        outcome="done" if result.found else "failed",
        code=None if result.found else "watermark_not_traced",
        principal=principal,
        detail=detail,
        **context,
    )
