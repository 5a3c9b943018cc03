"""TOTP second factors of console users, sealed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "totp_secrets",
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("sealed", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_step", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("principal", name="pk_totp_secrets"),
    )


def downgrade() -> None:
    op.drop_table("totp_secrets")
