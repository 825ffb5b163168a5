"""The lockout rule: how many password checks a user may have, and when failures block.

With a limit of N failed sign-ins (in total, or in a series inside a time window), a password
is checked only while it holds one of the user's *attempt slots*: N minus the failures counted
so far minus the checks already in progress. So at most N wrong passwords are ever checked
before the block, however many guesses arrive at once, on however many nodes; a guess that
finds no slot free waits (a bounded time) for one, and one that finds the user blocked is not
checked at all. The decisions here are pure; the sign-in flow applies them inside the
transaction that reads and writes the user's row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..models import LoginType
from ..settings import SecuritySettings, Settings
from ..store import UserRecord


class Slot(enum.Enum):
    FREE = "free"  # check the password now
    WAIT = "wait"  # every slot is held by a check in progress: one may free up
    BLOCKED = "blocked"  # no check while the block lasts
    EXHAUSTED = "exhausted"  # failures already reach a limit (settings lowered): block now


@dataclass(frozen=True, slots=True)
class Block:
    until: datetime | None  # None: until an administrator lifts it
    reason: str


class Lockout:
    def __init__(self, security: SecuritySettings) -> None:
        self.security = security

    @property
    def enabled(self) -> bool:
        s = self.security
        return bool(
            s.max_failed_login_attempts_before_blocked or s.max_failed_login_attempts_in_series
        )

    def applies(self, login_type: LoginType) -> bool:
        """Platform users, and Windows and Ldap users if block_windows_and_ldap_users."""
        if not self.enabled:
            return False
        return login_type == LoginType.PLATFORM or self.security.block_windows_and_ldap_users

    @staticmethod
    def blocked(user: UserRecord, now: datetime) -> bool:
        return user.blocked and (user.blocked_due_date is None or user.blocked_due_date > now)

    def _series_count(self, user: UserRecord, now: datetime) -> int:
        start = user.failed_series_start
        window = self.security.failed_login_attempts_series_time
        return user.failed_series_count if start is not None and start > now - window else 0

    def _headroom(self, user: UserRecord, now: datetime) -> int | None:
        """Failures still allowed before a block (None: no limit)."""
        s = self.security
        room: list[int] = []
        if s.max_failed_login_attempts_before_blocked:
            room.append(s.max_failed_login_attempts_before_blocked - user.failed_attempts)
        if s.max_failed_login_attempts_in_series:
            room.append(s.max_failed_login_attempts_in_series - self._series_count(user, now))
        return min(room) if room else None

    def slot(self, user: UserRecord, in_progress: int, now: datetime) -> Slot:
        if self.blocked(user, now):
            return Slot.BLOCKED
        room = self._headroom(user, now)
        if room is None or room - in_progress > 0:
            return Slot.FREE
        if room <= 0:
            return Slot.EXHAUSTED
        return Slot.WAIT

    def exhausted_block(self, user: UserRecord, now: datetime) -> Block:
        """The block a user whose failures already reach a limit gets (settings lowered)."""
        return self._block_for(user, now) or Block(None, "failed sign-ins over the limit")

    def count_failure(self, user: UserRecord, now: datetime) -> tuple[dict[str, Any], Block | None]:
        """One more wrong password: the user's changed fields, and the block it causes."""
        s = self.security
        window_start = now - s.failed_login_attempts_series_time
        start = user.failed_series_start
        if start is None or start <= window_start:
            changes: dict[str, Any] = {"failed_series_start": now, "failed_series_count": 1}
        else:
            changes = {"failed_series_count": user.failed_series_count + 1}
        changes["failed_attempts"] = user.failed_attempts + 1
        counted = replace(user, **changes)
        block = None if self.blocked(user, now) else self._block_for(counted, now)
        if block is not None:
            # locked_out: the lockout's block, which leaves the user's sessions open
            changes.update(blocked=True, blocked_due_date=block.until, locked_out=True)
            if block.until is not None:
                # A series block starts a fresh series when it ends.
                changes.update(failed_series_count=0, failed_series_start=None)
        return changes, block

    def _block_for(self, user: UserRecord, now: datetime) -> Block | None:
        s = self.security
        total, series = (
            s.max_failed_login_attempts_before_blocked,
            s.max_failed_login_attempts_in_series,
        )
        if total and user.failed_attempts >= total:
            return Block(None, f"{user.failed_attempts} failed sign-ins")
        count = self._series_count(user, now)
        if series and count >= series:
            return Block(
                now + s.blocked_series_due_date_time,
                f"{count} failed sign-ins within {s.failed_login_attempts_series_time}",
            )
        return None


CLEARED = {"failed_attempts": 0, "failed_series_count": 0, "failed_series_start": None}


def domain_lockout_warning(settings: Settings) -> str | None:
    """The start-up warning when a limit of sessiond's lets as many wrong passwords reach the
    domain (or the directory) as its own lockout threshold, so that sessiond's refusals alone
    could lock a domain account out; None when every limit is below it."""
    thresholds = {
        f"{name}.domain_lockout_threshold": section.domain_lockout_threshold
        for name, section in (("windows", settings.windows), ("ldap", settings.ldap))
        if section is not None and section.domain_lockout_threshold
    }
    if not thresholds:
        return None
    name, threshold = min(thresholds.items(), key=lambda item: item[1])
    s = settings.security
    limits = {"unmapped_account_failures": s.unmapped_account_failures}
    if s.block_windows_and_ldap_users:
        limits["max_failed_login_attempts_before_blocked"] = (
            s.max_failed_login_attempts_before_blocked
        )
        limits["max_failed_login_attempts_in_series"] = s.max_failed_login_attempts_in_series
    over = []
    for key, value in limits.items():
        if key == "unmapped_account_failures" and not value:
            over.append(f"security.{key} = 0 (no limit)")
        elif value >= threshold:
            over.append(f"security.{key} = {value}")
    if not over:
        return None
    return (
        f"{', '.join(over)} {'is' if len(over) == 1 else 'are'} not below {name} = "
        f"{threshold}: wrong passwords refused by sessiond alone can make the domain lock an "
        f"account out; set {'it' if len(over) == 1 else 'them'} to at most {threshold - 1}, "
        f"and {name} to the domain's Account lockout threshold"
    )
