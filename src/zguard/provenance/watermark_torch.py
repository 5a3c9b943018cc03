"""`Watermarker.embed` on a torch tensor, on whatever device holds it (the GPU, where the image was
decoded, so the unmarked pixels never leave it).

The same mark, pixel for pixel: the shifted tile comes from `Watermarker.placed_tile`, as in
`embed`, and is copied to the device once (16 KiB) and repeated there; the addition is in
int16 and clipped to 0..255 as `embed` does. Imported only where a tensor is to be marked, so the
watermark module itself stays free of torch.
"""

from __future__ import annotations

from typing import Any

import torch

from zguard.provenance.watermark import AMPLITUDE, TILE, Watermarker

CHANNELS = 3


def embed_tensor(
    watermarker: Watermarker,
    pixels: Any,
    watermark_id: int,
    *,
    salt: int | None = None,
    offset: tuple[int, int] | None = None,
) -> Any:
    """Return `pixels` carrying `watermark_id`: what `watermarker.embed` gives for the same salt and
    offset (random unless given), as a new tensor of the same shape, dtype and device.

    `pixels` is a uint8 RGB tensor, channels first (3, H, W) or last (H, W, 3); a first dimension
    of 3 means channels first."""
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8:
        raise TypeError("the pixels must be a uint8 torch tensor")
    if pixels.ndim != CHANNELS or CHANNELS not in (pixels.shape[0], pixels.shape[-1]):
        raise ValueError(f"the pixels must be shaped (3, H, W) or (H, W, 3), not {tuple(pixels.shape)}")
    channels_first = pixels.shape[0] == CHANNELS
    h, w = pixels.shape[1:] if channels_first else pixels.shape[:2]
    tile = watermarker.placed_tile(watermark_id, salt, offset)
    reps = (-(-h // TILE), -(-w // TILE))
    # Scaled and widened at tile size, then repeated: one full-size pass fewer than after.
    delta = (torch.from_numpy(tile).to(pixels.device, torch.int16) * AMPLITUDE).repeat(reps)[:h, :w]
    delta = delta[None] if channels_first else delta[..., None]
    return (pixels.to(torch.int16) + delta).clamp_(0, 255).to(torch.uint8)
