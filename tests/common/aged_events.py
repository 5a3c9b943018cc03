"""Audit events written as if at another time, and a migrated state database to write them to.

`AuditStore.append` takes each event's time from its `Pending`, so a test can fill the trail with
events 200 days old without waiting, then run retention with the real clock (or a `now` later on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from zguard.audit import AuditEvent, Outcome
from zguard.audit.setup import open_audit_store
from zguard.audit.store import AuditStore, Pending, StoredEvent, new_event_id
from zguard.config import Settings
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url

DAY_S = 86_400


def audit_settings(tmp_path: Path, url: URL, **audit: Any) -> Settings:
    """Settings whose state database is `url` (a SQLite file or a PostgreSQL schema)."""
    data: dict[str, Any] = {"state_dir": str(tmp_path / "state"), "api_auth": {"enabled": False}, "audit": audit}
    if url.drivername != "sqlite":
        data["database"] = {"url": url.render_as_string(hide_password=False)}
    return Settings.model_validate(data)


@contextmanager
def migrated_store(settings: Settings) -> Iterator[tuple[Engine, AuditStore]]:
    """The audit store of `settings`' database, migrated to head, with the checkpoint signing key."""
    engine = create_store_engine(database_url(settings))
    migrate.upgrade(engine)
    store = open_audit_store(settings, engine)
    try:
        yield engine, store
    finally:
        store.close()
        engine.dispose()


def append_aged(
    store: AuditStore,
    count: int,
    *,
    days_ago: float,
    type: str = "generation.completed",
    outcome: Outcome = "done",
    principal: str | None = "alice",
    **fields: Any,
) -> list[StoredEvent]:
    """`count` events stamped `days_ago` days before now, one millisecond apart, in one batch."""
    start = time.time() - days_ago * DAY_S
    batch = []
    for index in range(count):
        moment = start + index / 1000
        event = AuditEvent(type=type, outcome=outcome, principal=principal, time=moment, **fields)
        batch.append(Pending(event, new_event_id(), int(moment * 1000)))
    return store.append(batch)
