"""A real audit trail for tests: the chain in a SQLite file (or PostgreSQL) at the schema's head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from zguard.audit import AuditEvent
from zguard.audit.chain import CheckpointSigner, load_or_create_signing_key
from zguard.audit.store import AuditStore, CheckpointPolicy, pending
from zguard.audit.trail import AuditTrail
from zguard.store import migrate
from zguard.store.database import create_store_engine


def sqlite_url(directory: Path) -> URL:
    return URL.create("sqlite", database=str(directory / "zguard.db"))


@contextmanager
def audit_store(
    url: URL, key_dir: Path, *, every: int = 1000, interval_s: float = 300.0
) -> Iterator[tuple[AuditStore, Engine]]:
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    key_dir.mkdir(parents=True, exist_ok=True)
    signer: CheckpointSigner = load_or_create_signing_key(key_dir / "audit-signing.pem")
    store = AuditStore(engine, signer=signer, checkpoints=CheckpointPolicy(every, int(interval_s * 1000)))
    try:
        yield store, engine
    finally:
        store.close()
        engine.dispose()


@contextmanager
def audit_trail(url: URL, key_dir: Path, **policy: float) -> Iterator[AuditTrail]:
    with audit_store(url, key_dir, **policy) as (store, _):  # type: ignore[arg-type]
        trail = AuditTrail(store)
        try:
            yield trail
        finally:
            trail.close()


def append_events(store: AuditStore, count: int, *, principal: str = "alice") -> None:
    for i in range(count):
        store.append(
            [pending(AuditEvent(type="http.request", outcome="allowed", principal=principal, detail={"i": i}))]
        )
