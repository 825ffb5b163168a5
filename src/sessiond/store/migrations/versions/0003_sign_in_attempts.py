"""Password checks in progress: each holds one of its user's attempt slots, so that a lockout
of N never lets more than N wrong passwords be checked, however many arrive at once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from sessiond.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_in_attempts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("started", UTCDateTime(), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_sign_in_attempts_user", "sign_in_attempts", ["user_id", "expires"])


def downgrade() -> None:
    op.drop_index("ix_sign_in_attempts_user", "sign_in_attempts")
    op.drop_table("sign_in_attempts")
