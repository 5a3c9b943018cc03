"""Provenance end to end: an image generated through the API, re-compressed and halved, is traced
by `zguard trace` to its audit record; its metadata label verifies; every trace is recorded."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.common.audit import audit_trail, sqlite_url
from tests.common.factories import api_client, build_test_runtime, console_client, make_settings, post_generation
from zguard.audit.prompts import PromptCapture
from zguard.audit.trail import AuditTrail
from zguard.cli.main import main
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.labels import NAMESPACE
from zguard.provenance.marking import ProvenanceMarker
from zguard.serve.wiring import Runtime
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio
PROMPT = "a quiet harbour at dawn, fishing boats, soft light"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def trail(state: Path) -> Iterator[AuditTrail]:
    with audit_trail(sqlite_url(state), state / "keys") as t:
        yield t


@pytest.fixture
def config(tmp_path: Path, state: Path) -> Path:
    path = tmp_path / "zguard.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(state), "integrity": {"allow_root": True}}))
    return path


def _runtime(state: Path, engine: DiffusersEngine, trail: AuditTrail) -> tuple[Any, Runtime]:
    settings = make_settings(state, generation={"min_side": 16})
    runtime = build_test_runtime(
        settings,
        engine,
        audit=trail,
        prompts=PromptCapture("none"),
        provenance=ProvenanceMarker.from_settings(settings),
    )
    runtime.services.readiness.set(ModelState.READY)
    return settings, runtime


async def _generate(state: Path, engine: DiffusersEngine, trail: AuditTrail, **extra: Any) -> tuple[str, bytes]:
    # 1024² is Turbo's own size. At 512² the mark survives "JPEG 75 then halved" in only ~94% of
    # (key, id) draws on this image (bench: 91.5% of natural images), which made these tests flaky;
    # at 1024² it survived 240 of 240 draws. The 512² gap is issue 7's open work, measured in bench/.
    settings, runtime = _runtime(state, engine, trail)
    request = {"prompt": PROMPT, "size": "1024x1024", "num_inference_steps": 2, "seed": 11, **extra}
    resp = await post_generation(settings, runtime, request)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-request-id"], base64.b64decode(resp.json()["data"][0]["b64_json"])


def _attacked(blob: bytes) -> bytes:
    """Re-encoded as JPEG quality 75, then halved (kept as PNG)."""
    image = Image.open(io.BytesIO(blob)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_trace_finds_the_request_after_jpeg_and_halving(
    *,
    tmp_path: Path,
    state: Path,
    config: Path,
    demo_engine: DiffusersEngine,
    trail: AuditTrail,
    capsys: pytest.CaptureFixture[str],
) -> None:
    request_id, blob = await _generate(state, demo_engine, trail)
    suspect = tmp_path / "found-on-a-share.png"
    suspect.write_bytes(_attacked(blob))

    assert main(["trace", str(suspect), "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["found"] is True
    generation = result["generation"]
    assert generation["request_id"] == request_id
    assert generation["principal"] == "local"
    assert generation["listener"] == "api"
    assert generation["model"] == "z-image-turbo"
    assert result["scale"][0] == pytest.approx(0.5, abs=0.01)
    stored = [json.loads(e.body) for e in trail.store.iter_events()]
    completed = next(e for e in stored if e["type"] == "generation.completed")
    assert completed["images"][0]["watermark_id"] == result["watermark_id"]
    traced = [e for e in stored if e["type"] == "provenance.traced"]
    assert [t["detail"]["traced_request_id"] for t in traced] == [request_id]

    assert main(["trace", str(suspect), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert f"request: {request_id}" in printed
    assert "listener: api" in printed


async def test_an_unmarked_image_is_not_traced_and_the_attempt_is_recorded(
    tmp_path: Path, state: Path, config: Path, trail: AuditTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    ProvenanceMarker.from_settings(make_settings(state))  # the key exists: a server ran
    plain = tmp_path / "plain.png"
    Image.new("RGB", (300, 200), (90, 140, 200)).save(plain)
    assert main(["trace", str(plain), "--config", str(config)]) == 1
    assert "no zguard watermark found" in capsys.readouterr().out
    traced = [json.loads(e.body) for e in trail.store.iter_events() if e.type == "provenance.traced"]
    assert len(traced) == 1
    assert traced[0]["outcome"] == "failed"
    assert traced[0]["detail"]["found"] is False


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_the_label_verifies_and_fails_once_pixels_change(
    *,
    tmp_path: Path,
    state: Path,
    config: Path,
    demo_engine: DiffusersEngine,
    trail: AuditTrail,
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    request_id, blob = await _generate(state, demo_engine, trail, output_format=fmt, size="128x128")
    assert NAMESPACE.encode() in blob
    path = tmp_path / f"image.{fmt}"
    path.write_bytes(blob)
    assert main(["provenance", "verify", str(path), "--config", str(config), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["valid"] is True
    assert checked["label"]["ProduceID"] == request_id
    assert checked["label"]["Label"] == "1"
    assert checked["label"]["ContentProducer"] == "zguard"

    image = Image.open(io.BytesIO(blob))
    edited = image.convert("RGB")
    edited.putpixel((5, 5), (0, 0, 0))
    edited_path = tmp_path / f"edited.{fmt}"
    edited.save(edited_path, format="PNG", pnginfo=_same_xmp(image))
    assert main(["provenance", "verify", str(edited_path), "--config", str(config)]) == 1
    assert "does not match" in capsys.readouterr().out


def _same_xmp(image: Image.Image) -> Any:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    raw = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    info.add_itxt("XML:com.adobe.xmp", raw.decode() if isinstance(raw, bytes) else raw)
    return info


async def test_api_trace_takes_raw_or_base64_uploads_and_records_the_trace(
    state: Path, demo_engine: DiffusersEngine, trail: AuditTrail
) -> None:
    from tests.functional.test_auth import bearer  # the suite's helpers
    from zguard.security.tokens import new_token, token_digest
    from zguard.serve.wiring import build_auth
    from zguard.store.principals import PrincipalStore

    request_id, blob = await _generate(state, demo_engine, trail)
    suspect = _attacked(blob)
    settings = make_settings(state, api_auth={"enabled": True}, generation={"min_side": 16})
    principals, key, tokens = PrincipalStore(trail.store.engine), b"t" * 32, {}
    for name, role in (("auditor1", "auditor"), ("gen1", "generator")):
        principals.create_principal(name, "service", roles=[role])
        token = new_token()
        principals.add_token(name, token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
        tokens[name] = bearer(token.plaintext)
    runtime = build_test_runtime(
        settings,
        demo_engine,
        build_auth(settings, principals, key, audit=trail),
        audit=trail,
        provenance=ProvenanceMarker.from_settings(settings),
    )
    auditor, path, png = tokens["auditor1"], "/v1/provenance/trace", {"content-type": "image/png"}
    plain = _png_of(Image.new("RGB", (200, 200), (9, 9, 9)))
    try:
        async with api_client(settings, runtime) as api:
            denied = await api.post(path, content=suspect, headers={**png, **tokens["gen1"]})
            raw = await api.post(path, content=suspect, headers={**png, **auditor})
            encoded = await api.post(path, json={"image": base64.b64encode(suspect).decode()}, headers=auditor)
            unmarked = await api.post(path, content=plain, headers={**png, **auditor})
            junk = await api.post(path, content=b"not an image", headers={**png, **auditor})
            text = await api.post(path, content=b"x", headers={"content-type": "text/plain", **auditor})
        # auditors sit on the management network: the console serves the same route
        async with console_client(settings, runtime) as console:
            on_console = await console.post(path, content=suspect, headers={**png, **auditor})
            refused_on_console = await console.post(path, content=suspect, headers={**png, **tokens["gen1"]})
            events_on_console = await console.get("/v1/audit/events?type=provenance.traced", headers=auditor)
    finally:
        runtime.worker.stop(timeout=10)
    assert on_console.status_code == 200, on_console.text
    assert on_console.json()["generation"]["request_id"] == request_id
    assert refused_on_console.status_code == 403
    assert events_on_console.status_code == 200, events_on_console.text
    assert {e["http"]["path"] for e in events_on_console.json()["data"]} == {path}
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    for resp in (raw, encoded):
        assert resp.status_code == 200, resp.text
        assert resp.json()["found"] is True
        assert resp.json()["generation"]["request_id"] == request_id
    assert unmarked.status_code == 200
    assert unmarked.json()["found"] is False
    assert junk.status_code == 400
    assert junk.json()["error"]["param"] == "image"
    assert text.status_code == 415
    traced = [json.loads(e.body) for e in trail.store.iter_events() if e.type == "provenance.traced"]
    assert [t["outcome"] for t in traced] == ["done", "done", "failed", "done"]
    assert traced[0]["detail"]["traced_request_id"] == request_id
    assert traced[0]["principal"] == "auditor1"
    assert traced[0]["http"]["path"] == path


def _png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _saved(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(_saved(image, "JPEG", quality=quality))).convert("RGB")


def _scaled(image: Image.Image, fx: float, fy: float | None = None) -> Image.Image:
    fy = fx if fy is None else fy
    return image.resize((round(image.width * fx), round(image.height * fy)), Image.Resampling.LANCZOS)


_T = Image.Transpose
RESHARES: dict[str, Any] = {  # issue 17's families, one of each, as files a leaker would pass on
    "upscale-2x.png": lambda im: _saved(_scaled(im, 2.0)),
    "upscale-2.5x.jpg": lambda im: _saved(_scaled(im, 2.5), "JPEG", quality=90),  # read at half size
    "phone-1290-wide.jpg": lambda im: _saved(_scaled(im, 1290 / 1024), "JPEG", quality=80),
    "thumbnail-0.35x.png": lambda im: _saved(_scaled(im, 0.35)),
    "mirrored.png": lambda im: _saved(im.transpose(_T.FLIP_LEFT_RIGHT)),
    "rot90.png": lambda im: _saved(im.transpose(_T.ROTATE_90)),
    "rot180.png": lambda im: _saved(im.transpose(_T.ROTATE_180)),
    "rot270.png": lambda im: _saved(im.transpose(_T.ROTATE_270)),
    "rotated-2deg.jpg": lambda im: _saved(im.rotate(2, Image.Resampling.BICUBIC), "JPEG", quality=80),
    "rotated-5deg.png": lambda im: _saved(im.rotate(-5, Image.Resampling.BICUBIC)),
    "stretched-1024x768.png": lambda im: _saved(im.resize((1024, 768), Image.Resampling.LANCZOS)),
    "stretched-768x1024.png": lambda im: _saved(im.resize((768, 1024), Image.Resampling.LANCZOS)),
    "crop-then-zoom.png": lambda im: _saved(
        im.crop((200, 90, 924, 814)).resize((1024, 1024), Image.Resampling.LANCZOS)
    ),
    "reshared-twice.jpg": lambda im: _saved(_jpeg(_scaled(_jpeg(_scaled(im, 0.7), 75), 0.7), 75), "JPEG", quality=75),
}


async def test_trace_finds_the_request_after_each_way_of_re_sharing(
    *,
    tmp_path: Path,
    state: Path,
    config: Path,
    demo_engine: DiffusersEngine,
    trail: AuditTrail,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Screenshots at a larger size, thumbnails, flips, quarter turns, small rotations, stretches,
    crop-then-zoom and chains of re-shares (issue 17): `zguard trace` names the request each time."""
    request_id, blob = await _generate(state, demo_engine, trail)
    image = Image.open(io.BytesIO(blob)).convert("RGB")
    missed = []
    for name, reshare in RESHARES.items():
        suspect = tmp_path / name
        suspect.write_bytes(reshare(image))
        code = main(["trace", str(suspect), "--config", str(config), "--json"])
        result = json.loads(capsys.readouterr().out)
        if code != 0 or result["generation"]["request_id"] != request_id:
            missed.append(name)
    assert missed == []
    traced = [json.loads(e.body) for e in trail.store.iter_events() if e.type == "provenance.traced"]
    assert [t["detail"]["traced_request_id"] for t in traced] == [request_id] * len(RESHARES)
