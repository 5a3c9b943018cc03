"""The prompt policy through the API: a blocked prompt gets 400 `prompt_rejected` in the exact
error shape and never reaches the engine; a flagged one is served with its verdict on the plan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, make_settings, ready_runtime
from zguard.audit.memory import MemoryAuditSink
from zguard.errors import PromptRejected
from zguard.policy.verdict import term_id
from zguard.serve.wiring import Runtime
from zguard.services.images import ImageRequest

pytestmark = pytest.mark.anyio

GENERATIONS = "/v1/images/generations"


@asynccontextmanager
async def serving(tmp_path: Path, **policy: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, GatedEngine]]:
    engine = GatedEngine()
    engine.release()
    settings = make_settings(tmp_path / "state", generation={"min_side": 16}, policy=policy)
    runtime = ready_runtime(settings, engine)
    try:
        async with api_client(settings, runtime) as client:
            yield client, runtime, engine
    finally:
        assert runtime.worker.stop(timeout=5)


@pytest.mark.parametrize(
    ("body", "param", "category"),
    [
        ({"prompt": "海报标题：機\u200b密 文件"}, "prompt", "confidential"),
        ({"prompt": "a calm lake", "negative_prompt": "ke hu ming dan"}, "negative_prompt", "customer-data"),
        ({"prompt": "card 4111 1111 1111 1111 on a desk"}, "prompt", "pii"),
        ({"prompt": "名片：电话 139.1075.2846"}, "prompt", "pii"),  # issue 16: dots between digit groups
        ({"prompt": "手机 一三九一零七五二八四六"}, "prompt", "pii"),  # Chinese numerals
        ({"prompt": "a calm lake", "negative_prompt": "CustomerListExport.xlsx"}, "negative_prompt", "customer-data"),
        ({"prompt": "#TopSecretProject 海报"}, "prompt", "confidential"),
    ],
)
async def test_blocked_prompt_gets_400_prompt_rejected_and_no_gpu_work(
    tmp_path: Path, body: dict[str, str], param: str, category: str
) -> None:
    async with serving(tmp_path) as (client, _, engine):
        resp = await client.post(GENERATIONS, json={**body, "size": "64x64"})
    assert resp.status_code == 400
    error = resp.json()
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["code"] == "prompt_rejected"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert f"category '{category}'" in error["error"]["message"]
    for leaked in ("機", "密", "ke hu", "4111", "机密", "客户名单"):
        assert leaked not in error["error"]["message"]
    assert resp.headers["x-request-id"]
    assert engine.started == []


@pytest.mark.parametrize(
    "prompt",
    [
        "安全提示海报：在取款机密码键盘上输入密码时请用手遮挡",
        "草原上风力发电机密布的风景",
        "promo code, name and logo on a banner",
    ],
)
async def test_word_boundary_phrases_are_served(tmp_path: Path, prompt: str) -> None:
    """Issue 16: a banned term across a word boundary (取款机 + 密码, 发电机 + 密布) or a phrase cut
    by sentence punctuation is no match: the prompt reaches the engine as written."""
    async with serving(tmp_path) as (client, _, engine):
        resp = await client.post(GENERATIONS, json={"prompt": prompt, "size": "64x64"})
    assert resp.status_code == 200, resp.text
    assert [job.prompt for job in engine.started] == [prompt]


async def test_reveal_terms_names_the_list_entry(tmp_path: Path) -> None:
    async with serving(tmp_path, reveal_terms=True) as (client, _, engine):
        resp = await client.post(GENERATIONS, json={"prompt": "機 密", "size": "64x64"})
    assert (
        resp.json()["error"]["message"]
        == "'prompt' was rejected by the prompt policy: category 'confidential', term '机密'"
    )
    assert engine.started == []


async def test_the_callers_roles_decide_flag_or_block(tmp_path: Path) -> None:
    # With authentication off the caller is the local principal, roles generator and viewer.
    async with serving(tmp_path, per_role={"generator": {"terms": "flag"}}) as (client, _, engine):
        resp = await client.post(GENERATIONS, json={"prompt": "机密", "size": "64x64"})
    assert resp.status_code == 200, resp.text
    assert [job.prompt for job in engine.started] == ["机密"]


async def test_plan_carries_the_verdict_for_the_audit_trail(tmp_path: Path) -> None:
    async with serving(tmp_path, per_role={"approver": {"terms": "flag"}}) as (_, runtime, _engine):
        images = runtime.services.images
        flagged = images.plan(ImageRequest(prompt="内部 代号", size="64x64"), roles={"approver"})
        assert flagged.verdict is not None
        assert flagged.verdict.audit_fields() == {
            "verdict": "flagged",
            "category": "code-name",
            "detector": "terms",
            "term_id": flagged.verdict.findings[0].term_id,
        }
        clean = images.plan(ImageRequest(prompt="a lighthouse", size="64x64"))
        assert clean.verdict is not None
        assert clean.verdict.audit_fields() == {
            "verdict": "allowed",
            "category": None,
            "detector": None,
            "term_id": None,
        }
        with pytest.raises(PromptRejected) as info:
            images.plan(ImageRequest(prompt="内部 代号", size="64x64"), roles={"generator"})
        assert info.value.policy["category"] == "code-name"


async def test_invalid_requests_fail_validation_before_the_policy(tmp_path: Path) -> None:
    async with serving(tmp_path) as (client, _, engine):
        resp = await client.post(GENERATIONS, json={"prompt": "机密", "size": "65x64"})
    assert resp.json()["error"]["code"] == "invalid_size"
    assert engine.started == []


async def test_the_refusal_is_audited_with_the_verdict_and_never_the_prompt(tmp_path: Path) -> None:
    engine = GatedEngine()
    audit = MemoryAuditSink()
    settings = make_settings(tmp_path / "state", generation={"min_side": 16})
    runtime = ready_runtime(settings, engine, audit=audit)
    prompt = "poster: 客 戶 名單 canary-5e1d"
    try:
        async with api_client(settings, runtime) as client:
            resp = await client.post(GENERATIONS, json={"prompt": prompt, "size": "64x64"})
    finally:
        assert runtime.worker.stop(timeout=5)
    assert resp.json()["error"]["code"] == "prompt_rejected"
    (event,) = [e for e in audit.events if e.code == "prompt_rejected"]
    assert event.policy == {
        "verdict": "blocked",
        "category": "customer-data",
        "detector": "terms",
        "term_id": term_id("客户名单"),
    }
    assert "canary-5e1d" not in repr(audit.events)
    assert "客 戶" not in repr(audit.events)
    assert engine.started == []
