"""Benchmark: zguard's watermark against invisible-watermark's dwtDct and dwtDctSvd, same run.

Run it with ``.venv/bin/python bench/bench_watermark.py [--sizes 1024 512] [--false-trials N]``.
It prints ONE JSON object on stdout; progress goes to stderr. A measurement, not a test.

Needs, for the benchmark only (not runtime dependencies of zguard)::

    .venv/bin/pip install scikit-image opencv-python-headless PyWavelets
    .venv/bin/pip install --no-deps invisible-watermark

Without scikit-image there are no natural images and the benchmark stops; without
invisible-watermark the baselines are skipped with a note.

Images: the photographs bundled with scikit-image (astronaut, brick, camera, chelsea, coffee,
coins, grass, gravel, moon, rocket, hubble_deep_field, immunohistochemistry, retina, cell, and
page, a scanned text page), four square crops of each (the centre, and three 60% crops at seeded
places) = 60 natural images (texture edge to edge: brick, grass, gravel; smooth: coffee,
chelsea's background, moon; text: page; dark: hubble_deep_field, moon), plus
3 flat ones (uniform grey, a soft gradient, near-white paper with faint noise) as the hard case;
each resized (Lanczos) to every ``--sizes`` side.

``robustness``: per size, per method, per attack, the fraction of images whose 64-bit payload
comes back exactly. Attacks: none; JPEG 75/50/30; WebP 80; 50% downscale; 50% then JPEG 75; a
10% border crop with odd offsets; a rescale by a factor drawn uniformly in [0.6, 0.9] per image.
The geometric families (``--attacks geometry``, issue 17): upscales 1.25-2.5x, phone screenshots
(the image shown 1080/1179/1290/1440 px wide had it been 1024, then JPEG 80), downscales
0.35-0.25x, flips, quarter turns, rotations 0.5-5 degrees (also then JPEG 80), stretches of one
axis to 0.75, half the area cropped and zoomed back, and two re-shares (0.7x + JPEG 75, twice).
``wrong_ids`` counts zguard decodes that returned an id other than the embedded one.
``quality``: PSNR (min, median) per method. ``cost``: embed p50/p95 and decode mean/max (ms).
``false_traces``: full decodes of unmarked images and of images marked under another key (256²
crops at random places and scales); any valid id is a false trace. The bound by construction is
``MAX_CANDIDATES · 2^-48`` per decode (see zguard.provenance.watermark).
``averaging``: an insider averages the high-pass residuals of N marked images to estimate the
pattern and subtracts it from a marked image; recovery rate after that, for zguard (per-image
salt and offset) and for an ablation with one fixed pattern (the issue's earlier design).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from multiprocessing import Pool
from typing import Any

import numpy as np
from PIL import Image

from zguard.provenance.embedder import embed
from zguard.provenance.watermark import MAC_BITS, MAX_CANDIDATES, Watermarker, box_sum, luminance

KEY = b"bench-watermark-key-0123456789ab"
TRACE_MAX_PIXELS = 2048 * 2048  # provenance.trace_max_pixels' default: what a trace lets the decoder resample to
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "moon",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cell",
    "page",
)
Attack = Callable[[Image.Image, np.random.Generator], Image.Image]


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = (255 * (array / max(1.0, float(array.max())))).astype(np.uint8)
    image = Image.fromarray(array)
    return image.convert("RGB")


def natural_images() -> list[tuple[str, Image.Image]]:
    from skimage import data

    rng = np.random.default_rng(7)
    out = []
    for name in PHOTOS:
        image = _rgb(getattr(data, name)())
        w, h = image.size
        side = min(w, h)
        crops = [((w - side) // 2, (h - side) // 2, side)]
        small = int(side * 0.6)
        for _ in range(3):
            crops.append((int(rng.integers(0, w - small + 1)), int(rng.integers(0, h - small + 1)), small))
        for i, (x, y, s) in enumerate(crops):
            out.append((f"{name}-{i}", image.crop((x, y, x + s, y + s))))
    return out


def flat_images(side: int) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:side, 0:side] / side
    gradient = (90 + 80 * xx + 30 * yy)[..., None].repeat(3, axis=2)
    paper = 245 + rng.normal(0, 1.5, (side, side, 1)).repeat(3, axis=2)
    return [
        ("flat-grey", Image.new("RGB", (side, side), (128, 128, 128))),
        ("flat-gradient", Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8))),
        ("flat-paper", Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))),
    ]


def _codec(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _resize(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)


def _crop(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((w // 10 + 1, h // 10, w - w // 10, h - h // 10 - 1))


ATTACKS: dict[str, Attack] = {
    "none": lambda im, _: im,
    "jpeg75": lambda im, _: _codec(im, "JPEG", 75),
    "jpeg50": lambda im, _: _codec(im, "JPEG", 50),
    "jpeg30": lambda im, _: _codec(im, "JPEG", 30),
    "webp80": lambda im, _: _codec(im, "WEBP", 80),
    "downscale50": lambda im, _: _resize(im, 0.5),
    "downscale50_jpeg75": lambda im, _: _codec(_resize(im, 0.5), "JPEG", 75),
    "crop10_odd": lambda im, _: _crop(im),
    "rescale60to90": lambda im, rng: _resize(im, float(rng.uniform(0.6, 0.9))),
}


def _width(image: Image.Image, width_at_1024: int) -> Image.Image:
    """A phone or screen showing the image `width_at_1024` px wide had it been 1024 px wide."""
    factor = width_at_1024 / 1024
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, Image.Resampling.BICUBIC)


def _stretch(image: Image.Image, fx: float, fy: float) -> Image.Image:
    return image.resize((round(image.width * fx), round(image.height * fy)), Image.Resampling.LANCZOS)


def _crop_zoom(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Half the area, at a random place, back to the full size."""
    w, h = image.size
    cw, ch = round(w / 2**0.5), round(h / 2**0.5)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.LANCZOS)


