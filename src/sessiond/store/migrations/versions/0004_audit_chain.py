"""The audit trail's hash chain (existing records are chained in id order), and the indexes
the session and audit lists page through.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from sessiond.store.chain import GENESIS, record_hash
from sessiond.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_audit = sa.table(
    "audit",
    sa.column("id", sa.Integer()),
    sa.column("at", UTCDateTime()),
    sa.column("action", sa.SmallInteger()),
    sa.column("session_id", sa.Uuid()),
    sa.column("user_id", sa.Uuid()),
    sa.column("user_name", sa.String()),
    sa.column("actor_id", sa.Uuid()),
    sa.column("actor_name", sa.String()),
    sa.column("client_address", sa.String()),
    sa.column("details", sa.Text()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64)))
        batch.add_column(sa.Column("hash", sa.String(64)))
    conn = op.get_bind()
    prev, last_id = GENESIS, 0
    rows = conn.execute(sa.select(_audit).order_by(_audit.c.id)).mappings().all()
    for row in rows:
        # Renumber consecutively: the chain's ids have no gaps.
        last_id += 1
        values = {**row, "id": last_id}
        digest = record_hash(prev, values)
        conn.execute(
            _audit.update()
            .where(_audit.c.id == row["id"])
            .values(id=last_id, prev_hash=prev, hash=digest)
        )
        prev = digest
    with op.batch_alter_table("audit") as batch:
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
        batch.create_index("ix_audit_user", ["user_id", "id"])
        batch.create_index("ix_audit_action", ["action", "id"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "last_id": last_id, "last_hash": prev}])
    op.create_index("ix_sessions_created", "sessions", ["created", "id"])
    op.create_index("ix_sessions_last_activity", "sessions", ["last_activity", "id"])
    op.create_index("ix_sessions_user_name", "sessions", ["user_name", "id"])


def downgrade() -> None:
    for name in ("ix_sessions_user_name", "ix_sessions_last_activity", "ix_sessions_created"):
        op.drop_index(name, "sessions")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit") as batch:
        batch.drop_index("ix_audit_action")
        batch.drop_index("ix_audit_user")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
