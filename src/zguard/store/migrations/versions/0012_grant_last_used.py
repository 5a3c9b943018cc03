"""Grant use, scope and group requests on the approval tables.

- `approval_grants.last_used_at`: when the grant was last charged (NULL until its first use),
  written with `used_total` in the same UPDATE; the permission review (`zguard scan`) and the
  console's grant report list grants unused for 30 days by it.
- `approval_decisions.max_size` / `max_steps`: the scope each approver set; with a quorum of
  two the grant gets the tightest of them.
- `approval_requests.group_scim_id` / `group_name` and the same on `approval_grants`: a request
  made for a SCIM group, and the grant held by it (covering its members). The SCIM id is opaque
  and never reused, so a group deleted and another made under its name inherits nothing; no
  foreign key, so the grant's record outlives the group.

Additive only: a zguard of the previous revision keeps working against this schema (rolling
upgrades).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("approval_grants", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("approval_grants", sa.Column("group_scim_id", sa.String(length=32), nullable=True))
    op.add_column("approval_grants", sa.Column("group_name", sa.String(length=256), nullable=True))
    op.create_index(op.f("ix_approval_grants_group_scim_id"), "approval_grants", ["group_scim_id"])
    op.add_column("approval_requests", sa.Column("group_scim_id", sa.String(length=32), nullable=True))
    op.add_column("approval_requests", sa.Column("group_name", sa.String(length=256), nullable=True))
    op.add_column("approval_decisions", sa.Column("max_size", sa.Integer(), nullable=True))
    op.add_column("approval_decisions", sa.Column("max_steps", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_decisions") as batch:
        batch.drop_column("max_steps")
        batch.drop_column("max_size")
    with op.batch_alter_table("approval_requests") as batch:
        batch.drop_column("group_name")
        batch.drop_column("group_scim_id")
    op.drop_index(op.f("ix_approval_grants_group_scim_id"), table_name="approval_grants")
    with op.batch_alter_table("approval_grants") as batch:
        batch.drop_column("group_name")
        batch.drop_column("group_scim_id")
        batch.drop_column("last_used_at")
