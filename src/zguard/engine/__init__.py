"""The model engine behind a narrow interface.

The HTTP side imports only this module and `zguard.engine.admission`; torch and diffusers stay
inside `zguard.engine.pipeline` and `zguard.engine.demo`, which only the server factory imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class GenerationJob:
    """One batch for the engine: already validated and bounded by the service layer."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    seed: int
    n: int = 1


@dataclass(frozen=True)
class ModelInfo:
    id: str
    demo: bool
    device: str
    dtype: str
    manifest: str | None = None  # digest of the pinned model manifest, once the model is verified


class GenerationCancelled(Exception):
    """The job's stop flag was raised (timeout, client gone, shutdown); it stopped at a step."""


class ImageEngine(Protocol):
    """Contract: `load()` once, then `generate()` from one worker thread at a time.

    `generate` returns `job.n` images of `job.width` x `job.height`. The same job always gives
    the same pixels. Image `i` is drawn from the noise of `seed + i`, so it matches the image of
    a job with that seed and `n = 1` up to the rounding of batched arithmetic (a level or so).
    It checks `should_stop()` between denoising steps and raises `GenerationCancelled` when true.
    """

    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None: ...

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]: ...
