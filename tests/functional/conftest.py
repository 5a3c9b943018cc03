"""Fixtures of the functional tests: the real demo pipeline loaded once, settings, a runtime and an
in-process client of the API app over it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.common.factories import api_client, make_settings, ready_runtime
from zguard.config import Settings
from zguard.engine.pipeline import DiffusersEngine
from zguard.serve.wiring import Runtime


@pytest.fixture(scope="session")
def demo_engine(demo_model_dir: Path) -> DiffusersEngine:
    """The real ZImagePipeline on the demo weights, loaded once (CPU, float32)."""
    engine = DiffusersEngine(demo_model_dir, model_id="z-image-turbo", device="cpu", demo=True)
    engine.load()
    return engine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "state", generation={"min_side": 16})


@pytest.fixture
def runtime(settings: Settings, demo_engine: DiffusersEngine) -> Iterator[Runtime]:
    rt = ready_runtime(settings, demo_engine)
    yield rt
    rt.worker.stop(timeout=10)


@pytest.fixture
async def client(settings: Settings, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the API app over the real demo pipeline."""
    async with api_client(settings, runtime) as c:
        yield c
