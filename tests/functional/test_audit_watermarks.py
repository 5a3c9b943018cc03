"""The watermark index on a real database (SQLite and PostgreSQL): written with the event in
its transaction, found by id among many, rebuilt by the migration from stored bodies, purged
with the events, and never part of the chain."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, event, text

from tests.common.audit import audit_store
from tests.common.databases import BACKENDS, database_url_for
from zguard.audit import AuditEvent
from zguard.audit.store import AuditStore, pending
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store
from zguard.provenance.trace import GENERATION_EVENT, find_generation
from zguard.store import migrate


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    with database_url_for(request.param, tmp_path) as url, audit_store(url, tmp_path / "keys", every=50) as (s, _):
        yield s


def _generation(*ids: str | None, request_id: str = "r", type_: str = GENERATION_EVENT) -> AuditEvent:
    images = tuple({"bytes": 10} if i is None else {"bytes": 10, "watermark_id": i} for i in ids)
    return AuditEvent(type=type_, outcome="done", principal="gen1", request_id=request_id, images=images)


def _request() -> AuditEvent:
    return AuditEvent(type="http.request", outcome="allowed", principal="alice")


def _index(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT watermark_id, seq FROM audit_watermarks ORDER BY seq, watermark_id"))
        return [(row[0], int(row[1])) for row in rows]


def _new_id() -> str:
    return secrets.token_hex(8)


def _verifies(store: AuditStore) -> bool:
    assert store.signer is not None
    report = verify_store(store, store.signer.public_key)
    return report.ok


def test_the_index_row_is_written_with_the_event_and_only_for_marked_images(store: AuditStore) -> None:
    a, b, c = sorted(_new_id() for _ in range(3))
    stored = store.append(
        [
            pending(_request()),
            pending(_generation(a, b, a)),  # an id twice in one event is one row
            pending(_generation(None)),  # watermarking off: no id
            pending(_generation("NOT-AN-ID", c.upper(), c[:15])),  # not the marker's form
            pending(_request()),
        ]
    )
    assert _index(store.engine) == [(a, stored[1].seq), (b, stored[1].seq)]
    assert _verifies(store)  # the index is outside the chain


@pytest.mark.parametrize("backend", BACKENDS)
def test_events_without_images_cost_no_extra_statement(backend: str, tmp_path: Path) -> None:
    with database_url_for(backend, tmp_path) as url, audit_store(url, tmp_path / "keys") as (store, engine):
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        store.append([pending(_request()) for _ in range(5)])
        plain = len(statements)
        assert not any("audit_watermarks" in s for s in statements)
        statements.clear()
        store.append([pending(_request()), pending(_generation(_new_id(), _new_id())), pending(_request())])
        assert sum("audit_watermarks" in s for s in statements) == 1  # one executemany for the batch
        assert len(statements) == plain + 1


def test_lookup_finds_the_one_event_among_many(store: AuditStore) -> None:
    ids = [_new_id() for _ in range(600)]
    for start in range(0, len(ids), 100):
        store.append(
            [pending(_generation(i, request_id=f"req{start + k}")) for k, i in enumerate(ids[start : start + 100])]
            + [pending(_request())]
        )
    for k in (0, 299, 599):
        found = store.find_watermark(ids[k])
        assert [json.loads(e.body)["request_id"] for e in found] == [f"req{k}"]
    assert store.find_watermark(_new_id()) == []
    trail = AuditTrail(store)
    try:
        body = find_generation(trail, ids[123])
        assert body is not None
        assert (body["request_id"], body["type"]) == ("req123", GENERATION_EVENT)
        assert find_generation(trail, _new_id()) is None
    finally:
        trail.close()


def test_a_repeated_id_finds_the_oldest_generation(store: AuditStore) -> None:
    wid = _new_id()
    stored = store.append(
        [
            pending(_generation(wid, type_="generation.failed", request_id="other-type")),
            pending(_generation(wid, request_id="first")),
            pending(_generation(wid, request_id="second")),
        ]
    )
    assert [e.seq for e in store.find_watermark(wid)] == [s.seq for s in stored]
    body = find_generation(store, wid)
    assert body is not None
    assert body["request_id"] == "first"  # the other type carries the id too, but is no generation


def test_the_migration_indexes_events_written_before_it(store: AuditStore) -> None:
    ids = [_new_id() for _ in range(30)]
    store.append([pending(_generation(i, request_id=f"req{k}")) for k, i in enumerate(ids)])
    store.append([pending(_request()), pending(_generation(None)), pending(_generation("xyz"))])
    store.append([pending(_generation(ids[0], _new_id(), request_id="again"))])
    store.checkpoint()
    written = _index(store.engine)
    assert len(written) == 32
    hashes = [e.hash for e in store.iter_events()]
    store.close()  # the writer's connection would hold SQLite's tables during DDL
    config = migrate.alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")  # as before this feature: no index table at all
    assert migrate.upgrade(store.engine) == migrate.head_revision()
    assert _index(store.engine) == written
    assert [e.hash for e in store.iter_events()] == hashes
    assert [json.loads(e.body)["request_id"] for e in store.find_watermark(ids[0])] == ["req0", "again"]
    assert _verifies(store)


def test_the_migration_backfills_past_its_first_batch(store: AuditStore) -> None:
    ids = [_new_id() for _ in range(5_010)]  # the migration reads 5,000 events at a time
    store.append([pending(_generation(i)) for i in ids])
    written = _index(store.engine)
    assert len(written) == len(ids)
    store.close()
    config = migrate.alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    migrate.upgrade(store.engine)
    assert _index(store.engine) == written


def test_purge_removes_the_index_rows_it_covers(store: AuditStore) -> None:
    ids = [_new_id() for _ in range(10)]
    stored = [store.append([pending(_generation(i))])[0] for i in ids]
    through = stored[5]
    assert store.delete_through(through.seq, through.hash) >= 6
    assert [wid for wid, _ in _index(store.engine)] == ids[6:]
    assert store.find_watermark(ids[5]) == []
    assert find_generation(store, ids[0]) is None
    assert [e.seq for e in store.find_watermark(ids[6])] == [stored[6].seq]
