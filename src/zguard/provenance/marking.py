"""What happens to every generated image between the engine and the response: the visible label
(when configured), the invisible watermark with a fresh random id, encoding, and the signed
implicit label in the file's metadata.

Keys are read (or created) once, by `from_settings`, when the server is built; marking itself
touches no file. Fail closed: when a key cannot be read the server does not start, and an image
that cannot be marked is not delivered (the error fails the request).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from zguard.provenance.labels import ImageFormat, embed_xmp, make_label, pixel_hash, xmp_packet
from zguard.provenance.watermark import Watermarker, new_watermark_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zguard.config import ProvenanceSettings, Settings
    from zguard.provenance.visible import VisibleLabel

WATERMARK_KEY_FILE = "watermark.key"
SIGNING_KEY_FILE = "provenance-signing.pem"


@dataclass(frozen=True)
class MarkedImage:
    blob: bytes
    watermark_id: str | None  # 16 hex digits, None when watermarking is off


def watermark_key_path(settings: Settings) -> Path:
    return settings.provenance.watermark_key_file or settings.state_dir / WATERMARK_KEY_FILE


def signing_key_path(settings: Settings) -> Path:
    return settings.provenance.signing_key_file or settings.state_dir / SIGNING_KEY_FILE


def load_watermarker(settings: Settings, *, create: bool = False) -> Watermarker:
    from zguard.security.keys import load_or_create_key, read_key  # noqa: PLC0415

    path = watermark_key_path(settings)
    return Watermarker(load_or_create_key(path) if create else read_key(path))


def load_signing_key(settings: Settings, *, create: bool = False) -> Ed25519PrivateKey:
    from zguard.audit.chain import load_or_create_signing_key, read_signing_key  # noqa: PLC0415

    path = signing_key_path(settings)
    return load_or_create_signing_key(path).private_key if create else read_signing_key(path)


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

    def mark(
        self,
        images: list[Image.Image],
        output_format: ImageFormat,
        quality: int,
        request_id: str,
        encode: Callable[[list[Image.Image], ImageFormat, int], list[bytes]],
    ) -> list[MarkedImage]:
        ids: list[str | None] = []
        marked = []
        for generated in images:
            image = generated if self._visible is None else self._visible.draw(generated)
            if self._watermarker is not None:
                watermark_id = new_watermark_id()
                image = self._watermarker.embed(image, watermark_id)
                ids.append(f"{watermark_id:016x}")
            else:
                ids.append(None)
            marked.append(image)
        blobs = encode(marked, output_format, quality)
        if self._signing_key is not None:
            key = self._signing_key
            blobs = [self._label(key, blob, output_format, request_id) for blob in blobs]
        return [MarkedImage(blob, watermark_id) for blob, watermark_id in zip(blobs, ids, strict=True)]

    def _label(self, key: Ed25519PrivateKey, blob: bytes, output_format: ImageFormat, request_id: str) -> bytes:
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
