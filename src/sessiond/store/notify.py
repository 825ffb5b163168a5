"""Notifications between nodes sharing one PostgreSQL database (LISTEN/NOTIFY).

A change that other nodes should learn of at once is announced with ``pg_notify`` inside the
transaction that makes it: PostgreSQL sends a notification only when its transaction commits,
so no node hears of a change that was rolled back, and every node hears of them in commit
order. Each server keeps one connection that LISTENs on :data:`CHANNEL` (:class:`Listener`).

Payloads are short text:

- ``version <n>``: the configuration version is now ``n``;
- ``revoked <hex> <hex> ...``: these sessions' rows were deleted (closed, displaced, swept);
- ``revoked`` alone: too many sessions to name were deleted: forget every session;
- ``licence``: a licence was installed.

Notifications are a shortcut, never the only way a change is learnt: they are lost while the
listening connection is down, so the service goes on polling the configuration version (every
``configuration_poll_interval``) and, once the listener is back, re-reads what it keeps
(:data:`Notice` ``resumed``). The store announces through its dialect
(:meth:`.Dialect.announce`): SQLite has one node and sends nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("sessiond.store")

CHANNEL = "sessiond"
#: PostgreSQL refuses a payload of 8000 bytes or more.
PAYLOAD_LIMIT = 7999
#: Session ids one ``revoked`` payload names (32 hex digits and a space each).
IDS_PER_PAYLOAD = (PAYLOAD_LIMIT - len("revoked")) // 33
#: More revoked sessions than this in one transaction are announced as ``revoked`` alone.
MOST_IDS_NAMED = 8 * IDS_PER_PAYLOAD
#: Reconnecting: the first wait, and the longest (doubling in between, with jitter).
BACKOFF_FIRST = 0.2
BACKOFF_MOST = 5.0
#: A listening connection that has been quiet this long is asked to LISTEN again (a no-op
#: that proves it alive); an answer slower than CHECK_TIMEOUT counts as a lost connection.
CHECK_EVERY = 15.0
CHECK_TIMEOUT = 10.0

_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")

NoticeKind = Literal["version", "revoked", "licence", "resumed"]


@dataclass(frozen=True, slots=True)
class Notice:
    """What a node learnt. ``resumed``: the listener is back after losing its connection, so
    notifications may have been missed: re-read everything kept."""

    kind: NoticeKind
    version: int | None = None
    #: with ``revoked``: the sessions, or None when they were too many to name (all of them)
    session_ids: frozenset[UUID] | None = None


# --- sending ---------------------------------------------------------------------------------


async def announce(conn: AsyncConnection, *payloads: str) -> None:
    """Queue notifications in ``conn``'s transaction (a PostgreSQL one); sent if and when it
    commits."""
    for payload in payloads:
        await conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


def revoked_payloads(session_ids: Collection[UUID]) -> list[str]:
    """``revoked`` payloads naming ``session_ids``, each within the payload limit; a bare
    ``revoked`` when there are more than :data:`MOST_IDS_NAMED`."""
    if not session_ids:
        return []
    if len(session_ids) > MOST_IDS_NAMED:
        return ["revoked"]
    hexes = sorted(session_id.hex for session_id in session_ids)
    return [
        " ".join(["revoked", *hexes[start : start + IDS_PER_PAYLOAD]])
        for start in range(0, len(hexes), IDS_PER_PAYLOAD)
    ]


# --- receiving -------------------------------------------------------------------------------


def parse(payload: str) -> Notice | None:
    """The notice a payload carries; None for one this sessiond does not know (a newer node's,
    or anyone else's on the channel), which is ignored."""
    kind, _, rest = payload.partition(" ")
    try:
        if kind == "version":
            return Notice("version", version=int(rest))
        if kind == "revoked":
            if not rest:
                return Notice("revoked")
            return Notice("revoked", session_ids=frozenset(UUID(hex=h) for h in rest.split()))
    except ValueError:
        return None
    if kind == "licence" and not rest:
        return Notice("licence")
    return None


class Listener:
    """One connection that LISTENs on :data:`CHANNEL` and hands every notice to ``on_notice``
    (on the event loop, in the order they arrive). When the connection drops (the database
    restarts, an operator ends the backend, the network fails), it connects again with backoff
    and then hands on a ``resumed`` notice: what was announced meanwhile is lost."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        on_notice: Callable[[Notice], None],
    ) -> None:
        self._connect = connect  # a new asyncpg connection
        self._on_notice = on_notice
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closing = False

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Listen now (so that nothing committed after this returns is missed), or, if the
        database cannot be reached, keep trying in the background."""
        connected = await self._attempt()
        if not connected:
            log.warning(
                "cannot listen for other nodes' changes yet; polling every "
                "configuration_poll_interval meanwhile, and trying again"
            )
        self._task = asyncio.create_task(self._watch(connected), name="sessiond-listener")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._drop()

    async def _attempt(self) -> bool:
        """Connect and LISTEN; False if that failed (the failure is logged at debug level)."""
        try:
            conn = await self._connect()
        except Exception as exc:
            log.debug("listening connection failed: %s: %s", type(exc).__name__, exc)
            return False
        self._lost = asyncio.Event()
        lost = self._lost
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._received)
        except Exception as exc:
            log.debug("LISTEN failed: %s: %s", type(exc).__name__, exc)
            conn.terminate()
            return False
        self._conn = conn
        return True

    async def _watch(self, connected: bool) -> None:
        delay = BACKOFF_FIRST
        while not self._closing:
            if connected:
                delay = BACKOFF_FIRST
                await self._until_lost()
                if self._closing:
                    return
                log.warning(
                    "lost the listening connection to the store; other nodes' changes now show "
                    "within configuration_poll_interval until it is back"
                )
                await self._drop()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MOST)
            connected = await self._attempt()
            if connected:
                log.info("listening for other nodes' changes again")
                self._on_notice(Notice("resumed"))

    async def _until_lost(self) -> None:
        """Return when the connection is gone: closed under it, or not answering a check."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), CHECK_EVERY)
                return
            except TimeoutError:
                pass
            try:  # LISTEN again: a no-op on a live connection, and the only query it runs
                await self._conn.execute(f'LISTEN "{CHANNEL}"', timeout=CHECK_TIMEOUT)
            except Exception:
                return

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        notice = parse(payload)
        if notice is None:
            log.debug("ignored a notification: %.60r", payload)
            return
        try:
            self._on_notice(notice)
        except Exception:
            log.exception("handling a notification failed")
