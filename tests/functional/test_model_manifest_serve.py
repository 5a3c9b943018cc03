"""`zguard serve` with the pinned model: refuses a model that does not match its manifest (over a
real process), and shows the manifest digest in `/v1/models` and in every generation's audit event."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.common.audit import audit_trail, sqlite_url
from tests.common.factories import api_client, build_test_runtime, make_settings
from tests.common.servers import ZguardProcess
from zguard.engine.pipeline import DiffusersEngine
from zguard.integrity.manifest import MANIFEST_FILE
from zguard.serve.lifecycle import EXIT_MODEL_FAILED
from zguard.services.readiness import ModelState

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def manifest_digest(model_dir: Path) -> str:
    digest: str = json.loads((model_dir / MANIFEST_FILE).read_text())["digest"]
    return digest


def test_serve_refuses_a_changed_file_naming_it_and_the_fix(tmp_path: Path, demo_model_dir: Path) -> None:
    model = Path(shutil.copytree(demo_model_dir, tmp_path / "model"))
    data = bytearray((model / WEIGHTS).read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    (model / WEIGHTS).write_bytes(bytes(data))
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_MODEL__PATH": str(model)}) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(120) == EXIT_MODEL_FAILED
        log = proc.log()
    assert f"changed: {WEIGHTS}: SHA-256" in log
    assert "re-pin with `zguard model pin DIR`" in log
    assert "Traceback" not in log


def test_serve_refuses_an_unpinned_model_unless_told(tmp_path: Path, demo_model_dir: Path) -> None:
    model = Path(shutil.copytree(demo_model_dir, tmp_path / "model"))
    (model / MANIFEST_FILE).unlink()
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_MODEL__PATH": str(model)}) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(120) == EXIT_MODEL_FAILED
        assert "manifest_missing" in proc.log()
        assert "zguard model pin DIR" in proc.log()


def test_serve_shows_the_digest_in_v1_models(tmp_path: Path, demo_model_dir: Path) -> None:
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_MODEL__PATH": str(demo_model_dir)}) as proc:
        proc.wait_ready()
        models = httpx.get(f"{proc.api}/v1/models", timeout=10).json()
    assert models["data"][0]["manifest"] == manifest_digest(demo_model_dir)
    assert "every file matched manifest " + manifest_digest(demo_model_dir) in proc.log()


@pytest.mark.anyio
async def test_a_generation_audit_event_carries_the_digest(
    tmp_path: Path, demo_model_dir: Path, demo_engine: DiffusersEngine
) -> None:
    assert demo_engine.info.manifest == manifest_digest(demo_model_dir)
    settings = make_settings(tmp_path / "state", generation={"min_side": 16})
    with audit_trail(sqlite_url(tmp_path), tmp_path / "keys") as trail:
        runtime = build_test_runtime(settings, demo_engine, audit=trail)
        runtime.services.readiness.set(ModelState.READY)
        try:
            async with api_client(settings, runtime) as api:
                resp = await api.post(
                    "/v1/images/generations", json={"prompt": "a ledger", "size": "64x64", "num_inference_steps": 1}
                )
                listed = (await api.get("/v1/models")).json()
        finally:
            runtime.worker.stop(timeout=10)
        assert resp.status_code == 200, resp.text
        events = [json.loads(e.body) for e in trail.store.iter_events()]
    generation = [e for e in events if e["type"].startswith("generation.")]
    assert [e["type"] for e in generation] == ["generation.accepted", "generation.completed"]
    assert {e["manifest"] for e in generation} == {manifest_digest(demo_model_dir)}
    assert listed["data"][0]["manifest"] == manifest_digest(demo_model_dir)
