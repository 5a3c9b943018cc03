"""Principals from the bank's identity provider: where each comes from and its key there.

`source` is `local` for every principal already stored (zguard's own users and service
accounts); OIDC, LDAP and SCIM principals carry the issuer and the subject that name them
there, unique per source, so a renamed user stays one principal. Additive only: a zguard of the
previous revision keeps working against this schema (rolling upgrades).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("principals", sa.Column("source", sa.String(length=16), server_default="local", nullable=False))
    op.add_column("principals", sa.Column("issuer", sa.String(length=512), nullable=True))
    op.add_column("principals", sa.Column("subject", sa.String(length=512), nullable=True))
    op.create_index("uq_principals_source_issuer_subject", "principals", ["source", "issuer", "subject"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_principals_source_issuer_subject", table_name="principals")
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("subject")
        batch.drop_column("issuer")
        batch.drop_column("source")
