"""The embedder: `embed`'s mark, computed on a torch tensor on whatever device holds it
(the GPU, where the image was decoded, so the unmarked pixels never leave it; the CPU for
`embed`, below). One implementation for both, so both place the same mark.

The mark is *informed*: the embedder reads the image the way the decoder will and spends the
fixed energy budget (PSNR ≈ 42.05 dB) where it buys the most, instead of adding the same ±2 to
every pixel (the first design, which missed the 512² targets):

- **Host cancellation (improved spread spectrum).** For each coded bit the embedder computes what
  the image alone contributes to the decoder's soft value for that bit (the "host
  interference"), and gives each bit the amplitude that lifts host + mark to a common margin:
  bits the picture already pushes the right way get little, bits it pushes the wrong way get
  more. The margin is the largest the budget allows (bisection). On textured pictures, where the
  host interference dominated, this is most of the gain at 512².
- **Where in the picture.** Amplitude ∝ (local contrast)^-0.3, normalised: the decoder divides by
  the local standard deviation, so a level added in a flat area counts more than one added in
  texture.
- **At which frequency.** In flat areas the cells are blurred ([1, 2, 1]/4 each way): JPEG
  quantises a flat block's fine detail to zero, its coarser detail survives; in texture they stay
  sharp, which is what the decoder's high-pass keeps best. The mix follows the local contrast.
- **Synchronisation cells** get the least level (1.6-2.4) at which their predicted, unattacked
  peak reaches z = 14: most pictures get 1.6, loud textures (grass, gravel) more, because after
  halving or JPEG their peak is the first thing lost. The rest of the budget goes to the payload.
- **Which channel.** Channel c gets luma · w_c / Σw² (BT.601 weights, the decoder's and JPEG's):
  the luminance moves by exactly the planned delta for the least RGB error, 1.16× the luminance
  change of adding one delta to R, G and B alike at the same PSNR (+1.3 dB for the decoder). The
  chroma moves by a fraction of a level; JPEG discards most of that anyway.

Every channel of every pixel changes by at most `MAX_DELTA` levels (what the cap cuts off is spent
on the other pixels); the deltas are rounded to integers and clipped to 0..255, and the result is
never below PSNR 42.01 dB (clipping only lowers the error). Whatever the embedder spent where, the
decoder reads the same chips, cells and code, on the luminance.

Imported lazily (by the marker when it marks an image, and by the engine's device marks), so reading a mark never loads
torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zguard.provenance.watermark import CELL, LUMA_WEIGHTS, MAX_DELTA, TILE, Watermarker, draw_placement

CHANNELS = 3
SYNC_AMPLITUDE = (1.6, 2.4)  # luminance levels of the sync cells (before the spatial factors): least, most
SYNC_Z = 14.0  # the sync peak's z-score the embedder aims for, unattacked, within SYNC_AMPLITUDE
CONTRAST_EXPONENT = 0.3  # amplitude ∝ local standard deviation ** -this
BLUR_KNEE = 6.0  # local standard deviation at which cells are half blurred, half sharp
TARGET_MSE = 3.95  # RGB, before rounding; rounding adds ~1/12: PSNR ≈ 42.05 dB
MAX_MSE = 255.0**2 / 10**4.201  # PSNR 42.01 dB: never exceeded (rescaled down until rounding keeps within it)
_BISECTIONS = 40
_RESCALES = 4
LUMA_NORM = sum(w * w for w in LUMA_WEIGHTS)  # 0.447: a luminance delta D costs D²/(3·0.447) of RGB MSE


def _box_mean(a: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)² window, edges replicated (`watermark.box_sum` / (2r+1)², in torch).
    One axis at a time, each a running sum along one line only, so float32 stays exact enough.

    The window sums are differences of running sums (cs[i + k - 1] - cs[i - 1]); the first has
    nothing to subtract and is copied, instead of padding the running sums with a zero line
    (which filled and copied the whole image twice): the same values, a fifth less time."""
    k = 2 * radius + 1
    padded = F.pad(a[None, None], (radius, radius, radius, radius), mode="replicate")[0, 0]
    cs = padded.cumsum(0)
    rows = cs.new_empty((a.shape[0], cs.shape[1]))
    rows[0] = cs[k - 1]
    torch.sub(cs[k:], cs[:-k], out=rows[1:])
    cs = rows.cumsum(1)
    out = cs.new_empty(a.shape)
    out[:, 0] = cs[:, k - 1]
    torch.sub(cs[:, k:], cs[:, :-k], out=out[:, 1:])
    return out.mul_(1.0 / (k * k))


