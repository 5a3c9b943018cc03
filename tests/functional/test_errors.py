"""Every error code the API can answer with, in its exact OpenAI shape.

Each refusal must be `{"error": {"message", "type", "param", "code"}}` and nothing else, with the
right status, a request id, the security headers, and a message written for the client (no
exception text). Validation cases run against the real demo pipeline; `GatedEngine` appears only
where a test is about admission, timeouts or whether a request reached the engine at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, console_client, make_settings, ready_runtime
from tests.common.polling import wait_until_async
from zguard.config import Settings
from zguard.engine import GenerationJob, ImageEngine, ModelInfo
from zguard.serve.wiring import Runtime
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio

GENERATIONS = "/v1/images/generations"
JSON_TYPE = {"content-type": "application/json"}
MAX_BODY = 8192
LIMITS: dict[str, Any] = {
    "min_side": 32,
    "max_side": 512,
    "max_pixels": 512 * 256,
    "max_n": 2,
    "max_steps": 4,
    "default_steps": 2,
    "max_prompt_chars": 100,
    "default_size": "64x64",
}
REQUEST_ERROR = "invalid_request_error"
SERVER_ERROR = "server_error"
# Text that would mean an exception, a traceback or a library's own message reached the client.
LEAKS = (
    "Traceback",
    'File "',
    ".py",
    "Error:",
    "Error(",
    "Exception",
    "<class",
    "object at 0x",
    "pydantic",
    "errors.pydantic.dev",
    "Expecting value",
    "line 1 column",
    "(char ",
    "For further information",
    "secret internal detail",
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Overrides conftest's: small limits, so every bound is reachable with a small body."""
    return make_settings(tmp_path / "state", generation=LIMITS, api={"max_body_bytes": MAX_BODY})


def assert_error(
    resp: httpx.Response,
    status: int,
    code: str,
    *,
    param: str | None = None,
    error_type: str | None = None,
    console: bool = False,
) -> str:
    """Assert the exact error shape and headers; return the message for further checks."""
    expected_type = error_type or (SERVER_ERROR if status >= 500 else REQUEST_ERROR)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert isinstance(body, dict)
    assert list(body) == ["error"]
    assert isinstance(body["error"], dict)
    message = body["error"].get("message")
    assert isinstance(message, str)
    assert message.strip()
    assert body == {"error": {"message": message, "type": expected_type, "param": param, "code": code}}
    for leak in LEAKS:
        assert leak not in message, f"{leak!r} leaked into {message!r}"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["content-security-policy"].startswith("default-src 'none'")
    if console:
        assert "img-src 'self'" in resp.headers["content-security-policy"]
    if status not in (429, 503):  # only these tell the client when to come back
        assert "retry-after" not in resp.headers
    return message


def assert_retry_after(resp: httpx.Response) -> int:
    value = resp.headers["retry-after"]
    assert re.fullmatch(r"[1-9][0-9]*", value), value
    return int(value)


async def post_raw(client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return await client.post(GENERATIONS, content=body, headers=JSON_TYPE if headers is None else headers)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, engine: ImageEngine, **generation: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """An API client over `engine` under LIMITS (plus `generation` overrides)."""
    settings = make_settings(
        tmp_path / "state",
        generation={**LIMITS, **generation},
        api={"max_body_bytes": MAX_BODY},
        # These tests fill the shared queue from the one local principal; its in-flight cap is tested elsewhere.
        rate_limits={"max_concurrent_per_principal": 100},
    )
    runtime = ready_runtime(settings, engine)
    try:
        async with api_client(settings, runtime) as client:
            yield client, runtime
    finally:
        if isinstance(engine, GatedEngine):
            engine.release()
        assert runtime.worker.stop(timeout=5)


class FailingEngine:
    """An engine whose generate() fails the way a bug in a library would."""

    def __init__(self) -> None:
        self.info = ModelInfo(id="z-image-turbo", demo=True, device="cpu", dtype="float32")
        self.calls = 0

    def load(self) -> None:
        pass

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Any]:
        self.calls += 1
        raise RuntimeError("secret internal detail")


