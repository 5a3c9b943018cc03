"""The engine factory: SQLite in `state_dir` by default, PostgreSQL (psycopg 3) by URL.

SQLite runs in WAL mode (readers do not block the writer), synchronous=FULL (a commit is on disk
when it returns), with foreign keys enforced and a busy timeout, so a second writer waits instead of failing at once. Its file is created mode 0600 and
its directory, when zguard creates it, mode 0700: the file holds credential hashes. PostgreSQL
connections are checked before use (`pool_pre_ping`) so a restarted server costs no request.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from zguard import state_paths
from zguard.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 5_000
POSTGRES_CONNECT_TIMEOUT_S = 10


def database_url(settings: Settings) -> URL:
    """`database.url`, or the SQLite file `zguard.db` in `state_dir` when unset."""
    if settings.database.url is not None:
        return make_url(settings.database.url.get_secret_value())
    return URL.create("sqlite", database=str(state_paths.database_file(settings)))


def create_store_engine(url: URL | str, *, echo: bool = False) -> Engine:
    """An engine for a `sqlite` (file) or `postgresql+psycopg` URL; other URLs are refused."""
    url = make_url(url)
    if url.drivername == "sqlite":
        return _sqlite_engine(url, echo=echo)
    if url.drivername == "postgresql+psycopg":
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args, echo=echo)
    raise ValueError(f"unsupported database driver {url.drivername!r}; use sqlite or postgresql+psycopg")


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    if not url.database or url.database == ":memory:":
        raise ValueError("the SQLite state database must be a file")
    _create_private_file(Path(url.database))
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, echo=echo)
    event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # persistent, but cheap to assert on every connection
        cursor.execute("PRAGMA foreign_keys=ON")  # per connection; off by default in SQLite
        # Audit events must survive a power cut once their response has left: sync the WAL on
        # every commit (NORMAL would survive only a process crash). ~0.1 ms a commit here.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (its directory 0700 when new) before SQLite opens it.

    SQLite would create it with the process umask (usually 0644) and gives its `-wal` and `-shm`
    files the main file's mode, so getting the main file right covers all three.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            with contextlib.suppress(PermissionError):  # not ours to change; the operator's choice stands
                os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
