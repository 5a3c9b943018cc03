"""Retention: purge archives the events past `audit.retention_days` to a signed file, then deletes them.

Events are written with old times through `AuditStore.append` (tests/common/aged_events.py); a
second purge travels in time with `now`. The main path runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from tests.common.aged_events import DAY_S, append_aged, audit_settings, migrated_store
from tests.common.databases import BACKENDS, database_url_for
from tests.common.polling import wait_until
from zguard.audit.archive import verify_archive
from zguard.audit.chain import chain_hash
from zguard.audit.retention import PurgeRefused, RetentionJob, purge
from zguard.audit.store import AuditStore
from zguard.audit.verify import verify_store
from zguard.config import Settings
from zguard.state_paths import audit_archive_dir

backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[URL]:
    with database_url_for(backend, tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, db_url: URL) -> Settings:
    return audit_settings(tmp_path, db_url)


@pytest.fixture
def trail(settings: Settings) -> Iterator[tuple[Engine, AuditStore]]:
    with migrated_store(settings) as opened:
        yield opened


@pytest.fixture
def store(trail: tuple[Engine, AuditStore]) -> AuditStore:
    return trail[1]


def of_type(store: AuditStore, kind: str) -> list[dict[str, object]]:
    return [json.loads(e.body) for e in store.iter_events() if e.type == kind]


def public_key(store: AuditStore) -> Ed25519PublicKey:
    assert store.signer is not None
    return store.signer.public_key


def archives(settings: Settings) -> list[Path]:
    directory = audit_archive_dir(settings)
    return sorted(directory.glob("*.jsonl")) if directory.exists() else []


# --- the main path ----------------------------------------------------------------------------


@backends
def test_purge_archives_then_deletes_and_the_chain_still_verifies(settings: Settings, store: AuditStore) -> None:
    old = append_aged(store, 10, days_ago=200)
    store.checkpoint()  # event 11 signs 1..10
    append_aged(store, 5, days_ago=1)
    key = public_key(store)

    result = purge(store, settings, actor="cli:tester")

    assert (result.base_seq, result.through_seq, result.count, result.anchors) == (0, 10, 10, 0)
    assert result.archive is not None
    path = result.archive.path
    assert path.parent == audit_archive_dir(settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert not list(path.parent.glob(".*.partial"))
    report = verify_archive(path, key)
    assert report.ok, report.problem
    assert (report.events, report.manifest["first_seq"], report.manifest["last_seq"]) == (10, 1, 10)
    archived = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event_id"] for line in archived if line["kind"] == "event"] == [e.event_id for e in old]
    assert [line["kind"] for line in archived[-2:]] == ["checkpoint", "manifest"]

    head = store.head()
    assert (head.base_seq, head.base_hash) == (10, old[-1].hash)
    assert [e.seq for e in store.iter_events()] == list(range(11, 18))  # checkpoint, 5 recent, audit.purged
    verified = verify_store(store, key)
    assert verified.ok, verified.problem

    (purged,) = of_type(store, "audit.purged")
    detail = purged["detail"]
    assert isinstance(detail, dict)
    assert detail["archive"] == path.name
    assert detail["archive_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == result.archive.sha256
    assert (detail["first_seq"], detail["last_seq"], detail["count"]) == (1, 10, 10)
    assert purged["principal"] == "cli:tester"


def test_purge_with_no_checkpoint_at_the_cut_forces_one_and_anchors_the_archive(
    settings: Settings, store: AuditStore
) -> None:
    append_aged(store, 4, days_ago=300)
    recent = append_aged(store, 3, days_ago=2)

    dry = purge(store, settings, dry_run=True)
    assert (dry.through_seq, dry.count, dry.archive) == (4, 4, None)
    assert any("checkpoint would be written" in note for note in dry.notes)
    assert store.head().checkpoint_seq == 0  # a dry run changes nothing
    assert archives(settings) == []

    result = purge(store, settings)
    assert result.archive is not None
    assert (result.through_seq, result.anchors, result.checkpoint_seq) == (4, 3, 8)
    lines = [json.loads(line) for line in result.archive.path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["event"] * 4 + ["anchor"] * 3 + ["checkpoint", "manifest"]
    assert [line["seq"] for line in lines if line["kind"] == "anchor"] == [e.seq for e in recent]
    assert verify_archive(result.archive.path, public_key(store)).ok
    assert [e.seq for e in store.iter_events()] == [5, 6, 7, 8, 9]  # the anchors stay; 9 is audit.purged
    assert verify_store(store, public_key(store)).ok


def test_a_later_purge_continues_the_earlier_archive(settings: Settings, store: AuditStore) -> None:
    append_aged(store, 3, days_ago=400)
    append_aged(store, 2, days_ago=10)
    first = purge(store, settings)
    second = purge(store, settings, now=time.time() + 200 * DAY_S)  # the 10-day-old events are now 210 days old
    assert first.archive is not None
    assert second.archive is not None
    one, two = (verify_archive(a.path, public_key(store)) for a in (first.archive, second.archive))
    assert one.ok
    assert two.ok
    assert two.manifest["base_hash"] == one.manifest["last_hash"]
    assert two.manifest["first_seq"] == one.manifest["last_seq"] + 1
    assert verify_store(store, public_key(store)).ok
    assert len(of_type(store, "audit.purged")) == 1  # the first one's event was archived by the second


def test_nothing_due_purges_nothing(settings: Settings, store: AuditStore) -> None:
    append_aged(store, 3, days_ago=179)
    result = purge(store, settings)
    assert (result.through_seq, result.count, result.archive) == (0, 0, None)
    assert store.count() == 3
    assert archives(settings) == []


# --- the syslog forwarder's cursor ----------------------------------------------------------------


def test_purge_stops_at_the_syslog_cursor(settings: Settings, store: AuditStore) -> None:
    append_aged(store, 10, days_ago=200)
    store.checkpoint()
    store.advance_cursor("syslog", 4)  # the central log server has events 1..4 only

    result = purge(store, settings)

    assert (result.due_through, result.cursor, result.through_seq, result.held_back) == (10, 4, 4, 6)
    assert any("syslog forwarder has delivered only through event 4" in note for note in result.notes)
    assert store.head().base_seq == 4
    assert [e.seq for e in store.iter_events()][:6] == [5, 6, 7, 8, 9, 10]  # undelivered: kept
    assert verify_store(store, public_key(store)).ok
    (purged,) = of_type(store, "audit.purged")
    detail = purged["detail"]
    assert isinstance(detail, dict)
    assert (detail["last_seq"], detail["held_back"]) == (4, 6)


def test_purge_refuses_everything_while_the_forwarder_has_delivered_nothing(
    tmp_path: Path, db_url: URL, backend: str
) -> None:
    settings = audit_settings(tmp_path, db_url, syslog={"transport": "tcp", "host": "127.0.0.1", "port": 6514})
    with migrated_store(settings) as (_, store):
        append_aged(store, 5, days_ago=200)
        result = purge(store, settings)  # forwarding on, no cursor yet: nothing was delivered
        assert (result.cursor, result.through_seq, result.held_back, result.archive) == (0, 0, 5, None)
        assert store.count() == 5
        assert archives(settings) == []


# --- refusals ---------------------------------------------------------------------------------


def test_purge_refuses_a_tampered_chain_and_keeps_the_evidence(
    settings: Settings, trail: tuple[Engine, AuditStore]
) -> None:
    engine, store = trail
    append_aged(store, 6, days_ago=200)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET body = replace(body, 'alice', 'mallory') WHERE seq = 3"))

    with pytest.raises(PurgeRefused, match=r"edited at event 3") as refused:
        purge(store, settings)

    assert "nothing was purged" in refused.value.message
    assert store.head().base_seq == 0
    assert [e.seq for e in store.iter_events()][:6] == [1, 2, 3, 4, 5, 6]
    assert archives(settings) == []
    assert not list(audit_archive_dir(settings).glob(".*.partial"))
    (failed,) = of_type(store, "audit.purge_failed")
    assert "edited at event 3" in str(failed["detail"])


def test_purge_refuses_an_archive_directory_open_to_others(settings: Settings, store: AuditStore) -> None:
    append_aged(store, 2, days_ago=200)
    directory = audit_archive_dir(settings)
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    with pytest.raises(PurgeRefused, match="chmod 700"):
        purge(store, settings)
    assert store.count() == 4  # two events, the checkpoint the purge forced, and audit.purge_failed


def test_a_purge_failure_that_cannot_be_recorded_is_logged(
    settings: Settings, store: AuditStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # retention silently dropped a failure to record audit.purge_failed
    from zguard.audit import retention

    append_aged(store, 2, days_ago=200)
    directory = audit_archive_dir(settings)
    directory.mkdir(parents=True)
    directory.chmod(0o755)

    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(retention, "_record", broken)
    with caplog.at_level("ERROR", logger="zguard.audit"), pytest.raises(PurgeRefused, match="chmod 700"):
        purge(store, settings)
    assert "could not record audit.purge_failed" in caplog.text
    assert "chmod 700" in caplog.text


# --- tampering with an archive -------------------------------------------------------------------


def _rechain(lines: list[dict[str, object]], start: int) -> None:
    """Recompute every hash from line `start` on, as someone rewriting the archive without the key would."""
    for index in range(start, len(lines)):
        line = lines[index]
        if line["kind"] == "manifest":
            return
        if index > 0:
            line["prev_hash"] = lines[index - 1]["hash"]
        line["hash"] = chain_hash(str(line["prev_hash"]), str(line["body"]))


def _edit_body(lines: list[dict[str, object]], index: int) -> None:
    """Change who did it, in the hashed body and in the column that repeats it."""
    lines[index]["body"] = str(lines[index]["body"]).replace('"alice"', '"mallory"')
    lines[index]["principal"] = "mallory"


def _edit_and_rehash_one(lines: list[dict[str, object]]) -> None:
    _edit_body(lines, 2)
    lines[2]["hash"] = chain_hash(str(lines[2]["prev_hash"]), str(lines[2]["body"]))


def _edit_and_rechain_all(lines: list[dict[str, object]]) -> None:
    _edit_body(lines, 2)
    _rechain(lines, 2)


def _swap(lines: list[dict[str, object]]) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def _forge_manifest(lines: list[dict[str, object]]) -> None:
    lines[-1]["created_ms"] = int(lines[-1]["created_ms"]) + 1  # type: ignore[call-overload]


TAMPERING: dict[str, tuple[Callable[[list[dict[str, object]]], object], str, int | None]] = {
    "body edited": (lambda lines: _edit_body(lines, 2), "edited", 3),
    "edited and re-hashed": (_edit_and_rehash_one, "edited", 3),
    "edited and the whole chain rewritten": (_edit_and_rechain_all, "edited", 5),
    "line deleted": (lambda lines: lines.pop(2), "deleted", 3),
    "lines swapped": (_swap, "reordered", 2),
    "checkpoint line removed": (lambda lines: lines.pop(-2), "truncated", None),
    "manifest edited": (_forge_manifest, "manifest_signature", None),
    "manifest removed": (lambda lines: lines.pop(), "malformed", None),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_verify_archive_names_tampering(settings: Settings, store: AuditStore, tampering: str) -> None:
    append_aged(store, 5, days_ago=200)
    result = purge(store, settings)
    assert result.archive is not None
    path = result.archive.path
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    change, kind, seq = TAMPERING[tampering]
    change(lines)
    # Key order kept as written, so that untouched lines stay byte-identical.
    path.write_text("".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines))

    report = verify_archive(path, public_key(store))

    assert not report.ok
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == (kind, seq), report.problem.message


def test_verify_archive_refuses_another_signing_key(settings: Settings, store: AuditStore) -> None:
    append_aged(store, 2, days_ago=200)
    result = purge(store, settings)
    assert result.archive is not None
    report = verify_archive(result.archive.path, Ed25519PrivateKey.generate().public_key())
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("forged_checkpoint", 3)


# --- the daily job ------------------------------------------------------------------------------


def test_retention_job_purges_in_the_background(settings: Settings, store: AuditStore) -> None:
    append_aged(store, 3, days_ago=200)
    job = RetentionJob(store, settings, first_delay_s=0, every_s=3600)
    job.start()
    try:
        wait_until(lambda: job.last_result is not None, timeout=10, interval=0.02, what="the background purge")
    finally:
        job.stop()
    assert job.last_result is not None
    assert job.last_result.count == 3
    assert job.last_error is None
    assert of_type(store, "audit.purged")


def test_retention_job_survives_a_refused_purge(settings: Settings, trail: tuple[Engine, AuditStore]) -> None:
    engine, store = trail
    append_aged(store, 3, days_ago=200)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    job = RetentionJob(store, settings)
    assert job.run_once() is None
    assert job.last_error is not None
    assert "deleted at event 2" in job.last_error
    assert of_type(store, "audit.purge_failed")
