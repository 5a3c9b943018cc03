"""The console's Generate page (`images:generate`) and its JSON twin, `POST /console/api/generate`.

Both run a generation exactly as `POST /v1/images/generations` does (zguard.app.api): the wire
parser (zguard.app.wire), `ImageService.plan` (limits, then the prompt policy), the principal's
in-flight cap, the committed `generation.accepted` event, then the generation, cancelled when the
browser goes away. The images are shown from memory as `data:` URIs (the console's CSP allows
`img-src data:`; pages are `no-store`) and are never written anywhere. A refused request re-shows
the form with the reason next to its field, in the reader's language; a policy refusal names the
category, never the matched term (the audit event has its id).

While the POST waits, static/generate.js polls `GET /console/api/generate/queue` for the queue's
numbers and, when the form carried a ticket (16-32 hex characters the script draws at random),
the position of that job. Tickets are scoped to the caller's session: the admission queue keys
them by (session, ticket), so another session naming the same ticket learns nothing; the queue
forgets a ticket when its job ends. Without the script the form posts as it always did.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, requires
from zguard.app.console.common import N_, Page, form
from zguard.app.console.contract import CHANGE, SESSION
from zguard.app.console.web import negotiate, translate
from zguard.app.context import Services
from zguard.app.contract import AUTHENTICATED, GENERATION_ERRORS, error_responses
from zguard.app.generation import run_generation
from zguard.app.middleware.audit_requests import request_record
from zguard.app.schemas import ImageGenerationResponse
from zguard.app.wire import image_request, image_response_json, parse_json_object
from zguard.audit import DetailValue
from zguard.engine.admission import TICKET
from zguard.errors import (
    InvalidValue,
    PromptRejected,
    RequestError,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
    ZguardError,
)
from zguard.security.rbac import Permission
from zguard.services.auth import Identity
from zguard.services.images import GeneratedImages, ImageRequest
from zguard.services.sessions import NoSessions, SessionService

API_PATH = "/console/api/generate"
QUEUE_PATH = "/console/api/generate/queue"
TICKET_FORMAT = re.compile(r"[0-9a-f]{16,32}")
FIELDS = ("prompt", "negative_prompt", "size", "num_inference_steps", "seed", "n")
NUMBERS = ("num_inference_steps", "seed", "n")
NUMBER_DIGITS = 20  # a longer "number" is refused by the schema as text, not converted
# What the size list offers, before the service says which it accepts (see `allowed_sizes`).
CANDIDATE_SIZES = (
    "16x16",
    "32x32",
    "64x64",
    "128x128",
    "256x256",
    "512x512",
    "768x768",
    "1024x768",
    "768x1024",
    "1024x1024",
    "1280x720",
    "720x1280",
    "1536x1024",
    "1024x1536",
    "1536x1536",
    "2048x2048",
)
SIZE_PROBE_PROMPT = "size check"

FIELD_MESSAGES: Mapping[str, str] = {
    "prompt": N_("Enter a prompt within the length limit, without control characters."),
    "negative_prompt": N_("Keep the negative prompt within the length limit, without control characters."),
    "size": N_("Choose one of the listed sizes."),
    "num_inference_steps": N_("Enter a number of steps the service allows."),
    "seed": N_("Enter a whole number from 0, or leave the seed empty for a random one."),
    "n": N_("Enter how many images to make, within the number the service allows."),
}
# A policy refusal names what kind of text was refused, never the text: the shipped lists'
# categories and the personal-data detectors. A category an operator's list adds is shown as named.
CATEGORIES: Mapping[str, str] = {
    "banned": N_("banned terms"),
    "confidential": N_("confidential material"),
    "customer-data": N_("customer data"),
    "code-name": N_("internal code names"),
    "credentials": N_("credentials"),
    "insider": N_("insider information"),
    "hr-data": N_("personnel data"),
    "pii": N_("personal data"),
}
DETECTORS: Mapping[str, str] = {
    "resident_id": N_("a resident identity card number"),
    "bank_card": N_("a bank card number"),
    "mobile": N_("a mobile phone number"),
    "email": N_("an e-mail address"),
}
PROBLEMS: Mapping[str, str] = {
    "too_many_concurrent_requests": N_(
        "You already have as many generations running as you may. Wait for one to finish."
    ),
    "server_busy": N_("The generation queue is full. Try again in a moment."),
    "model_not_ready": N_("The model is still loading. Try again shortly."),
    "audit_unavailable": N_(
        "The audit trail cannot record generations right now, so none can run. Try again later or tell an administrator."
    ),
    "generation_timeout": N_("The generation took too long and was stopped. Try fewer steps or a smaller size."),
    "rate_limit_exceeded": N_("Too many requests. Wait a moment and try again."),
}
LABELS: Mapping[str, str] = {
    "1": N_("AI-generated"),
    "2": N_("possibly AI-generated"),
    "3": N_("suspected AI-generated"),
}


@dataclass(frozen=True)
class ShownImage:
    """One delivered image as the page shows it."""

    src: str  # a data: URI of the encoded bytes
    filename: str
    watermark_id: str | None
    label: Mapping[str, str] | None  # the TC260 AIGC label in the file's metadata


@dataclass(frozen=True)
class FieldError:
    message: str  # translated
    detail: str | None = None  # the service's own message (what the API answers), or None


def allowed_sizes(services: Services) -> list[str]:
    """The listed sizes `ImageService.plan` accepts, the default first: the service decides, this
    only asks it (a size it refuses is never offered, and one posted anyway is refused by it)."""
    width, height = services.images.default_size
    default = f"{width}x{height}"
    sizes = [default]
    for size in CANDIDATE_SIZES:
        if size == default:
            continue
        try:
            services.images.plan(ImageRequest(prompt=SIZE_PROBE_PROMPT, size=size))
        except RequestError as error:
            if error.param == "size":
                continue
        sizes.append(size)
    return sizes


def form_request(fields: Mapping[str, str]) -> dict[str, Any]:
    """The form as the wire body `/v1/images/generations` takes: empty fields left out, digit
    strings as numbers (anything else goes on as text, for the wire schema to refuse)."""
    body: dict[str, Any] = {"prompt": fields.get("prompt", "")}
    for name in FIELDS[1:]:
        value = fields.get(name, "").strip() if name != "negative_prompt" else fields.get(name, "")
        if not value:
            continue
        if name in NUMBERS and value.isascii() and value.isdigit() and len(value) <= NUMBER_DIGITS:
            body[name] = int(value)
        else:
            body[name] = value
    return body


def ticket_of(raw: str | None) -> str | None:
    """A well-formed client ticket (16-32 lower-case hex characters), else None."""
    if raw is None:
        return None
    raw = raw.lower()
    return raw if raw.isascii() and TICKET_FORMAT.fullmatch(raw) else None


def ticket_key(identity: Identity, ticket: str) -> tuple[str, str, str]:
    """The admission queue's key for a ticket: bound to the caller's session (or, for a token
    caller, its name), so only that session can ask where its job stands."""
    return ("ticket", identity.session_hash or f"principal:{identity.name}", ticket)


def _label_of(blob: bytes) -> dict[str, str] | None:
    from PIL import Image  # noqa: PLC0415 - only pages that show images decode one

    from zguard.provenance.labels import read_label  # noqa: PLC0415

    with Image.open(io.BytesIO(blob)) as image:
        return read_label(image)


async def shown_images(
    result: GeneratedImages, record_images: tuple[Mapping[str, DetailValue], ...]
) -> list[ShownImage]:
    """The page's view of the images: the watermark ids are those the audit record got."""
    labels = await asyncio.to_thread(lambda: [_label_of(blob) for blob in result.blobs])
    shown = []
    for index, (blob, label) in enumerate(zip(result.blobs, labels, strict=True)):
        mark = record_images[index].get("watermark_id") if index < len(record_images) else None
        watermark_id = mark if isinstance(mark, str) else None
        name = watermark_id or f"{result.request_id}-{index + 1}"
        src = f"data:image/{result.output_format};base64,{base64.b64encode(blob).decode('ascii')}"
        shown.append(ShownImage(src, f"zguard-{name}.{result.output_format}", watermark_id, label))
    return shown


