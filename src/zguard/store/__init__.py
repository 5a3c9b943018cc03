"""zguard's state database: engine factory, ORM models, Alembic migrations, repositories.

Nothing here is created at import time: callers build an engine with
`zguard.store.database.create_store_engine` and pass it to the repositories.
"""
