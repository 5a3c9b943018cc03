"""Image generation as the API offers it: validate and bound a request, admit it, encode results.

Validation happens entirely before admission, so a bad request costs no queue slot and no GPU
time. Marking and encoding run in the post-processing pool (`zguard.services.postprocess`), so
the engine thread moves on to the next batch while this one is being compressed. Requests of the
same size and steps may share one engine call (`generation.max_batch_images`), each with its own
seed and watermark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import secrets
import time
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from zguard.audit import AuditEvent, AuditSink, DetailValue, RequestRecord
from zguard.audit.prompts import PromptCapture
from zguard.config import GenerationSettings
from zguard.config.sizes import SIZE_STEP, check_size, parse_size
from zguard.engine import BatchingEngine, GenerationJob, ImageEngine
from zguard.engine.admission import AdmissionQueue
from zguard.errors import (
    GenerationTimeout,
    InvalidPrompt,
    InvalidSize,
    InvalidValue,
    ModelNotFound,
    NotReady,
    UnsupportedResponseFormat,
)
from zguard.services import encoding
from zguard.services.postprocess import PostProcessPool
from zguard.services.readiness import Readiness

if TYPE_CHECKING:
    from PIL.Image import Image

    from zguard.policy.verdict import Verdict
    from zguard.provenance.marking import DeviceMarks, ProvenanceMarker
    from zguard.services.auth import Identity, RequestInfo
    from zguard.services.prompt_policy import PolicyHolder

MAX_SEED = 2**63 - 1 - 16  # room for seed + i with i < max_n
DEMO_DEFAULT_SIDE = 256
DEFAULT_SIDE = 1024
DEFAULT_QUALITY = 90
_ALLOWED_CONTROLS = frozenset("\t\n\r")
OutputFormat = Literal["png", "jpeg", "webp"]


@dataclass(frozen=True)
class ImageRequest:
    """What a caller asked for, typed (the HTTP edge parses and type-checks the JSON body into
    it); `ImageService.plan` checks it against the limits and the prompt policy."""

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = None
    user: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    negative_prompt: str | None = None
    background: str | None = None


@dataclass(frozen=True)
class GenerationPlan:
    job: GenerationJob
    output_format: OutputFormat
    quality: int
    verdict: Verdict | None = None  # the prompt policy's; `verdict.audit_fields()` is what the audit trail may keep


@dataclass(frozen=True)
class GeneratedImages:
    """The encoded images of one request, marked and labelled, with what the caller is told."""

    created: int
    blobs: list[bytes]
    output_format: OutputFormat
    size: str
    request_id: str
    seed: int
    model: str


def _text_problem(text: str) -> str | None:
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc" and char not in _ALLOWED_CONTROLS:
            return "must not contain control characters (NUL and the like)"
        if category == "Cs":
            return "must not contain unpaired surrogates"
    return None


def default_size(limits: GenerationSettings, *, demo: bool) -> tuple[int, int]:
    """`generation.default_size` (validated against the limits with the settings), else 1024x1024
    (256x256 on the demo model) shrunk to the largest square the limits allow."""
    if limits.default_size is not None:
        size = parse_size(limits.default_size)
        if size is not None:
            return size
    side = DEMO_DEFAULT_SIDE if demo else DEFAULT_SIDE
    side = min(side, limits.max_side, math.isqrt(limits.max_pixels) // SIZE_STEP * SIZE_STEP)
    # The settings validators guarantee min_side <= max_side and min_side**2 <= max_pixels.
    side = max(side, limits.min_side)
    return side, side


class ImageService:
    """Turns API requests into engine jobs under the configured limits."""

    def __init__(
        self,
        limits: GenerationSettings,
        engine: ImageEngine,
        admission: AdmissionQueue,
        readiness: Readiness,
        *,
        audit: AuditSink,
        prompts: PromptCapture,
        postprocess: PostProcessPool,
        encode: Callable[[list[Image], OutputFormat, int], list[bytes]] | None = None,
        clock: Callable[[], float] = time.time,
        policy: PolicyHolder | None = None,
        provenance: ProvenanceMarker | None = None,
    ) -> None:
        self._limits = limits
        self._engine = engine
        self._admission = admission
        self._readiness = readiness
        self._audit = audit
        self._prompts = prompts
        self._postprocess = postprocess
        self._encode = encode or encode_images
        self._clock = clock
        self._policy = policy
        self._provenance = provenance
        self.default_size = default_size(limits, demo=engine.info.demo)

    def _model_size_problem(self, size: tuple[int, int]) -> str | None:
        """Why the loaded model cannot draw `size` (beyond what the settings allow), or None."""
        info = self._engine.info
        width, height = size
        if (info.max_width is not None and width > info.max_width) or (
            info.max_height is not None and height > info.max_height
        ):
            return f"the served model draws at most {info.max_width or width}x{info.max_height or height}"
        return None

    @property
    def provenance(self) -> ProvenanceMarker | None:
        return self._provenance

    def plan(self, req: ImageRequest, roles: Collection[str] = ()) -> GenerationPlan:
        """Check a request against the limits, then its prompts against the prompt policy for a
        caller holding `roles`; raise a RequestError (PromptRejected)."""
        limits = self._limits
        for name in ("prompt", "negative_prompt"):
            text = getattr(req, name)
            if text is None:
                continue
            if name == "prompt" and not text.strip():
                raise InvalidPrompt("'prompt' must not be empty", param=name)
            if len(text) > limits.max_prompt_chars:
                raise InvalidPrompt(f"'{name}' is longer than {limits.max_prompt_chars} characters", param=name)
            if problem := _text_problem(text):
                raise InvalidPrompt(f"'{name}' {problem}", param=name)
        if req.user is not None and (len(req.user) > 256 or _text_problem(req.user)):
            raise InvalidValue("'user' must be at most 256 characters without control characters", param="user")
        if req.model is not None and req.model != self._engine.info.id:
            raise ModelNotFound(
                f"model '{req.model[:64]}' is not served here; this server serves '{self._engine.info.id}'",
                param="model",
            )
        if req.response_format == "url":
            raise UnsupportedResponseFormat(
                "response_format 'url' is not supported: zguard never stores images; use 'b64_json'",
                param="response_format",
            )
        if req.background == "transparent":
            raise InvalidValue("background 'transparent' is not supported by this model", param="background")
        if not 1 <= req.n <= limits.max_n:
            raise InvalidValue(f"'n' must be between 1 and {limits.max_n}", param="n")
        steps = limits.default_steps if req.num_inference_steps is None else req.num_inference_steps
        if not 1 <= steps <= limits.max_steps:
            raise InvalidValue(
                f"'num_inference_steps' must be between 1 and {limits.max_steps}", param="num_inference_steps"
            )
        if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
            raise InvalidValue(f"'seed' must be between 0 and {MAX_SEED}", param="seed")
        if req.output_compression is not None and not 0 <= req.output_compression <= 100:
            raise InvalidValue("'output_compression' must be between 0 and 100", param="output_compression")
        size = self.default_size if req.size in (None, "auto") else parse_size(req.size)
        if size is None:
            raise InvalidSize("'size' must be written WxH, e.g. 1024x1024", param="size")
        if problem := check_size(size, limits) or self._model_size_problem(size):
            raise InvalidSize(f"'size' {size[0]}x{size[1]} is not allowed: {problem}", param="size")
        # The prompt policy last, on an otherwise valid request: a block raises PromptRejected (400).
        verdict = None if self._policy is None else self._policy.enforce(req.prompt, req.negative_prompt, roles)
        seed = secrets.randbelow(2**32) if req.seed is None else req.seed
        job = GenerationJob(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            width=size[0],
            height=size[1],
            steps=steps,
            seed=seed,
            n=req.n,
        )
        quality = DEFAULT_QUALITY if req.output_compression is None else req.output_compression
        return GenerationPlan(job=job, output_format=req.output_format or "png", quality=quality, verdict=verdict)

    async def record_accepted(
        self, plan: GenerationPlan, where: RequestInfo, identity: Identity, record: RequestRecord | None
    ) -> None:
        """Describe the generation on the request's record and commit its `generation.accepted`
        event; AuditUnavailable (503) means it was not recorded and must not run.

        The prompt itself is never recorded: `audit.prompt_capture` decides what stands for it.
        """
        job = plan.job
        info = self._engine.info
        generation: dict[str, DetailValue] = {
            "size": f"{job.width}x{job.height}",
            "steps": job.steps,
            "seed": job.seed,
            "n": job.n,
            "output_format": plan.output_format,
        }
        prompt = self._prompts.fields(job.prompt, job.negative_prompt)
        policy = plan.verdict.audit_fields() if plan.verdict is not None else None
        if record is not None:
            record.type = "generation"
            record.model, record.manifest = info.id, info.manifest
            record.generation, record.prompt, record.policy = generation, prompt, policy
        await self._audit.record(
            AuditEvent(
                type="generation.accepted",
                outcome="allowed",
                request_id=where.request_id,
                listener=where.listener,
                client=where.client,
                principal=identity.name,
                roles=tuple(sorted(identity.roles)),
                auth_method=identity.method,
                model=info.id,
                manifest=info.manifest,
                generation=generation,
                prompt=prompt,
                policy=policy,
            )
        )

    async def generate(
        self, plan: GenerationPlan, request_id: str, record: RequestRecord | None = None
    ) -> GeneratedImages:
        """Admit, generate and encode; raise NotReady, ServerBusy or GenerationTimeout.
        The SHA-256 of each delivered image, and its watermark id, go on the request's audit `record`."""
        if not self._readiness.ready:
            raise NotReady("the model is not ready yet; retry shortly", retry_after=5)
        job = plan.job
        marks = None if self._provenance is None else self._provenance.device_marks(job.n, self._engine.info.device)
        if marks is not None:  # the engine adds the watermark on its device
            job = dataclasses.replace(job, device_mark=marks)
        try:
            async with asyncio.timeout(self._limits.timeout_s):
                images = await self._run_on_engine(job)
                encoded, watermark_ids = await self._postprocess.run(
                    lambda: self._finish(images, plan, request_id, marks)
                )
        except TimeoutError:
            raise GenerationTimeout(
                f"the generation did not finish within {self._limits.timeout_s:g} s", detail=request_id
            ) from None
        if record is not None:
            record.images = tuple(_image_fields(blob, mark) for blob, mark in zip(encoded, watermark_ids, strict=True))
        return GeneratedImages(
            created=int(self._clock()),
            blobs=encoded,
            output_format=plan.output_format,
            size=f"{job.width}x{job.height}",
            request_id=request_id,
            seed=job.seed,
            model=self._engine.info.id,
        )

    async def _run_on_engine(self, job: GenerationJob) -> list[Image]:
        """The job's images; with an engine that batches, possibly in one call with other waiting
        requests of the same size and steps (the admission queue decides, `generation.max_batch_images`)."""
        engine = self._engine
        if not isinstance(engine, BatchingEngine):
            return await self._admission.run(lambda should_stop: engine.generate(job, should_stop))

        def run_batch(jobs: list[GenerationJob], should_stop: Callable[[], bool]) -> list[list[Image]]:
            if len(jobs) == 1:  # the same call as without batching
                return [engine.generate(jobs[0], should_stop)]
            return engine.generate_batch(jobs, should_stop)

        key = ("generation", job.width, job.height, job.steps)
        return await self._admission.run_batched(job, key=key, images=job.n, run_batch=run_batch)

    def _finish(
        self, images: list[Image], plan: GenerationPlan, request_id: str, marks: DeviceMarks | None
    ) -> tuple[list[bytes], list[str | None]]:
        """Mark (labels, watermark) and encode; without provenance, encode only."""
        if self._provenance is None:
            return self._encode(images, plan.output_format, plan.quality), [None] * len(images)
        marked = self._provenance.mark(
            images, plan.output_format, plan.quality, request_id, self._encode, device_marks=marks
        )
        return [m.blob for m in marked], [m.watermark_id for m in marked]


def _image_fields(blob: bytes, watermark_id: str | None) -> dict[str, DetailValue]:
    fields: dict[str, DetailValue] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    if watermark_id is not None:
        fields["watermark_id"] = watermark_id
    return fields


def encode_images(images: list[Image], output_format: OutputFormat, quality: int) -> list[bytes]:
    """Encode in memory only: PNG written from the pixel array (`zguard.services.encoding`)."""
    return encoding.encode_images(images, output_format, quality)
