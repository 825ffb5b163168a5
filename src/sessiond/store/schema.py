"""Table definitions (SQLAlchemy Core), shared by the SQLite and PostgreSQL stores.

The migrations in ``migrations/versions`` create exactly these; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every dialect (SQLite keeps naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


#: The newest migration (``migrations/versions``); a test holds it to Alembic's own head.
HEAD_REVISION = "0009"

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
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
    # 0002: personal licences and failed sign-ins in a series
    sa.Column("personal_client", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("personal_web", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("failed_series_start", UTCDateTime()),
    sa.Column("failed_series_count", sa.Integer(), nullable=False, server_default="0"),
    # 0007: the block was set by the lockout, which leaves the user's sessions open
    sa.Column("locked_out", sa.Boolean(), nullable=False, server_default=sa.false()),
)

password_history = sa.Table(
    "password_history",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("password_hash", sa.String(512), nullable=False),
    sa.Column("changed", UTCDateTime(), nullable=False),
    sa.Index("ix_password_history_user", "user_id", "changed"),
)

sessions = sa.Table(
    "sessions",
    metadata,
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
    # 0007: moved by triggers on any change of the row but its last activity, and on a change
    # of its user's block or rights (the validation cache's check that the row is unchanged)
    sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Index("ix_sessions_user", "user_id"),
    sa.Index("ix_sessions_expires", "expires"),
    sa.Index("ix_sessions_license", "license_type", "expires"),
    # 0004: the orders the session lists page in
    sa.Index("ix_sessions_created", "created", "id"),
    sa.Index("ix_sessions_last_activity", "last_activity", "id"),
    sa.Index("ix_sessions_user_name", "user_name", "id"),
)

# 0003: password checks in progress, each holding one of its user's attempt slots
sign_in_attempts = sa.Table(
    "sign_in_attempts",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("started", UTCDateTime(), nullable=False),
    sa.Column("expires", UTCDateTime(), nullable=False),
    sa.Index("ix_sign_in_attempts_user", "user_id", "expires"),
)

# 0005: limits on repeated refused sign-ins of accounts no user is mapped to (by account and
# by address), and the checks in progress that hold their slots
throttles = sa.Table(
    "throttles",
    metadata,
    sa.Column("key", sa.String(600), primary_key=True),
    sa.Column("failures", sa.Integer(), nullable=False),
    sa.Column("window_start", UTCDateTime(), nullable=False),
    sa.Column("blocked_until", UTCDateTime()),
)

throttle_attempts = sa.Table(
    "throttle_attempts",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("key", sa.String(600), nullable=False),
    sa.Column("expires", UTCDateTime(), nullable=False),
    sa.Index("ix_throttle_attempts_key", "key", "expires"),
)

# 0006: removed sessions counted per bucket (the first byte of the id) by a trigger on SQLite:
# the validation cache's epochs
session_removals = sa.Table(
    "session_removals",
    metadata,
    sa.Column("bucket", sa.String(2), primary_key=True),
    sa.Column("removed", sa.BigInteger(), nullable=False),
)
REMOVAL_BUCKETS = 256


def removal_bucket(session_key: int) -> int:
    """The bucket of ``session_removals`` a session counts in, by its id (``UUID.int``): its
    first byte, which the trigger takes as the first two hex digits of the stored id."""
    return session_key >> 120


audit = sa.Table(
    "audit",
    metadata,
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
    # 0004: the hash chain (store/chain.py)
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # 0008: the audit key the record was chained with (None: before keyed chaining)
    sa.Column("key_id", sa.String(64)),
    sa.Index("ix_audit_at", "at"),
    sa.Index("ix_audit_session", "session_id"),
    sa.Index("ix_audit_user", "user_id", "id"),
    sa.Index("ix_audit_action", "action", "id"),
)

# 0004: the head of the audit hash chain; its row is locked to append a record
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.SmallInteger(), primary_key=True),
    sa.Column("last_id", sa.Integer(), nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
    # 0008: the first record chained with an audit key
    sa.Column("keyed_from", sa.Integer(), nullable=False),
)

# 0009: OpenID Connect: the user each provider account (issuer, subject) is mapped to (kept
# with the user's account, ``openid:<issuer>#<subject>``), and the provider session each
# platform session was opened under (back-channel logout closes exactly those)
openid_identities = sa.Table(
    "openid_identities",
    metadata,
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

openid_sessions = sa.Table(
    "openid_sessions",
    metadata,
    sa.Column(
        "session_id",
        sa.Uuid(),
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("issuer", sa.String(256), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("sid", sa.String(256)),
    sa.Index("ix_openid_sessions_sid", "issuer", "sid"),
    sa.Index("ix_openid_sessions_subject", "issuer", "subject"),
)

configuration = sa.Table(
    "configuration",
    metadata,
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

licence = sa.Table(
    "licence",
    metadata,
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
