"""The diffusers `ZImagePipeline` engine. The only module (with `demo`) that imports torch.

Loading is local-only: the offline variables are forced before diffusers is imported,
`local_files_only=True` and `use_safetensors=True` are passed, so a missing file is an error
rather than a download, and pickle weights are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zguard.engine import GenerationCancelled, GenerationJob, ModelInfo
from zguard.engine.offline import force_offline

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)


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


class DiffusersEngine:
    """`ImageEngine` over a `ZImagePipeline` loaded from a local directory."""

    def __init__(
        self, model_dir: Path, *, model_id: str, device: str = "auto", demo: bool = False, build_demo: bool = False
    ) -> None:
        """`build_demo`: write the demo model to `model_dir` in load() when it is not there yet."""
        self._model_dir = Path(model_dir)
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
        import torch
        from diffusers import ZImagePipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        device, dtype_name = choose_device(self._requested_device)
        pipe = ZImagePipeline.from_pretrained(
            self._model_dir,
            use_safetensors=True,
            local_files_only=True,
            dtype=getattr(torch, dtype_name),
        )
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe.to(device)
        self._info = ModelInfo(id=self._model_id, demo=self._demo, device=device, dtype=dtype_name)
        log.info("model loaded from %s on %s (%s)", self._model_dir, device, dtype_name)

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]:
        import torch

        if self._pipe is None:
            raise RuntimeError("generate() called before load()")
        if should_stop():
            raise GenerationCancelled
        device = self._info.device

        def check_stop(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if should_stop():
                raise GenerationCancelled
            return kwargs

        generators = [torch.Generator(device=device).manual_seed(job.seed + i) for i in range(job.n)]
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
                output_type="pil",
            )
        images: list[Image] = list(result.images)
        return images
