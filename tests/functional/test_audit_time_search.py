"""Searches by time range go through `audit_time_blocks` (the earliest and latest event time per
run of positions) and must return exactly what a scan of every event would: event times follow
the chain only roughly (late writers, skewed clocks), retention purges blocks, and the table is
rebuilt by migration 0007 for events stored before it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, delete, inspect, select
from sqlalchemy.engine import URL

from tests.common.databases import BACKENDS, database_url_for
from zguard.audit import AuditEvent
from zguard.audit import store as audit_store
from zguard.audit.store import TIME_BLOCKS, AuditStore, pending
from zguard.store import migrate
from zguard.store.database import create_store_engine

BLOCK = 8  # small blocks, so a few hundred events make many of them
T0 = 1_790_000_000.0


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_store, "AUDIT_TIME_BLOCK", BLOCK)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url: URL
    with database_url_for(request.param, tmp_path) as url:
        engine = create_store_engine(url)
        migrate.upgrade(engine)
        yield engine
        engine.dispose()


def _times(count: int, seed: int) -> list[float]:
    """Roughly increasing times: jitter of a few seconds, and now and then a writer whose clock
    is an hour behind, or an event appended a day late."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    times = []
    for i in range(count):
        t = T0 + i * 10 + rng.uniform(-30, 30)
        if rng.random() < 0.03:
            t -= 3600
        if rng.random() < 0.01:
            t -= 86_400
        times.append(t)
    return times


def _fill(store: AuditStore, times: list[float]) -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    at = 0
    while at < len(times):
        size = rng.randint(1, 13)  # batches that straddle blocks
        batch = [
            pending(AuditEvent(type="http.request", outcome="allowed", principal=f"u{i % 3}", time=t))
            for i, t in enumerate(times[at : at + size], start=at)
        ]
        store.append(batch)
        at += size


def _expected(store: AuditStore, since_ms: int | None, until_ms: int | None, **filters: object) -> list[int]:
    everything = store.search(limit=100_000)
    return [
        e.seq
        for e in everything
        if (since_ms is None or round(e.time * 1000) >= since_ms)
        and (until_ms is None or round(e.time * 1000) < until_ms)
        and all(getattr(e, k) == v for k, v in filters.items())
    ]


def test_every_time_range_returns_what_a_full_scan_returns(engine: Engine) -> None:
    store = AuditStore(engine)
    times = _times(400, seed=1)
    _fill(store, times)
    with engine.connect() as conn:
        blocks = conn.execute(select(TIME_BLOCKS)).all()
    assert len(blocks) == 400 // BLOCK + 1  # seq starts at 1: the first block holds 1..7
    rng = random.Random(2)  # noqa: S311 - reproducible test data
    lo, hi = int(min(times) * 1000) - 5000, int(max(times) * 1000) + 5000
    for _ in range(60):
        a, b = sorted(rng.randint(lo, hi) for _ in range(2))
        since, until = rng.choice([(a, b), (a, None), (None, b), (a, a + rng.randint(0, 120_000))])
        want = _expected(store, since, until)
        got = [e.seq for e in store.search(since_ms=since, until_ms=until, limit=100_000)]
        assert got == want, (since, until)
        newest = [e.seq for e in store.search(since_ms=since, until_ms=until, limit=5, newest_first=True)]
        assert newest == want[::-1][:5]
        if len(want) > 6:  # keyset paging inside the range
            after = want[2]
            page = [e.seq for e in store.search(since_ms=since, until_ms=until, after_seq=after, limit=3)]
            assert page == want[3:6]


def test_a_range_no_block_meets_is_empty_and_far_outliers_are_found(engine: Engine) -> None:
    store = AuditStore(engine)
    times = _times(100, seed=3)
    times[57] = T0 - 30 * 86_400  # a month-old event appended late, in a recent block
    _fill(store, times)
    assert store.search(since_ms=int((T0 + 10 * 86_400) * 1000), limit=10) == []
    assert store.search(until_ms=int((T0 - 60 * 86_400) * 1000), limit=10) == []
    old = store.search(until_ms=int((T0 - 29 * 86_400) * 1000), limit=10)
    assert [e.seq for e in old] == [58]


def test_retention_drops_only_wholly_purged_blocks_and_search_stays_exact(engine: Engine) -> None:
    store = AuditStore(engine)
    _fill(store, _times(100, seed=4))
    cut = 37  # inside block 4 (32..39)
    store.delete_through(cut, store.search(after_seq=cut - 1, limit=1)[0].hash)
    with engine.connect() as conn:
        kept = [row.block for row in conn.execute(select(TIME_BLOCKS.c.block).order_by(TIME_BLOCKS.c.block))]
    assert kept[0] == cut // BLOCK  # the partly purged block stays
    every = store.search(limit=1000)
    assert every[0].seq == cut + 1
    for e in every[::7]:
        ms = round(e.time * 1000)
        assert e.seq in [x.seq for x in store.search(since_ms=ms, until_ms=ms + 1, limit=100)]


def test_migration_0007_rebuilds_the_blocks_the_store_keeps(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_store, "AUDIT_TIME_BLOCK", 4096)  # the migration's own block size
    store = AuditStore(engine)
    _fill(store, _times(300, seed=5))
    with engine.connect() as conn:
        kept = conn.execute(select(TIME_BLOCKS).order_by(TIME_BLOCKS.c.block)).all()
    with engine.begin() as conn:
        conn.execute(delete(TIME_BLOCKS))
    config = migrate.alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert "audit_time_blocks" not in inspect(engine).get_table_names()
    migrate.upgrade(engine)
    with engine.connect() as conn:
        rebuilt = conn.execute(select(TIME_BLOCKS).order_by(TIME_BLOCKS.c.block)).all()
    assert rebuilt == kept
    assert len(rebuilt) == 1
    assert rebuilt[0].min_ms < rebuilt[0].max_ms
