"""Pixel arrays for encoder tests: noise (compresses worst, as the demo model's images do) and
photo-like smooth fields with grain (what row filters are for)."""

from __future__ import annotations

import numpy as np
from PIL import Image

RNG_SEED = 2026


def noise(h: int, w: int, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def photo_like(h: int, w: int, seed: int = RNG_SEED) -> np.ndarray:
    """Smooth colour fields with a little grain."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-2, 3, (h, w, 3))
    return np.asarray(np.clip(smooth + grain, 0, 255), dtype=np.uint8)
