"""The hash chain on a real database: every kind of tampering is named, concurrent writers keep
one order, checkpoints are signed and anchor the head."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.common.audit import append_events, audit_store, sqlite_url
from tests.common.databases import BACKENDS, database_url_for
from tests.common.polling import wait_until
from zguard.audit import AuditEvent
from zguard.audit.chain import CHECKPOINT_TYPE, GENESIS, canonical, chain_hash
from zguard.audit.store import AuditStore, pending
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store


def _verify(store: AuditStore):
    assert store.signer is not None
    return verify_store(store, store.signer.public_key)


def _sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


@pytest.fixture
def chain(tmp_path: Path):
    with audit_store(sqlite_url(tmp_path), tmp_path / "keys", every=5) as (store, engine):
        append_events(store, 12)
        yield store, engine


def test_an_untouched_chain_verifies_with_its_checkpoints(chain: tuple[AuditStore, Engine]) -> None:
    store, _ = chain
    report = _verify(store)
    assert report.ok, report.problem
    # every 5 events a checkpoint is appended; it is an event in the chain itself
    assert report.checkpoints >= 2
    assert report.events == store.head().seq
    checkpoints = [json.loads(e.body) for e in store.iter_events() if e.type == CHECKPOINT_TYPE]
    assert checkpoints[0]["detail"]["covers_seq"] == 5


def test_edited_event_is_named(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    row = store.search(after_seq=3, limit=1)[0]
    forged = row.body.replace('"principal":"alice"', '"principal":"mallory"')
    _sql(engine, "UPDATE audit_events SET body = :b WHERE seq = 4", b=forged)
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("edited", 4)


def test_edited_search_column_is_named(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    _sql(engine, "UPDATE audit_events SET principal = 'mallory' WHERE seq = 4")
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("edited", 4)
    assert "principal" in problem.message


def test_edit_rehashed_without_the_key_is_caught_by_the_next_link(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    row = store.search(after_seq=1, limit=1)[0]  # seq 2
    forged = row.body.replace('"outcome":"allowed"', '"outcome":"denied"')
    _sql(
        engine,
        "UPDATE audit_events SET body = :b, outcome = 'denied', hash = :h WHERE seq = 2",
        b=forged,
        h=chain_hash(row.prev_hash, forged),
    )
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("edited", 2)


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(chain: tuple[AuditStore, Engine]) -> None:
    """An attacker re-hashes everything after the edit (SHA-256 needs no key): links and the head
    row agree again, but the checkpoint signed over the old head no longer does."""
    store, engine = chain
    rows = store.search(limit=100)
    prev = GENESIS
    with engine.begin() as conn:
        for row in rows:
            body = row.body.replace('"principal":"alice"', '"principal":"mallory"') if row.seq == 3 else row.body
            digest = chain_hash(prev, body)
            principal = "mallory" if row.seq == 3 else json.loads(body)["principal"]
            conn.execute(
                text("UPDATE audit_events SET body = :b, prev_hash = :p, hash = :h, principal = :pr WHERE seq = :s"),
                {"b": body, "p": prev, "h": digest, "pr": principal, "s": row.seq},
            )
            prev = digest
        conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})
    problem = _verify(store).problem
    assert problem is not None
    assert problem.kind == "edited"
    assert "signed checkpoint" in problem.message
    assert problem.seq == 5  # the first checkpoint covers events 1..5


def test_deleted_event_is_named(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    _sql(engine, "DELETE FROM audit_events WHERE seq = 7")
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("deleted", 7)


def test_inserted_event_is_named(chain: tuple[AuditStore, Engine]) -> None:
    """A forged event slipped in at position 4: the later events are renumbered to make room."""
    store, engine = chain
    events = store.search(limit=100)
    with engine.begin() as conn:
        for row in reversed(events[3:]):
            conn.execute(text("UPDATE audit_events SET seq = seq + 1 WHERE seq = :s"), {"s": row.seq})
        third = events[2]
        body = canonical({**json.loads(events[3].body), "seq": 4, "event_id": "f" * 32, "principal": "mallory"})
        conn.execute(
            text(
                "INSERT INTO audit_events (seq, event_id, time_ms, type, outcome, principal, request_id, body, prev_hash, hash)"
                " VALUES (4, :id, :t, 'http.request', 'allowed', 'mallory', NULL, :b, :p, :h)"
            ),
            {
                "id": "f" * 32,
                "t": json.loads(body)["time_ms"],
                "b": body,
                "p": third.hash,
                "h": chain_hash(third.hash, body),
            },
        )
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("inserted", 4)


def test_inserted_event_after_the_head_is_named(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    head = store.head()
    body = canonical({"seq": head.seq + 1, "type": "http.request"})
    _sql(
        engine,
        "INSERT INTO audit_events (seq, event_id, time_ms, type, outcome, principal, request_id, body, prev_hash, hash)"
        " VALUES (:s, :id, 0, 'http.request', 'allowed', NULL, NULL, :b, :p, :h)",
        s=head.seq + 1,
        id="e" * 32,
        b=body,
        p=head.hash,
        h=chain_hash(head.hash, body),
    )
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("inserted", head.seq + 1)


def test_reordered_events_are_named(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = 8"))
        conn.execute(text("UPDATE audit_events SET seq = 8 WHERE seq = 9"))
        conn.execute(text("UPDATE audit_events SET seq = 9 WHERE seq = -1"))
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("reordered", 8)


def test_truncated_tail_is_named(chain: tuple[AuditStore, Engine]) -> None:
    store, engine = chain
    head = store.head().seq
    _sql(engine, "DELETE FROM audit_events WHERE seq > :s", s=head - 3)
    problem = _verify(store).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("truncated", head - 2)


def test_forged_checkpoint_is_named(chain: tuple[AuditStore, Engine]) -> None:
    """A checkpoint re-signed with another key (or its signature altered) is not the trail's."""
    store, engine = chain
    checkpoint = next(e for e in store.iter_events() if e.type == CHECKPOINT_TYPE)
    body = json.loads(checkpoint.body)
    body["detail"]["signature"] = "00" * 64
    forged = canonical(body)
    _sql(
        engine,
        "UPDATE audit_events SET body = :b, hash = :h WHERE seq = :s",
        b=forged,
        h=chain_hash(checkpoint.prev_hash, forged),
        s=checkpoint.seq,
    )
    problem = _verify(store).problem
    assert problem is not None
    assert problem.kind == "forged_checkpoint"
    assert problem.seq == checkpoint.seq


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_build_one_valid_chain(backend: str, tmp_path: Path) -> None:
    with database_url_for(backend, tmp_path) as url, audit_store(url, tmp_path / "keys", every=50) as (store, _):
        trail = AuditTrail(store)
        threads = [
            threading.Thread(
                target=lambda k=k: [
                    trail.emit(AuditEvent(type="t", outcome="allowed", principal=f"p{k}")) for _ in range(40)
                ]
            )
            for k in range(8)
        ]

        async def async_writers() -> None:
            async def one(k: int) -> None:
                for _ in range(40):
                    await trail.record(AuditEvent(type="t", outcome="allowed", principal=f"a{k}"))

            await asyncio.gather(*(one(k) for k in range(8)))

        for thread in threads:
            thread.start()
        asyncio.run(async_writers())
        for thread in threads:
            thread.join()
        trail.close()
        report = _verify(store)
        assert report.ok, report.problem
        user_events = [e for e in store.iter_events() if e.type == "t"]
        assert len(user_events) == 16 * 40
        seqs = [e.seq for e in store.iter_events()]
        assert seqs == list(range(1, len(seqs) + 1))


