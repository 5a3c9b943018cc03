"""The audit trail's time blocks: the earliest and latest event time per 4,096 chain positions,
so that a search by time range scans only the positions where its events can be.

Backfilled from the events already stored in one grouped statement; the events themselves, and
so the hash chain, are not touched.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

# `zguard.store.models.AUDIT_TIME_BLOCK` as of this revision: the store and the rows it keeps
# must agree, so a later change of the block size needs a migration that rebuilds the table.
_BLOCK = 4096


def upgrade() -> None:
    op.create_table(
        "audit_time_blocks",
        sa.Column("block", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("min_ms", sa.BigInteger(), nullable=False),
        sa.Column("max_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("block", name="pk_audit_time_blocks"),
    )
    # Integer division on both SQLite and PostgreSQL (both operands are integers).
    op.execute(
        "INSERT INTO audit_time_blocks (block, min_ms, max_ms) "  # noqa: S608 - a constant of this module
        f"SELECT seq / {_BLOCK}, MIN(time_ms), MAX(time_ms) FROM audit_events GROUP BY seq / {_BLOCK}"
    )


def downgrade() -> None:
    op.drop_table("audit_time_blocks")
