"""From an image back to the request that produced it: decode the watermark, find the
`generation.completed` audit event whose `images[*].watermark_id` matches, read the label.

The lookup goes through the audit store's watermark index (`AuditReader.find_watermark`, the
`audit_watermarks` table written with each event): the id is random, so without it every
generation event would be read. The images themselves were never kept.

Decisions written here (an upload is hostile until decoded):
- Only PNG, JPEG and WebP are read: `image_format` names the format from the first bytes, and
  Pillow is asked for that one plugin only (`Image.open(..., formats=[...])`). Every other format
  (GIF, TIFF, ICO, BMP, JPEG 2000, EPS, ...) is refused before Pillow sees it, so no plugin that
  starts a program (EPS runs Ghostscript) or writes a temporary file is ever used.
- The declared size is checked before a pixel is decoded: over `max_pixels` (the largest image
  this server generates, `provenance.trace_max_pixels`) is `ImageTooLarge`. A JPEG up to four
  times over is decoded at half size (libjpeg's DCT scaling, `draft`), which also reads an image
  that was upscaled 2x; the check is repeated on the size it will really have. Memory for the
  pixels is then at most `max_pixels` × 4 bytes, truncated file or not (`LOAD_TRUNCATED_IMAGES`
  stays off: Pillow fails a file whose data ends early, and a PNG whose zlib stream ends early
  costs no more than a complete one of the same size).
- The decoder gets the same budget (`Watermarker.detect(max_pixels=...)`) and a stop flag, asked
  between steps: a trace stops within one step of its deadline or of the client leaving.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from zguard.audit import AuditEvent, DetailValue
from zguard.provenance.labels import read_label
from zguard.provenance.watermark import DecodeStopped, StopFlag, Watermarker, WatermarkFound

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
# The formats a trace reads (Pillow's names) and their media types; nothing else is opened.
TRACE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_WEBP_CHUNKS = (b"VP8 ", b"VP8L", b"VP8X")
_JPEG_DRAFT = 2  # a JPEG may be decoded at 1/2 its size (not 1/4, 1/8: the cells would blur away)
# What a failed decode can raise; none of it is a bug of ours, all of it means "not readable".
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error)


class GenerationEvents(Protocol):
    def find_watermark(self, watermark_id: str) -> list[Any]:
        """Stored events (`zguard.audit.store.StoredEvent`) whose images carry `watermark_id`,
        oldest first: `AuditStore.find_watermark`."""


class NotAnImage(ValueError):
    """The bytes are not a PNG, JPEG or WebP image this server can read."""


class ImageTooLarge(NotAnImage):
    """The image declares more pixels than a trace reads (`max_pixels`); nothing was decoded."""

    def __init__(self, size: tuple[int, int] | None, max_pixels: int) -> None:
        shown = f"{size[0]}x{size[1]}" if size is not None else "its declared size"
        super().__init__(f"the image is {shown}, more than the {max_pixels} pixels a trace reads")
        self.size = size
        self.max_pixels = max_pixels


TraceStopped = DecodeStopped  # the trace was stopped (deadline, client gone) before it finished


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


def image_format(blob: bytes) -> str | None:
    """ "PNG", "JPEG" or "WEBP" from the first bytes (the signatures Pillow's plugins accept), else None."""
    if blob.startswith(_PNG_SIGNATURE):
        return "PNG"
    if blob.startswith(_JPEG_SOI):
        return "JPEG"
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP" and blob[12:16] in _WEBP_CHUNKS:
        return "WEBP"
    return None


def open_image(blob: bytes, *, max_pixels: int) -> Image.Image:
    """The decoded image; NotAnImage for anything but a readable PNG, JPEG or WebP, ImageTooLarge
    (before decoding) when it declares more than `max_pixels` pixels. See the module docstring."""
    return _open(blob, max_pixels)[0]


def _open(blob: bytes, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """`open_image`'s image and the size the file declares (larger when a JPEG was drafted)."""
    kind = image_format(blob)
    if kind is None:
        raise NotAnImage("the data is not a PNG, JPEG or WebP image")
    try:
        image = Image.open(io.BytesIO(blob), formats=[kind])
    except Image.DecompressionBombError:  # over twice Pillow's own limit: far over ours
        raise ImageTooLarge(None, max_pixels) from None
    except _DECODE_ERRORS:
        raise NotAnImage("the data is not an image this server can read") from None
    declared = image.size
    pixels = declared[0] * declared[1]
    if kind == "JPEG" and max_pixels < pixels <= _JPEG_DRAFT**2 * max_pixels and min(declared) >= _JPEG_DRAFT:
        image.draft(None, (declared[0] // _JPEG_DRAFT, declared[1] // _JPEG_DRAFT))
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(declared, max_pixels)
    try:
        image.load()
    except _DECODE_ERRORS:
        raise NotAnImage("the data is not an image this server can read") from None
    return image, declared


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


def trace(
    blob: bytes,
    watermarker: Watermarker,
    reader: GenerationEvents,
    *,
    max_pixels: int,
    should_stop: StopFlag = lambda: False,
) -> TraceResult:
    """Decode and look up; raise NotAnImage (ImageTooLarge), or TraceStopped once `should_stop()`."""
    image, declared = _open(blob, max_pixels)
    label = read_label(image)
    mark = watermarker.detect(image, should_stop=should_stop, max_pixels=max_pixels)
    notes = []
    if image.size != declared:
        notes.append(f"the JPEG was read at 1/{_JPEG_DRAFT} of its {declared[0]}x{declared[1]} pixels")
        if mark is not None:  # the scale of the file, not of the pixels read
            mark = dataclasses.replace(mark, scale=(mark.scale[0] * _JPEG_DRAFT, mark.scale[1] * _JPEG_DRAFT))
    if mark is None:
        notes.append("no zguard watermark found")
        return TraceResult(None, None, label, declared, notes)
    event = find_generation(reader, mark.hex_id)
    if event is None:
        notes.append("the watermark is valid but no audit event carries its id (purged, or another installation)")
    if label is not None and event is not None and label.get("ProduceID") != event.get("request_id"):
        notes.append("the metadata label names another request than the watermark")
    return TraceResult(mark, event, label, declared, notes)


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
