"""The PNG writer of zguard.services.encoding: byte-exact pixels whatever the size, a stream every
decoder reads (chunks, CRCs, one zlib stream with its Adler-32 across the strips), and the
filter choice; JPEG and WebP through Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.common.pictures import noise, photo_like
from zguard.services import encoding
from zguard.services.encoding import PNG_SIGNATURE, adler32_combine, encode_images, encode_png


def chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, data) of every chunk, each CRC checked; the file must end with IEND."""
    assert blob.startswith(PNG_SIGNATURE)
    at, out = len(PNG_SIGNATURE), []
    while at < len(blob):
        (length,) = struct.unpack(">I", blob[at : at + 4])
        tag, data = blob[at + 4 : at + 8], blob[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", blob[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(tag + data), f"bad CRC on {tag!r}"
        out.append((tag, data))
        at += 12 + length
    assert at == len(blob)
    assert out[-1] == (b"IEND", b"")
    return out


def unfiltered(raw: bytes, h: int, w: int) -> np.ndarray:
    """The pixels of 8-bit RGB scanlines filtered None, Sub, Up or Average: an independent
    reader, byte by byte as the PNG specification says (Paeth is never written)."""
    lines = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w).astype(np.int64)
    assert set(np.unique(lines[:, 0]).tolist()) <= {0, 1, 2, 3}
    rows = np.zeros((h, 3 * w), np.int64)
    for y in range(h):
        kind, line = lines[y, 0], lines[y, 1:]
        above = rows[y - 1] if y else np.zeros(3 * w, np.int64)
        if kind in (0, 2):
            rows[y] = (line + (above if kind == 2 else 0)) % 256
        elif kind == 1:  # Sub: a running sum along the row, per channel
            rows[y] = (line.reshape(w, 3).cumsum(axis=0) % 256).reshape(-1)
        else:  # Average: pixel by pixel, the three channels at once
            left = np.zeros(3, np.int64)
            for x in range(w):
                left = (line[3 * x : 3 * x + 3] + (left + above[3 * x : 3 * x + 3]) // 2) % 256
                rows[y, 3 * x : 3 * x + 3] = left
    return rows.astype(np.uint8).reshape(h, w, 3)


def decode_independently(blob: bytes) -> np.ndarray:
    parts = chunks(blob)
    assert parts[0][0] == b"IHDR"
    w, h, depth, colour, method, filtering, interlace = struct.unpack(">IIBBBBB", parts[0][1])
    assert (depth, colour, method, filtering, interlace) == (8, 2, 0, 0, 0)
    idat = b"".join(data for tag, data in parts if tag == b"IDAT")
    assert [tag for tag, _ in parts[1:-1]] == [b"IDAT"] * (len(parts) - 2)  # consecutive, nothing else
    raw = zlib.decompress(idat)  # checks the zlib header and the Adler-32 of the whole
    return unfiltered(raw, h, w)


def decode_pillow(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize(
    ("h", "w"), [(1, 1), (1, 7), (16, 16), (17, 31), (63, 65), (128, 128), (256, 255), (513, 511), (1024, 1024)]
)
@pytest.mark.parametrize("make", [noise, photo_like], ids=["noise", "photo"])
def test_pixels_come_back_byte_for_byte(h: int, w: int, make: object) -> None:
    pixels = make(h, w)  # type: ignore[operator]
    blob = encode_png(pixels)
    assert np.array_equal(decode_pillow(blob), pixels)
    assert np.array_equal(decode_independently(blob), pixels)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_strips_join_into_one_valid_stream(threads: int) -> None:
    pixels = photo_like(1000, 999)
    blob = encode_png(pixels, threads=threads)
    idats = [data for tag, data in chunks(blob) if tag == b"IDAT"]
    assert len(idats) == threads  # one chunk a strip: 3 MB holds at least 8 strips' worth
    assert np.array_equal(decode_independently(blob), pixels)
    assert np.array_equal(decode_pillow(blob), pixels)


def test_more_threads_than_rows_still_one_strip_a_row_at_most() -> None:
    pixels = noise(2, 200_000)  # 1.2 MB in two rows
    blob = encode_png(pixels, threads=8)
    assert len([tag for tag, _ in chunks(blob) if tag == b"IDAT"]) == 2
    assert np.array_equal(decode_independently(blob), pixels)


def test_smooth_pixels_are_filtered_and_compress() -> None:
    pixels = photo_like(512, 512)
    blob = encode_png(pixels)
    raw = zlib.decompress(b"".join(d for t, d in chunks(blob) if t == b"IDAT"))
    assert len(set(raw[:: 1 + 3 * 512])) == 1
    assert raw[0] in {1, 2, 3}
    assert len(blob) < pixels.nbytes * 0.8
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, format="PNG", compress_level=1)
    assert len(blob) < len(pillow.getvalue()) * 1.1  # about as small as Pillow's per-row choice


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_every_filter_the_writer_may_choose_round_trips(kind: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "_choose_filter", lambda *_: kind)
    for pixels in (photo_like(33, 47), noise(20, 9), np.full((5, 5, 3), 255, np.uint8)):
        blob = encode_png(pixels)
        assert zlib.decompress(b"".join(d for t, d in chunks(blob) if t == b"IDAT"))[0] == kind
        assert np.array_equal(decode_independently(blob), pixels)
        assert np.array_equal(decode_pillow(blob), pixels)


def test_noise_is_left_unfiltered() -> None:
    """Up cannot shrink noise, and would cost every decoder a pass."""
    blob = encode_png(noise(256, 256))
    raw = zlib.decompress(b"".join(d for t, d in chunks(blob) if t == b"IDAT"))
    assert set(raw[:: 1 + 3 * 256]) == {0}


def test_flat_and_extreme_images() -> None:
    for value in (0, 255):
        pixels = np.full((100, 37, 3), value, np.uint8)
        blob = encode_png(pixels)
        assert np.array_equal(decode_independently(blob), pixels)
        assert len(blob) < 1000
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[::2] = 255  # Up wraps round mod 256 both ways
    assert np.array_equal(decode_pillow(encode_png(pixels)), pixels)


def test_rejects_what_is_not_rgb8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="H×W×3"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(np.zeros((0, 4, 3), np.uint8))


def test_a_non_contiguous_array_is_encoded_as_its_values() -> None:
    pixels = photo_like(64, 128)[:, ::2]
    assert not pixels.flags.c_contiguous
    assert np.array_equal(decode_pillow(encode_png(pixels)), pixels)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=70_000))
def test_adler32_combine_is_zlibs(a: bytes, b: bytes) -> None:
    assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_encode_images_png_takes_any_mode() -> None:
    rgb = photo_like(48, 80)
    for image in (Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA"), Image.fromarray(rgb).convert("L")):
        (blob,) = encode_images([image], "png", 90)
        assert np.array_equal(decode_pillow(blob), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_decode_at_the_quality_asked(fmt: str) -> None:
    image = Image.fromarray(photo_like(96, 160))
    small, large = (encode_images([image], fmt, q)[0] for q in (30, 95))  # type: ignore[arg-type]
    assert len(small) < len(large)
    with Image.open(io.BytesIO(large)) as decoded:
        assert decoded.format == fmt.upper()
        assert decoded.size == (160, 96)
        error = np.abs(np.asarray(decoded.convert("RGB"), np.int16) - np.asarray(image, np.int16)).mean()
    assert error < 4
