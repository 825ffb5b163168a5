"""SQLite, the embedded default: one file, WAL, and write transactions that take the lock first.

``BEGIN IMMEDIATE`` for writes means two writers never both read and then race to upgrade their
locks (which SQLite answers with "database is locked"); readers stay concurrent under WAL.

The per-request session lookup skips the async driver: a primary-key read from a WAL database
takes microseconds and never waits for writers, while handing it to aiosqlite's thread costs
hundreds. So :meth:`SqliteStore.get_session` reads on the calling thread with its own read-only
connection, exact on every call (no cache to go stale when another process writes).
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from .base import SessionRecord
from .schema import sessions
from .sql import SqlStore, session_from_mapping

BUSY_TIMEOUT_MS = 10_000


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
_UUIDS = {"id", "user_id", "application_id"}
_TIMES = {"created", "expires", "last_activity"}
_BOOLS = {"client_64bit", "client_64bit_os"}


def _value(name: str, raw: Any) -> Any:
    if raw is None:
        return None
    if name in _UUIDS:
        return UUID(hex=raw)
    if name in _TIMES:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    if name in _BOOLS:
        return bool(raw)
    return raw


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
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    async def get_session(self, session_id: UUID) -> SessionRecord | None:
        if self._database is None:
            return await super().get_session(session_id)
        row = self._reader().execute(_SELECT_SESSION, (session_id.hex,)).fetchone()
        if row is None:
            return None
        return session_from_mapping(
            {name: _value(name, raw) for name, raw in zip(_COLUMNS, row, strict=True)}
        )

    async def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        await super().close()
