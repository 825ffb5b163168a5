"""PostgreSQL, for several sessiond nodes sharing one database (asyncpg).

Everything a node needs from another lives in the database: sessions (so a session closed on
one node is refused by all at the next request), the licence row (locked while a seat is taken,
so seats stay exact across nodes), failure counts (one UPDATE each), the configuration version
(one UPDATE each). Nodes starting together migrate one after another under an advisory lock.

The per-request session read bypasses SQLAlchemy: a fixed pool of plain asyncpg connections,
one prepared ``SELECT`` outside any transaction, and the reads of validations that arrive
together merged into one ``WHERE id = ANY($1)``. Every read still starts after its request
arrived, so it sees every commit made before: exact across nodes, with no cache to go stale.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from ..errors import ServiceUnavailable
from .base import BuildInfo, SessionRecord
from .codec import session_from_mapping
from .health import unavailable, unreachable
from .schema import sessions
from .sql import SqlStore

log = logging.getLogger("sessiond.store")

#: pg_advisory_xact_lock key for start-up: "sessiond" in ASCII, as a number.
START_LOCK = 0x73657373696F6E64
READ_CONNECTIONS = 8
MAX_BATCH = 500
_COLUMNS = [c.name for c in sessions.columns]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM sessions WHERE id = ANY($1::uuid[])"
_UUIDS = ("id", "user_id", "application_id")


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """The read pool runs only single SELECTs: no session state to reset between uses."""


class PostgresStore(SqlStore):
    def __init__(self, engine: Any, dsn: str) -> None:
        super().__init__(engine)
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._waiting: dict[UUID, list[asyncio.Future[SessionRecord | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def _serialise_start(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": START_LOCK})

    async def open(self, build: BuildInfo, now: Any) -> None:
        await super().open(build, now)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=READ_CONNECTIONS,
                reset=_no_reset,
                statement_cache_size=16,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise ServiceUnavailable(f"the session store is unavailable: {exc}") from None

    async def close(self) -> None:
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await super().close()

    async def get_session(self, session_id: UUID) -> SessionRecord | None:
        if self._pool is None:
            return await super().get_session(session_id)
        future: asyncio.Future[SessionRecord | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(session_id, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_batches(), name="sessiond-reads")
        return await future

    async def _read_batches(self) -> None:
        assert self._pool is not None
        while self._waiting:
            ids = list(self._waiting)[:MAX_BATCH]
            batch = {session_id: self._waiting.pop(session_id) for session_id in ids}
            try:
                rows = await self._pool.fetch(_SELECT, ids)
                found = {record.id: record for record in map(_record, rows)}
                outcome: BaseException | None = None
            except Exception as exc:  # every waiting validation gets an answer
                found = {}
                if unreachable(exc):
                    outcome = unavailable(exc)
                else:
                    log.warning("reading sessions failed: %s", exc)
                    outcome = ServiceUnavailable(f"the session store failed: {exc}")
            for session_id, futures in batch.items():
                for future in futures:
                    if future.done():  # its request went away meanwhile
                        continue
                    if outcome is not None:
                        future.set_exception(outcome)
                    else:
                        future.set_result(found.get(session_id))


def _record(row: asyncpg.Record) -> SessionRecord:
    data = dict(row.items())
    for name in _UUIDS:
        if data[name] is not None:
            data[name] = UUID(bytes=data[name].bytes)
    return session_from_mapping(data)


def create_postgres_store(url: str) -> PostgresStore:
    engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return PostgresStore(engine, dsn)
