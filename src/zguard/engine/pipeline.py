"""The diffusers `ZImagePipeline` engine. The only module (with `demo`) that imports torch.

Loading is local-only and pinned: the offline variables are forced before diffusers is
imported; the model directory is checked against its manifest (`zguard.integrity.manifest`) and
then loaded from the very bytes that were hashed (`zguard.engine.verified_load`), safetensors only,
so a missing file is an error rather than a download, pickle weights are refused, and a file
changed on disk, before or during the load, cannot get into the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zguard.engine import DeviceMark, GenerationCancelled, GenerationJob, ModelInfo
from zguard.engine.offline import force_offline
from zguard.integrity.manifest import (
    MANIFEST_FILE,
    ManifestError,
    ManifestProblem,
    ModelManifest,
    VerifiedReader,
    check_layout,
    scan,
)

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)
LARGE_MODEL_BYTES = 256 * 1024 * 1024  # from this size on, loading logs its progress
PROGRESS_STEPS = 10  # a progress line each tenth of the bytes


class LoadProgress:
    """Progress lines in the log while a large model is verified and loaded."""

    def __init__(self, model_dir: Path) -> None:
        self._model_dir = model_dir
        self._next = 1  # in tenths

    def __call__(self, done: int, total: int) -> None:
        if total < LARGE_MODEL_BYTES or done * PROGRESS_STEPS < self._next * total:
            return
        while self._next * total <= done * PROGRESS_STEPS:
            self._next += 1
        log.info(
            "verifying and loading %s: %.1f of %.1f GB (%d%%)",
            self._model_dir,
            done / 1e9,
            total / 1e9,
            100 * done // total,
        )


def choose_device(requested: str) -> tuple[str, str]:
    """(device, dtype name) for `requested`: auto → CUDA with bfloat16 when present, else CPU float32."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "model.device is 'cuda' but no CUDA device is available; set model.device to 'auto' or 'cpu'"
        )
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return "cuda", "bfloat16"
    return "cpu", "float32"


def drawable_size(pipe: Any) -> tuple[int | None, int | None]:
    """(height, width) in pixels that the pipeline's transformer can place: its rotary position
    table has `axes_lens[1]` rows and `axes_lens[2]` columns of patches, each patch `patch_size`
    latents of `vae_scale_factor` pixels. Larger images fail inside the transformer."""
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    axes_lens = getattr(config, "axes_lens", None)
    patch_sizes = getattr(config, "all_patch_size", None)
    scale = getattr(pipe, "vae_scale_factor", None)
    if not axes_lens or len(axes_lens) < 3 or not patch_sizes or not isinstance(scale, int):
        return None, None
    pixels_per_token = int(max(patch_sizes)) * scale
    return int(axes_lens[1]) * pixels_per_token, int(axes_lens[2]) * pixels_per_token


