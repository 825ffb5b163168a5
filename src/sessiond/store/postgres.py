"""PostgreSQL, for several sessiond nodes sharing one database (asyncpg).

Everything a node needs from another lives in the database: sessions (so a session closed on
one node is refused by all at the next request), the licence row (locked while a seat is taken,
so seats stay exact across nodes), failure counts (one UPDATE each), the configuration version
(one UPDATE each). Nodes starting together migrate one after another under an advisory lock;
that, notifications and what counts as unreachable are this database's :class:`.Dialect`
(dialect.py), which the portable store asks.

The per-request session reads bypass SQLAlchemy: a fixed pool of plain asyncpg connections,
one prepared ``SELECT`` outside any transaction, and the reads of validations that arrive
together merged into one ``WHERE id = ANY($1)`` — of whole rows with their user's block and
rights (a session not yet known to the node) or of the row's version and last activity alone (a
session its validation cache holds: the version moves on any change of the row but a touch, and
on a change of its user's block or rights, migration 0007). Every read still starts after its
request arrived, so it sees every commit made before: exact across nodes; the store offers no
data epoch, so the cache checks each cached session every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import ServiceUnavailable, SettingsError
from ..settings import (
    DEFAULT_DATABASE_CONNECTIONS,
    DEFAULT_DATABASE_POOL_TIMEOUT,
    DatabasePools,
    application_name,
    share_connections,
)
from ..token import fast_uuid
from .base import BuildInfo, SessionRecord, SessionUser
from .bounds import no_answer
from .codec import ASYNCPG_SESSIONS, session_with_user_sql
from .dialect import POSTGRES
from .health import read_only, unavailable, unreachable
from .notify import Listener, Notice
from .pgurl import DatabaseAddress, parse
from .sql import SqlStore

log = logging.getLogger("sessiond.store")

MAX_BATCH = 500
#: What PgBouncer answers a connection that sets statement_timeout as it starts.
_POOLER_REFUSAL = "unsupported startup parameter"
_SELECT = session_with_user_sql("s.id = ANY($1::uuid[])")
_SELECT_VERSION = "SELECT id, version, last_activity FROM sessions WHERE id = ANY($1::uuid[])"
T = TypeVar("T")
_NOT_PRIMARY = asyncpg.exceptions.TargetServerAttributeNotMatched


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """The read pool runs only single SELECTs: no session state to reset between uses."""


class PostgresStore(SqlStore):
    def __init__(
        self,
        engine: Any,
        address: DatabaseAddress,
        pools: DatabasePools | None = None,
        *,
        listen: DatabaseAddress | None = None,
    ) -> None:
        super().__init__(engine)
        #: where every connection of this store goes (the engine's too): store/pgurl.py
        self.address = address
        #: where the listening connection goes; None: nowhere (through a transaction pooler
        #: LISTEN cannot work, and no direct connection was given)
        self._listen = listen
        self.pools = pools or _default_pools()
        self.bounds = (self.pools.timeout, self.pools.connect_timeout, self.pools.statement_timeout)
        self._listener: Listener | None = None
        self._pool: asyncpg.Pool | None = None
        self._rows = _MergedReads(_SELECT, _record, self.pools)
        self._versions = _MergedReads(_SELECT_VERSION, _version, self.pools)

    async def open(self, build: BuildInfo, now: Any) -> None:
        try:
            await super().open(build, now)
        except Exception as exc:
            if not _refused_by_pooler(exc):
                raise
            raise SettingsError(
                "database_url leads to a connection pooler (PgBouncer) that refuses the "
                "statement_timeout sessiond sets when it connects: set database_pooler = "
                '"pgbouncer" (SESSIOND_DATABASE_POOLER) and database_listen_url to a direct '
                "connection to PostgreSQL (docs/multi-node.md, PgBouncer)"
            ) from None
        try:
            self._pool = await asyncpg.create_pool(
                **self.address.pool_arguments(),
                min_size=1,
                max_size=self.pools.read,
                reset=_no_reset,
                **connect_arguments(self.pools, "reads"),
            )
        except (OSError, asyncpg.PostgresError, _NOT_PRIMARY, TimeoutError) as exc:
            if read_only(exc):  # no host of the URL is the primary now: store_read_only
                raise unavailable(exc) from None
            raise ServiceUnavailable(f"the session store is unavailable: {exc}") from None

    async def listen(self, on_notice: Callable[[Notice], None]) -> bool:
        """Hand every notification of another node's change to ``on_notice`` from now on, over
        a connection of its own (``pools.listen``), reconnecting when it drops. False, with a
        warning, behind PgBouncer without ``database_listen_url``: nothing is heard."""
        if self._listen is None:
            log.warning(
                "notifications are not available: database_url leads to pgbouncer "
                "(database_pooler), through which LISTEN cannot work, and "
                "database_listen_url is not set; other nodes' changes show within "
                "configuration_poll_interval. Set database_listen_url to a direct "
                "connection to PostgreSQL"
            )
            return False
        if self._listener is None:
            self._listener = Listener(self._listening_connection, on_notice)
            await self._listener.start()
        return True

    @property
    def listening(self) -> bool | None:
        return self._listener is not None and self._listener.listening

    async def _listening_connection(self) -> asyncpg.Connection:
        assert self._listen is not None
        return await self._listen.connect(**connect_arguments(self.pools, "listen"))

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._rows.drain()
        await self._versions.drain()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await super().close()

    async def session_to_validate(
        self, session_id: UUID
    ) -> tuple[SessionRecord, SessionUser | None] | None:
        if self._pool is None:
            return await super().session_to_validate(session_id)
        return await self._rows.get(self._pool, session_id)

    async def session_version(self, session_id: UUID) -> tuple[int, datetime] | None:
        if self._pool is None:
            return await super().session_version(session_id)
        return await self._versions.get(self._pool, session_id)


class _MergedReads(Generic[T]):
    """Reads of one kind that arrive while another is under way wait for the next one, which
    fetches them all with one ``WHERE id = ANY($1)``; every waiting read gets an answer."""

    def __init__(
        self,
        query: str,
        decode: Callable[[asyncpg.Record], tuple[UUID, T]],
        pools: DatabasePools,
    ) -> None:
        self.query = query
        self.decode = decode
        # Taking a connection (which may mean opening one), then the read itself.
        self._acquire = pools.timeout + pools.connect_timeout
        self._fetch = pools.statement_timeout
        self._waiting: dict[UUID, list[asyncio.Future[T | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, pool: asyncpg.Pool, session_id: UUID) -> T | None:
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(session_id, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(pool), name="sessiond-reads")
        within = self._acquire + self._fetch
        try:
            # A read that arrives while another is under way waits for that one first.
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:
            raise no_answer("to a session read", within) from None

    async def _fetch_rows(self, pool: asyncpg.Pool, ids: list[UUID]) -> list[asyncpg.Record]:
        """One read, bounded: a connection that does not answer in time is closed (never
        handed out again half-way through a read) and the read raises TimeoutError."""
        conn = await pool.acquire(timeout=self._acquire)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(self.query, ids, timeout=self._fetch)
            return rows
        except BaseException:
            conn.terminate()  # no round trip: the server may be the one not answering
            raise
        finally:
            await pool.release(conn)

    async def drain(self) -> None:
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self, pool: asyncpg.Pool) -> None:
        while self._waiting:
            ids = list(self._waiting)[:MAX_BATCH]
            batch = {session_id: self._waiting.pop(session_id) for session_id in ids}
            try:
                rows = await self._fetch_rows(pool, ids)
                found = dict(map(self.decode, rows))
                outcome: BaseException | None = None
            except Exception as exc:  # every waiting validation gets an answer
                found = {}
                if isinstance(exc, TimeoutError):
                    outcome = no_answer("to a session read", self._acquire + self._fetch)
                elif unreachable(exc, POSTGRES):
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


def _record(row: asyncpg.Record) -> tuple[UUID, tuple[SessionRecord, SessionUser | None]]:
    record, user = ASYNCPG_SESSIONS.decode_with_user(row)
    return record.id, (record, user)


def _version(row: asyncpg.Record) -> tuple[UUID, tuple[int, datetime]]:
    return fast_uuid(row[0].int), (row[1], row[2])


def _refused_by_pooler(exc: BaseException) -> bool:
    """Whether PgBouncer's refusal of a startup parameter is behind ``exc`` (which the store
    may have turned into "cannot be reached", keeping the refusal as its context)."""
    seen: BaseException | None = exc
    while seen is not None:
        if _POOLER_REFUSAL in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


ConnectionUse = Literal["engine", "reads", "listen"]


def connect_arguments(pools: DatabasePools, use: ConnectionUse) -> dict[str, Any]:
    """What asyncpg is given for each connection sessiond opens: to SQLAlchemy's pool
    (``engine``), to the pool of validation's reads (``reads``), or to listen (``listen``).

    Every connection says its name and is opened within ``connect_timeout``. Directly on
    PostgreSQL the pools' connections also set how long one statement may run on the server
    (PostgreSQL ends it after that, whatever the client does), and the reads keep their
    prepared statement. Through PgBouncer in transaction pooling (``pooler``) a connection
    holds no state of its own on the server between transactions: no startup parameter but
    the name (PgBouncer refuses the others), no named prepared statement (the next
    transaction may run on another server connection, where the name is unknown or taken);
    the statement timeout is set in each transaction instead (:func:`_timeout_per_transaction`).
    The listening connection is always direct (``database_listen_url``) and prepares nothing.
    """
    name = {"application_name": pools.application_name}
    arguments: dict[str, Any] = {"timeout": pools.connect_timeout}
    if use == "listen":
        return arguments | {"statement_cache_size": 0, "server_settings": name}
    if pools.pooler == "pgbouncer":
        arguments |= {"statement_cache_size": 0, "server_settings": name}
        return arguments
    timeout = {"statement_timeout": _milliseconds(pools.statement_timeout)}
    if use == "reads":
        arguments["statement_cache_size"] = 16
    return arguments | {"server_settings": name | timeout}


def engine_arguments(pools: DatabasePools) -> dict[str, Any]:
    """What SQLAlchemy's asyncpg adapter is given for each engine connection. Through
    PgBouncer: its own statement cache off and its statements unnamed ("" is PostgreSQL's
    unnamed statement, replaced by the next one on the same connection)."""
    if pools.pooler == "pgbouncer":
        return {"prepared_statement_cache_size": 0, "prepared_statement_name_func": _unnamed}
    return {}


def _unnamed() -> str:
    return ""


def _milliseconds(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def _timeout_per_transaction(engine: AsyncEngine, pools: DatabasePools) -> None:
    """Through PgBouncer: PostgreSQL's statement_timeout set at the start of every
    transaction of ``engine`` (``SET LOCAL``: it ends with the transaction, so the server
    connection goes back to PgBouncer as it came)."""
    statement = f"SET LOCAL statement_timeout = {_milliseconds(pools.statement_timeout)}"

    @event.listens_for(engine.sync_engine, "begin")
    def begin(conn: Connection) -> None:
        conn.exec_driver_sql(statement)


def _default_pools() -> DatabasePools:
    return share_connections(
        DEFAULT_DATABASE_CONNECTIONS, DEFAULT_DATABASE_POOL_TIMEOUT, application_name()
    )


def create_postgres_store(
    url: str, pools: DatabasePools | None = None, *, listen_url: str | None = None
) -> PostgresStore:
    """The store, opening at most ``pools.total`` connections (``database_connections``), all
    to the server ``url`` names (:func:`.pgurl.parse`: the primary among its hosts);
    :class:`~sessiond.errors.SettingsError` for a URL sessiond cannot use. ``listen_url``:
    where the listening connection goes (default: ``url``, unless ``url`` leads to PgBouncer:
    then no connection listens); read the same way."""
    pools = pools or _default_pools()
    address = parse(url)
    engine = address.engine(
        connect_arguments(pools, "engine"),
        adapter=engine_arguments(pools),
        pool_size=pools.write,
        max_overflow=0,
        pool_timeout=pools.timeout,
        pool_pre_ping=True,
    )
    if pools.pooler == "pgbouncer":
        _timeout_per_transaction(engine, pools)
    if listen_url is None and pools.pooler == "none":
        listen_url = url
    listen = parse(listen_url) if listen_url is not None else None
    return PostgresStore(engine, address, pools, listen=listen)