# --- invalid_json ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"prompt=x", id="form-encoded"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b'{"prompt": "x",}', id="trailing-comma"),
        pytest.param(b"{'prompt': 'x'}", id="single-quotes"),
        pytest.param(b'{"prompt": "x"} {}', id="two-documents"),
        pytest.param(b'{"prompt": "x"', id="unterminated-object"),
        pytest.param(b'[{"prompt": "x"}]', id="array"),
        pytest.param(b'"a prompt"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b"true", id="bool"),
        pytest.param(b'{"prompt": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b'{"prompt": "caf\xe9"}', id="latin1"),
        pytest.param('{"prompt": "x"}'.encode("utf-16"), id="utf16"),
        pytest.param(b'\xef\xbb\xbf{"prompt": "x"}', id="utf8-bom"),
        pytest.param(b'{"prompt": "x", "seed": NaN}', id="nan"),
        pytest.param(b'{"prompt": "x", "seed": Infinity}', id="infinity"),
        pytest.param(b'{"prompt": "x", "seed": -Infinity}', id="minus-infinity"),
        pytest.param(b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", id="int-beyond-conversion-limit"),
        pytest.param(b"[" * 3000 + b"]" * 3000, id="deeply-nested-array"),
        pytest.param(b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}", id="deeply-nested-value"),
    ],
)
async def test_invalid_json(client: httpx.AsyncClient, body: bytes) -> None:
    assert len(body) <= MAX_BODY
    assert_error(await post_raw(client, body), 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"prompt": "a", "prompt": "b"}', "prompt"),
        (b'{"prompt": "a", "n": 1, "n": 1}', "n"),
        (b'{"prompt": "a", "quality": {"k": 1, "k": 2}}', "k"),
    ],
)
async def test_invalid_json_duplicate_keys_name_the_key(client: httpx.AsyncClient, body: bytes, param: str) -> None:
    message = assert_error(await post_raw(client, body), 400, "invalid_json", param=param)
    assert param in message


async def test_invalid_json_duplicate_key_with_unpaired_surrogate(client: httpx.AsyncClient) -> None:
    resp = await post_raw(client, b'{"prompt": "a", "\\ud800": 1, "\\ud800": 2}')
    assert_error(resp, 400, "invalid_json", param="\ufffd")


# --- unsupported_media_type ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/jsonx",
        "application/json-patch+json",
        "application/x-json",
        "json",
    ],
)
async def test_unsupported_media_type(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    resp = await post_raw(client, json.dumps({"prompt": "x", "size": "64x64"}).encode(), headers)
    if content_type is None:
        assert "content-type" not in resp.request.headers
    assert_error(resp, 415, "unsupported_media_type")


# --- request_too_large -----------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid request of exactly `size` bytes (JSON whitespace pads it)."""
    body = json.dumps({"prompt": "x", "size": "64x64", "num_inference_steps": 1}).encode()
    return body + b" " * (size - len(body))


async def test_request_too_large_by_content_length(client: httpx.AsyncClient) -> None:
    resp = await post_raw(client, padded(MAX_BODY + 1))
    assert resp.request.headers["content-length"] == str(MAX_BODY + 1)
    message = assert_error(resp, 413, "request_too_large")
    assert str(MAX_BODY) in message


async def test_request_too_large_by_content_length_wins_over_media_type(client: httpx.AsyncClient) -> None:
    resp = await post_raw(client, b"x" * (MAX_BODY * 4), {"content-type": "text/plain"})
    assert_error(resp, 413, "request_too_large")


async def _chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_request_too_large_streamed_without_content_length(client: httpx.AsyncClient) -> None:
    resp = await client.post(GENERATIONS, content=_chunks(padded(MAX_BODY + 1)), headers=JSON_TYPE)
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert_error(resp, 413, "request_too_large")


async def test_request_too_large_streamed_far_over_the_limit(client: httpx.AsyncClient) -> None:
    resp = await client.post(GENERATIONS, content=_chunks(b"[" * (MAX_BODY * 8), 4096), headers=JSON_TYPE)
    assert_error(resp, 413, "request_too_large")


# --- missing_required_field / unknown_field --------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"n": 1}, {"size": "64x64", "seed": 3}])
async def test_missing_prompt(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    message = assert_error(await client.post(GENERATIONS, json=body), 400, "missing_required_field", param="prompt")
    assert "prompt" in message


@pytest.mark.parametrize("field", ["foo", "Prompt", "image", "mask", "n ", "", "\x00", "名前", "x" * 64])
async def test_unknown_field_is_named_in_param(client: httpx.AsyncClient, field: str) -> None:
    resp = await client.post(GENERATIONS, json={"prompt": "x", field: 1})
    message = assert_error(resp, 400, "unknown_field", param=field)
    assert f"'{field}'" in message


async def test_long_unknown_field_name_is_echoed_only_in_part(client: httpx.AsyncClient) -> None:
    field = "y" * 64 + "z" * 5000
    resp = await client.post(GENERATIONS, json={"prompt": "x", field: 1})
    message = assert_error(resp, 400, "unknown_field", param="y" * 64)
    assert "z" not in message


async def test_unknown_field_with_unpaired_surrogate_in_its_name(client: httpx.AsyncClient) -> None:
    resp = await post_raw(client, b'{"prompt": "x", "\\udc80": 1}')
    assert_error(resp, 400, "unknown_field")


# --- invalid_type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", "1"),
        ("n", True),
        ("n", False),
        ("n", 1.5),
        ("n", 2.000001),
        ("n", None),
        ("n", [1]),
        ("n", {"value": 1}),
        ("prompt", 5),
        ("prompt", None),
        ("prompt", True),
        ("prompt", ["a cat"]),
        ("prompt", {"text": "a cat"}),
        ("seed", "7"),
        ("seed", 7.25),
        ("seed", True),
        ("size", 64),
        ("size", [64, 64]),
        ("num_inference_steps", "2"),
        ("output_compression", 50.5),
        ("user", 5),
        ("model", 5),
        ("negative_prompt", 1),
        ("quality", 1),
        ("style", ["vivid"]),
    ],
)
async def test_invalid_type(client: httpx.AsyncClient, field: str, value: Any) -> None:
    body = {"prompt": "x", "size": "64x64", field: value}
    message = assert_error(await client.post(GENERATIONS, json=body), 400, "invalid_type", param=field)
    assert f"'{field}'" in message


