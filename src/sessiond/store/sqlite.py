"""SQLite, the embedded default: one file, WAL, and write transactions that take the lock first.

``BEGIN IMMEDIATE`` for writes means two writers never both read and then race to upgrade their
locks (which SQLite answers with "database is locked"); readers stay concurrent under WAL.

The per-request session lookup skips the async driver: a primary-key read from a WAL database
takes microseconds and never waits for writers, while handing it to aiosqlite's thread costs
hundreds. So :meth:`SqliteStore.get_session` reads on the calling thread with its own read-only
connection, and keeps what it read only until the database next changes (``PRAGMA
data_version``, which any commit by any other connection or process moves): exact on every call.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from .base import SessionRecord
from .codec import session_from_mapping
from .schema import sessions
from .sql import SqlStore

BUSY_TIMEOUT_MS = 10_000
SESSIONS_KEPT = 10_000
READER_BUSY_TIMEOUT_MS = 50  # the event loop waits at most this long on a locked database


def create_sqlite_store(url: str) -> SqlStore:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_size=8, max_overflow=8)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("sessiond_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return SqliteStore(engine, parsed.database)


_COLUMNS = [c.name for c in sessions.columns]
_SELECT_SESSION = f"SELECT {', '.join(_COLUMNS)} FROM sessions WHERE id = ?"


def _uuid(raw: str) -> UUID:
    return UUID(hex=raw)


def _time(raw: str) -> datetime:
    return datetime.fromisoformat(raw).replace(tzinfo=UTC)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "id": _uuid,
    "user_id": _uuid,
    "application_id": _uuid,
    "created": _time,
    "expires": _time,
    "last_activity": _time,
    "client_64bit": bool,
    "client_64bit_os": bool,
}
_CONVERTERS = [(name, _CONVERT.get(name)) for name in _COLUMNS]


def _row(raw: tuple[Any, ...]) -> dict[str, Any]:
    return {
        name: value if convert is None or value is None else convert(value)
        for (name, convert), value in zip(_CONVERTERS, raw, strict=True)
    }


class SqliteStore(SqlStore):
    def __init__(self, engine: Any, database: str | None) -> None:
        super().__init__(engine)
        self._database = database if database and database != ":memory:" else None
        self._local = threading.local()

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self._database is not None
            conn = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._local.cache = {}
            self._local.version = None
        return conn

    async def get_session(self, session_id: UUID) -> SessionRecord | None:
        if self._database is None:
            return await super().get_session(session_id)
        try:
            return self._read_session(session_id)
        except sqlite3.OperationalError:
            # Busy (a checkpoint or recovery holds a lock): wait in a worker thread instead
            # of on the event loop.
            return await super().get_session(session_id)

    def _read_session(self, session_id: UUID) -> SessionRecord | None:
        conn = self._reader()
        # Sessions read since the database last changed are still exact: data_version moves
        # whenever any other connection, in this process or another, commits anything.
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        cache: dict[UUID, SessionRecord] = self._local.cache
        if version != self._local.version:
            cache.clear()
            self._local.version = version
        record = cache.get(session_id)
        if record is not None:
            return record
        row = conn.execute(_SELECT_SESSION, (session_id.hex,)).fetchone()
        if row is None:
            return None
        record = session_from_mapping(_row(row))
        if len(cache) >= SESSIONS_KEPT:
            cache.clear()
        cache[session_id] = record
        return record

    async def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        await super().close()
