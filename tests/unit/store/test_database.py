"""`database` settings: which URLs are accepted, the SQLite default, and that the URL stays secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from zguard.config.loader import load_settings, masked_settings
from zguard.errors import ConfigError
from zguard.store.database import database_url


def test_default_is_sqlite_file_in_state_dir(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"ZGUARD_STATE_DIR": str(tmp_path / "st")})
    assert settings.database.url is None
    url = database_url(settings)
    assert url.drivername == "sqlite"
    assert url.database == str(tmp_path / "st" / "zguard.db")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/zguard/zguard.db",
        "sqlite:///relative/zguard.db",
        "postgresql+psycopg://zguard:pw@db.bank.internal:5432/zguard",
        "postgresql+psycopg://zguard@/zguard?host=/run/postgresql",
    ],
)
def test_supported_urls_are_accepted(url: str) -> None:
    settings = load_settings(None, environ={"ZGUARD_DATABASE__URL": url})
    assert database_url(settings) == make_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://zguard:hunter2@db/zguard",  # psycopg2, not psycopg 3
        "postgresql+asyncpg://zguard:hunter2@db/zguard",
        "mysql+pymysql://zguard:hunter2@db/zguard",
        "sqlite://",
        "sqlite:///:memory:",
        "hunter2",
    ],
)
def test_other_urls_are_refused_naming_the_key_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"ZGUARD_DATABASE__URL": url})
    [problem] = info.value.problems
    assert problem.startswith("database.url: ")
    assert "ZGUARD_DATABASE__URL" in problem
    assert "hunter2" not in problem


def test_url_is_masked_in_the_effective_settings() -> None:
    settings = load_settings(None, environ={"ZGUARD_DATABASE__URL": "postgresql+psycopg://zguard:hunter2@db/zguard"})
    shown = masked_settings(settings)
    assert shown["database"] == {"url": "**********"}
    assert "hunter2" not in repr(settings)