def refusal_of(language: str, error: ZguardError) -> tuple[str | None, FieldError]:
    """Where a refusal goes on the form (a field, or None: the top) and what it says."""
    if isinstance(error, PromptRejected):
        kind = DETECTORS.get(error.detector) if error.category == "pii" else None
        category = translate(language, kind or CATEGORIES.get(error.category, error.category))
        message = translate(language, N_("The prompt policy refused this text: it looks like {category}."))
        hint = translate(language, N_("Rephrase it. If it is legitimate, ask an administrator to allow the phrase."))
        field = error.param if error.param in FIELDS else None
        return field, FieldError(message.format(category=category), hint)
    param = error.param if isinstance(error, RequestError) else None
    if param is not None and param in FIELD_MESSAGES:
        return param, FieldError(translate(language, FIELD_MESSAGES[param]), error.message)
    problem = PROBLEMS.get(error.code, N_("The console could not do this."))
    return None, FieldError(translate(language, problem), None)


def add_generate_pages(app: FastAPI, services: Services, sessions: SessionService | NoSessions, page: Page) -> None:
    """Register the generate pages and their JSON API routes on the console app."""

    def show(
        request: Request,
        identity: Identity,
        *,
        values: Mapping[str, str],
        status: int = 200,
        errors: Mapping[str, FieldError] | None = None,
        problem: FieldError | None = None,
        result: GeneratedImages | None = None,
        images: list[ShownImage] | None = None,
    ) -> Response:
        return page(
            request,
            "generate.html",
            identity,
            status=status,
            values={name: values.get(name, "") for name in FIELDS},
            sizes=allowed_sizes(services),
            queue={"running": services.admission.running, "waiting": services.admission.waiting},
            demo=services.engine.info.demo,
            errors=errors or {},
            problem=problem,
            result=result,
            images=images or [],
            labels={code: translate(negotiate(request), text) for code, text in LABELS.items()},
        )

    @app.get("/generate", dependencies=[requires(Permission.IMAGES_GENERATE)], include_in_schema=False)
    async def generate_form(request: Request, identity: CurrentIdentity) -> Response:
        width, height = services.images.default_size
        return show(request, identity, values={"size": f"{width}x{height}", "n": "1"})

    @app.post("/generate", dependencies=[requires(Permission.IMAGES_GENERATE)], include_in_schema=False)
    async def generate_page(request: Request, identity: CurrentIdentity) -> Response:
        fields = await form(request)
        values = {name: fields.get(name, "") for name in FIELDS}
        ticket = ticket_of(fields.get("ticket"))
        token = TICKET.set(ticket_key(identity, ticket) if ticket is not None else None)
        try:
            result = await run_generation(request, services, identity, image_request(form_request(fields)))
        except ZguardError as error:
            record = request_record(request.scope)
            if record is not None:
                record.set_outcome("failed" if error.status >= 500 else "denied", error.code)
            field, shown = refusal_of(negotiate(request), error)
            errors = {field: shown} if field is not None else {}
            response = show(
                request, identity, values=values, status=error.status, errors=errors, problem=None if field else shown
            )
            if isinstance(error, ServiceUnavailable | TooManyRequests):
                response.headers["Retry-After"] = str(error.retry_after)
            response.headers.update(error.headers)  # RateLimit-*, as the API answers them
            return response
        finally:
            TICKET.reset(token)
        if result is None:
            return Response(status_code=499)  # the browser left: nothing to show, nothing kept
        record = request_record(request.scope)
        images = await shown_images(result, record.images if record is not None else ())
        return show(request, identity, values=values, result=result, images=images)

    @app.get(QUEUE_PATH, dependencies=[requires(Permission.IMAGES_GENERATE)])
    async def generate_queue_json(request: Request, identity: CurrentIdentity) -> JSONResponse:
        """The generation queue: `running` and `waiting` jobs and `limit` (how many may wait).
        With `?ticket=` (the 16-32 hex characters the Generate form posted), also `position` of
        that job of the caller's own session: `{"state": "waiting", "ahead": n}`, `{"state":
        "running", "ahead": 0}`, or null when it is not (or no longer, or not yet) queued."""
        admission = services.admission
        body: dict[str, Any] = {
            "running": admission.running,
            "waiting": admission.waiting,
            "limit": admission.max_queue,
        }
        raw = request.query_params.get("ticket")
        if raw is not None:
            ticket = ticket_of(raw)
            if ticket is None:
                raise InvalidValue("ticket: 16 to 32 hexadecimal characters", param="ticket")
            found = admission.position(ticket_key(identity, ticket))
            body["position"] = None if found is None else {"state": found[0], "ahead": found[1]}
        return JSONResponse(body)

    @app.post(
        API_PATH,
        response_model=ImageGenerationResponse,
        responses=error_responses(AUTHENTICATED, SESSION, CHANGE, GENERATION_ERRORS),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {}}}},
        summary="Create images from a prompt (the body and answer of POST /v1/images/generations)",
        dependencies=[requires(Permission.IMAGES_GENERATE)],
    )
    async def generate_json(request: Request, identity: CurrentIdentity) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        req = image_request(parse_json_object(await request.body()))
        result = await run_generation(request, services, identity, req)
        if result is None:
            return Response(status_code=499)
        return Response(image_response_json(result), media_type="application/json")