def _write_from_another_process(url: str, key_dir: str, count: int) -> None:
    from sqlalchemy.engine import make_url

    with audit_store(make_url(url), Path(key_dir), every=25) as (store, _):
        for _ in range(count):
            store.append([pending(AuditEvent(type="t", outcome="allowed", principal="other"))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_append_to_one_chain(backend: str, tmp_path: Path) -> None:
    with database_url_for(backend, tmp_path) as url, audit_store(url, tmp_path / "keys", every=25) as (store, _):
        context = multiprocessing.get_context("spawn")
        rendered = url.render_as_string(hide_password=False)
        workers = [
            context.Process(target=_write_from_another_process, args=(rendered, str(tmp_path / "keys"), 60))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for _ in range(60):
            store.append([pending(AuditEvent(type="t", outcome="allowed", principal="here"))])
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        report = _verify(store)
        assert report.ok, report.problem
        assert sum(1 for e in store.iter_events() if e.type == "t") == 180


def test_interval_checkpoint_is_written_without_further_traffic(tmp_path: Path) -> None:
    with audit_store(sqlite_url(tmp_path), tmp_path / "keys", every=1000, interval_s=0.2) as (store, _):
        trail = AuditTrail(store, tick_s=0.05)
        trail.emit(AuditEvent(type="t", outcome="allowed"))
        wait_until(lambda: store.head().checkpoint_seq >= 1, timeout=5, what="an interval checkpoint")
        trail.close()
        assert _verify(store).ok


def test_failed_commit_fails_every_waiter_with_audit_unavailable(tmp_path: Path) -> None:
    from zguard.errors import AuditUnavailable

    with audit_store(sqlite_url(tmp_path), tmp_path / "keys") as (store, engine):
        trail = AuditTrail(store)
        trail.emit(AuditEvent(type="t", outcome="allowed"))
        _sql(engine, "DROP TABLE audit_events")
        with pytest.raises(AuditUnavailable):
            trail.emit(AuditEvent(type="t", outcome="allowed"))
        assert trail.last_error is not None
        trail.close()


def test_a_checkpoint_is_written_only_when_events_came_after_the_last(tmp_path: Path) -> None:
    with audit_store(sqlite_url(tmp_path), tmp_path / "keys") as (store, _):
        assert store.checkpoint() is None  # an empty trail has nothing to sign
        append_events(store, 3)
        first = store.checkpoint()
        assert first is not None
        assert json.loads(first.body)["detail"]["covers_seq"] == 3
        assert store.checkpoint() is None  # the checkpoint itself is not news
        append_events(store, 1)
        second = store.checkpoint()
        assert second is not None
        assert json.loads(second.body)["detail"]["covers_seq"] == first.seq + 1


def test_client_text_with_a_lone_surrogate_is_stored_and_verifies(tmp_path: Path) -> None:
    with audit_store(sqlite_url(tmp_path), tmp_path / "keys") as (store, _):
        store.append(
            [pending(AuditEvent(type="http.request", outcome="denied", principal="x\ud800y", client="\udcff"))]
        )
        (stored,) = store.search()
        assert json.loads(stored.body)["principal"] == "x\ud800y"
        assert _verify(store).ok
