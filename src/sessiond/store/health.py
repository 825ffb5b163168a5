"""What operators ask of the database: can it be reached, is its schema this sessiond's, and
how many sessions are open.

:func:`unreachable` is the one rule for "the database cannot be reached": the store maps every
such failure to :class:`~sessiond.errors.ServiceUnavailable` (``503 service_unavailable``)
with it, whichever driver or layer raised it; :func:`busy` is the same answer when the database
is fine but every connection this node may open is in use. :func:`readiness` backs
``GET /api/v1/health/ready``; :func:`open_sessions` backs the ``sessiond_open_sessions`` gauge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import ServiceUnavailable, StoreReadOnly
from ..models import LicenseType
from . import schema
from .dialect import DIALECTS, Dialect, dialect_of
from .state import open_sql

log = logging.getLogger("sessiond.store")

_MIGRATIONS = Path(__file__).parent / "migrations"
#: How long the readiness check waits for the database before it answers "not ready".
READY_TIMEOUT = 5.0
#: While the store stays unreachable, the log says so at most once per this many seconds.
LOG_EVERY = 10.0
_last_logged = -LOG_EVERY


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``orig``, the adapter's ``__cause__``."""
    found = [exc]
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else None
    if orig is not None:
        found.append(orig)
        if orig.__cause__ is not None:
            found.append(orig.__cause__)
    return found


def _dialects(dialect: Dialect | None) -> tuple[Dialect, ...]:
    return DIALECTS if dialect is None else (dialect,)


def read_only(exc: BaseException, dialect: Dialect | None = None) -> bool:
    """True when ``exc`` means the database is a standby or read-only now (by ``dialect``'s
    driver; None: by any)."""
    return any(d.driver_read_only(c) for c in _causes(exc) for d in _dialects(dialect))


def unreachable(exc: BaseException, dialect: Dialect | None = None) -> bool:
    """True when ``exc`` means the database cannot be reached (or is refusing connections, or
    is a standby: :func:`read_only`), whether SQLAlchemy wrapped it or the driver raised it as
    it is (by ``dialect``'s driver; None: by any)."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.TimeoutError):
        return True  # SQLite's "unable to open", "locked"; a pool with no connection to give
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return any(
        d.driver_unreachable(c) or d.driver_read_only(c)
        for c in _causes(exc)[-2:]
        for d in _dialects(dialect)
    )


def unavailable(exc: BaseException) -> ServiceUnavailable:
    """The answer to a request the store could not serve because it cannot be reached (or is
    a standby). The caller learns only that; the log gets the cause (at most once per
    :data:`LOG_EVERY`)."""
    global _last_logged
    now = time.monotonic()
    standby = read_only(exc)
    if now - _last_logged >= LOG_EVERY:
        _last_logged = now
        cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig else exc
        if standby:
            log.warning(
                "the store is read-only (no host of database_url is the primary now): %s: %s",
                type(cause).__name__,
                cause,
            )
        else:
            log.warning("the store cannot be reached: %s: %s", type(cause).__name__, cause)
    if standby:
        return StoreReadOnly(READ_ONLY)
    return ServiceUnavailable("the session store is unavailable; try again shortly")


#: What a caller is told when the database is a standby.
READ_ONLY = (
    "the database is read-only now (a standby; a failover may be under way): nothing was "
    "read or written; try again shortly, or on another node"
)


_last_busy = -LOG_EVERY


def busy() -> ServiceUnavailable:
    """The answer to a request that waited ``database_pool_timeout`` for one of this node's
    database connections while all were in use (the database itself may be fine)."""
    global _last_busy
    now = time.monotonic()
    if now - _last_busy >= LOG_EVERY:
        _last_busy = now
        log.warning(
            "every database connection of this server stayed in use for database_pool_timeout; "
            "requests are refused with 503 meanwhile (raise database_connections if the "
            "database allows, or add nodes)"
        )
    return ServiceUnavailable(
        "the server has no free connection to the session store (all database_connections "
        "are in use); try again shortly"
    )


@functools.cache
def expected_revisions() -> tuple[str, ...]:
    """The head revision(s) of the migrations shipped with this sessiond."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return tuple(sorted(ScriptDirectory.from_config(config).get_heads()))


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    #: ``ready``, ``store_unreachable``, ``store_read_only``, ``schema_not_current``
    reason: str
    message: str
    revisions: tuple[str, ...] = ()
    expected: tuple[str, ...] = ()


