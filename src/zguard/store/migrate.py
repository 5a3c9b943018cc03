"""Schema migrations, run programmatically: `zguard db upgrade` and the start-up check.

The Alembic scripts ship inside the package (`zguard/store/migrations`), so an installed wheel
migrates without an `alembic.ini` or a source checkout. A new revision for a model change:

    from zguard.store import migrate
    migrate.new_revision(engine_on_a_database_at_head, "what changed", rev_id="0002")

then review the generated file in `migrations/versions/` like any other code.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from zguard.store.errors import SchemaNotCurrent

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic configuration pointing at the shipped scripts; no file is read."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The revision this build of zguard expects the database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migrations found in " + str(MIGRATIONS_DIR))
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None when it has never been migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database up to `revision` in one transaction where the backend allows; return where it is now."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return current_revision(engine)


def check_schema_current(engine: Engine) -> None:
    """Raise `SchemaNotCurrent` unless the database is exactly at head (serve refuses to start otherwise)."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    scripts = ScriptDirectory.from_config(alembic_config())
    known = current is None or current in {script.revision for script in scripts.walk_revisions()}
    raise SchemaNotCurrent(current, head, known=known)


def new_revision(engine: Engine, message: str, *, rev_id: str) -> None:
    """Autogenerate a revision from the difference between the models and `engine`'s database (developers only)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
