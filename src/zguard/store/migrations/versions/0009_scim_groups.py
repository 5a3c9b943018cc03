"""SCIM provisioning: the IdP's groups, their members, and what SCIM keeps of its users.

Provisioned users are principals (source `scim`, issuer `scim`, subject = the SCIM id zguard
assigned, migration 0008); `scim_users` adds the IdP's `externalId` and `displayName` for them.
`scim_groups` / `scim_group_members` hold the groups whose names `identity.scim.group_role_map`
maps to roles. Additive only: a zguard of the previous revision keeps working against this
schema (rolling upgrades), and never sees these tables.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "scim_users",
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=512), nullable=True),
        sa.Column("display_name", sa.String(length=256), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name="fk_scim_users_principal_id_principals", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("principal_id", name="pk_scim_users"),
    )
    op.create_index(op.f("ix_scim_users_external_id"), "scim_users", ["external_id"])
    op.create_table(
        "scim_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scim_id", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("external_id", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scim_groups"),
        sa.UniqueConstraint("scim_id", name="uq_scim_groups_scim_id"),
        sa.UniqueConstraint("display_name", name="uq_scim_groups_display_name"),
    )
    op.create_index(op.f("ix_scim_groups_external_id"), "scim_groups", ["external_id"])
    op.create_table(
        "scim_group_members",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["scim_groups.id"], name="fk_scim_group_members_group_id_scim_groups", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name="fk_scim_group_members_principal_id_principals",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "principal_id", name="pk_scim_group_members"),
    )
    op.create_index(op.f("ix_scim_group_members_principal_id"), "scim_group_members", ["principal_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_scim_group_members_principal_id"), table_name="scim_group_members")
    op.drop_table("scim_group_members")
    op.drop_index(op.f("ix_scim_groups_external_id"), table_name="scim_groups")
    op.drop_table("scim_groups")
    op.drop_index(op.f("ix_scim_users_external_id"), table_name="scim_users")
    op.drop_table("scim_users")
