"""Wire shapes of the image API, compatible with the OpenAI Images API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from zguard.services.images import OutputFormat


def _integral(value: object) -> object:
    """JSON Schema's integers include `1.0` (a number whose fraction is zero): take it as 1."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Unknown fields are refused; OpenAI-only ones are ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What to draw.")
    model: str | None = Field(None, description="Must name the served model when given.")
    n: JsonInt = Field(1, description="Number of images.")
    size: str | None = Field(None, description="`WxH`, both multiples of 16, or `auto` for the server default.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="Only `b64_json`: zguard never stores images, so it has no URL to give."
    )
    output_format: OutputFormat | None = Field(None, description="Image encoding; `png` by default.")
    output_compression: JsonInt | None = Field(
        None, description="Quality 0-100 for `jpeg` and `webp` (default 90); ignored for `png`."
    )
    user: str | None = Field(None, description="The caller's end-user id, for the caller's own records.")
    seed: JsonInt | None = Field(
        None, description="zguard extension: random seed; the same seed and parameters give the same image."
    )
    num_inference_steps: JsonInt | None = Field(
        None, description="zguard extension: denoising steps (8 for Z-Image-Turbo)."
    )
    negative_prompt: str | None = Field(
        None, description="zguard extension: what not to draw (ignored by Turbo at guidance 0)."
    )
    # OpenAI fields accepted for compatibility and ignored.
    quality: str | None = Field(None, description="OpenAI field, ignored.")
    style: str | None = Field(None, description="OpenAI field, ignored.")
    moderation: str | None = Field(None, description="OpenAI field, ignored.")
    background: str | None = Field(None, description="OpenAI field, ignored; `transparent` is refused.")


class ImageData(BaseModel):
    b64_json: str


class ZguardMeta(BaseModel):
    request_id: str
    seed: int
    model: str


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    zguard: ZguardMeta


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "zguard"
    demo: bool
    manifest: str | None = Field(
        None, description="SHA-256 digest of the model's pinned manifest (`zguard-manifest.json`); null when unpinned."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class AuditEventList(BaseModel):
    """A page of audit events, oldest first; pass `next_after` as `after` for the next page."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]] = Field(
        description="Each event's hashed body (metadata only: never a prompt, an image or a credential) with its `hash`."
    )
    next_after: int | None = Field(description="The cursor for the next page; null on the last page.")
