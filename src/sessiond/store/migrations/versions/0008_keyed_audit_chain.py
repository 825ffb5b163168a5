"""Keyed audit chaining: from the next record on, each record's hash is an HMAC-SHA256 under a
key of the audit key ring (a file outside the database), and names that key. The head row
marks where keyed chaining starts (``keyed_from``); the records before it keep their unkeyed
SHA-256 chain and go on verifying as such.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("key_id", sa.String(64)))
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("keyed_from", sa.Integer()))
    op.execute("UPDATE audit_head SET keyed_from = last_id + 1")
    with op.batch_alter_table("audit_head") as batch:
        batch.alter_column("keyed_from", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("keyed_from")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("key_id")
