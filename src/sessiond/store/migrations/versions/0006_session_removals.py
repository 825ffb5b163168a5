"""Counts of removed sessions, kept by the database itself (SQLite): the validation cache's
epochs. The sessions are spread over 256 buckets by the first byte of their id; a trigger counts
every removal in its session's bucket — by sessiond, the command line, another process, or plain
SQL — in the transaction that removes the row. sessiond's sweeper takes back, in its own
transaction, the removals of sessions past their lifetime (no cached validation can be served
for them: the cache checks the lifetime against the same clock on every request). Last-activity
touches and new sessions move no count, and a removal moves only its bucket's, so a logout does
not send every cached validation to the database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TRIGGER = "sessions_removed"
BUCKETS = 256  # by the first byte of the session id: the first two of its 32 hex digits


def upgrade() -> None:
    table = op.create_table(
        "session_removals",
        sa.Column("bucket", sa.String(2), primary_key=True),
        sa.Column("removed", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"bucket": f"{i:02x}", "removed": 0} for i in range(BUCKETS)])
    if op.get_bind().dialect.name == "sqlite":
        # PostgreSQL validates every request against the row itself (no epoch): no trigger,
        # so that closes on several nodes do not wait for these counter rows.
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER DELETE ON sessions BEGIN "
            "UPDATE session_removals SET removed = removed + 1 "
            "WHERE bucket = substr(OLD.id, 1, 2); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    op.drop_table("session_removals")