async def test_a_number_with_no_fraction_is_an_integer(client: httpx.AsyncClient) -> None:
    """JSON Schema's `integer` includes 1.0 (the published document says `integer`): same image as 1."""
    whole = await client.post(GENERATIONS, json={"prompt": "x", "size": "64x64", "n": 1.0, "seed": 7.0})
    assert whole.status_code == 200, whole.text
    assert whole.json()["zguard"]["seed"] == 7
    assert len(whole.json()["data"]) == 1


# --- invalid_value ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("n", -1),
        ("n", 3),
        ("n", 10**30),
        ("num_inference_steps", 0),
        ("num_inference_steps", 5),
        ("num_inference_steps", -(2**70)),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", 10**100),
        ("output_compression", 101),
        ("output_compression", -1),
        ("output_format", "gif"),
        ("output_format", "PNG"),
        ("output_format", ""),
        ("output_format", 5),
        ("response_format", "base64"),
        ("background", "transparent"),
        ("user", "u" * 257),
        ("user", "a\x00b"),
        ("user", "a\x1bb"),
    ],
)
async def test_invalid_value(client: httpx.AsyncClient, field: str, value: Any) -> None:
    body = {"prompt": "x", "size": "64x64", field: value}
    message = assert_error(await client.post(GENERATIONS, json=body), 400, "invalid_value", param=field)
    assert field in message
    assert len(message) < 300


async def test_invalid_value_messages_state_the_configured_bounds(client: httpx.AsyncClient) -> None:
    n = assert_error(await client.post(GENERATIONS, json={"prompt": "x", "n": 3}), 400, "invalid_value", param="n")
    assert "between 1 and 2" in n
    steps_body = {"prompt": "x", "num_inference_steps": 5}
    steps = assert_error(
        await client.post(GENERATIONS, json=steps_body), 400, "invalid_value", param="num_inference_steps"
    )
    assert "between 1 and 4" in steps


async def test_invalid_value_unpaired_surrogate_in_a_literal_field(client: httpx.AsyncClient) -> None:
    resp = await post_raw(client, b'{"prompt": "x", "output_format": "png\\udfff"}')
    assert_error(resp, 400, "invalid_value", param="output_format")


