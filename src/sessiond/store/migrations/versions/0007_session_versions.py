"""A version on every session row, moved by the database itself on any change of the row other
than its last activity, and on any change of its user's block or rights; on SQLite the same
changes also move the removal counts of migration 0006 (the validation cache's epochs).

- ``sessions.version``: set by a trigger when the row is inserted (so a row deleted and
  inserted again never keeps its version, whatever the INSERT says) and when an UPDATE changes
  any column but ``last_activity`` (a touch moves nothing). PostgreSQL takes it from the
  sequence ``session_versions``; SQLite, which has no sequences, from ``random()`` (64 bits).
- ``users.locked_out``: the user's block was set by the lockout (failed sign-ins), which leaves
  the user's sessions open; any other block (an administrator's, or one made by SQL, where the
  column keeps its default) closes them at their next validation.
- A change of a user's ``id``, ``blocked``, ``blocked_due_date``, ``locked_out``,
  ``access_level`` or ``login_type``, or the user's removal, gives each of the user's sessions a
  new version (and, on SQLite, moves their buckets' removal counts), so that a validation cache
  holding one of them reads it again at its next request.

Whoever makes the change (sessiond, the command line, another process, plain SQL), the triggers
run in its transaction. A later migration that adds a column to ``sessions`` or ``users`` must
create these triggers again with it (:data:`SESSION_COLUMNS`, :data:`USER_COLUMNS`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Every column of ``sessions`` at this revision but ``last_activity`` and ``version``.
SESSION_COLUMNS = (
    "id", "user_id", "user_name", "user_login", "access_level", "application_id", "created",
    "expires", "license_type", "login_type", "service_type", "device_type", "culture",
    "ui_culture", "utc_offset", "time_zone_utc_offset", "server_code", "instance_name",
    "host_ip", "host_name", "os_name", "user_agent", "client_64bit", "client_64bit_os",
    "key_id", "signature", "client_address",
)  # fmt: skip
#: The columns of ``users`` a validation decides on.
USER_COLUMNS = ("id", "blocked", "blocked_due_date", "locked_out", "access_level", "login_type")

SQLITE_TRIGGERS = ("sessions_inserted", "sessions_changed", "users_changed", "users_removed")


def _changed_sqlite(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns)


def _changed_postgres(columns: tuple[str, ...]) -> str:
    old = ", ".join(f"OLD.{c}" for c in columns)
    new = ", ".join(f"NEW.{c}" for c in columns)
    return f"(ROW({old}) IS DISTINCT FROM ROW({new}))"


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("locked_out", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_upgrade()
    else:
        _postgres_upgrade()


def _sqlite_upgrade() -> None:
    op.execute("UPDATE sessions SET version = random()")
    op.execute(
        "CREATE TRIGGER sessions_inserted AFTER INSERT ON sessions BEGIN "
        "UPDATE sessions SET version = random() WHERE id = NEW.id; END"
    )
    op.execute(
        f"CREATE TRIGGER sessions_changed AFTER UPDATE ON sessions "
        f"WHEN {_changed_sqlite(SESSION_COLUMNS)} BEGIN "
        "UPDATE sessions SET version = random() WHERE id = NEW.id; "
        "UPDATE session_removals SET removed = removed + 1 "
        "WHERE bucket IN (substr(OLD.id, 1, 2), substr(NEW.id, 1, 2)); END"
    )
    for name, event, when, user in (
        ("users_changed", "UPDATE", f"WHEN {_changed_sqlite(USER_COLUMNS)} ", "OLD.id"),
        ("users_removed", "DELETE", "", "OLD.id"),
    ):
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON users {when}BEGIN "
            "UPDATE session_removals SET removed = removed + 1 WHERE bucket IN "
            f"(SELECT substr(id, 1, 2) FROM sessions WHERE user_id = {user}); "
            f"UPDATE sessions SET version = random() WHERE user_id = {user}; END"
        )


def _postgres_upgrade() -> None:
    op.execute("CREATE SEQUENCE session_versions")
    op.execute("UPDATE sessions SET version = nextval('session_versions')")
    op.execute(
        "CREATE FUNCTION session_new_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.version := nextval('session_versions'); RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER sessions_inserted BEFORE INSERT ON sessions FOR EACH ROW "
        "EXECUTE FUNCTION session_new_version()"
    )
    op.execute(
        "CREATE TRIGGER sessions_changed BEFORE UPDATE ON sessions FOR EACH ROW "
        f"WHEN {_changed_postgres(SESSION_COLUMNS)} EXECUTE FUNCTION session_new_version()"
    )
    op.execute(
        "CREATE FUNCTION user_sessions_new_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN UPDATE sessions SET version = nextval('session_versions') "
        "WHERE user_id = OLD.id; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER users_changed AFTER UPDATE ON users FOR EACH ROW "
        f"WHEN {_changed_postgres(USER_COLUMNS)} EXECUTE FUNCTION user_sessions_new_version()"
    )
    op.execute(
        "CREATE TRIGGER users_removed AFTER DELETE ON users FOR EACH ROW "
        "EXECUTE FUNCTION user_sessions_new_version()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS users_removed ON users")
        op.execute("DROP TRIGGER IF EXISTS users_changed ON users")
        op.execute("DROP TRIGGER IF EXISTS sessions_changed ON sessions")
        op.execute("DROP TRIGGER IF EXISTS sessions_inserted ON sessions")
        op.execute("DROP FUNCTION IF EXISTS user_sessions_new_version()")
        op.execute("DROP FUNCTION IF EXISTS session_new_version()")
        op.execute("DROP SEQUENCE IF EXISTS session_versions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("locked_out")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("version")
