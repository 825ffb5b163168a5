"""Writes a sign-in's answer depends on: retried within a bound, and refusals' records batched.

- :func:`retried`: a write transaction that fails because the store cannot be had (SQLite's
  write lock held past its busy timeout, PostgreSQL restarting, no free connection) is tried
  again, every :data:`RETRY_EVERY` seconds, until :data:`SETTLE_WITHIN` has passed. Only then
  does the failure reach the caller. A transaction that failed was rolled back whole, so
  trying it again is safe.
- :class:`Records`: the ``LoginFailed`` records of refusals are written in batches, one
  transaction for all those waiting, each refusal answered once its record is written. A flood
  of a thousand refusals is a few transactions, not a thousand contending for SQLite's one
  write lock (which answered some of them ``503``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import ServiceUnavailable
from ..store import AuditRecord, Store

T = TypeVar("T")

#: How long a settling write is tried again while the store cannot be had (seconds): longer
#: than SQLite's busy timeout (10 s), much shorter than an attempt slot's lease (2 minutes).
SETTLE_WITHIN = 45.0
RETRY_EVERY = 0.5
#: Records written in one transaction at most.
BATCH = 500


async def retried(write: Callable[[], Awaitable[T]], within: float = SETTLE_WITHIN) -> T:
    """``write()``, tried again while it fails with :class:`ServiceUnavailable` and less than
    ``within`` seconds have passed since the first try."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await write()
        except ServiceUnavailable:
            if time.monotonic() + RETRY_EVERY >= deadline:
                raise
        await asyncio.sleep(RETRY_EVERY)


class Records:
    """Audit records of refusals, written in batches (each caller waits for its own)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, record: AuditRecord) -> None:
        """Write ``record`` (with those of other refusals waiting now); raises what the write
        raised, after :func:`retried`."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="sessiond-refusal-records")
        await asyncio.shield(written)

    async def _write_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
            records = [record for record, _ in batch]
            try:
                await retried(functools.partial(self._write, records))
            except BaseException as exc:
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, written in batch:
                    if not written.done():
                        written.set_result(None)

    async def _write(self, records: list[AuditRecord]) -> None:
        async with self.store.write() as tx:
            for record in records:
                await tx.add_audit(record)

    async def close(self) -> None:
        """Let the records still waiting be written."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer], timeout=SETTLE_WITHIN)
