"""What differs between SQLite and PostgreSQL, in one place: a :class:`Dialect`, chosen once
when the store is created (:func:`dialect_of` its engine), which the portable store (``sql.py``,
``transaction.py``, ``health.py``) asks wherever the two differ, so that it names neither:

- how a write begins (:meth:`Dialect.writing`): SQLite takes the database's one write lock at
  ``BEGIN IMMEDIATE``, so that two writers never both read and then race to upgrade their locks
  (which SQLite answers with "database is locked"); PostgreSQL begins as usual, and the
  transaction takes row locks (``SELECT ... FOR UPDATE``) where a rule needs them;
- start-up serialisation (:meth:`Dialect.serialise_start`): nodes that start together migrate
  one after another (PostgreSQL: a transaction-level advisory lock; SQLite: the write lock);
- notifications (:meth:`Dialect.announce`): PostgreSQL's ``NOTIFY``, sent at commit to the
  other nodes (:mod:`.notify`); SQLite has one node and sends nothing;
- what follows a delete of sessions (:meth:`Dialect.after_delete`): PostgreSQL names them to
  the other nodes; SQLite takes back its removal counts of those past their lifetime;
- the cache epoch: SQLite's trigger (migration 0006) counts every removal, and the validation
  cache reads the counts (:meth:`.SqliteStore.session_epoch`); what the portable store does for
  it is in :meth:`Dialect.after_delete`. PostgreSQL keeps no count (a cached session is checked
  against its row each time);
- what counts as unreachable (:meth:`Dialect.driver_unreachable`, with the rule shared by both
  in :func:`.health.unreachable`), and whether a wait on the database must be ended by closing
  the connection under it (:attr:`Dialect.remote`: a server that freezes answers nothing);
- ``RETURNING``: both need it (the rows a ``DELETE`` removed are the ones its transaction
  audits, whoever else deletes at the same moment); :meth:`Dialect.configure` refuses a
  database whose SQL lacks it (SQLite before 3.35) when the store is made, not at the first
  close.

A strategy holds no state: one instance of each serves every store.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import SettingsError
from . import notify, schema
from .base import SessionRecord

#: The execution option that marks a connection as about to write (SQLite's begin reads it).
_WRITE = "sessiond_write"
#: pg_advisory_xact_lock key for start-up: "sessiond" in ASCII, as a number.
START_LOCK = 0x73657373696F6E64


class Dialect:
    """The portable behaviour; each database overrides what it does differently."""

    #: SQLAlchemy's name of the database this strategy is for.
    name: ClassVar[str]
    #: The database is a server across a network, which can freeze: a wait on it is ended by
    #: closing the connection under the work (bounds.py), not by cancelling the task.
    remote: ClassVar[bool] = False

    def configure(self, engine: AsyncEngine) -> None:
        """Set up a new engine of this database; raises :class:`SettingsError` if its SQL
        cannot serve sessiond."""
        sql = engine.dialect
        if not (sql.update_returning and sql.delete_returning):
            raise SettingsError(
                f"the {sql.name} database's SQL has no UPDATE/DELETE ... RETURNING, which "
                "sessiond needs (SQLite 3.35 or newer; every supported PostgreSQL): upgrade it"
            )

    async def writing(self, conn: AsyncConnection) -> AsyncConnection:
        """``conn``, ready to begin a write transaction."""
        return conn

    async def serialise_start(self, conn: AsyncConnection) -> None:
        """Make nodes that start at once migrate one after another (in ``conn``'s write
        transaction, which start-up holds until it is done)."""

    async def announce(self, conn: AsyncConnection, *payloads: str) -> None:
        """Tell the other nodes, when ``conn``'s transaction commits (see :mod:`.notify`)."""

    async def after_delete(
        self,
        conn: AsyncConnection,
        deleted: Sequence[SessionRecord],
        lifetime_ended_by: datetime | None,
    ) -> None:
        """What follows, in the same transaction, the deletion of these sessions' rows.
        ``lifetime_ended_by``: see :meth:`.Transaction.delete_sessions`."""

    def driver_unreachable(self, exc: BaseException) -> bool:
        """An error this database's driver raises as it is, meaning the server is gone (not
        that a statement failed)."""
        return isinstance(exc, OSError)  # refused, reset, unknown host, connect timeout

    def driver_read_only(self, exc: BaseException) -> bool:
        """An error this database's driver raises meaning the server is a standby or
        read-only now (never, for a database that has no standbys)."""
        return False