# --- invalid_prompt --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("", id="empty"),
        pytest.param(" ", id="space"),
        pytest.param(" \n\t\r ", id="whitespace-only"),
        pytest.param("\u3000", id="ideographic-space-only"),
        pytest.param("x" * 101, id="over-max-chars"),
        pytest.param("😀" * 101, id="over-max-chars-astral"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("bell\x07", id="bel"),
        pytest.param("\x1b[31mred", id="escape"),
        pytest.param("a\x7f", id="del"),
        pytest.param("a\x85", id="c1-next-line"),
        pytest.param("a\x0bb", id="vertical-tab"),
    ],
)
async def test_invalid_prompt(client: httpx.AsyncClient, prompt: str) -> None:
    resp = await client.post(GENERATIONS, json={"prompt": prompt, "size": "64x64"})
    message = assert_error(resp, 400, "invalid_prompt", param="prompt")
    assert prompt not in message or not prompt.strip()


@pytest.mark.parametrize("raw", [b"\\ud800", b"x\\udfff", b"\\udc00\\ud800", b"a\\ud83d"])
async def test_invalid_prompt_unpaired_surrogate_in_raw_json(client: httpx.AsyncClient, raw: bytes) -> None:
    resp = await post_raw(client, b'{"prompt": "' + raw + b'", "size": "64x64"}')
    assert_error(resp, 400, "invalid_prompt", param="prompt")


@pytest.mark.parametrize("negative", ["x" * 101, "a\x00", "\x07", "\ud800"])
async def test_invalid_negative_prompt(client: httpx.AsyncClient, negative: str) -> None:
    raw = json.dumps({"prompt": "x", "negative_prompt": negative, "size": "64x64"}).encode()
    assert_error(await post_raw(client, raw), 400, "invalid_prompt", param="negative_prompt")


# --- invalid_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "why"),
    [
        ("100x100", "multiples of 16"),
        ("64x72", "multiples of 16"),
        ("16x64", "between 32 and 512"),
        ("64x16", "between 32 and 512"),
        ("1024x64", "between 32 and 512"),
        ("64x528", "between 32 and 512"),
        ("512x512", "131072 pixels"),
        ("512x272", "131072 pixels"),
        ("abc", "WxH"),
        ("0x0", "WxH"),
        ("0x64", "WxH"),
        ("64", "WxH"),
        ("64x", "WxH"),
        ("x64", "WxH"),
        ("64*64", "WxH"),
        ("-64x64", "WxH"),
        ("64x64x64", "WxH"),
        (" 64x64", "WxH"),
        ("64x64 ", "WxH"),
        ("64 x 64", "WxH"),
        ("064x64", "WxH"),
        ("", "WxH"),
        ("AUTO", "WxH"),
        ("1024x1024\n", "WxH"),
        ("999999x64", "WxH"),
    ],
)
async def test_invalid_size(client: httpx.AsyncClient, size: str, why: str) -> None:
    message = assert_error(
        await client.post(GENERATIONS, json={"prompt": "x", "size": size}), 400, "invalid_size", param="size"
    )
    assert why in message


# --- unsupported_response_format / model_not_found -------------------------------------------


async def test_unsupported_response_format_url(client: httpx.AsyncClient) -> None:
    resp = await client.post(GENERATIONS, json={"prompt": "x", "response_format": "url"})
    message = assert_error(resp, 400, "unsupported_response_format", param="response_format")
    assert "b64_json" in message


@pytest.mark.parametrize("model", ["dall-e-3", "gpt-image-1", "Z-Image-Turbo", "z-image-turbo ", "", "x" * 5000])
async def test_model_not_found(client: httpx.AsyncClient, model: str) -> None:
    resp = await client.post(GENERATIONS, json={"prompt": "x", "model": model})
    message = assert_error(resp, 400, "model_not_found", param="model")
    assert "z-image-turbo" in message
    assert len(message) < 300


async def test_model_not_found_with_unpaired_surrogate_in_the_name(client: httpx.AsyncClient) -> None:
    resp = await post_raw(client, b'{"prompt": "x", "model": "dall-e-\\ud800"}')
    message = assert_error(resp, 400, "model_not_found", param="model")
    assert "dall-e-\ufffd" in message


