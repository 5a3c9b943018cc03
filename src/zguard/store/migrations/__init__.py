"""Alembic migrations of the state database, shipped in the package (see `zguard.store.migrate`)."""
