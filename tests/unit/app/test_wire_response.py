"""`image_response_json`: the generation answer built in one pass is, byte for byte, what the
schema's `model_dump_json()` writes (so docs/openapi.json and every client see no change)."""

from __future__ import annotations

import json
import os

import pytest

from zguard.app.wire import image_response, image_response_json
from zguard.services.images import GeneratedImages


def result(blobs: list[bytes], *, model: str = "z-image-turbo", request_id: str = "ab" * 16) -> GeneratedImages:
    return GeneratedImages(
        created=1_780_000_000,
        blobs=blobs,
        output_format="png",
        size="64x64",
        request_id=request_id,
        seed=2**63 - 17,
        model=model,
    )


@pytest.mark.parametrize(
    "blobs",
    [[b""], [b"\x89PNG"], [os.urandom(1), os.urandom(2), os.urandom(3)], [os.urandom(300_000)], []],
    ids=["empty", "short", "three", "large", "none"],
)
def test_the_same_bytes_as_the_schema(blobs: list[bytes]) -> None:
    expected = image_response(result(blobs)).model_dump_json().encode()
    assert image_response_json(result(blobs)) == expected


@pytest.mark.parametrize(
    "model", ['quote " and backslash \\', '"b64_json":""', "非 ASCII 模型", "\u2028 line separator"]
)
def test_text_that_looks_like_a_slot_or_needs_escaping(model: str) -> None:
    blobs = [b"one", b"two"]
    body = image_response_json(result(blobs, model=model, request_id=model))
    assert body == image_response(result(blobs, model=model, request_id=model)).model_dump_json().encode()
    parsed = json.loads(body)
    assert parsed["zguard"]["model"] == model
    assert [d["b64_json"] for d in parsed["data"]] == ["b25l", "dHdv"]
