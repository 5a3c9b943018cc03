"""From bytes on the wire to typed requests and back: strict JSON, the wire schemas' checks, and
each failure mapped to one of our error codes (never FastAPI's 422 `detail` shape)."""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import ValidationError

from zguard.app.schemas import ImageData, ImageGenerationRequest, ImageGenerationResponse, ZguardMeta
from zguard.errors import InvalidJSON, InvalidType, InvalidValue, MissingField, RequestError, UnknownField
from zguard.services.images import GeneratedImages, ImageRequest


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body strictly: an object, UTF-8, no duplicate keys, no NaN/Infinity."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise InvalidJSON(f"the body repeats the key {key!r}", param=key)
            obj[key] = value
        return obj

    def no_constants(name: str) -> Any:
        raise InvalidJSON(f"the body contains {name}, which is not JSON")

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidJSON("the body is not valid UTF-8 JSON") from None
    except ValueError:  # an integer literal longer than Python's int conversion limit (4300 digits)
        raise InvalidJSON("the body contains a number with too many digits") from None
    if not isinstance(data, dict):
        raise InvalidJSON("the body must be a JSON object")
    return data


def request_error(error: ValidationError) -> RequestError:
    """The first problem of a wire-schema check, as one of our request errors."""
    first = error.errors()[0]
    loc = first["loc"]
    param = str(loc[0])[:64] if loc else None  # field names are client text: echo a bounded part
    kind = first["type"]
    if kind == "string_unicode":  # an unpaired surrogate where pydantic needs real text
        if param is None:  # in a field name: no field's name has one
            return UnknownField("a field name contains an unpaired surrogate", param=None)
        return InvalidValue(f"'{param}' must not contain unpaired surrogates", param=param)
    if kind == "missing":
        return MissingField(f"'{param}' is required", param=param)
    if kind == "extra_forbidden":
        return UnknownField(f"unknown field '{param}'; see docs/openapi.json for the accepted fields", param=param)
    if kind == "literal_error":
        return InvalidValue(f"'{param}' {first['msg'][0].lower()}{first['msg'][1:]}", param=param)
    return InvalidType(f"'{param}' has the wrong type: {first['msg'][0].lower()}{first['msg'][1:]}", param=param)


def image_request(data: dict[str, Any]) -> ImageRequest:
    """A parsed body checked against the wire schema (types, unknown fields); raise a RequestError."""
    try:
        req = ImageGenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise request_error(exc) from None
    return ImageRequest(
        prompt=req.prompt,
        model=req.model,
        n=req.n,
        size=req.size,
        response_format=req.response_format,
        output_format=req.output_format,
        output_compression=req.output_compression,
        user=req.user,
        seed=req.seed,
        num_inference_steps=req.num_inference_steps,
        negative_prompt=req.negative_prompt,
        background=req.background,
    )


def image_response(result: GeneratedImages) -> ImageGenerationResponse:
    return ImageGenerationResponse(
        created=result.created,
        data=[ImageData(b64_json=base64.b64encode(blob).decode("ascii")) for blob in result.blobs],
        output_format=result.output_format,
        size=result.size,
        zguard=ZguardMeta(request_id=result.request_id, seed=result.seed, model=result.model),
    )


_EMPTY_IMAGE = b'"b64_json":""'


def image_response_json(result: GeneratedImages) -> bytes:
    """`image_response(result).model_dump_json()` as UTF-8 bytes, byte for byte, in one pass over
    the images: the small fields are dumped by the schema around empty `b64_json` strings, and each
    image's base64 (which never needs JSON escaping) goes into its slot. The megabytes of base64
    are then never decoded to a str, validated, scanned for escapes and encoded back."""
    skeleton = ImageGenerationResponse(
        created=result.created,
        data=[ImageData(b64_json="") for _ in result.blobs],
        output_format=result.output_format,
        size=result.size,
        zguard=ZguardMeta(request_id=result.request_id, seed=result.seed, model=result.model),
    ).model_dump_json()
    # An escaped string value can hold no bare '"', so the n slots are the n images, in order.
    pieces = skeleton.encode().split(_EMPTY_IMAGE)
    out = [pieces[0]]
    for blob, rest in zip(result.blobs, pieces[1:], strict=True):
        out += [b'"b64_json":"', base64.b64encode(blob), b'"', rest]
    return b"".join(out)
