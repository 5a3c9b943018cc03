"""/readyz turns ready only after the model is loaded and warmed up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_runtime, console_client, make_settings, ready_runtime
from zguard.serve.lifecycle import load_and_warm_up
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio


class FailingEngine(GatedEngine):
    def load(self) -> None:
        raise OSError("weights unreadable")


async def test_not_ready_until_warm_up_ran(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    engine = GatedEngine()
    runtime = build_test_runtime(settings, engine)
    async with api_client(settings, runtime) as client:
        assert (await client.get("/healthz")).status_code == 200
        loading = await client.get("/readyz")
        assert (loading.status_code, loading.json()) == (503, {"status": "loading"})
        engine.release()
        assert await load_and_warm_up(runtime, settings) is True
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    runtime.worker.stop(timeout=5)
    assert len(engine.finished) == 1  # the warm-up generation itself
    assert engine.finished[0].steps == 1
    assert (engine.finished[0].width, engine.finished[0].height) == (256, 256)  # the demo default size


async def test_warm_up_can_be_skipped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model={"warmup": False})
    engine = GatedEngine()
    runtime = build_test_runtime(settings, engine)
    assert await load_and_warm_up(runtime, settings) is True
    runtime.worker.stop(timeout=5)
    assert engine.started == []
    assert runtime.services.readiness.state is ModelState.READY


async def test_failed_load_reports_failed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    runtime = build_test_runtime(settings, FailingEngine())
    async with api_client(settings, runtime) as client:
        assert await load_and_warm_up(runtime, settings) is False
        failed = await client.get("/readyz")
        refused = await client.post("/v1/images/generations", json={"prompt": "x"})
    runtime.worker.stop(timeout=5)
    assert (failed.status_code, failed.json()) == (503, {"status": "failed"})
    assert refused.json()["error"]["code"] == "model_not_ready"


@pytest.mark.parametrize(
    ("storage", "status"), [("redis://127.0.0.1:9/0", 503), ("memory://", 200), ("redis://127.0.0.1:6379/0", 200)]
)
async def test_readyz_is_503_while_the_rate_limit_storage_is_down(tmp_path: Path, storage: str, status: int) -> None:
    # with Redis down every permissioned request is 503, yet /readyz said ready
    settings = make_settings(tmp_path / "state", rate_limits={"storage": storage})
    runtime = ready_runtime(settings, GatedEngine())
    try:
        async with api_client(settings, runtime) as api, console_client(settings, runtime) as console:
            ready = await api.get("/readyz")
            detail = await console.get("/readyz/detail")
    finally:
        runtime.worker.stop(timeout=5)
    assert ready.status_code == status, ready.text
    assert detail.status_code == status, detail.text
    if status == 503:
        assert ready.json() == {"status": "unavailable", "model": "ready", "unavailable": ["rate_limits.storage"]}
        # the detail route needs a permission, so it is refused like every other (fail closed)
        assert detail.json()["error"]["code"] == "rate_limiter_unavailable"
    else:
        assert ready.json() == {"status": "ready"}
        assert detail.json()["unavailable"] == []
