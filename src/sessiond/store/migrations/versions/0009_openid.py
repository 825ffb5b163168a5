"""OpenID Connect: which user each provider account (issuer, subject) is mapped to, and the
provider session (``sid``) each platform session was opened under, written with the session.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "openid_identities",
        sa.Column("issuer", sa.String(256), primary_key=True),
        sa.Column("subject", sa.String(256), primary_key=True),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
    )
    op.create_table(
        "openid_sessions",
        sa.Column(
            "session_id",
            sa.Uuid(),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("issuer", sa.String(256), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("sid", sa.String(256)),
    )
    op.create_index("ix_openid_sessions_sid", "openid_sessions", ["issuer", "sid"])
    op.create_index("ix_openid_sessions_subject", "openid_sessions", ["issuer", "subject"])


def downgrade() -> None:
    op.drop_index("ix_openid_sessions_subject", "openid_sessions")
    op.drop_index("ix_openid_sessions_sid", "openid_sessions")
    op.drop_table("openid_sessions")
    op.drop_table("openid_identities")