@asynccontextmanager
async def _within(engine: AsyncEngine, within: float) -> AsyncIterator[AsyncConnection]:
    """A connection for work that must be over within ``within`` seconds (TimeoutError or
    :class:`ServiceUnavailable` when it is not). A server that can freeze
    (:attr:`.Dialect.remote`) then answers nothing: the connection is closed under the work
    when the time is up (bounds.py), since even a cancelled query would wait on the server to
    clean up."""
    if dialect_of(engine).remote:
        from .bounds import bounded_connection

        until = asyncio.get_running_loop().time() + within
        async with bounded_connection(engine, checkout=within, work=within, until=until) as conn:
            yield conn
        return
    try:
        async with asyncio.timeout(within):
            async with engine.connect() as conn:
                yield conn
    except TimeoutError as exc:
        raise unavailable(exc) from None


async def readiness(engine: AsyncEngine, within: float = READY_TIMEOUT) -> Readiness:
    """Can the store be reached within ``within`` seconds, and is its schema at this
    sessiond's head revision? A database migrated by a newer sessiond is not ready either."""
    expected = expected_revisions()

    def current(conn: sa.Connection) -> tuple[str, ...]:
        return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))

    late = Readiness(False, "store_unreachable", f"the store did not answer within {within:g} s")
    standby = Readiness(False, "store_read_only", READ_ONLY)
    try:
        async with _within(engine, within) as conn:
            if engine.dialect.name == "postgresql" and await _read_only_now(conn):
                return standby
            revisions = await conn.run_sync(current)
    except StoreReadOnly:
        return standby
    except (TimeoutError, ServiceUnavailable):
        return late
    except Exception as exc:
        if read_only(exc):
            return standby
        if not unreachable(exc):
            raise
        return Readiness(False, "store_unreachable", "the store cannot be reached")
    if revisions != expected:
        found = ", ".join(revisions) or "none"
        return Readiness(
            False,
            "schema_not_current",
            f"the database schema is at revision {found}; this sessiond needs "
            f"{', '.join(expected)}",
            revisions,
            expected,
        )
    return Readiness(
        True, "ready", "the store answers and its schema is current", revisions, expected
    )


async def _read_only_now(conn: AsyncConnection) -> bool:
    """Whether the server of ``conn`` is in recovery (a standby) or refuses writes now. A
    connection is checked when it opens (``target_session_attrs``), but one opened before a
    server was made read-only stays open."""
    row = (
        await conn.execute(
            sa.text("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
        )
    ).one()
    return bool(row[0]) or row[1] == "on"


async def open_sessions(
    engine: AsyncEngine, now: datetime, active_since: datetime | None
) -> dict[LicenseType, int]:
    """Sessions open now (not past their lifetime nor, with an inactivity limit, idle past it),
    by the licence type they hold; every seat type is present."""
    s = schema.sessions
    counts: dict[LicenseType, int] = {
        kind: 0 for kind in LicenseType if kind is not LicenseType.UNSPECIFIED
    }
    async with _within(engine, READY_TIMEOUT) as conn:
        rows = await conn.execute(
            sa.select(s.c.license_type, sa.func.count())
            .where(open_sql(now, active_since))
            .group_by(s.c.license_type)
        )
        for kind, count in rows:
            counts[LicenseType(kind)] = int(count)
    return counts
