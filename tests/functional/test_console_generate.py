"""Issue 18: the console's Generate page and `POST /console/api/generate`.

Through the real console app on a real state database, with the real demo pipeline at 16x16 and
one step (the deployment allows 16-pixel sides). The page and its JSON twin run the API route's
sequence: the same audit events, the same refusals, the same answer shape.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import make_settings, ready_runtime
from tests.functional.test_auth import GENERATE, Deploy, backend, bearer, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import (  # noqa: F401
    PAGE,
    SAME_ORIGIN,
    Console,
    console,
    csrf_of,
    signed_in,
)
from zguard.app.console import create_console_app
from zguard.app.console.web import translate
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio

FORM = {"prompt": "a red bicycle", "size": "16x16", "num_inference_steps": "1", "seed": "1", "n": "1"}
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
FORM_POST = {**PAGE, "content-type": "application/x-www-form-urlencoded"}
PNG = b"\x89PNG\r\n\x1a\n"
MARKUP = '<script>alert(1)</script>"><img src=x>'
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x&gt;"
BANNED = "海报：机密文件"  # builtin:guide and builtin:bank, category confidential


@pytest.fixture
def site(console: Console) -> Console:
    return console


def completed(site: Console) -> list[Any]:
    return site.events("generation.completed")


async def test_the_form_shows_the_fields_the_allowed_sizes_and_the_queue(site: Console) -> None:
    async with site.client() as client:
        await signed_in(client)
        page = await client.get("/generate", headers=PAGE)
    assert page.status_code == 200
    for name in ("prompt", "negative_prompt", "size", "num_inference_steps", "seed", "n"):
        assert f'for="{name}"' in page.text
        assert f'name="{name}"' in page.text
    sizes = re.findall(r'<option value="(\d+x\d+)"', page.text)
    # The demo model's default first, selected; from generation.min_side (16 here) up to what
    # the demo pipeline draws (1024: its ModelInfo), below generation.max_side.
    assert sizes == [
        "256x256",
        "16x16",
        "32x32",
        "64x64",
        "128x128",
        "512x512",
        "768x768",
        "1024x768",
        "768x1024",
        "1024x1024",
    ]
    assert '<option value="256x256" selected>' in page.text
    assert 'id="queue"' in page.text
    assert "Queue: 0 generating, 0 waiting." in page.text
    assert 'name="csrf_token"' in page.text
    assert '<a href="/generate" aria-current="page">' in page.text


async def test_sizes_the_service_refuses_are_not_offered(deploy: Deploy, tmp_path: Path) -> None:
    limits = {"min_side": 64, "max_side": 512}
    d = deploy(make_settings(tmp_path / "small", api_auth={"enabled": True}, generation=limits))
    token = d.principal("bot", "generator")
    async with d.console() as client:
        page = await client.get("/generate", headers={**PAGE, **bearer(token)})
        posted = await client.post(
            "/generate", data={**FORM, "size": "768x768"}, headers={**FORM_POST, **bearer(token)}
        )
    assert page.status_code == 200, page.text
    sizes = re.findall(r'<option value="(\d+x\d+)"', page.text)
    assert sizes == ["256x256", "64x64", "128x128", "512x512"]  # the default first
    assert posted.status_code == 400  # a size not offered is refused by the service, not the list
    assert 'id="size-error" role="alert"' in posted.text


async def test_a_generator_generates_and_sees_the_images_inline_with_their_watermark_ids(site: Console) -> None:
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post("/generate", data={**FORM, "n": "2", "csrf_token": csrf}, headers=SAME_ORIGIN)
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    blobs = [base64.b64decode(b) for b in IMAGE.findall(page.text)]
    assert len(blobs) == 2
    assert all(blob.startswith(PNG) for blob in blobs)
    [event] = completed(site)
    assert event.principal == "dana"
    assert event.listener == "console"
    assert event.outcome == "done"
    assert event.generation["size"] == "16x16"
    assert event.generation["steps"] == 1
    assert event.generation["n"] == 2
    audited = [image["watermark_id"] for image in event.images]
    shown = re.findall(r'<code class="watermark">([0-9a-f]{16})</code>', page.text)
    assert shown == audited
    assert len(set(shown)) == 2
    for watermark_id in shown:
        assert f'download="zguard-{watermark_id}.png"' in page.text
    downloads = re.findall(r'<a download="[^"]+" href="data:image/png;base64,([A-Za-z0-9+/=]+)"', page.text)
    assert [base64.b64decode(d) for d in downloads] == blobs
    # What was delivered is what the audit trail hashed.
    assert [hashlib.sha256(b).hexdigest() for b in blobs] == [image["sha256"] for image in event.images]
    [accepted] = site.events("generation.accepted")
    assert accepted.listener == "console"
    assert "a red bicycle" not in repr(accepted)  # the prompt itself is never recorded
    assert 'class="label"' in page.text  # the GB 45438 implicit label, read back from the file
    assert "AI-generated" in page.text
    assert event.request_id in page.text
    assert 'value="a red bicycle"' not in page.text  # the textarea keeps it as its content
    assert ">a red bicycle</textarea>" in page.text


async def test_the_json_twin_answers_as_the_image_api_does(site: Console) -> None:
    token = site.d.issue("batch")
    async with site.client() as client, site.d.api() as api:
        resp = await client.post("/console/api/generate", json=GENERATE, headers=bearer(token))
        reference = await api.post("/v1/images/generations", json=GENERATE, headers=bearer(token))
        wrong_type = await client.post("/console/api/generate", content=b"{}", headers=bearer(token))
        unknown = await client.post("/console/api/generate", json={**GENERATE, "colour": 1}, headers=bearer(token))
        csrf = await signed_in(client)
        session = await client.post(
            "/console/api/generate", json=GENERATE, headers={"x-csrf-token": csrf, "origin": "http://console.test"}
        )
        no_csrf = await client.post("/console/api/generate", json=GENERATE, headers={"origin": "http://console.test"})
    assert resp.status_code == 200, resp.text
    body, expected = resp.json(), reference.json()
    assert set(body) == set(expected) == {"created", "data", "output_format", "size", "zguard"}
    assert set(body["zguard"]) == set(expected["zguard"])
    assert body["size"] == "16x16"
    assert body["zguard"]["seed"] == 1
    assert base64.b64decode(body["data"][0]["b64_json"]).startswith(PNG)
    assert wrong_type.status_code == 415
    assert wrong_type.json()["error"]["code"] == "unsupported_media_type"
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_field"
    assert session.status_code == 200
    assert no_csrf.status_code == 403
    assert no_csrf.json()["error"]["code"] == "csrf_failed"
    listeners = sorted(e.listener for e in completed(site))
    assert listeners == ["api", "console", "console"]


@pytest.mark.parametrize("role", ["viewer", "admin", "auditor"])
async def test_roles_without_images_generate_get_403_and_nothing_runs(site: Console, role: str) -> None:
    site.d.principal("rita", role, kind="user", password="correct horse battery staple")
    async with site.client() as client:
        csrf = await signed_in(client, "rita")
        home = await client.get("/", headers=PAGE)
        page = await client.get("/generate", headers=PAGE)
        post = await client.post("/generate", data={**FORM, "csrf_token": csrf}, headers=SAME_ORIGIN)
        api = await client.post(
            "/console/api/generate", json=GENERATE, headers={"x-csrf-token": csrf, "origin": "http://console.test"}
        )
    assert 'href="/generate"' not in home.text
    for resp in (page, post):
        assert resp.status_code == 403
        assert "permission_denied" in resp.text
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "permission_denied"
    assert site.events("generation.accepted") == []
    assert completed(site) == []


async def test_the_form_without_the_sessions_csrf_token_is_refused(site: Console) -> None:
    async with site.client() as client:
        await signed_in(client)
        missing = await client.post("/generate", data=FORM, headers=SAME_ORIGIN)
        wrong = await client.post("/generate", data={**FORM, "csrf_token": "0" * 64}, headers=SAME_ORIGIN)
        csrf = csrf_of(await client.get("/generate", headers=PAGE))
        foreign = await client.post(
            "/generate", data={**FORM, "csrf_token": csrf}, headers={**SAME_ORIGIN, "origin": "https://evil.example"}
        )
    for resp in (missing, wrong, foreign):
        assert resp.status_code == 403
        assert "csrf_failed" in resp.text
    assert site.events("generation.accepted") == []


@pytest.mark.parametrize(
    ("language", "field"),
    [("en", "prompt"), ("zh-CN", "prompt"), ("en", "negative_prompt")],
)
async def test_a_policy_refusal_names_the_category_never_the_term(site: Console, language: str, field: str) -> None:
    data = {**FORM, "prompt": BANNED} if field == "prompt" else {**FORM, "negative_prompt": BANNED}
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post(
            "/generate", data={**data, "csrf_token": csrf}, headers={**SAME_ORIGIN, "accept-language": language}
        )
    assert page.status_code == 400
    assert f'<html lang="{language}">' in page.text
    category = translate(language, "confidential material")
    message = translate(language, "The prompt policy refused this text: it looks like {category}.")
    alert = re.search(rf'<p id="{field}-error" role="alert" class="error">([^<]*)<', page.text)
    assert alert, page.text
    assert alert.group(1).strip() == message.format(category=category)
    assert f'id="{field}" name="{field}"' in page.text
    assert 'aria-invalid="true"' in page.text
    assert "机密文件" not in page.text.replace(f">{BANNED}</textarea>", "")  # only the user's own text, re-shown
    assert "confidential'" not in page.text  # not the service's English message either
    assert IMAGE.search(page.text) is None
    [event] = [e for e in site.d.audit.events if e.code == "prompt_rejected"]
    assert event.listener == "console"
    assert event.policy["category"] == "confidential"
    assert event.policy["term_id"]
    assert site.events("generation.accepted") == []


async def test_personal_data_is_refused_by_its_detector(site: Console) -> None:
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post(
            "/generate",
            data={**FORM, "prompt": "card 4111 1111 1111 1111 on a desk", "csrf_token": csrf},
            headers=SAME_ORIGIN,
        )
    assert page.status_code == 400
    assert "it looks like a bank card number." in page.text


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"size": "17x17"}, "size", "invalid_size"),
        ({"size": "4096x4096"}, "size", "invalid_size"),
        ({"prompt": "x" * 5000}, "prompt", "invalid_prompt"),
        ({"prompt": "   "}, "prompt", "invalid_prompt"),
        ({"n": "99"}, "n", "invalid_value"),
        ({"n": "two"}, "n", "invalid_type"),
        ({"num_inference_steps": "0"}, "num_inference_steps", "invalid_value"),
        ({"seed": "-1"}, "seed", "invalid_type"),
        ({"seed": "9" * 30}, "seed", "invalid_type"),
    ],
)
async def test_a_bad_field_re_shows_the_form_with_the_message_next_to_it(
    site: Console, change: dict[str, str], field: str, code: str
) -> None:
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post("/generate", data={**FORM, **change, "csrf_token": csrf}, headers=SAME_ORIGIN)
    assert page.status_code == 400, page.text
    assert f'id="{field}-error" role="alert"' in page.text
    assert page.text.count('role="alert"') == 1
    assert f'aria-describedby="{field}-error"' in page.text
    assert IMAGE.search(page.text) is None
    [refusal] = [e for e in site.d.audit.events if e.outcome == "denied" and e.listener == "console" and e.code]
    assert refusal.code == code
    assert site.events("generation.accepted") == []


async def test_field_messages_are_in_chinese_for_a_chinese_reader(site: Console) -> None:
    async with site.client() as client:
        csrf = await signed_in(client)
        zh = {**SAME_ORIGIN, "accept-language": "zh-CN,zh;q=0.9"}
        page = await client.post("/generate", data={**FORM, "size": "17x17", "csrf_token": csrf}, headers=zh)
        form = await client.get("/generate", headers={**PAGE, "accept-language": "zh-CN"})
    assert page.status_code == 400
    assert translate("zh-CN", "Choose one of the listed sizes.") in page.text
    assert translate("zh-CN", "Choose one of the listed sizes.") != "Choose one of the listed sizes."
    assert '<html lang="zh-CN">' in form.text
    assert translate("zh-CN", "Generate images") in form.text
    assert (
        translate("zh-CN", "Queue: {running} generating, {waiting} waiting.").format(running=0, waiting=0) in form.text
    )


async def test_a_generation_in_chinese_shows_its_captions_in_chinese(site: Console) -> None:
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post(
            "/generate", data={**FORM, "csrf_token": csrf}, headers={**SAME_ORIGIN, "accept-language": "zh-CN"}
        )
    assert page.status_code == 200
    assert translate("zh-CN", "Watermark id") in page.text
    assert translate("zh-CN", "AI-generated") in page.text
    assert translate("zh-CN", "Download image {number}").format(number=1) in page.text
    assert IMAGE.search(page.text)


async def test_markup_typed_into_the_form_is_shown_escaped(site: Console) -> None:
    async with site.client() as client:
        csrf = await signed_in(client)
        refused = await client.post(
            "/generate",
            data={
                **FORM,
                "prompt": MARKUP,
                "negative_prompt": MARKUP,
                "size": MARKUP,
                "seed": MARKUP,
                "num_inference_steps": MARKUP,
                "n": MARKUP,
                "csrf_token": csrf,
            },
            headers=SAME_ORIGIN,
        )
        served = await client.post(
            "/generate",
            data={**FORM, "prompt": MARKUP, "negative_prompt": MARKUP, "csrf_token": csrf},
            headers=SAME_ORIGIN,
        )
    assert refused.status_code == 400
    assert served.status_code == 200
    for page in (refused, served):
        assert "<script>alert(1)" not in page.text
        assert "<img src=x>" not in page.text
        assert ESCAPED in page.text
    assert served.text.count(ESCAPED) == 2


async def test_a_model_not_ready_re_shows_the_form_with_the_reason(site: Console) -> None:
    site.d.runtime.services.readiness.set(ModelState.LOADING)
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post("/generate", data={**FORM, "csrf_token": csrf}, headers=SAME_ORIGIN)
        zh = await client.post(
            "/generate", data={**FORM, "csrf_token": csrf}, headers={**SAME_ORIGIN, "accept-language": "zh-CN"}
        )
    assert page.status_code == 503
    assert int(page.headers["retry-after"]) >= 1
    assert '<p id="problem" role="alert" class="error">The model is still loading. Try again shortly.</p>' in page.text
    assert ">a red bicycle</textarea>" in page.text
    assert translate("zh-CN", "The model is still loading. Try again shortly.") in zh.text
    assert [e.code for e in completed(site)] == []
    failed = site.events("generation.failed")
    assert [e.code for e in failed] == ["model_not_ready", "model_not_ready"]


async def test_a_browser_that_leaves_cancels_its_generation(site: Console) -> None:
    """As on the API: the job is cancelled, nothing is answered (499) and the audit says why."""
    engine = GatedEngine()
    runtime = ready_runtime(site.d.settings, engine, site.d.auth, audit=site.d.audit)
    token = site.d.principal("bot", "generator")
    app = create_console_app(site.d.settings, runtime.services)
    body = urlencode(FORM).encode()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = {**FORM_POST, **bearer(token), "host": "console.test", "content-length": str(len(body))}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/generate",
        "raw_path": b"/generate",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("console.test", 80),
    }
    try:
        request = asyncio.ensure_future(app(scope, receive, send))
        for _ in range(2000):
            if engine.started:
                break
            await asyncio.sleep(0.005)
        assert len(engine.started) == 1
        gone.set()
        await asyncio.wait_for(request, 10)
        for _ in range(2000):
            if engine.cancelled:
                break
            await asyncio.sleep(0.005)
    finally:
        engine.release()
        assert runtime.worker.stop(timeout=10)
    assert sent[0]["status"] == 499
    assert engine.cancelled == engine.started
    [failed] = site.events("generation.failed")
    assert (failed.code, failed.listener, failed.principal) == ("client_disconnected", "console", "bot")


async def test_a_prompt_of_the_longest_allowed_length_in_chinese_fits_the_form(site: Console) -> None:
    longest = site.d.settings.generation.max_prompt_chars
    async with site.client() as client:
        csrf = await signed_in(client)
        page = await client.post(
            "/generate", data={**FORM, "prompt": "机" * longest, "csrf_token": csrf}, headers=SAME_ORIGIN
        )
    assert page.status_code in (200, 400)  # generated, or refused by the policy: either way the page
    assert '<html lang="en">' in page.text
