"""Which image sizes a request may ask for: pure rules shared by the settings and the image service."""

from __future__ import annotations

import re
from typing import Protocol

SIZE_STEP = 16  # Z-Image works on latents 1/16 of the image side; sizes must be multiples.


class SizeLimits(Protocol):
    """The bounds `check_size` applies (`generation.*` in the settings)."""

    @property
    def min_side(self) -> int: ...
    @property
    def max_side(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...


def parse_size(text: str) -> tuple[int, int] | None:
    """``"1024x768"`` → ``(1024, 768)``; None when the text is not of that shape."""
    match = re.fullmatch(r"([1-9][0-9]{0,4})[xX×]([1-9][0-9]{0,4})", text)  # ASCII digits only
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_size(size: tuple[int, int], limits: SizeLimits) -> str | None:
    """Why `size` is not allowed under `limits`, or None when it is."""
    width, height = size
    if width % SIZE_STEP or height % SIZE_STEP:
        return f"width and height must be multiples of {SIZE_STEP}"
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        return f"width and height must be between {limits.min_side} and {limits.max_side}"
    if width * height > limits.max_pixels:
        return f"width x height must not exceed {limits.max_pixels} pixels"
    return None
