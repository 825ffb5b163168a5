"""Limits on repeated refused sign-ins of domain or directory accounts that no user is mapped
to (by account and by address), with the checks in progress that hold their slots.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from sessiond.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "throttles",
        sa.Column("key", sa.String(600), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("blocked_until", UTCDateTime()),
    )
    op.create_table(
        "throttle_attempts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("key", sa.String(600), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_throttle_attempts_key", "throttle_attempts", ["key", "expires"])


def downgrade() -> None:
    op.drop_index("ix_throttle_attempts_key", "throttle_attempts")
    op.drop_table("throttle_attempts")
    op.drop_table("throttles")
