"""The TC260 AIGC label: written into PNG, JPEG and WebP, read back, signed over the label and
the pixels (exiftool reads it in tests/functional/test_label_exiftool.py)."""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from zguard.provenance.labels import (
    LabelError,
    embed_xmp,
    make_label,
    pixel_hash,
    read_label,
    verify,
    xmp_packet,
)

KEY = Ed25519PrivateKey.generate()
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encoded(fmt: str) -> bytes:
    image = Image.new("RGB", (96, 64), (30, 160, 220))
    buffer = io.BytesIO()
    image.save(buffer, format=FORMATS[fmt], quality=90)
    return buffer.getvalue()


def labelled(fmt: str, produce_id: str = "req-0001") -> bytes:
    blob = encoded(fmt)
    pixels = pixel_hash(Image.open(io.BytesIO(blob)))
    label = make_label(KEY, pixels, producer="某银行 zguard", produce_id=produce_id, propagator="")
    return embed_xmp(blob, fmt, xmp_packet(label))  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_label_verifies_on_its_pixels_only(fmt: str) -> None:
    blob = labelled(fmt)
    image = Image.open(io.BytesIO(blob))
    assert image.format == FORMATS[fmt]
    check = verify(image, KEY.public_key())
    assert check.valid, check.reason
    assert read_label(image) == check.label
    other = Ed25519PrivateKey.generate().public_key()
    assert not verify(image, other).valid


def test_a_label_moved_onto_other_pixels_fails() -> None:
    blob = labelled("png")
    label = read_label(Image.open(io.BytesIO(blob)))
    assert label is not None
    different = Image.new("RGB", (96, 64), (31, 160, 220))
    buffer = io.BytesIO()
    different.save(buffer, format="PNG")
    moved = embed_xmp(buffer.getvalue(), "png", xmp_packet(label))
    check = verify(Image.open(io.BytesIO(moved)), KEY.public_key())
    assert not check.valid
    assert "does not match" in check.reason


def test_an_edited_label_fails() -> None:
    blob = labelled("jpeg").replace(b"req-0001", b"req-0002")
    assert not verify(Image.open(io.BytesIO(blob)), KEY.public_key()).valid


def test_no_label_is_reported_as_such() -> None:
    check = verify(Image.open(io.BytesIO(encoded("png"))), KEY.public_key())
    assert check.label is None
    assert not check.valid


def test_refuses_what_is_not_the_format() -> None:
    with pytest.raises(LabelError):
        embed_xmp(b"not an image", "jpeg", b"<x/>")
