"""PostgreSQL, for several sessiond nodes sharing one database (asyncpg).

Everything a node needs from another lives in the database: sessions (so a session closed on
one node is refused by all at the next request), the licence row (locked while a seat is taken,
so seats stay exact across nodes), failure counts (one UPDATE each), the configuration version
(one UPDATE each). Nodes starting together migrate one after another under an advisory lock.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from .sql import SqlStore

#: pg_advisory_xact_lock key for start-up: "sessiond" in ASCII, as a number.
START_LOCK = 0x73657373696F6E64


class PostgresStore(SqlStore):
    async def _serialise_start(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": START_LOCK})


def create_postgres_store(url: str) -> PostgresStore:
    engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    return PostgresStore(engine)
