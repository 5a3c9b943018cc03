"""Alembic environment: runs migrations on the connection `zguard.store.migrate` hands over.

Run through `zguard db upgrade` (or `zguard.store.migrate`), never with a separate
`alembic.ini`: the database is the one zguard's settings name, opened by zguard's engine factory.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from zguard.config.loader import load_settings
from zguard.store.database import create_store_engine, database_url
from zguard.store.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        raise SystemExit("zguard migrations run online only: use `zguard db upgrade`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_store_engine(database_url(load_settings()))
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


run()
