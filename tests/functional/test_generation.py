"""Generation through the API app with the real demo pipeline."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from zguard.provenance.watermark import MAX_DELTA

pytestmark = pytest.mark.anyio


async def test_generates_png_of_requested_size(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/images/generations", json={"prompt": "a red bicycle", "size": "96x64", "seed": 7})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"created", "data", "output_format", "size", "zguard"}
    assert body["size"] == "96x64"
    assert body["output_format"] == "png"
    assert body["zguard"]["seed"] == 7
    assert body["zguard"]["model"] == "z-image-turbo"
    assert body["zguard"]["request_id"] == resp.headers["x-request-id"]
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.format == "PNG"
    assert image.size == (96, 64)


async def test_same_seed_gives_the_same_picture_each_uniquely_marked(client: httpx.AsyncClient) -> None:
    req = {"prompt": "a lighthouse", "size": "64x64", "seed": 1234}
    first = (await client.post("/v1/images/generations", json=req)).json()["data"][0]
    second = (await client.post("/v1/images/generations", json=req)).json()["data"][0]
    other = (await client.post("/v1/images/generations", json={**req, "seed": 1235})).json()["data"][0]
    assert first != second  # each delivery carries its own watermark id
    assert np.abs(_pixels(first) - _pixels(second)).max() <= 2 * MAX_DELTA
    assert np.abs(_pixels(first) - _pixels(other)).mean() > 10


async def test_n_images_each_match_their_single_seed(client: httpx.AsyncClient) -> None:
    batch = (
        await client.post("/v1/images/generations", json={"prompt": "p", "size": "64x64", "seed": 50, "n": 2})
    ).json()
    assert len(batch["data"]) == 2
    again = (
        await client.post("/v1/images/generations", json={"prompt": "p", "size": "64x64", "seed": 50, "n": 2})
    ).json()
    for item, repeat in zip(batch["data"], again["data"], strict=True):
        assert np.abs(_pixels(item) - _pixels(repeat)).max() <= 2 * MAX_DELTA
    single = (await client.post("/v1/images/generations", json={"prompt": "p", "size": "64x64", "seed": 51})).json()
    # Batched arithmetic may round differently from a single image: equal up to a level or two,
    # beside the two watermarks.
    assert _pixels(batch["data"][1]).shape == _pixels(single["data"][0]).shape
    assert np.abs(_pixels(batch["data"][1]) - _pixels(single["data"][0])).max() <= 2 + 2 * MAX_DELTA
    assert np.abs(_pixels(batch["data"][0]) - _pixels(batch["data"][1])).mean() > 10


def _pixels(item: dict[str, str]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))), dtype=np.int16)


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_formats(client: httpx.AsyncClient, fmt: str, pil_format: str) -> None:
    resp = await client.post(
        "/v1/images/generations",
        json={"prompt": "x", "size": "64x64", "output_format": fmt, "output_compression": 50},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["output_format"] == fmt
    assert Image.open(io.BytesIO(base64.b64decode(resp.json()["data"][0]["b64_json"]))).format == pil_format


async def test_default_size_on_demo_model_is_256(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/images/generations", json={"prompt": "x", "num_inference_steps": 1})
    assert resp.status_code == 200
    assert resp.json()["size"] == "256x256"


async def test_openai_fields_that_do_not_apply_are_accepted(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/images/generations",
        json={
            "prompt": "x",
            "size": "64x64",
            "model": "z-image-turbo",
            "quality": "hd",
            "style": "vivid",
            "moderation": "low",
            "background": "opaque",
            "user": "designer-17",
            "response_format": "b64_json",
        },
    )
    assert resp.status_code == 200, resp.text


async def test_random_seed_is_reported_and_reproduces(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})).json()
    seed = first["zguard"]["seed"]
    again = (await client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "seed": seed})).json()
    assert np.abs(_pixels(again["data"][0]) - _pixels(first["data"][0])).max() <= 2 * MAX_DELTA
