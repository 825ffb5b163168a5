"""The limit on repeated refused sign-ins of accounts that no user is mapped to.

Such an account has no user row to lock out, yet its password is checked with the domain or
the directory (auto-provisioning needs that). Without a limit anyone could guess domain
passwords through sessiond, or lock domain accounts out by the domain's own policy. So each
attempt holds a slot under two keys — the account, and the client address — and a key with
``limit`` refusals, each less than ``window`` after the one before, refuses further attempts,
unchecked, until the window has passed since the limit was reached. The count starts afresh
only after a whole window without a refusal: the rule Active Directory applies to its own bad
password count ("Reset account lockout counter after"), so with a window at least that long
and a limit below the domain's lockout threshold, sessiond's refusals alone cannot lock a domain
account out. (A count per fixed window would not do: limit - 1 refusals at the end of one
window and as many at the start of the next reach the domain close together.) The row's
``window_start`` holds the time of the last refusal counted. Slots are taken before the check
and settled after it, in transactions that lock the keys' rows, as the lockout of known users
does (:mod:`.lockout`): the limit holds under parallel tries, on one node or many.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..store import Throttle


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int  # refusals less than a window apart; 0: no limit
    window: timedelta

    def free(self, row: Throttle, in_progress: int, now: datetime) -> bool:
        """May one more attempt under this key be checked now?"""
        if not self.limit:
            return True
        if row.blocked_until is not None and row.blocked_until > now:
            return False
        return self.counted(row, now) + in_progress < self.limit

    def counted(self, row: Throttle, now: datetime) -> int:
        return row.failures if row.window_start > now - self.window else 0

    def refused(self, row: Throttle, now: datetime) -> tuple[dict[str, Any], bool]:
        """One more refusal: the row's changed fields, and whether the limit is now reached."""
        changes: dict[str, Any] = {"failures": self.counted(row, now) + 1, "window_start": now}
        reached = bool(self.limit) and changes["failures"] >= self.limit
        if reached:
            changes.update(blocked_until=now + self.window, failures=0, window_start=now)
        return changes, reached