# --- not_found / method_not_allowed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/v1/images/generation"),
        ("POST", "/v1/images/edits"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/images"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/%ff"),
        ("GET", "/v1/models/../../etc/passwd"),
        ("DELETE", "/nope"),
    ],
)
async def test_not_found(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert_error(await client.request(method, path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", GENERATIONS),
        ("PUT", GENERATIONS),
        ("DELETE", GENERATIONS),
        ("PATCH", GENERATIONS),
        ("POST", "/v1/models"),
        ("POST", "/healthz"),
    ],
)
async def test_method_not_allowed(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert_error(await client.request(method, path), 405, "method_not_allowed")


async def test_each_response_has_its_own_request_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/nope")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


# --- the console -----------------------------------------------------------------------------


async def test_console_answers_404_in_the_same_shape_and_never_generates(tmp_path: Path) -> None:
    engine = GatedEngine()
    engine.release()
    settings = make_settings(tmp_path / "state", generation=LIMITS)
    runtime = ready_runtime(settings, engine)
    try:
        async with console_client(settings, runtime) as console:
            assert_error(await console.get("/nope"), 404, "not_found", console=True)
            assert_error(await console.get("/v1/models"), 404, "not_found", console=True)
            resp = await console.post(GENERATIONS, json={"prompt": "a cat", "size": "64x64"})
            assert_error(resp, 404, "not_found", console=True)
            assert (await console.get("/healthz")).status_code == 200
    finally:
        assert runtime.worker.stop(timeout=5)
    assert engine.started == []


# --- admission: server_busy, model_not_ready, generation_timeout -----------------------------


@pytest.mark.parametrize("max_queue", [0, 1])
async def test_server_busy_when_the_queue_is_full(tmp_path: Path, max_queue: int) -> None:
    engine = GatedEngine()
    async with serving(tmp_path, engine, max_queue=max_queue) as (client, runtime):
        body = {"prompt": "x", "size": "64x64"}
        held = [asyncio.create_task(client.post(GENERATIONS, json=body)) for _ in range(max_queue + 1)]
        await wait_until_async(
            lambda: engine.running.is_set() and runtime.admission.waiting == max_queue,
            timeout=10,
            interval=0.005,
            what=f"one generation running and {max_queue} waiting",
        )
        busy = await client.post(GENERATIONS, json={"prompt": "refused", "size": "64x64"})
        message = assert_error(busy, 503, "server_busy")
        assert "Retry-After" in message
        assert assert_retry_after(busy) >= 1
        engine.release()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * (max_queue + 1)
    assert len(engine.started) == max_queue + 1
    assert all(job.prompt == "x" for job in engine.started)


@pytest.mark.parametrize("state", [ModelState.LOADING, ModelState.WARMING_UP, ModelState.STOPPING])
async def test_model_not_ready(tmp_path: Path, state: ModelState) -> None:
    engine = GatedEngine()
    engine.release()
    async with serving(tmp_path, engine) as (client, runtime):
        runtime.services.readiness.set(state)
        resp = await client.post(GENERATIONS, json={"prompt": "x", "size": "64x64"})
        assert_error(resp, 503, "model_not_ready")
        assert assert_retry_after(resp) >= 1
        runtime.services.readiness.set(ModelState.READY)
        assert (await client.post(GENERATIONS, json={"prompt": "x", "size": "64x64"})).status_code == 200
    assert len(engine.started) == 1


async def test_generation_timeout_stops_the_engine_and_frees_the_slot(tmp_path: Path) -> None:
    engine = GatedEngine()
    async with serving(tmp_path, engine, timeout_s=0.3) as (client, _):
        resp = await client.post(GENERATIONS, json={"prompt": "too slow", "size": "64x64"})
        message = assert_error(resp, 504, "generation_timeout")
        assert "0.3 s" in message
        assert [job.prompt for job in engine.started] == ["too slow"]
        await wait_until_async(
            lambda: len(engine.cancelled) == 1,
            timeout=10,
            interval=0.005,
            what="the timed-out generation to be cancelled",
        )
        assert engine.cancelled == engine.started
        assert engine.finished == []
        engine.release()
        after = await client.post(GENERATIONS, json={"prompt": "next", "size": "64x64"})
        assert after.status_code == 200, after.text
    assert [job.prompt for job in engine.finished] == ["next"]


# --- internal_error --------------------------------------------------------------------------


async def test_internal_error_hides_the_cause_and_quotes_the_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FailingEngine()
    caplog.set_level(logging.ERROR, logger="zguard")
    async with serving(tmp_path, engine) as (client, _):
        resp = await client.post(GENERATIONS, json={"prompt": "x", "size": "64x64"})
        message = assert_error(resp, 500, "internal_error")
        assert "secret" not in resp.text
        assert "RuntimeError" not in resp.text
        assert resp.headers["x-request-id"] in message
        # The slot was given back: the next request fails the same way instead of hanging or 503.
        again = await asyncio.wait_for(client.post(GENERATIONS, json={"prompt": "x", "size": "64x64"}), 10)
        assert_error(again, 500, "internal_error")
        assert again.headers["x-request-id"] != resp.headers["x-request-id"]
    assert engine.calls == 2
    # ...while the operator's log has the detail, under the same request id.
    logged = [r for r in caplog.records if r.exc_info and "secret internal detail" in str(r.exc_info[1])]
    assert logged
    assert resp.headers["x-request-id"] in logged[0].getMessage()


# --- refused requests never reach the engine -------------------------------------------------


REFUSED: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("POST", b"{not json", JSON_TYPE, 400, "invalid_json"),
    ("POST", b'{"prompt": "a", "prompt": "b"}', JSON_TYPE, 400, "invalid_json"),
    ("POST", b'{"prompt": "x"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ("POST", padded(MAX_BODY + 1), JSON_TYPE, 413, "request_too_large"),
    ("POST", b'{"size": "64x64"}', JSON_TYPE, 400, "missing_required_field"),
    ("POST", b'{"prompt": "x", "foo": 1}', JSON_TYPE, 400, "unknown_field"),
    ("POST", b'{"prompt": "x", "n": "2"}', JSON_TYPE, 400, "invalid_type"),
    ("POST", b'{"prompt": "x", "n": 3}', JSON_TYPE, 400, "invalid_value"),
    ("POST", b'{"prompt": "x", "num_inference_steps": 5}', JSON_TYPE, 400, "invalid_value"),
    ("POST", b'{"prompt": "x", "seed": -1}', JSON_TYPE, 400, "invalid_value"),
    ("POST", b'{"prompt": "x", "background": "transparent"}', JSON_TYPE, 400, "invalid_value"),
    ("POST", b'{"prompt": "   "}', JSON_TYPE, 400, "invalid_prompt"),
    ("POST", b'{"prompt": "' + b"x" * 101 + b'"}', JSON_TYPE, 400, "invalid_prompt"),
    ("POST", b'{"prompt": "a\\u0000"}', JSON_TYPE, 400, "invalid_prompt"),
    ("POST", b'{"prompt": "\\ud800"}', JSON_TYPE, 400, "invalid_prompt"),
    ("POST", b'{"prompt": "x", "size": "512x272"}', JSON_TYPE, 400, "invalid_size"),
    ("POST", b'{"prompt": "x", "size": "16x64"}', JSON_TYPE, 400, "invalid_size"),
    ("POST", b'{"prompt": "x", "response_format": "url"}', JSON_TYPE, 400, "unsupported_response_format"),
    ("POST", b'{"prompt": "x", "model": "dall-e-3"}', JSON_TYPE, 400, "model_not_found"),
    ("GET", b"", {}, 405, "method_not_allowed"),
    ("PUT", b'{"prompt": "x"}', JSON_TYPE, 405, "method_not_allowed"),
]


async def test_refused_requests_never_reach_the_engine(tmp_path: Path) -> None:
    engine = GatedEngine()
    engine.release()
    async with serving(tmp_path, engine) as (client, runtime):
        for method, body, headers, status, code in REFUSED:
            resp = await client.request(method, GENERATIONS, content=body, headers=headers)
            assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), body[:80]
        streamed = await client.post(GENERATIONS, content=_chunks(padded(MAX_BODY + 1)), headers=JSON_TYPE)
        assert streamed.status_code == 413
        assert engine.started == []
        assert runtime.admission.running == 0
        # The same client and engine do generate once a request is acceptable.
        ok = await client.post(GENERATIONS, json={"prompt": "x", "size": "64x64"})
        assert ok.status_code == 200, ok.text
    assert len(engine.started) == 1


ACCEPTED_AT_THE_LIMITS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"prompt": "x" * 100}, {"prompt": "x" * 100}),
    ({"prompt": "😀" * 100}, {"prompt": "😀" * 100}),
    ({"prompt": "line one\nline two\tand a tab\r\n"}, {"prompt": "line one\nline two\tand a tab\r\n"}),
    ({"prompt": "x", "negative_prompt": ""}, {"negative_prompt": ""}),
    ({"prompt": "x", "n": 2}, {"n": 2}),
    ({"prompt": "x", "num_inference_steps": 4}, {"steps": 4}),
    ({"prompt": "x", "num_inference_steps": 1}, {"steps": 1}),
    ({"prompt": "x"}, {"steps": 2, "width": 64, "height": 64, "n": 1}),
    ({"prompt": "x", "size": "512x256"}, {"width": 512, "height": 256}),
    ({"prompt": "x", "size": "32x32"}, {"width": 32, "height": 32}),
    ({"prompt": "x", "size": "auto"}, {"width": 64, "height": 64}),
    ({"prompt": "x", "size": "48X32"}, {"width": 48, "height": 32}),
    ({"prompt": "x", "seed": 0}, {"seed": 0}),
    ({"prompt": "x", "seed": 2**63 - 17}, {"seed": 2**63 - 17}),
    ({"prompt": "x", "output_compression": 0, "output_format": "jpeg"}, {}),
    ({"prompt": "x", "output_compression": 100, "output_format": "webp"}, {}),
    ({"prompt": "x", "user": "u" * 256, "model": "z-image-turbo", "response_format": "b64_json"}, {}),
]


