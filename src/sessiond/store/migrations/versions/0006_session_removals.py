"""A count of session rows removed, kept by the database itself (SQLite): the validation cache's
epoch. A trigger counts every removal — by sessiond, the command line, another process, or plain
SQL — in the transaction that removes the row; sessiond's sweeper takes back, in its own
transaction, the removals of sessions past their lifetime (no cached validation can be served
for them: the cache checks the lifetime against the same clock on every request). Last-activity
touches and new sessions do not move it.

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


def upgrade() -> None:
    table = op.create_table(
        "session_removals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("removed", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "removed": 0}])
    if op.get_bind().dialect.name == "sqlite":
        # PostgreSQL validates every request against the row itself (no cache): no trigger,
        # so that closes on several nodes do not all wait for one counter row.
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER DELETE ON sessions BEGIN "
            "UPDATE session_removals SET removed = removed + 1 WHERE id = 1; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    op.drop_table("session_removals")
