"""Uploads an attacker sends the trace endpoint, and a watermark reader that holds a trace open.

`GatedWatermarker` is a stand-in used only where a test is about zguard's own pool, cap, deadline
and stop logic and needs a trace held open deterministically (as `GatedEngine` is for
generations); every other trace test runs the real decoder.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import EpsImagePlugin, Image

from zguard.provenance.watermark import DecodeStopped, StopFlag, Watermarker, WatermarkFound

# Formats Pillow reads that a trace must refuse, as Pillow writes them (EPS is PostScript: Pillow
# reads it by running Ghostscript).
REFUSED_FORMATS = ("GIF", "TIFF", "ICO", "BMP", "EPS", "JPEG2000", "PPM", "TGA", "PCX", "SGI", "QOI", "DDS")


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_declaring(width: int, height: int, rows: int | None = None, *, color_type: int = 2) -> bytes:
    """A PNG that declares `width`×`height` (8-bit RGB, or grey with `color_type=0`) and holds
    `rows` rows of zeros (all of them when None) in one zlib stream that ends there, then IEND.
    Pillow loads the short one without complaint: the stream ended cleanly."""
    channels = 3 if color_type == 2 else 1
    row = b"\x00" * (1 + width * channels)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def truncated_bomb() -> bytes:
    """The issue's upload: declares 8000×8000, stops after 100 rows (about 2.4 kB)."""
    return png_declaring(8000, 8000, 100)


def tiny_file_bomb(side: int = 2048) -> bytes:
    """A complete grey PNG of `side`² zeros: a few kB that decode to `side`² pixels."""
    return png_declaring(side, side, color_type=0)


def saved(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def refused_upload(fmt: str) -> bytes:
    """A small picture in one of REFUSED_FORMATS."""
    return saved(Image.new("RGB", (64, 64), (10, 20, 30)), fmt)


class EmptyEvents:
    """An audit reader whose trail carries no watermark."""

    def find_watermark(self, watermark_id: str) -> list[Any]:
        return []


@dataclass
class TraceThread:
    """What one held trace saw of the thread it ran in."""

    name: str
    nice: int | None  # the thread's own nice value (Linux), None elsewhere


class GatedWatermarker(Watermarker):
    """`detect` waits until `release()` (or its stop flag, unless `stubborn`), recording what ran.
    Released, it reads the image for real."""

    def __init__(self, key: bytes = b"g" * 32, *, stubborn: bool = False) -> None:
        super().__init__(key)
        self.stubborn = stubborn  # ignore the stop flag until released: work that cannot stop at once
        self.threads: list[TraceThread] = []
        self.stopped: list[str] = []
        self.finished: list[str] = []
        self.running = threading.Event()
        self._gate = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def detect(
        self, image: Image.Image, *, should_stop: StopFlag = lambda: False, max_pixels: int | None = None
    ) -> WatermarkFound | None:
        thread = threading.current_thread()
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if hasattr(os, "getpriority") else None
        self.threads.append(TraceThread(thread.name, nice))
        self.running.set()
        try:
            while not self._gate.wait(0.005):
                if should_stop() and not self.stubborn:
                    self.stopped.append(thread.name)
                    raise DecodeStopped
        finally:
            self.running.clear()
        self.finished.append(thread.name)
        return super().detect(image, should_stop=should_stop, max_pixels=max_pixels)


def refuse_external_programs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if anything starts a program or reaches Pillow's Ghostscript path; the list
    records what was reached."""
    reached: list[str] = []

    def refuse(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            reached.append(name)
            raise AssertionError(f"{name} was called")

        return call

    monkeypatch.setattr(subprocess, "Popen", refuse("subprocess.Popen"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse("EpsImagePlugin.Ghostscript"))
    return reached