class SqliteDialect(Dialect):
    name = "sqlite"

    def configure(self, engine: AsyncEngine) -> None:
        super().configure(engine)

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    async def writing(self, conn: AsyncConnection) -> AsyncConnection:
        return await conn.execution_options(**{_WRITE: True})

    async def after_delete(
        self,
        conn: AsyncConnection,
        deleted: Sequence[SessionRecord],
        lifetime_ended_by: datetime | None,
    ) -> None:
        # The trigger of migration 0006 counted every removal in its session's bucket; take
        # back those of sessions past their lifetime, in this same transaction (a count never
        # goes down).
        if lifetime_ended_by is None:
            return
        ended = Counter(
            f"{schema.removal_bucket(r.id.int):02x}"
            for r in deleted
            if r.token.expires <= lifetime_ended_by
        )
        if ended:
            r = schema.session_removals
            await conn.execute(
                r.update()
                .where(r.c.bucket == sa.bindparam("b"))
                .values(removed=r.c.removed - sa.bindparam("n")),
                [{"b": bucket, "n": n} for bucket, n in sorted(ended.items())],
            )


class PostgresDialect(Dialect):
    name = "postgresql"
    remote = True

    async def serialise_start(self, conn: AsyncConnection) -> None:
        # Start-up waits for another node's migration and then may migrate itself: no
        # statement_timeout for this one transaction.
        await conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": START_LOCK})

    async def announce(self, conn: AsyncConnection, *payloads: str) -> None:
        await notify.announce(conn, *payloads)

    async def after_delete(
        self,
        conn: AsyncConnection,
        deleted: Sequence[SessionRecord],
        lifetime_ended_by: datetime | None,
    ) -> None:
        await notify.announce(conn, *notify.revoked_payloads([r.id for r in deleted]))

    def driver_unreachable(self, exc: BaseException) -> bool:
        if super().driver_unreachable(exc):
            return True
        # Looked up only if something imported it already (a SQLite store needs none).
        asyncpg: Any = sys.modules.get("asyncpg")
        if asyncpg is None:
            return False
        errors = asyncpg.exceptions
        return isinstance(
            exc,
            (
                errors.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError included
                errors.InterfaceError,  # "connection is closed" and the like, on the client side
                errors.CannotConnectNowError,  # starting up, shutting down
                errors.AdminShutdownError,
                errors.CrashShutdownError,
                errors.TooManyConnectionsError,
            ),
        )

    def driver_read_only(self, exc: BaseException) -> bool:
        """No host of the URL is the primary (``target_session_attrs``, store/pgurl.py), or a
        write was refused (SQLSTATE 25006: a standby, ``default_transaction_read_only``)."""
        asyncpg: Any = sys.modules.get("asyncpg")
        if asyncpg is None:
            return False
        errors = asyncpg.exceptions
        return isinstance(
            exc, errors.TargetServerAttributeNotMatched | errors.ReadOnlySQLTransactionError
        )


SQLITE = SqliteDialect()
POSTGRES = PostgresDialect()
#: Every database sessiond can keep its store in.
DIALECTS: tuple[Dialect, ...] = (SQLITE, POSTGRES)


def dialect_of(engine: AsyncEngine | sa.Engine) -> Dialect:
    """The strategy for the database ``engine`` connects to."""
    name = engine.dialect.name
    for dialect in DIALECTS:
        if dialect.name == name:
            return dialect
    raise SettingsError(
        f"unsupported database {name!r}: use sqlite+aiosqlite:///<file> or "
        "postgresql+asyncpg://user:password@host/database"
    )
