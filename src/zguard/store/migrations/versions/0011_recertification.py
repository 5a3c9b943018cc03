"""Access re-certification campaigns: a quarter's campaign and one item per grant it covers.

`recertification_campaigns` one row per quarter (`quarter` unique); `recertification_items` one
row per campaign and grant (unique pair), holding who was asked and the decision. Additive only:
a zguard of the previous revision keeps working against this schema (rolling upgrades).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "recertification_campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("quarter", sa.String(length=16), nullable=False),
        sa.Column("opened_by", sa.String(length=128), nullable=False),
        sa.Column("opened_at", _AT, nullable=False),
        sa.Column("deadline", _AT, nullable=False),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("closed_by", sa.String(length=128), nullable=True),
        sa.Column("closed_at", _AT, nullable=True),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_recertification_campaigns_status"),
        sa.PrimaryKeyConstraint("id", name="pk_recertification_campaigns"),
        sa.UniqueConstraint("quarter", name="uq_recertification_campaigns_quarter"),
    )
    op.create_table(
        "recertification_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=False),
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("approvers", sa.String(length=512), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("decider", sa.String(length=128), nullable=True),
        sa.Column("decided_at", _AT, nullable=True),
        sa.Column("comment", sa.String(length=512), nullable=True),
        sa.CheckConstraint(
            "decision IN ('confirmed', 'revoked', 'lapsed', 'ended')", name="ck_recertification_items_decision"
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["recertification_campaigns.id"],
            name="fk_recertification_items_campaign_id_recertification_campaigns",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["approval_grants.id"],
            name="fk_recertification_items_grant_id_approval_grants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_recertification_items"),
    )
    op.create_index(
        "uq_recertification_items_campaign_id_grant_id",
        "recertification_items",
        ["campaign_id", "grant_id"],
        unique=True,
    )
    op.create_index(op.f("ix_recertification_items_grant_id"), "recertification_items", ["grant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_recertification_items_grant_id"), table_name="recertification_items")
    op.drop_index("uq_recertification_items_campaign_id_grant_id", table_name="recertification_items")
    op.drop_table("recertification_items")
    op.drop_table("recertification_campaigns")
