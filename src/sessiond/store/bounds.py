"""Every wait on PostgreSQL bounded, including the one a frozen server causes.

A server that is frozen (stopped, or cut off by a network that drops packets) keeps its sockets
open and answers nothing: no error ever comes, so only the client can end the wait. Three
settings say how long (:class:`~sessiond.settings.DatabasePools`):

- ``database_pool_timeout``: waiting for a free connection of the pool (then ``busy``);
- ``database_connect_timeout``: opening a connection (asyncpg's ``timeout``), and, for a
  connection taken from the pool, the round trip that checks it first (``pool_pre_ping``);
- ``database_statement_timeout``: the statements of one piece of work once it has its
  connection, on the server (PostgreSQL's ``statement_timeout``) and on the client: when it
  runs out, the connection is closed under the work (asyncpg's ``terminate``: no round trip),
  so every await on it ends at once, the pool discards it rather than reusing it half-way, and
  the caller gets ``503 service_unavailable``.

Cancelling the task instead would not do: the clean-up that follows a cancellation (a
ROLLBACK, a cancel request) waits on the same frozen server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import ServiceUnavailable
from .health import unavailable


def no_answer(what: str, within: float) -> ServiceUnavailable:
    """The answer when the database said nothing for ``within`` seconds (logged, rate-limited,
    as every "cannot be reached")."""
    return unavailable(TimeoutError(f"the database did not answer {what} within {within:g} s"))


def checkout_within(engine: AsyncEngine, pool_timeout: float, connect_timeout: float) -> float:
    """How long taking a connection may take: ``connect_timeout`` (opening or checking it)
    when the pool has one free, plus ``pool_timeout`` when every one is in use now."""
    pool: Any = engine.pool
    try:
        free = pool.checkedout() < pool.size()
    except AttributeError:  # a pool without a fixed size
        free = True
    return connect_timeout if free else pool_timeout + connect_timeout


@asynccontextmanager
async def bounded_connection(
    engine: AsyncEngine, *, checkout: float, work: float, until: float | None = None
) -> AsyncIterator[AsyncConnection]:
    """A connection of ``engine`` taken within ``checkout`` seconds, closed under the caller
    ``work`` seconds later (or at ``until``, event-loop time, if sooner) if it is still in use
    (:class:`ServiceUnavailable` either way). Other errors reach the caller as they are."""
    loop = asyncio.get_running_loop()
    if until is not None:
        checkout = min(checkout, until - loop.time())
    conn = engine.connect()
    try:
        async with asyncio.timeout(checkout):
            await conn.start()
    except TimeoutError:
        raise no_answer("when asked for a connection", checkout) from None
    try:
        driver = (await conn.get_raw_connection()).driver_connection
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            _terminate(driver)

        end = loop.time() + work
        timer = loop.call_at(end if until is None else min(end, until), expire)
        try:
            yield conn
        except BaseException:
            if expired:
                raise no_answer("to a statement", work) from None
            raise
        finally:
            timer.cancel()
    finally:
        await conn.close()


def _terminate(driver: Any) -> None:
    terminate: Callable[[], None] | None = getattr(driver, "terminate", None)
    if terminate is not None:
        terminate()  # asyncpg: close the socket now, no message to the server
