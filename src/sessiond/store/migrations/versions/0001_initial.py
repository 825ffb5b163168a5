"""Users, password history, sessions, audit and the configuration version.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from sessiond.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("login", sa.String(256), nullable=False),
        sa.Column("login_key", sa.String(256), nullable=False, unique=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("access_level", sa.SmallInteger(), nullable=False),
        sa.Column("login_type", sa.SmallInteger(), nullable=False),
        sa.Column("account", sa.String(512)),
        sa.Column("account_key", sa.String(512), unique=True),
        sa.Column("password_hash", sa.String(512)),
        sa.Column("password_changed", UTCDateTime()),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("blocked_due_date", UTCDateTime()),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("time_zone_utc_offset", sa.Integer()),
        sa.Column("created", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "password_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("password_hash", sa.String(512), nullable=False),
        sa.Column("changed", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_password_history_user", "password_history", ["user_id", "changed"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("user_login", sa.String(512)),
        sa.Column("access_level", sa.SmallInteger(), nullable=False),
        sa.Column("application_id", sa.Uuid()),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
        sa.Column("last_activity", UTCDateTime(), nullable=False),
        sa.Column("license_type", sa.SmallInteger(), nullable=False),
        sa.Column("login_type", sa.SmallInteger(), nullable=False),
        sa.Column("service_type", sa.SmallInteger(), nullable=False),
        sa.Column("device_type", sa.SmallInteger(), nullable=False),
        sa.Column("culture", sa.String(32)),
        sa.Column("ui_culture", sa.String(32)),
        sa.Column("utc_offset", sa.Integer()),
        sa.Column("time_zone_utc_offset", sa.Integer()),
        sa.Column("server_code", sa.String(256)),
        sa.Column("instance_name", sa.String(256)),
        sa.Column("host_ip", sa.String(64)),
        sa.Column("host_name", sa.String(256)),
        sa.Column("os_name", sa.String(256)),
        sa.Column("user_agent", sa.String(1024)),
        sa.Column("client_64bit", sa.Boolean()),
        sa.Column("client_64bit_os", sa.Boolean()),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("client_address", sa.String(64)),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id"])
    op.create_index("ix_sessions_expires", "sessions", ["expires"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.SmallInteger(), nullable=False),
        sa.Column("session_id", sa.Uuid()),
        sa.Column("user_id", sa.Uuid()),
        sa.Column("user_name", sa.String(256)),
        sa.Column("actor_id", sa.Uuid()),
        sa.Column("actor_name", sa.String(256)),
        sa.Column("client_address", sa.String(64)),
        sa.Column("details", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_session", "audit", ["session_id"])
    op.create_table(
        "configuration",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("modified", UTCDateTime(), nullable=False),
        sa.Column("modified_by_id", sa.Uuid()),
        sa.Column("modified_by_name", sa.String(256), nullable=False),
        sa.Column("build_version", sa.String(64), nullable=False),
        sa.Column("build_name", sa.String(256), nullable=False),
        sa.Column("build_date", UTCDateTime()),
        sa.Column("description", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("configuration", "audit", "sessions", "password_history", "users"):
        op.drop_table(table)
