"""Model-use approvals: requests, the approvers' decisions, and the grants they make.

`approval_requests` holds what someone asked for; `approval_decisions` one row per approver and
request (unique, so nobody decides twice); `approval_grants` one row per approved request
(`request_id` unique, so two approvers completing a quorum at once make one grant). Additive
only: a zguard of the previous revision keeps working against this schema (rolling upgrades).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Plain SQLAlchemy types and the naming convention's names spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("requester_id", sa.Integer(), nullable=True),
        sa.Column("requester", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=256), nullable=False),
        sa.Column("model_digest", sa.String(length=80), nullable=False),
        sa.Column("purpose", sa.String(length=512), nullable=False),
        sa.Column("business_unit", sa.String(length=128), nullable=False),
        sa.Column("ticket", sa.String(length=128), nullable=True),
        sa.Column("data_classification", sa.String(length=128), nullable=False),
        sa.Column("quota_per_day", sa.Integer(), nullable=False),
        sa.Column("quota_total", sa.Integer(), nullable=False),
        sa.Column("validity_days", sa.Integer(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'expired')", name="ck_approval_requests_status"
        ),
        sa.ForeignKeyConstraint(
            ["requester_id"],
            ["principals.id"],
            name="fk_approval_requests_requester_id_principals",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_approval_requests"),
    )
    op.create_index(op.f("ix_approval_requests_requester_id"), "approval_requests", ["requester_id"])
    op.create_index(op.f("ix_approval_requests_requester"), "approval_requests", ["requester"])
    op.create_index(op.f("ix_approval_requests_status"), "approval_requests", ["status"])
    op.create_table(
        "approval_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("decider_id", sa.Integer(), nullable=True),
        sa.Column("decider", sa.String(length=128), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("comment", sa.String(length=512), nullable=True),
        sa.Column("at", _AT, nullable=False),
        sa.CheckConstraint("decision IN ('approve', 'reject')", name="ck_approval_decisions_decision"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name="fk_approval_decisions_request_id_approval_requests",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["decider_id"], ["principals.id"], name="fk_approval_decisions_decider_id_principals", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_approval_decisions"),
    )
    op.create_index(
        "uq_approval_decisions_request_id_decider", "approval_decisions", ["request_id", "decider"], unique=True
    )
    op.create_table(
        "approval_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=True),
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("model_digest", sa.String(length=80), nullable=False),
        sa.Column("max_size", sa.Integer(), nullable=True),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("quota_per_day", sa.Integer(), nullable=False),
        sa.Column("quota_total", sa.Integer(), nullable=False),
        sa.Column("used_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("not_before", _AT, nullable=False),
        sa.Column("expires_at", _AT, nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("revoked_by", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.CheckConstraint("status IN ('active', 'revoked', 'expired', 'exhausted')", name="ck_approval_grants_status"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name="fk_approval_grants_request_id_approval_requests",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name="fk_approval_grants_principal_id_principals", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_approval_grants"),
        sa.UniqueConstraint("request_id", name="uq_approval_grants_request_id"),
    )
    op.create_index(op.f("ix_approval_grants_principal"), "approval_grants", ["principal"])


def downgrade() -> None:
    op.drop_index(op.f("ix_approval_grants_principal"), table_name="approval_grants")
    op.drop_table("approval_grants")
    op.drop_index("uq_approval_decisions_request_id_decider", table_name="approval_decisions")
    op.drop_table("approval_decisions")
    op.drop_index(op.f("ix_approval_requests_status"), table_name="approval_requests")
    op.drop_index(op.f("ix_approval_requests_requester"), table_name="approval_requests")
    op.drop_index(op.f("ix_approval_requests_requester_id"), table_name="approval_requests")
    op.drop_table("approval_requests")
