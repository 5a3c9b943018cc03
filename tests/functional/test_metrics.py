"""`/metrics` on the console: Prometheus text, behind `system:read`, nothing secret in labels."""

from __future__ import annotations

import re

import pytest

from tests.functional.test_auth import GENERATE, Deploy, backend, database, deploy  # noqa: F401 - fixtures
from tests.functional.test_errors import GENERATIONS

pytestmark = pytest.mark.anyio

SAMPLE = re.compile(r'^(zguard_[a-z_]+)(?:\{((?:[a-z]+="[^"]*",?)*)\})? (\S+)$')
SAFE_LABEL_VALUE = re.compile(r"^[a-z0-9_.+]*$|^\+Inf$")
SECRET_PROMPT = "a lighthouse painted by qzxwvy at dawn"


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, checking every line is a comment or a well-formed sample."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        for pair in (labels or "").split(","):
            if pair:
                assert SAFE_LABEL_VALUE.match(pair.split("=", 1)[1].strip('"')), line
        found[f"{name}{{{labels}}}" if labels else name] = float(value)
    return found


async def test_metrics_count_requests_and_generations_and_leak_nothing(deploy: Deploy) -> None:  # noqa: F811
    d = deploy()
    generator = d.principal("svc-generator", "generator")
    viewer = d.principal("prometheus-scraper", "viewer")
    async with d.api() as api, d.console() as console:
        prompt = {**GENERATE, "prompt": SECRET_PROMPT}
        assert (await api.post(GENERATIONS, json=prompt, headers={"authorization": f"Bearer {generator}"})).status_code == 200  # fmt: skip
        assert (await api.get("/v1/models", headers={"authorization": "Bearer zg_not-a-real-token"})).status_code == 401
        assert (await api.get("/nowhere")).status_code in (401, 404)
        assert d.runtime.policy is not None
        d.runtime.policy.reload()
        resp = await console.get("/metrics", headers={"authorization": f"Bearer {viewer}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = resp.text
    values = samples(text)
    assert values['zguard_requests_total{listener="api",status="200",code="ok"}'] == 1
    assert values['zguard_requests_total{listener="api",status="401",code="invalid_api_key"}'] == 1
    assert sum(v for k, v in values.items() if k.startswith('zguard_requests_total{listener="api"')) == 3
    assert values["zguard_generation_duration_seconds_count"] == 1
    assert values['zguard_generation_duration_seconds_bucket{le="+Inf"}'] == 1
    assert values["zguard_generation_duration_seconds_sum"] > 0
    assert values["zguard_queue_waiting"] == 0
    assert values["zguard_queue_running"] == 0
    assert values["zguard_engine_busy_seconds_total"] > 0  # the one generation ran
    assert values["zguard_engine_idle_while_pending_seconds_total"] >= 0
    assert values["zguard_model_verified"] == int(d.runtime.services.engine.info.manifest is not None)
    assert values["zguard_model_ready"] == 1
    assert values['zguard_policy_reloads_total{result="ok"}'] == 1
    for secret in (SECRET_PROMPT, "qzxwvy", "svc-generator", "prometheus-scraper", generator, viewer, viewer[:10]):
        assert secret not in text


async def test_metrics_need_system_read(deploy: Deploy) -> None:  # noqa: F811
    d = deploy()
    generator = d.principal("svc", "generator")
    async with d.console() as console:
        assert (await console.get("/metrics")).status_code == 401
        assert (await console.get("/metrics", headers={"authorization": f"Bearer {generator}"})).status_code == 403
