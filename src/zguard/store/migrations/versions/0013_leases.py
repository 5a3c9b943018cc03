"""Leases: which replica runs a job only one may run at a time (the syslog forwarder).

`leases` one row per job (`name`): the replica holding it (`holder`, its `serve.replica_id`),
until when (`expires_ms`, epoch ms) and since when (`acquired_ms`). A replica takes an expired
lease with one conditional UPDATE, so two cannot both hold it; it renews it while it runs.

Additive only (a new table): a zguard of the previous revision keeps working against this
schema (rolling upgrades); it ignores the table and forwards as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("acquired_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
