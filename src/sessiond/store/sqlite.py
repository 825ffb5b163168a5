"""SQLite, the embedded default: one file, WAL, and write transactions that take the lock first.

``BEGIN IMMEDIATE`` for writes (its :class:`.Dialect`, in dialect.py, with what else the portable
store does differently here) means two writers never both read and then race to upgrade their
locks (which SQLite answers with "database is locked"); readers stay concurrent under WAL.

The per-request session reads skip the async driver: a primary-key read from a WAL database
takes microseconds and never waits for writers, while handing it to aiosqlite's thread costs
hundreds. So :meth:`SqliteStore.get_session`, :meth:`SqliteStore.session_to_validate` and
:meth:`SqliteStore.session_version` read on the calling thread with their own read-only
connection. :meth:`SqliteStore.session_epoch` tells
the service's validation cache when a session may have gone or changed: counts of removed
sessions in 256 buckets, kept by a trigger (migration 0006) in the transaction of every removal,
by whoever removes it, and moved too (migration 0007) by any change of a session row but a touch
and by a change of its user's block or rights.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from ..errors import SettingsError, StoreMissing
from ..settings import hide_password
from .base import SessionRecord, SessionUser
from .codec import SQLITE_SESSIONS, session_with_user_sql
from .health import unavailable
from .schema import REMOVAL_BUCKETS, removal_bucket
from .sql import SqlStore

BUSY_TIMEOUT_MS = 10_000
READER_BUSY_TIMEOUT_MS = 50  # the event loop waits at most this long on a locked database


#: How a message about the database file says where to point sessiond instead.
_POINT = "point data_dir (--data-dir, SESSIOND_DATA_DIR) or database_url"


def create_sqlite_store(url: str, *, create: bool = True) -> SqlStore:
    """The store in the SQLite file ``url`` names.

    ``create``: make its folder (0700) and the file (0600) when they are missing, and check
    that both can be written, so that an unusable place is one clear :class:`SettingsError`.
    Without ``create`` (administrative commands) nothing is made: a missing file is
    :class:`StoreMissing`."""
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database)
        if create:
            _prepare(database)
        elif not database.is_file():
            raise StoreMissing(
                f"no sessiond database at {database} ({hide_password(url)}): {_POINT} at the "
                "server's store, or create one with 'sessiond init'"
            )
    # Last in, first out: the connection just used is used again, so that under light load
    # one connection's page cache is warm rather than eight half-filled ones (RSS).
    engine = create_async_engine(url, pool_size=8, max_overflow=8, pool_use_lifo=True)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins (and how: the
        # dialect's begin, dialect.py).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    return SqliteStore(engine, parsed.database)


def _prepare(database: Path) -> None:
    """Make the database's folder and file, or say in one line why they cannot be made."""
    folder = database.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise SettingsError(
            f"cannot use {folder} as the data folder: it exists and is not a folder; {_POINT} "
            "at a folder"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"cannot create the data folder {folder}: {exc.strerror}; {_POINT} at a folder this "
            "account can write"
        ) from None
    if not folder.is_dir():
        raise SettingsError(
            f"cannot use {folder} as the data folder: it is not a folder; {_POINT} at a folder"
        )
    try:
        # The file SQLite would create, made here so that a folder it cannot write (a read-only
        # file system, another account's folder) shows now, as one line, not at the first write.
        fd = os.open(database, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise SettingsError(
            f"cannot create or write the database {database}: {exc.strerror}; {_POINT} at a "
            "folder this account can write"
        ) from None
    if not os.access(folder, os.W_OK):
        # SQLite writes its -wal and -shm files beside the database.
        raise SettingsError(
            f"cannot write in the data folder {folder} (SQLite keeps its -wal and -shm files "
            f"there); {_POINT} at a folder this account can write"
        )


_SELECT_SESSION = f"SELECT {', '.join(SQLITE_SESSIONS.columns)} FROM sessions WHERE id = ?"
_SELECT_TO_VALIDATE = session_with_user_sql("s.id = ?")
_SELECT_VERSION = "SELECT version, last_activity FROM sessions WHERE id = ?"
_REMOVED = "SELECT removed FROM session_removals ORDER BY bucket"
_TRIGGER_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'sessions_removed'"
# Times as SQLAlchemy keeps them in SQLite (naive UTC text), so that "<" compares like times.
_TOUCH = "UPDATE sessions SET last_activity = ? WHERE id = ? AND last_activity < ?"
# A whole batch in one statement (SQLite 3.38+: UPDATE ... FROM and JSON built in): the
# driver releases the interpreter lock once for the batch, not once per row, so the writer
# thread does not wrestle the event loop for it row by row.
_TOUCH_ALL = (
    "UPDATE sessions SET last_activity = t.at FROM (SELECT json_extract(value, '$[0]') AS id, "
    "json_extract(value, '$[1]') AS at FROM json_each(?)) AS t "
    "WHERE sessions.id = t.id AND sessions.last_activity < t.at"
)
_ONE_STATEMENT = sqlite3.sqlite_version_info >= (3, 38, 0)


def _stored(at: datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class SqliteStore(SqlStore):
    def __init__(self, engine: Any, database: str | None) -> None:
        super().__init__(engine)
        self._database = database if database and database != ":memory:" else None
        self._local = threading.local()
        self._epochs: tuple[int, ...] | None = None  # see session_epoch
        self._counted: bool | None = None  # whether the file counts removed sessions
        # Touches are written by one thread of their own, on one connection: a worker thread
        # of the default pool each would keep a connection and its page cache.
        self._touch_thread: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self._database is not None
            conn = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    def session_epoch(self, session_key: int) -> int | None:
        """How many sessions of this session's bucket (the first byte of its id, one of 256)
        have been removed from the file (``session_removals``: a trigger counts each removal
        in the transaction that makes it, whoever makes it: this server, the command line,
        another process, plain SQL; sessiond takes back, in the same transaction, its
        removals of sessions past their lifetime, which no cache serves), plus the changes of
        its sessions' rows other than touches and of their users' block or rights (migration
        0007: each moves the buckets of the sessions it concerns). It does not move
        for a touch or a new session, and a removal moves only its own bucket's count, so a
        logout sends a 256th of the cached validations to read their row. A store without
        the trigger (made some other way than by the migrations) answers None: no epoch.

        On the event loop the counts read (all 256 in one query) are kept until the callbacks
        already queued have run (they are forgotten by a callback queued right after the
        read), so that requests handled together share one read. Still exact: a request that
        arrived after the read has its first step queued after that callback, so it reads
        afresh; the others had arrived before the read, which therefore saw every removal
        committed before they were sent."""
        epochs = self._epochs if self._epochs is not None else self._read_epochs()
        return epochs[removal_bucket(session_key)] if epochs is not None else None

    def _read_epochs(self) -> tuple[int, ...] | None:
        if self._database is None:
            return None
        try:
            reader = self._reader()
            if self._counted is None:
                self._counted = reader.execute(_TRIGGER_EXISTS).fetchone() is not None
            if not self._counted:
                return None
            epochs = tuple(count for (count,) in reader.execute(_REMOVED))
        except sqlite3.DatabaseError:
            return None  # cannot tell: the caller reads the row instead
        if len(epochs) != REMOVAL_BUCKETS:
            return None  # the counts were tampered with: no epoch
        try:
            asyncio.get_running_loop().call_soon(self._forget_epoch)
        except RuntimeError:
            return epochs  # no event loop here: nothing to share with
        self._epochs = epochs
        return epochs

    def _forget_epoch(self) -> None:
        self._epochs = None

    async def get_session(self, session_id: UUID) -> SessionRecord | None:
        if self._database is None:
            return await super().get_session(session_id)
        try:
            row = self._reader().execute(_SELECT_SESSION, (session_id.hex,)).fetchone()
        except sqlite3.DatabaseError:
            # Busy (a checkpoint or recovery holds a lock): wait in a worker thread instead
            # of on the event loop; any other failure is answered there as every read's is.
            return await super().get_session(session_id)
        return SQLITE_SESSIONS.decode(row) if row is not None else None

    async def session_to_validate(
        self, session_id: UUID
    ) -> tuple[SessionRecord, SessionUser | None] | None:
        if self._database is None:
            return await super().session_to_validate(session_id)
        try:
            row = self._reader().execute(_SELECT_TO_VALIDATE, (session_id.hex,)).fetchone()
        except sqlite3.DatabaseError:
            return await super().session_to_validate(session_id)
        return SQLITE_SESSIONS.decode_with_user(row) if row is not None else None

    async def session_version(self, session_id: UUID) -> tuple[int, datetime] | None:
        if self._database is None:
            return await super().session_version(session_id)
        try:
            row = self._reader().execute(_SELECT_VERSION, (session_id.hex,)).fetchone()
        except sqlite3.DatabaseError:
            return await super().session_version(session_id)
        if row is None:
            return None
        return row[0], datetime.fromisoformat(row[1]).replace(tzinfo=UTC)

    async def touch_sessions(self, touches: Mapping[UUID, datetime]) -> None:
        """Last-activity touches come by the thousand under load: written by the driver in a
        thread of their own (one transaction, one statement for the batch), rather than
        through SQLAlchemy on the event loop's side."""
        if self._database is None or not touches:
            await super().touch_sessions(touches)
            return
        pairs = [(session_id.hex, _stored(at)) for session_id, at in touches.items()]
        rows: str | list[tuple[str, str, str]]
        if _ONE_STATEMENT:
            rows = json.dumps(pairs)
        else:
            rows = [(at, session_id, at) for session_id, at in pairs]
        if self._touch_thread is None:
            self._touch_thread = ThreadPoolExecutor(1, thread_name_prefix="sessiond-touches")
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._touch_thread, self._write_touches, rows)
        except sqlite3.DatabaseError as exc:
            raise unavailable(exc) from None

    def _write_touches(self, rows: str | list[tuple[str, str, str]]) -> None:
        conn = self._writer
        if conn is None:
            assert self._database is not None
            conn = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._writer = conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(rows, str):
                conn.execute(_TOUCH_ALL, (rows,))
            else:
                conn.executemany(_TOUCH, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._touch_thread is not None:
            self._touch_thread.shutdown(wait=True)
            self._touch_thread = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        await super().close()
