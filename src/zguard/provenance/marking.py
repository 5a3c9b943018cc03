"""What happens to every generated image between the engine and the response: the visible label
(when configured), the invisible watermark with a fresh random id, encoding, and the signed
implicit label in the file's metadata.

The watermark is added on the CPU after decoding, or (`provenance.embed_on_device`: on CUDA by
default) by the engine on its device: `device_marks` then draws each image's id, salt and offset
before generation and hands the engine a `DeviceMarks`; `mark` records those ids and embeds, on
the CPU and with the same placement, any image the engine did not mark. The pixels are the same.

Keys are read (or created) once, by `from_settings`, when the server is built; marking itself
touches no file. Fail closed: when a key cannot be read the server does not start, and an image
that cannot be marked is not delivered (the error fails the request).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from zguard import state_paths
from zguard.provenance.labels import ImageFormat, embed_xmp, make_label, pixel_hash, xmp_packet
from zguard.provenance.watermark import Watermarker, draw_placement, new_watermark_id

if TYPE_CHECKING:
    from typing import Any

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zguard.config import ProvenanceSettings, Settings
    from zguard.provenance.visible import VisibleLabel


@dataclass(frozen=True)
class MarkedImage:
    blob: bytes
    watermark_id: str | None  # 16 hex digits, None when watermarking is off


@dataclass(frozen=True)
class Placement:
    """One image's mark: its id, the salt of its keyed pattern and the tile's cyclic offset (y, x)."""

    watermark_id: int
    salt: int
    offset: tuple[int, int]

    @classmethod
    def draw(cls) -> Placement:
        """A fresh random id, salt and offset, as `embedder.embed` draws them."""
        return cls(new_watermark_id(), *draw_placement())


class DeviceMarks:
    """One job's marks, for the engine to apply on its device (an `engine.DeviceMark`).

    `applied` holds the indices the engine marked; `ProvenanceMarker.mark` embeds the others on the
    CPU with the same placement, so an engine that ignores the hook still delivers marked images."""

    def __init__(self, watermarker: Watermarker, placements: list[Placement]) -> None:
        self._watermarker = watermarker
        self.placements = placements
        self.applied: set[int] = set()

    def __call__(self, index: int, pixels: Any, /) -> Any:
        from zguard.provenance.embedder import embed_tensor  # noqa: PLC0415  (torch: engine side only)

        p = self.placements[index]
        marked = embed_tensor(self._watermarker, pixels, p.watermark_id, salt=p.salt, offset=p.offset)
        self.applied.add(index)
        return marked


def load_watermarker(settings: Settings, *, create: bool = False) -> Watermarker:
    from zguard.security.keys import load_or_create_key, read_key  # noqa: PLC0415

    path = state_paths.watermark_key_file(settings)
    return Watermarker(load_or_create_key(path) if create else read_key(path))


def load_signing_key(settings: Settings, *, create: bool = False) -> Ed25519PrivateKey:
    from zguard.security.keys import load_or_create_private_key, read_private_key  # noqa: PLC0415

    path = state_paths.provenance_signing_key_file(settings)
    return load_or_create_private_key(path) if create else read_private_key(path)


def _visible(section: ProvenanceSettings) -> VisibleLabel | None:
    if not section.explicit_label:
        return None
    from zguard.provenance.visible import VisibleLabel  # noqa: PLC0415

    return VisibleLabel.from_settings(section)


class ProvenanceMarker:
    """Marks images under the provenance settings; see the module docstring."""

    def __init__(
        self,
        settings: ProvenanceSettings,
        watermarker: Watermarker | None,
        signing_key: Ed25519PrivateKey | None,
        visible: VisibleLabel | None = None,
    ) -> None:
        self._settings = settings
        self.reader = watermarker  # traces read marks even while new images go unmarked
        self._watermarker = watermarker if settings.watermark else None
        self._signing_key = signing_key if settings.implicit_label else None
        self._visible = visible if settings.explicit_label else None

    @classmethod
    def from_settings(cls, settings: Settings) -> ProvenanceMarker:
        """Read (creating on first use) the keys the settings ask for; raise KeyFileError."""
        section = settings.provenance
        return cls(
            section,
            load_watermarker(settings, create=True),
            load_signing_key(settings, create=True) if section.implicit_label else None,
            _visible(section),
        )

    @classmethod
    def ephemeral(cls, section: ProvenanceSettings) -> ProvenanceMarker:
        """Under throwaway keys: for tests and tools, whose marks nobody needs to trace later."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

        return cls(section, Watermarker(secrets.token_bytes(32)), Ed25519PrivateKey.generate(), _visible(section))

    def device_marks(self, n: int, device: str) -> DeviceMarks | None:
        """The marks of a job of `n` images for an engine on `device` to apply, or None when the
        watermark goes on in `mark`: watermarking off, `embed_on_device` never (or auto and not
        CUDA), or a visible label, which `mark` draws first and the mark must go over."""
        mode = self._settings.embed_on_device
        if self._watermarker is None or self._visible is not None or mode == "never":
            return None
        if mode == "auto" and device != "cuda":
            return None
        return DeviceMarks(self._watermarker, [Placement.draw() for _ in range(n)])

    def mark(
        self,
        images: list[Image.Image],
        output_format: ImageFormat,
        quality: int,
        request_id: str,
        encode: Callable[[list[Image.Image], ImageFormat, int], list[bytes]],
        *,
        device_marks: DeviceMarks | None = None,
    ) -> list[MarkedImage]:
        """Mark, encode and label `images`; with `device_marks` (from `device_marks`, given to the
        engine), their ids are the ones recorded, and an image the engine did not mark is marked here."""
        ids: list[str | None] = []
        marked = []
        placements = [Placement.draw() for _ in images] if device_marks is None else device_marks.placements
        applied = set() if device_marks is None else device_marks.applied
        for index, generated in enumerate(images):
            image = generated if self._visible is None else self._visible.draw(generated)
            if self._watermarker is not None:
                from zguard.provenance.embedder import embed  # noqa: PLC0415 - torch loads only when an image is marked

                p = placements[index]  # an image more than the job had fails the request
                if index not in applied:
                    image = embed(self._watermarker, image, p.watermark_id, salt=p.salt, offset=p.offset)
                ids.append(f"{p.watermark_id:016x}")
            else:
                ids.append(None)
            marked.append(image)
        blobs = encode(marked, output_format, quality)
        if self._signing_key is not None:
            key = self._signing_key
            blobs = [
                self._label(key, blob, output_format, request_id, image if output_format == "png" else None)
                for blob, image in zip(blobs, marked, strict=True)
            ]
        return [MarkedImage(blob, watermark_id) for blob, watermark_id in zip(blobs, ids, strict=True)]

    def _label(
        self,
        key: Ed25519PrivateKey,
        blob: bytes,
        output_format: ImageFormat,
        request_id: str,
        encoded: Image.Image | None = None,
    ) -> bytes:
        """`blob` with its signed label. `encoded`: the image `blob` was losslessly encoded from
        (PNG), whose pixels are the ones any decoder gets, so they are hashed without reading the
        file back (at 1024² decoding the PNG again cost 40 ms); a lossy file (JPEG, WebP) is
        decoded, since its pixels are what the decoder makes of it."""
        if encoded is not None:
            pixels = pixel_hash(encoded)
        else:
            with Image.open(io.BytesIO(blob)) as decoded:
                pixels = pixel_hash(decoded)
        label = make_label(
            key,
            pixels,
            producer=self._settings.content_producer,
            produce_id=request_id,
            propagator=self._settings.content_propagator,
        )
        return embed_xmp(blob, output_format, xmp_packet(label))