async def test_requests_at_the_limits_are_accepted(tmp_path: Path) -> None:
    """The other side of every bound above: so the refusals are the bounds, not a blanket no."""
    engine = GatedEngine()
    engine.release()
    async with serving(tmp_path, engine) as (client, _):
        for body, expected in ACCEPTED_AT_THE_LIMITS:
            resp = await client.post(GENERATIONS, json=body)
            assert resp.status_code == 200, (body, resp.text)
            job = engine.started[-1]
            assert {name: getattr(job, name) for name in expected} == expected
            assert len(resp.json()["data"]) == job.n
        for content_type in ("application/json; charset=utf-8", "Application/JSON", " application/json ;x=y"):
            resp = await post_raw(client, b'{"prompt": "x"}', {"content-type": content_type})
            assert resp.status_code == 200, (content_type, resp.text)
        assert (await post_raw(client, padded(MAX_BODY))).status_code == 200
        streamed = await client.post(GENERATIONS, content=_chunks(padded(MAX_BODY)), headers=JSON_TYPE)
        assert streamed.status_code == 200, streamed.text
    assert len(engine.started) == len(ACCEPTED_AT_THE_LIMITS) + 5


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", GENERATIONS, "POST"),
        ("TRACE", GENERATIONS, "POST"),
        ("TRACE", "/v1/models", "GET"),
        ("HEAD", "/v1/models", "GET"),
        ("POST", "/healthz", "GET"),
        ("TRACE", "/healthz", "GET"),
    ],
)
async def test_a_405_names_the_methods_the_path_allows(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    resp = await client.request(method, path)
    assert resp.status_code == 405
    assert resp.headers["allow"] == allow  # RFC 9110 §15.5.6: a 405 must list them
    if method != "HEAD":
        assert_error(resp, 405, "method_not_allowed")
        assert allow in resp.json()["error"]["message"]


async def test_a_405_on_the_console_lists_every_route_of_the_path(settings: Settings, runtime: Runtime) -> None:
    """FastAPI makes one route per method (the sign-in page and its form are two); Starlette's own
    405 names only the first that matched the path."""
    async with console_client(settings, runtime) as console:
        resp = await console.request("PUT", "/login")
        assert resp.status_code == 405
        assert resp.headers["allow"] == "GET, POST"
        resp = await console.request("TRACE", "/login")
        assert resp.headers["allow"] == "GET, POST"