def _reshare(image: Image.Image, times: int) -> Image.Image:
    for _ in range(times):
        image = _codec(_resize(image, 0.7), "JPEG", 75)
    return image


_T = Image.Transpose
GEOMETRY_ATTACKS: dict[str, Attack] = {
    **{f"upscale{f}": (lambda im, _, f=f: _resize(im, f)) for f in (1.25, 1.5, 2.0, 2.5)},
    **{
        f"screenshot{w}_jpeg80": (lambda im, _, w=w: _codec(_width(im, w), "JPEG", 80))
        for w in (1080, 1179, 1290, 1440)
    },
    **{f"downscale{f}": (lambda im, _, f=f: _resize(im, f)) for f in (0.35, 0.3, 0.25)},
    "flip_horizontal": lambda im, _: im.transpose(_T.FLIP_LEFT_RIGHT),
    "flip_vertical": lambda im, _: im.transpose(_T.FLIP_TOP_BOTTOM),
    "rot90": lambda im, _: im.transpose(_T.ROTATE_90),
    "rot180": lambda im, _: im.transpose(_T.ROTATE_180),
    "rot270": lambda im, _: im.transpose(_T.ROTATE_270),
    **{f"rotate{d}": (lambda im, _, d=d: _rotate(im, d)) for d in (0.5, 1, 2, 5)},
    **{f"rotate{d}_jpeg80": (lambda im, _, d=d: _codec(_rotate(im, d), "JPEG", 80)) for d in (0.5, 1, 2, 5)},
    "rotate-3": lambda im, _: _rotate(im, -3),
    "stretch_x1_y0.75": lambda im, _: _stretch(im, 1.0, 0.75),
    "stretch_x0.75_y1": lambda im, _: _stretch(im, 0.75, 1.0),
    "crop_half_area_zoom": _crop_zoom,
    "reshare_0.7_jpeg75_x2": lambda im, _: _reshare(im, 2),
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = float((error**2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


class Zguard:
    name = "zguard"

    def __init__(self) -> None:
        self.wm = Watermarker(KEY)

    def embed(self, image: Image.Image, payload: int) -> Image.Image:
        return embed(self.wm, image, payload)

    def decode(self, image: Image.Image) -> int | None:
        found = self.wm.detect(image, max_pixels=TRACE_MAX_PIXELS)
        return None if found is None else found.watermark_id


class Baseline:
    def __init__(self, method: str) -> None:
        from imwatermark import WatermarkDecoder, WatermarkEncoder

        self.name = method
        self._encoder_class = WatermarkEncoder
        self._decoder = WatermarkDecoder("bits", 64)

    def embed(self, image: Image.Image, payload: int) -> Image.Image:
        import cv2

        encoder = self._encoder_class()
        encoder.set_watermark("bits", [(payload >> (63 - i)) & 1 for i in range(64)])
        bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
        out = encoder.encode(bgr, self.name)
        return Image.fromarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB))

    def decode(self, image: Image.Image) -> int | None:
        import cv2

        bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
        try:
            bits = self._decoder.decode(bgr, self.name)
        except Exception:  # noqa: BLE001 - a baseline that cannot decode an attacked image recovers nothing
            return None
        return int("".join("1" if b else "0" for b in bits), 2)


def robustness(
    methods: list[Any], images: list[tuple[str, Image.Image]], side: int, attacks: dict[str, Attack]
) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for method in methods:
        hits = dict.fromkeys(attacks, 0)
        wrong = dict.fromkeys(attacks, 0)
        misses: dict[str, list[str]] = {k: [] for k in attacks}
        decode_by_attack: dict[str, list[float]] = {k: [] for k in attacks}
        unmarked_ms: list[float] = []
        psnrs, embed_ms, decode_ms = [], [], []
        rng = np.random.default_rng(11)
        for name, original in images:
            image = original.resize((side, side), Image.Resampling.LANCZOS)
            payload = secrets.randbits(64)
            start = time.perf_counter()
            marked = method.embed(image, payload)
            embed_ms.append((time.perf_counter() - start) * 1000)
            psnrs.append(psnr(image, marked))
            if method.name == "zguard":  # the full search: what an unmarked upload costs
                start = time.perf_counter()
                wrong["none"] += int(method.decode(image) is not None)
                unmarked_ms.append((time.perf_counter() - start) * 1000)
            for attack, apply in attacks.items():
                attacked = apply(marked, rng)
                start = time.perf_counter()
                got = method.decode(attacked)
                decode_ms.append((time.perf_counter() - start) * 1000)
                decode_by_attack[attack].append(decode_ms[-1])
                if got == payload:
                    hits[attack] += 1
                else:
                    misses[attack].append(name)
                    wrong[attack] += int(got is not None and method.name == "zguard")
        n = len(images)
        table[method.name] = {
            "exact_recovery": {k: round(v / n, 4) for k, v in hits.items()},
            "misses": {k: v for k, v in misses.items() if v and len(v) <= 8},
            "psnr_db": {"min": round(min(psnrs), 2), "median": round(float(np.median(psnrs)), 2)},
            "embed_ms": {
                "p50": round(float(np.percentile(embed_ms, 50)), 1),
                "p95": round(float(np.percentile(embed_ms, 95)), 1),
            },
            "decode_ms": {"mean": round(float(np.mean(decode_ms)), 1), "max": round(max(decode_ms), 1)},
            "decode_ms_by_attack": {
                k: {"p50": round(float(np.median(v)), 1), "max": round(max(v), 1)} for k, v in decode_by_attack.items()
            },
        }
        if method.name == "zguard":  # a baseline has no MAC: any 64 bits it reads is "an id"
            table[method.name]["wrong_ids"] = sum(wrong.values())  # the unmarked originals included
            table[method.name]["unmarked_decode_ms"] = {
                "p50": round(float(np.percentile(unmarked_ms, 50)), 1),
                "p95": round(float(np.percentile(unmarked_ms, 95)), 1),
                "max": round(max(unmarked_ms), 1),
            }
        log(side, method.name, table[method.name]["exact_recovery"])
    return table


_POOL_IMAGES: list[Image.Image] = []


_FALSE_SIDE = [256]


def _false_trial(seed: int) -> int:
    """One full decode of an unmarked image (even seeds) or one marked under another key (odd)."""
    rng = np.random.default_rng(seed)
    source = _POOL_IMAGES[seed % len(_POOL_IMAGES)]
    target = _FALSE_SIDE[0]
    side = int(rng.integers(target, min(source.size) + 1)) if min(source.size) > target else min(source.size)
    x = int(rng.integers(0, source.width - side + 1))
    y = int(rng.integers(0, source.height - side + 1))
    image = source.crop((x, y, x + side, y + side)).resize((target, target), Image.Resampling.BILINEAR)
    if seed % 2:
        image = embed(Watermarker(rng.bytes(32)), image, int(rng.integers(0, 2**63)))
    return int(_reader().detect(image) is not None)


_READERS: list[Watermarker] = []


def _reader() -> Watermarker:
    """One per worker process: the keyed patterns are derived once."""
    if not _READERS:
        _READERS.append(Watermarker(KEY))
    return _READERS[0]


def false_traces(
    images: list[tuple[str, Image.Image]], trials: int, workers: int, side: int, first_seed: int = 0
) -> dict[str, Any]:
    global _POOL_IMAGES  # noqa: PLW0603 - handed to the worker processes by fork
    _POOL_IMAGES = [image for _, image in images]
    _FALSE_SIDE[0] = side
    start = time.perf_counter()
    with Pool(workers) as pool:
        found = sum(pool.imap_unordered(_false_trial, range(first_seed, first_seed + trials), chunksize=64))
    return {
        "trials": trials,
        "seeds": [first_seed, first_seed + trials],
        "side": side,
        "unmarked": (trials + 1) // 2,
        "marked_under_another_key": trials // 2,
        "false_traces": found,
        "bound_per_decode": MAX_CANDIDATES * 2.0**-MAC_BITS,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _residual(image: Image.Image) -> np.ndarray:
    y = luminance(np.asarray(image))
    return y - box_sum(y, 2) / 25.0


def averaging(images: list[tuple[str, Image.Image]], side: int, count: int) -> dict[str, Any]:
    wm = Watermarker(KEY)
    pictures = [im.resize((side, side), Image.Resampling.LANCZOS) for _, im in images[:count]]
    out: dict[str, Any] = {"images_averaged": len(pictures), "side": side}
    for design, fixed in (("zguard_per_image_salt_and_offset", False), ("fixed_pattern_ablation", True)):
        ids = [secrets.randbits(64) for _ in pictures]
        marked = [
            embed(wm, p, i, salt=0, offset=(0, 0)) if fixed else embed(wm, p, i)
            for p, i in zip(pictures, ids, strict=True)
        ]
        estimate = np.mean([_residual(m) for m in marked], axis=0)
        pattern = 2.0 * np.sign(estimate)
        recovered, correlations = 0, []
        targets = list(range(min(20, len(marked))))
        for t in targets:
            truth = np.asarray(marked[t], np.float64)[..., 1] - np.asarray(pictures[t], np.float64)[..., 1]
            correlations.append(float((np.sign(estimate) * np.sign(truth)).mean()))
            attacked = np.clip(np.asarray(marked[t], np.float64) - pattern[..., None], 0, 255).astype(np.uint8)
            found = wm.detect(Image.fromarray(attacked))
            recovered += int(found is not None and found.watermark_id == ids[t])
        out[design] = {
            "recovered_after_subtraction": round(recovered / len(targets), 3),
            "estimate_sign_agreement_with_true_mark": round(float(np.mean(correlations)), 4),
        }
        log("averaging", design, out[design])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 512])
    parser.add_argument(
        "--false-side",
        type=int,
        default=256,
        help="side of the false-trace images; the decoder's full geometric search runs on each (~0.5 s a decode at 256²)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the false-trace trials")
    parser.add_argument("--false-trials", type=int, default=10_000)
    parser.add_argument(
        "--false-first-seed",
        type=int,
        default=0,
        help="first trial seed: to add trials to an earlier run, not repeat it",
    )
    parser.add_argument("--average", type=int, default=56, help="marked images an insider averages")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N natural images (quick runs)")
    parser.add_argument(
        "--attacks",
        choices=["current", "geometry", "all"],
        default="all",
        help="the current attacks, the geometric families of issue 17, or both",
    )
    parser.add_argument(
        "--centre-crops-only", action="store_true", help="one image per photograph (the centre crop): quick runs"
    )
    parser.add_argument("--no-flat", action="store_true", help="leave out the 3 flat images")
    parser.add_argument(
        "--only", nargs="*", default=[], help="these attacks (and none) of --attacks' set: one family on every image"
    )
    args = parser.parse_args()
    try:
        naturals = natural_images()
    except ImportError:
        log("scikit-image is not installed: .venv/bin/pip install scikit-image")
        raise SystemExit(2) from None
    if args.centre_crops_only:
        naturals = [(name, image) for name, image in naturals if name.endswith("-0")]
    if args.limit:
        naturals = naturals[: args.limit]
    attacks = {
        "current": ATTACKS,
        "geometry": {"none": ATTACKS["none"], **GEOMETRY_ATTACKS},
        "all": {**ATTACKS, **GEOMETRY_ATTACKS},
    }[args.attacks]
    unknown = sorted(set(args.only) - set(attacks))
    if unknown:
        parser.error(f"unknown attacks {unknown}; choose from {sorted(attacks)}")
    if args.only:
        attacks = {name: apply for name, apply in attacks.items() if name == "none" or name in args.only}
    methods: list[Any] = [Zguard()]
    notes = []
    try:
        methods += [Baseline("dwtDct"), Baseline("dwtDctSvd")]
    except ImportError:
        notes.append("invisible-watermark not installed: baselines skipped (see the docstring)")
    flats = 0 if args.no_flat else 3
    result: dict[str, Any] = {
        "natural_images": len(naturals),
        "flat_images": flats,
        "attacks": args.attacks if not args.only else ["none", *args.only],
        "notes": notes,
        "robustness": {},
    }
    for side in args.sizes:
        images = naturals + flat_images(side)[:flats]
        result["robustness"][str(side)] = robustness(methods, images, side, attacks)
    if args.average:
        result["averaging"] = averaging(naturals, 512, args.average)
    if args.false_trials:
        result["false_traces"] = false_traces(
            naturals, args.false_trials, args.workers, args.false_side, args.false_first_seed
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