def _fold(a: torch.Tensor) -> torch.Tensor:
    """Sum the image's TILE×TILE blocks into one tile, zero-padded at the far edges (`watermark.fold`
    in torch: the decoder keeps its numpy copy so that reading a mark never imports torch)."""
    h, w = a.shape
    padded = F.pad(a, (0, -w % TILE, 0, -h % TILE)) if h % TILE or w % TILE else a
    return padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).sum(dim=(0, 2))


def _tiled(tile: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tile.repeat(-(-h // TILE), -(-w // TILE))[:h, :w]


def _times_tiled(part: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
    """`part * _tiled(tile, *part.shape)`, without the tiled copy when the image is whole tiles:
    the same products, broadcast over a (rows of tiles, TILE, columns of tiles, TILE) view."""
    h, w = part.shape
    if h % TILE or w % TILE:
        return part * _tiled(tile, h, w)
    blocks = part.view(h // TILE, TILE, w // TILE, TILE)
    return (blocks * tile[None, :, None, :]).view(h, w)


def _smooth(tile: torch.Tensor) -> torch.Tensor:
    """[1, 2, 1]/4 each way, cyclic: the tile stays periodic."""
    tile = 0.5 * tile + 0.25 * (tile.roll(1, 0) + tile.roll(-1, 0))
    return 0.5 * tile + 0.25 * (tile.roll(1, 1) + tile.roll(-1, 1))


def _margins(host: np.ndarray, gain: np.ndarray, pixels: np.ndarray, sync_energy: float, budget: float) -> np.ndarray:
    """Per coded bit, the amplitude max(0, (t - host) / gain) for the largest margin t whose energy
    Σ amplitude² · pixels (+ the sync cells') fits the budget."""
    low, high = float(host.min()), float(host.max() + gain.max() * 100.0)
    for _ in range(_BISECTIONS):
        t = (low + high) / 2
        energy = float((np.maximum(0.0, (t - host) / gain) ** 2 * pixels).sum()) + sync_energy
        low, high = (t, high) if energy <= budget else (low, t)
    return np.maximum(0.0, (low - host) / gain)  # type: ignore[no-any-return]


def _sync_amplitude(white: torch.Tensor, sign_t: torch.Tensor, payload: torch.Tensor, payload_gain: float) -> float:
    """The sync cells' level: the least that gives a predicted unattacked sync z-score of SYNC_Z,
    within SYNC_AMPLITUDE. Most pictures get the least (their peak is strong anyway, and the
    payload gets the rest); loud textures, whose peak the folded texture drowns, get more.

    Prediction: the decoder's sync statistic at the right offset is (level · gain + host) / σ,
    σ² = (sync cells) · (mean square of the folded, whitened picture's 2×2 cell sums); the
    gain per level is the payload cells' gain per pixel times the sync pixels (same chips
    statistics); the host term is the picture's own projection on the sync chips, cancelled
    as for the payload bits."""
    sync_pixels = float((~payload).sum())
    gain = payload_gain * sync_pixels / max(float(payload.sum()), 1.0)
    host = float((white * sign_t)[~payload].sum())
    cells = white + white.roll(-1, 0) + white.roll(-1, 1) + white.roll((-1, -1), (0, 1))
    sigma = float(torch.sqrt(sync_pixels / CELL**2 * (cells * cells).mean()))
    return float(np.clip((SYNC_Z * sigma - host) / max(gain, 1e-9), *SYNC_AMPLITUDE))


def informed_delta(
    watermarker: Watermarker, y: torch.Tensor, watermark_id: int, salt: int, offset: tuple[int, int]
) -> torch.Tensor:
    """The real-valued luminance delta (float32, H×W) carrying `watermark_id` on luminance `y`,
    scaled to the RGB budget once `_channel_deltas` splits it over the channels."""
    h, w = y.shape
    device = y.device
    signs, bits = watermarker.layout(watermark_id, salt)  # per cell: ±1 (chip × coded bit), bit or -1
    pixel_signs = np.roll(np.repeat(np.repeat(signs, CELL, 0), CELL, 1), offset, (0, 1))
    pixel_bits = np.roll(np.repeat(np.repeat(bits, CELL, 0), CELL, 1), offset, (0, 1))
    sign_t = torch.from_numpy(pixel_signs).to(device, torch.float32)
    bit_t = torch.from_numpy(pixel_bits).to(device)
    payload = bit_t >= 0
    coded = int(bits.max()) + 1

    # In place where a full-size intermediate is not needed again: the same operations on the
    # same values (so the same bits), without allocating (and page-faulting) a new image each.
    residual = y - _box_mean(y, 2)  # the decoder's whitening, read off the host
    contrast = _box_mean(residual * residual, 7).add_(4.0).sqrt_()
    spatial = torch.log(contrast).mul_(-CONTRAST_EXPONENT).exp_()
    spatial.mul_(torch.rsqrt((spatial * spatial).mean()))
    blurred = (contrast * (1.0 / BLUR_KNEE)).pow_(2).add_(1.0).reciprocal_()
    energy = _fold(spatial * spatial)
    smooth_part = blurred.mul_(spatial)
    sharp_part = spatial.sub_(smooth_part)

    def shape(tile: torch.Tensor) -> torch.Tensor:
        return _times_tiled(sharp_part, tile).add_(_times_tiled(smooth_part, _smooth(tile)))

    payload_bits = bit_t[payload]

    def per_bit(folded: torch.Tensor) -> np.ndarray:
        sums = torch.zeros(coded, dtype=torch.float64, device=device)
        sums.index_add_(0, payload_bits, folded[payload].to(torch.float64))
        return sums.cpu().numpy()  # type: ignore[no-any-return]

    unit = shape(torch.where(payload, sign_t, 0.0))
    seen = torch.sub(unit, _box_mean(unit, 2), out=unit)  # what the decoder's high-pass keeps of it
    inverse = contrast.reciprocal_()
    white = _fold(residual.mul_(inverse))
    host = per_bit(white * sign_t)  # > 0: the picture already helps the bit
    gain = np.maximum(per_bit(_fold(seen.mul_(inverse)) * sign_t), 1e-9)
    pixels = per_bit(energy)
    sync_amplitude = _sync_amplitude(white, sign_t, payload, float(gain.sum()))
    sync_energy = float(energy[~payload].sum()) * sync_amplitude**2
    amplitudes = _margins(host, gain, pixels, sync_energy, TARGET_MSE * 3 * LUMA_NORM * h * w)

    amp_t = torch.from_numpy(amplitudes).to(device, torch.float32)
    tile = torch.where(payload, amp_t[bit_t.clamp(min=0)], sync_amplitude) * sign_t
    delta = shape(tile)
    return delta.mul_(float(np.sqrt(TARGET_MSE * 3 * LUMA_NORM / max(float((delta * delta).mean()), 1e-12))))


def _channel_deltas(luma: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel integer deltas (R, G, B; float32, H×W) for a luminance delta: channel c gets
    luma · w_c / Σw², which changes the luminance by exactly `luma` for the least RGB error (most
    of it on green, where the luminance weight is largest): 1.16× the luminance amplitude of
    adding it to R, G and B alike, at the same PSNR. Capped at `MAX_DELTA`; what the cap cuts off
    is spent on the other pixels (the rescale is fitted on every 4th row and column), and the
    rounded result is never past PSNR 42.01 dB."""
    weights = [w / LUMA_NORM for w in LUMA_WEIGHTS]
    scale = 1.0  # `informed_delta` already scaled `luma` to TARGET_MSE, unclamped

    def mse(deltas: list[torch.Tensor]) -> float:
        return float(sum(float(torch.linalg.vector_norm(d)) ** 2 / d.numel() for d in deltas) / len(deltas))

    if float(luma.abs().max()) * max(weights) > MAX_DELTA:  # the cap bites
        sample = luma[::4, ::4]
        for _ in range(_RESCALES):
            error = mse([(sample * (w * scale)).clamp_(-MAX_DELTA, MAX_DELTA) for w in weights])
            if error <= 0.0 or abs(error / TARGET_MSE - 1.0) < 0.01:
                break
            scale *= float(np.sqrt(TARGET_MSE / error))
    while True:
        deltas = [(luma * (w * scale)).clamp_(-MAX_DELTA, MAX_DELTA).round_() for w in weights]
        if (error := mse(deltas)) <= MAX_MSE:
            return deltas
        scale *= float(np.sqrt(MAX_MSE / error)) * 0.99  # ends: each pass shrinks it ≥ 1 %


def embed_tensor(
    watermarker: Watermarker,
    pixels: Any,
    watermark_id: int,
    *,
    salt: int | None = None,
    offset: tuple[int, int] | None = None,
) -> Any:
    """Return `pixels` carrying `watermark_id` (random salt and offset unless given), as a new
    tensor of the same shape, dtype and device.

    `pixels` is a uint8 RGB tensor, channels first (3, H, W) or last (H, W, 3); a first dimension
    of 3 means channels first."""
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8:
        raise TypeError("the pixels must be a uint8 torch tensor")
    if pixels.ndim != CHANNELS or CHANNELS not in (pixels.shape[0], pixels.shape[-1]):
        raise ValueError(f"the pixels must be shaped (3, H, W) or (H, W, 3), not {tuple(pixels.shape)}")
    salt, offset = draw_placement(salt, offset)
    channels_first = pixels.shape[0] == CHANNELS
    dim = 0 if channels_first else -1
    rgb = [c.to(torch.float32) for c in pixels.unbind(dim)]
    y = rgb[0] * LUMA_WEIGHTS[0] + rgb[1] * LUMA_WEIGHTS[1] + rgb[2] * LUMA_WEIGHTS[2]
    luma = informed_delta(watermarker, y, watermark_id, salt, offset)
    # The deltas are whole numbers within ±MAX_DELTA: added to the pixels in float32 they give the
    # exact integer sums, clamped and written straight into the uint8 result.
    marked = torch.empty_like(pixels)
    for channel, value, delta in zip(marked.unbind(dim), rgb, _channel_deltas(luma), strict=True):
        channel.copy_(value.add_(delta).clamp_(0, 255))
    return marked


def embed(
    watermarker: Watermarker,
    image: Image.Image,
    watermark_id: int,
    *,
    salt: int | None = None,
    offset: tuple[int, int] | None = None,
) -> Image.Image:
    """Return an RGB copy of `image` carrying `watermark_id` under `watermarker`'s key (random salt
    and offset unless given): `embed_tensor` run on the CPU, the same code the engine runs on its
    device."""
    rgb = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB")))  # one copy, not two
    marked = embed_tensor(watermarker, rgb, watermark_id, salt=salt, offset=offset)
    return Image.fromarray(marked.numpy(), "RGB")
