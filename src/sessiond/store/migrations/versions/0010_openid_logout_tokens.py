"""OpenID Connect back-channel logout: the logout tokens already acted on, by issuer and
``jti``, kept until they are too old to be accepted again (then the sweeper removes them), so
that a replayed logout token is refused on every node.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from sessiond.store.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "openid_logout_tokens",
        sa.Column("issuer", sa.String(256), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("keep_until", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_openid_logout_tokens_keep_until", "openid_logout_tokens", ["keep_until"])


def downgrade() -> None:
    op.drop_index("ix_openid_logout_tokens_keep_until", "openid_logout_tokens")
    op.drop_table("openid_logout_tokens")
