"""Is this session open? The one rule, in Python and in SQL side by side.

A session is open until its absolute lifetime ends, and (when the inactivity timeout is set)
while it has been used within that timeout; a deleted session is closed. The service decides
with :class:`SessionState` (validation, every close, the sweeper, the listings); the store's
queries count and find sessions with :func:`open_sql` and :func:`ended_sql`, the same rule as
SQL over the sessions table, given the same ``now`` and the rule's cutoff for it
(:meth:`SessionState.active_since`). Both compare with the same cutoff, so that a session
open by one is open by the other (tests/test_open_rule.py runs them on the same rows).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from . import schema
from .base import SessionFilter, SessionRecord

ABSOLUTE = "absolute lifetime"
INACTIVITY = "inactivity"


class SessionState:
    def __init__(self, inactivity: timedelta | None) -> None:
        self.inactivity = inactivity

    def ended(self, expires: datetime, last_activity: datetime | None, now: datetime) -> str | None:
        """Why the session has ended by ``now`` (``ABSOLUTE`` or ``INACTIVITY``), or None
        while it is open. ``last_activity`` None: judge by the lifetime alone."""
        if expires <= now:
            return ABSOLUTE
        since = self.active_since(now)
        if since is not None and last_activity is not None and last_activity < since:
            return INACTIVITY
        return None

    def ended_record(self, record: SessionRecord, now: datetime) -> str | None:
        return self.ended(record.token.expires, record.last_activity, now)

    def active_since(self, now: datetime) -> datetime | None:
        """The same rule as a cutoff for queries: open sessions were active since then."""
        return now - self.inactivity if self.inactivity else None

    def stale(self, now: datetime, limit: int | None = None) -> SessionFilter:
        """The same rule as a filter: sessions that have ended by ``now``."""
        return SessionFilter(stale_at=now, idle_before=self.active_since(now), limit=limit)


def open_sql(now: datetime, active_since: datetime | None) -> sa.ColumnElement[bool]:
    """:meth:`SessionState.ended` is None, in SQL: sessions open at ``now``, given the rule's
    cutoff for it (``active_since``; None: no inactivity limit)."""
    s = schema.sessions
    if active_since is None:
        return s.c.expires > now
    return sa.and_(s.c.expires > now, s.c.last_activity >= active_since)


def ended_sql(now: datetime, active_since: datetime | None) -> sa.ColumnElement[bool]:
    """The negation of :func:`open_sql` (sessions that have ended by ``now``), written as the
    sweeper's indexes can serve it."""
    s = schema.sessions
    if active_since is None:
        return s.c.expires <= now
    return sa.or_(s.c.expires <= now, s.c.last_activity < active_since)
