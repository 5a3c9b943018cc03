"""The model engine behind a narrow interface.

The HTTP side imports only this module and `zguard.engine.admission`; torch and diffusers stay
inside `zguard.engine.pipeline` and `zguard.engine.demo`, which only the server factory imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image


class DeviceMark(Protocol):
    """Marks image `index` of a job where the engine holds it: `pixels` is a uint8 torch tensor
    (3, H, W) on the engine's device, quantised as the engine would for a PIL image; it returns the
    marked pixels (same shape, dtype and device). Called at most once per image, from the engine's
    thread. The provenance marker supplies it; the engine never sees a key or an id."""

    def __call__(self, index: int, pixels: Any, /) -> Any: ...


@dataclass(frozen=True)
class GenerationJob:
    """One batch for the engine: already validated and bounded by the service layer.
    `device_mark`: applied to each image on the engine's device before it leaves it (see `DeviceMark`)."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    seed: int
    n: int = 1
    device_mark: DeviceMark | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    demo: bool
    device: str
    dtype: str
    manifest: str | None = None  # digest of the pinned model manifest, once the model is verified
    # The largest width and height the loaded model can draw (its position embedding's reach);
    # None until it is loaded, or for an engine without such a bound.
    max_width: int | None = None
    max_height: int | None = None


class GenerationCancelled(Exception):
    """The job's stop flag was raised (timeout, client gone, shutdown); it stopped at a step."""


class ImageEngine(Protocol):
    """Contract: `load()` once, then `generate()` from one worker thread at a time.

    `generate` returns `job.n` images of `job.width` x `job.height`. The same job always gives
    the same pixels. Image `i` is drawn from the noise of `seed + i`, so it matches the image of
    a job with that seed and `n = 1` up to the rounding of batched arithmetic (a level or so).
    It checks `should_stop()` between denoising steps and raises `GenerationCancelled` when true.
    When `job.device_mark` is set, an engine that can calls it on each image's pixels before they
    leave its device; one that does not returns the images unmarked, and the marker marks them on
    the CPU (with the same result).
    """

    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None: ...

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]: ...


@runtime_checkable
class BatchingEngine(ImageEngine, Protocol):
    """An engine that can draw several jobs of the same width, height and steps in one call.

    `generate_batch(jobs, should_stop)` returns, for each job in order, what `generate(job)`
    returns: its `n` images from the noise of `seed + i`, marked by its own `device_mark`. The
    pixels match `generate(job)`'s up to the rounding of batched arithmetic (on the demo model: at
    most one level apart, on under 0.03 % of the pixels; tests/functional/test_batching.py).
    Prompts may differ; negative prompts are not used (the engine runs without guidance)."""

    def generate_batch(self, jobs: Sequence[GenerationJob], should_stop: Callable[[], bool]) -> list[list[Image]]: ...
