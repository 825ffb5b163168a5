"""Licences (the installed file, read by every node), personal licences, failed sign-in series.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from sessiond.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("personal_client", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("personal_web", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("failed_series_start", UTCDateTime()))
        batch.add_column(
            sa.Column("failed_series_count", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index("ix_sessions_license", "sessions", ["license_type", "expires"])
    op.create_table(
        "licence",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("licence_id", sa.String(256), nullable=False),
        sa.Column("licensee", sa.String(256), nullable=False),
        sa.Column("valid_from", UTCDateTime(), nullable=False),
        sa.Column("valid_to", UTCDateTime(), nullable=False),
        sa.Column("concurrent_client", sa.Integer(), nullable=False),
        sa.Column("personal_client", sa.Integer(), nullable=False),
        sa.Column("concurrent_web", sa.Integer(), nullable=False),
        sa.Column("personal_web", sa.Integer(), nullable=False),
        sa.Column("signed", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("installed", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("licence")
    op.drop_index("ix_sessions_license", "sessions")
    with op.batch_alter_table("users") as batch:
        for column in (
            "failed_series_count",
            "failed_series_start",
            "personal_web",
            "personal_client",
        ):
            batch.drop_column(column)
