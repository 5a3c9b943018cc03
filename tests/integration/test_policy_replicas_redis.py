"""Banned-term lists compared across replicas through the local Redis: digests published with a
TTL, drift reported on both sides, a reload announced and followed (or reported as drift).

Two `ReplicaStatus` instances on one key prefix are two replicas. Marked `integration`: skips when
Redis is unreachable, fails under CI=true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.common.factories import make_settings
from tests.common.redis_server import redis_key_prefix, redis_url
from zguard.audit.memory import MemoryAuditSink
from zguard.services.counters import CounterStorage
from zguard.services.prompt_policy import RELOAD_EVENT, PolicyHolder
from zguard.services.replicas import PEER_TRIGGER, ReplicaStatus

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

OPENED: list[CounterStorage] = []


@pytest.fixture(autouse=True)
async def _close_counters() -> AsyncIterator[None]:
    yield
    while OPENED:
        await OPENED.pop().aclose()


def holder(tmp_path: Path, name: str, text: str) -> tuple[PolicyHolder, Path]:
    path = tmp_path / name / "bank.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return PolicyHolder.from_settings(
        make_settings(tmp_path / name / "state", policy={"banned_terms_files": [str(path)]})
    ), path


def replica(
    name: str, policy: PolicyHolder, prefix: str, audit: MemoryAuditSink, *, follow: bool = False
) -> ReplicaStatus:
    counters = CounterStorage(redis_url(), key_prefix=prefix)
    OPENED.append(counters)
    return ReplicaStatus(name, policy, counters=counters, audit=audit, interval_s=1.0, follow_reloads=follow)


async def test_same_lists_agree_and_a_different_list_is_drift_on_both_sides(tmp_path: Path) -> None:
    with redis_key_prefix() as prefix:
        audit = MemoryAuditSink()
        pa, _ = holder(tmp_path, "a", "code-name: 北极星\n")
        pb, path_b = holder(tmp_path, "b", "code-name: 北极星\n")
        a, b = replica("gpu-a", pa, prefix, audit), replica("gpu-b", pb, prefix, audit)
        for status in (a, b, a):
            await status.sync()
        assert a.peers == {"gpu-b": a.digest}
        assert not a.drift
        assert not b.drift
        assert a.detail() == {
            "digest": a.digest,
            "drift": False,
            "peers": {"gpu-b": a.digest},
            "checked": True,
            "follow_reloads": False,
        }
        client = redis.Redis.from_url(redis_url())
        try:
            ttl_ms = cast("int", client.pttl(f"{prefix}:policy:gpu-a"))
            published = cast("dict[bytes, bytes]", client.hgetall(f"{prefix}:policy:gpu-a"))
        finally:
            client.close()
        assert 0 < ttl_ms <= 3000
        assert published[b"digest"].decode() == a.digest
        path_b.write_text("code-name: 银河\n", encoding="utf-8")
        assert pb.reload().ok  # reloaded on b only; a does not follow
        for status in (b, a, b):
            await status.sync()
        assert a.drift
        assert b.drift
        assert a.peers == {"gpu-b": b.digest}
        assert b.peers == {"gpu-a": a.digest}
        assert a.gauges()[0].value == 1
        assert a.follows == 0


async def test_a_reload_on_one_replica_is_followed_by_a_replica_configured_to(tmp_path: Path) -> None:
    with redis_key_prefix() as prefix:
        audit = MemoryAuditSink()
        pa, path_a = holder(tmp_path, "a", "code-name: 北极星\n")
        pb, path_b = holder(tmp_path, "b", "code-name: 北极星\n")
        a, b = replica("gpu-a", pa, prefix, audit), replica("gpu-b", pb, prefix, audit, follow=True)
        await a.sync()
        await b.sync()
        for path in (path_a, path_b):  # the new list deployed to both hosts, reloaded on one
            path.write_text("code-name: 银河\n", encoding="utf-8")
        assert pa.reload().ok
        await a.sync()  # announces the reload
        await b.sync()  # follows it: reloads its own files
        await a.sync()
        assert b.follows == 1
        assert pb.check("银河计划").blocked
        assert not a.drift
        assert not b.drift
        [event] = audit.of_type(RELOAD_EVENT)
        assert event.detail["trigger"] == PEER_TRIGGER
        await b.sync()  # its own follow-up reload is not announced again: no ping-pong
        await a.sync()
        assert a.follows == 0
        assert b.follows == 1


async def test_a_stopped_replica_leaves_the_comparison(tmp_path: Path) -> None:
    with redis_key_prefix() as prefix:
        audit = MemoryAuditSink()
        pa, _ = holder(tmp_path, "a", "code-name: 北极星\n")
        pb, _ = holder(tmp_path, "b", "code-name: 银河\n")
        a, b = replica("gpu-a", pa, prefix, audit), replica("gpu-b", pb, prefix, audit)
        await b.sync()
        await a.sync()
        assert a.drift
        await b.withdraw()
        await a.sync()
        assert a.peers == {}
        assert not a.drift
