"""State databases for tests: a SQLite file, or a fresh schema on the local PostgreSQL server.

PostgreSQL is found at `ZGUARD_TEST_POSTGRES_URL`, else `postgresql+psycopg://$PGUSER@127.0.0.1:5432/test`
(user `postgres` when PGUSER is unset). Each test gets its own schema, selected through the URL's
`options=-csearch_path=...` so every engine built from the URL (the CLI's included) lands in it,
and dropped afterwards. Unreachable server: the test is skipped, except under CI=true, where
every test must run and it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from tests.common.unavailable import unavailable

BACKENDS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.integration))
"""Both backends, for `parametrize` or `fixture(params=...)`: the PostgreSQL one is marked `integration`."""


def postgres_admin_url() -> URL:
    explicit = os.environ.get("ZGUARD_TEST_POSTGRES_URL")
    if explicit:
        return make_url(explicit)
    user = os.environ.get("PGUSER") or "postgres"
    return make_url(f"postgresql+psycopg://{user}@127.0.0.1:5432/test")


@cache
def _postgres_unreachable() -> str | None:
    """Why the PostgreSQL server cannot be used, or None when it can (asked once per run)."""
    engine = create_engine(postgres_admin_url(), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0] if exc.orig else "cannot connect"
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    reason = _postgres_unreachable()
    if reason is None:
        return
    message = f"PostgreSQL at {postgres_admin_url().render_as_string(hide_password=True)} unreachable: {reason}"
    unavailable(message, remedy="start PostgreSQL")


@contextmanager
def postgres_schema_url() -> Iterator[URL]:
    """A URL whose connections use a brand-new schema; the schema is dropped on exit."""
    require_postgres()
    schema = f"zguard_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield postgres_admin_url().update_query_dict({"options": f"-csearch_path={schema}"})
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@contextmanager
def database_url_for(backend: str, tmp_path: Path) -> Iterator[URL]:
    """An empty database of `backend` ("sqlite" or "postgresql") as a URL."""
    if backend == "sqlite":
        yield URL.create("sqlite", database=str(tmp_path / "state" / "zguard.db"))
    else:
        with postgres_schema_url() as url:
            yield url