class DiffusersEngine:
    """`ImageEngine` over a `ZImagePipeline` loaded from a local directory."""

    def __init__(
        self,
        model_dir: Path,
        *,
        model_id: str,
        device: str = "auto",
        demo: bool = False,
        build_demo: bool = False,
        manifest_required: bool = True,
        manifest_public_key: Path | None = None,
    ) -> None:
        """`build_demo`: write the demo model to `model_dir` in load() when it is not there yet.
        `manifest_required`: refuse a directory without `zguard-manifest.json` (else load it unpinned).
        `manifest_public_key`: the manifest must carry a valid Ed25519 signature by this key."""
        self._model_dir = Path(model_dir)
        self._manifest_required = manifest_required
        self._manifest_public_key = manifest_public_key
        self.bytes_read = 0  # read from the model directory by the last load()
        self._model_id = model_id
        self._requested_device = device
        self._demo = demo
        self._build_demo = build_demo
        self._pipe: Any = None
        self._info = ModelInfo(id=model_id, demo=demo, device=device, dtype="unknown")

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        force_offline()
        if self._build_demo:
            from zguard.engine.demo import is_demo_model, write_demo_model

            if not is_demo_model(self._model_dir):
                log.warning("building the demo model in %s", self._model_dir)
                write_demo_model(self._model_dir)
            elif not (self._model_dir / MANIFEST_FILE).exists():
                from zguard.integrity.manifest import pin

                # A demo model built before builds were pinned: it lives in the private state
                # directory and its weights are noise, so pinning it as found is safe.
                log.warning("pinning the demo model in %s, built before demo models had a manifest", self._model_dir)
                pin(self._model_dir)
        import torch
        from diffusers import ZImagePipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from zguard.engine.verified_load import ModelLoadError, load_pipeline

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        device, dtype_name = choose_device(self._requested_device)
        manifest, reader = self.open_verified()
        pipe = load_pipeline(reader, sorted(reader.paths), device=device, dtype=getattr(torch, dtype_name))
        self.bytes_read = reader.bytes_read
        if not isinstance(pipe, ZImagePipeline):
            raise ModelLoadError(f"{self._model_dir}/model_index.json names {type(pipe).__name__}, not ZImagePipeline")
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe.to(device)
        digest = manifest.digest if manifest is not None else None
        max_height, max_width = drawable_size(pipe)
        self._info = ModelInfo(
            id=self._model_id,
            demo=self._demo,
            device=device,
            dtype=dtype_name,
            manifest=digest,
            max_width=max_width,
            max_height=max_height,
        )
        log.info(
            "model loaded from %s on %s (%s); %s; %.1f MB read",
            self._model_dir,
            device,
            dtype_name,
            f"every file matched manifest {digest}" if digest else "UNPINNED (model.manifest_required is false)",
            reader.bytes_read / 1e6,
        )

    def open_verified(self) -> tuple[ModelManifest | None, VerifiedReader]:
        """Check the directory against its manifest (everything but the hashes, which the reader
        checks as it reads); ManifestError names each problem."""
        public_key = None
        if self._manifest_public_key is not None:
            from zguard.security.keys import KeyFileError, load_public_key

            try:
                public_key = load_public_key(self._manifest_public_key)
            except (OSError, KeyFileError) as exc:
                raise ManifestError(
                    self._model_dir,
                    [
                        ManifestProblem(
                            "bad_signature",
                            str(self._manifest_public_key),
                            f"model.manifest_public_key unusable: {exc}",
                        )
                    ],
                ) from None
        manifest: ModelManifest | None
        try:
            manifest, layout = check_layout(self._model_dir, public_key)
        except ManifestError as exc:
            unpinned_ok = not self._manifest_required and public_key is None
            if not (unpinned_ok and [p.code for p in exc.problems] == ["manifest_missing"]):
                raise
            log.warning(
                "model %s has no manifest and model.manifest_required is false: loading it UNPINNED", self._model_dir
            )
            manifest, layout = None, scan(self._model_dir)
            if layout.problems:
                raise ManifestError(self._model_dir, layout.problems) from None
        return manifest, VerifiedReader(self._model_dir, manifest, layout, LoadProgress(self._model_dir))

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]:
        import torch

        if self._pipe is None:
            raise RuntimeError("generate() called before load()")
        if should_stop():
            raise GenerationCancelled
        device = self._info.device
        check_stop = _stop_callback(should_stop)
        generators = [torch.Generator(device=device).manual_seed(job.seed + i) for i in range(job.n)]
        mark = job.device_mark
        with torch.inference_mode():
            result = self._pipe(
                prompt=[job.prompt],  # a fresh list: the pipeline rewrites it in place
                negative_prompt=[job.negative_prompt] if job.negative_prompt else None,
                height=job.height,
                width=job.width,
                num_inference_steps=job.steps,
                guidance_scale=0.0,
                num_images_per_prompt=job.n,
                generator=generators,
                callback_on_step_end=check_stop,
                # Marked on the device: the decoded tensor, quantised there (see `marked_images`).
                output_type="pil" if mark is None else "pt",
            )
            if mark is not None:
                return marked_images(result.images, mark)
        images: list[Image] = list(result.images)
        return images

    def generate_batch(self, jobs: Sequence[GenerationJob], should_stop: Callable[[], bool]) -> list[list[Image]]:
        """Several jobs of one width, height and steps in one pipeline call (`BatchingEngine`):
        one prompt and one `torch.Generator` per image, so each image starts from the noise its
        own job would have drawn alone."""
        import torch

        if self._pipe is None:
            raise RuntimeError("generate_batch() called before load()")
        first = jobs[0]
        if any((j.width, j.height, j.steps) != (first.width, first.height, first.steps) for j in jobs):
            raise ValueError("a batch's jobs must share width, height and steps")
        if should_stop():
            raise GenerationCancelled
        device = self._info.device
        check_stop = _stop_callback(should_stop)
        owners = [(k, i) for k, job in enumerate(jobs) for i in range(job.n)]  # per image: (its job, its index there)
        generators = [torch.Generator(device=device).manual_seed(jobs[k].seed + i) for k, i in owners]
        on_device = any(job.device_mark is not None for job in jobs)
        with torch.inference_mode():
            result = self._pipe(
                prompt=[jobs[k].prompt for k, _ in owners],
                negative_prompt=None,  # guidance_scale 0: the pipeline never encodes one
                height=first.height,
                width=first.width,
                num_inference_steps=first.steps,
                guidance_scale=0.0,
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=check_stop,
                output_type="pt" if on_device else "pil",
            )
            if on_device:
                marks = [(jobs[k].device_mark, i) for k, i in owners]
                images = per_image_marked(result.images, marks)
            else:
                images = list(result.images)
        out: list[list[Image]] = [[] for _ in jobs]
        for (k, _), image in zip(owners, images, strict=True):
            out[k].append(image)
        return out


def _stop_callback(should_stop: Callable[[], bool]) -> Callable[..., dict[str, Any]]:
    """The pipeline's `callback_on_step_end`: raise GenerationCancelled between two denoising
    steps once `should_stop()` says so."""

    def check_stop(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if should_stop():
            raise GenerationCancelled
        return kwargs

    return check_stop


def marked_images(batch: Any, mark: DeviceMark) -> list[Image]:
    """PIL images of `batch` (a float tensor in [0, 1], (n, 3, H, W), as `output_type="pt"` gives
    it), each marked by `mark` on the batch's device first.

    Quantised exactly as diffusers' `VaeImageProcessor` does for `output_type="pil"`
    (`pt_to_numpy`: `.float()`; `numpy_to_pil`: `(x * 255).round().astype("uint8")`): float32
    multiplication and round-half-to-even give the same bits on the GPU as in numpy, so an image
    marked here equals one marked by `embedder.embed` after the PIL path.
    """
    return per_image_marked(batch, [(mark, index) for index in range(batch.shape[0])])


def per_image_marked(batch: Any, marks: Sequence[tuple[DeviceMark | None, int]]) -> list[Image]:
    """`marked_images` for a batch of several jobs: image k is marked by `marks[k][0]` (its job's
    mark, None: left unmarked for the CPU marker) as that job's image `marks[k][1]`."""
    import torch
    from PIL import Image as PILImage

    pixels = (batch.float() * 255).round().to(torch.uint8)
    images: list[Image] = []
    for k, (mark, index) in enumerate(marks):
        image = pixels[k] if mark is None else mark(index, pixels[k])
        rgb = image.permute(1, 2, 0).contiguous().cpu().numpy()
        images.append(PILImage.fromarray(rgb))  # as diffusers does: mode RGB from the shape
    return images
