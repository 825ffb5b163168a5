"""Is this session still open? The one rule, used by validation, every close, the sweeper and
the listings: a session is open until its absolute lifetime ends, and (when the inactivity
timeout is set) while it has been used within that timeout; a deleted session is closed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..store import SessionFilter, SessionRecord

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
        if self.inactivity and last_activity is not None and now - last_activity > self.inactivity:
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
