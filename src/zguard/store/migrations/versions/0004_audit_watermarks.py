"""The watermark index: which audit event carries an image's watermark id, for `zguard trace`.

Backfilled from the bodies of the events already stored. The events themselves, and so the hash
chain, are not touched.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import json
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# What `zguard.audit.store.watermark_ids` indexes, frozen here as of this revision: a later change
# to the store must not change what this migration did.
_WATERMARK_ID = re.compile(r"[0-9a-f]{16}")
_BATCH = 5_000


def upgrade() -> None:
    watermarks = op.create_table(
        "audit_watermarks",
        sa.Column("watermark_id", sa.String(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("watermark_id", "seq", name=op.f("pk_audit_watermarks")),
    )
    op.create_index(op.f("ix_audit_watermarks_seq"), "audit_watermarks", ["seq"])
    _backfill(watermarks)


def _backfill(watermarks: sa.Table) -> None:
    """Index every stored event whose images carry watermark ids, in batches by seq."""
    events = sa.table("audit_events", sa.column("seq", sa.BigInteger()), sa.column("body", sa.String()))
    bind = op.get_bind()
    # The LIKE only skips bodies that cannot match; each candidate is parsed to be sure.
    candidates = sa.select(events.c.seq, events.c.body).where(events.c.body.like('%"watermark_id":"%'))
    after = -1  # below any seq
    while True:
        rows = bind.execute(candidates.where(events.c.seq > after).order_by(events.c.seq).limit(_BATCH)).all()
        marks = [{"watermark_id": w, "seq": seq} for seq, body in rows for w in _watermark_ids(body)]
        if marks:
            bind.execute(sa.insert(watermarks), marks)
        if len(rows) < _BATCH:
            return
        after = rows[-1][0]


def _watermark_ids(body: str) -> list[str]:
    try:
        images: Any = json.loads(body).get("images")
    except (ValueError, AttributeError):  # not a JSON object: verification reports it, not this
        return []
    found: list[str] = []
    for image in images if isinstance(images, list) else ():
        value = image.get("watermark_id") if isinstance(image, dict) else None
        if isinstance(value, str) and _WATERMARK_ID.fullmatch(value) and value not in found:
            found.append(value)
    return found


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_watermarks_seq"), table_name="audit_watermarks")
    op.drop_table("audit_watermarks")
