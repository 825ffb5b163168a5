"""The user's side of a password check: attempt slots taken before it and settled after it
(see :mod:`.lockout` for the rule), whatever the login type or path that checks the password.

1. **Reserve** (when the lockout applies): in one transaction, lock the user's row, count the
   checks in progress and take an attempt slot, or find the user blocked.
2. The pipeline **checks** the password, outside any transaction.
3. **Settle**, in one transaction: lock the row again, give the slot back, and either count the
   failure (and block, once), give it back as right, or — for the right password — let the
   pipeline decide from the row as it is now.

A slot that cannot be had is :class:`NotChecked`: the pipeline turns it into the uniform
refusal, unchecked.

A wrong password that was checked is counted whatever fails after the check: the settling write
is tried again while the store cannot be had (:func:`.durable.retried`), and if it still cannot
be written the slot stays held — its row in the store, and on this node a count that the next
reservations add to the checks in progress — while the write goes on being tried in the
background. So a store that fails never lets more than the limit be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from ..auth import Identity
from ..settings import Settings
from ..store import SignInAttempt, Store, Transaction, UserRecord
from . import pacing
from .common import Clock, login_failed, user_blocked
from .durable import RETRY_EVERY, retried
from .lockout import CLEARED, Lockout, Slot

#: How long a password check may hold its slot if its node goes away before settling it.
ATTEMPT_LEASE = timedelta(minutes=2)
#: How often a sign-in waiting for a slot looks for one freed on another node (seconds).
SLOT_POLL = 0.1
#: Sign-ins of one user that may wait for a slot on one node; more are refused at once.
MAX_WAITING = 32


class NotChecked(Exception):
    """The password may not be checked now (``reason`` says why): refuse it unchecked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Checked:
    """A password (or proof) shown right for ``user`` as the row was when the check began."""

    user: UserRecord
    identity: Identity
    attempt: SignInAttempt | None = None


class Attempts:
    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.lockout = Lockout(settings.security)
        self._slot_freed: weakref.WeakValueDictionary[UUID, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._waiting: Counter[UUID] = Counter()
        # Wrong passwords checked on this node whose failure is not written yet, by user.
        self._unrecorded: Counter[UUID] = Counter()
        self._background: set[asyncio.Task[None]] = set()

    async def reserve(self, user: UserRecord) -> SignInAttempt | None:
        """Take one of the user's attempt slots (None: the lockout does not apply), waiting a
        bounded time for one to free up; :class:`NotChecked` when none can be had."""
        if not self.lockout.applies(user.login_type):
            return None
        deadline = pacing.deadline.get() or (
            time.monotonic() + self.settings.sign_in_slot_wait.total_seconds()
        )
        if self._waiting[user.id] >= MAX_WAITING:
            raise NotChecked("too many sign-ins at once")
        self._waiting[user.id] += 1
        try:
            while True:
                freed = self._slot_freed.setdefault(user.id, asyncio.Event())
                slot = await self._try_reserve(user)
                if isinstance(slot, SignInAttempt):
                    return slot
                if slot is not Slot.WAIT or time.monotonic() >= deadline:
                    raise NotChecked(
                        "no attempt slot freed in time; password not checked"
                        if slot is Slot.WAIT
                        else "user blocked; password not checked"
                    )
                timeout = max(0.0, min(SLOT_POLL, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), timeout)
        finally:
            self._waiting[user.id] -= 1
            if not self._waiting[user.id]:
                del self._waiting[user.id]

    async def _try_reserve(self, user: UserRecord) -> SignInAttempt | Slot:
        now = self.clock()
        async with self.store.write() as tx:
            row = await tx.lock_user(user.id)
            if row is None:
                return Slot.BLOCKED
            in_progress = await tx.sign_in_attempts(row.id, now) + self._unrecorded[row.id]
            slot = self.lockout.slot(row, in_progress, now)
            if slot is Slot.FREE:
                attempt = SignInAttempt(uuid4(), row.id, now, now + ATTEMPT_LEASE)
                await tx.add_sign_in_attempt(attempt)
                return attempt
            if slot is Slot.EXHAUSTED:  # the limits were lowered below this user's failures
                block = self.lockout.exhausted_block(row, now)
                await tx.update_user(
                    row.id, blocked=True, blocked_due_date=block.until, locked_out=True
                )
                await tx.add_audit(user_blocked(row, now, None, block.until, block.reason))
        return slot

    async def count_failure(
        self,
        user: UserRecord,
        attempt: SignInAttempt | None,
        client_address: str | None,
        reason: str,
    ) -> None:
        """A wrong password was checked: give the slot back, record it, count it (and block,
        once the limit is reached) — tried again while the store cannot be had. If it still
        cannot be written, the slot stays held and the write is tried on in the background;
        the caller gets the store's error."""
        now = self.clock()
        try:
            await retried(lambda: self._count_failure(user, attempt, client_address, reason, now))
        except BaseException:
            self._unrecorded[user.id] += 1
            task = asyncio.create_task(
                self._count_later(user, attempt, client_address, reason, now),
                name="sessiond-count-failure",
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise
        self.released(attempt)

    async def _count_failure(
        self,
        user: UserRecord,
        attempt: SignInAttempt | None,
        client_address: str | None,
        reason: str,
        now: datetime,
    ) -> None:
        async with self.store.write() as tx:
            row = await tx.lock_user(user.id)
            if attempt is not None:
                await tx.remove_sign_in_attempt(attempt.id)
            block = None
            if row is not None and self.lockout.applies(row.login_type):
                changes, block = self.lockout.count_failure(row, now)
                # Before the audit records: a block gives the user's sessions new versions
                # (migration 0007), and a close locks a session row before the audit chain's
                # head, so this takes them in the same order.
                await tx.update_user(row.id, **changes)
            await tx.add_audit(login_failed(row or user, user.login, now, client_address, reason))
            if row is not None and block is not None:
                await tx.add_audit(user_blocked(row, now, None, block.until, block.reason))

    async def _count_later(
        self,
        user: UserRecord,
        attempt: SignInAttempt | None,
        client_address: str | None,
        reason: str,
        now: datetime,
    ) -> None:
        """Try the failure's write until it is written (or the node stops)."""
        try:
            while True:
                try:
                    await self._count_failure(user, attempt, client_address, reason, now)
                except Exception:
                    await asyncio.sleep(RETRY_EVERY * 4)
                else:
                    return
        finally:
            self._unrecorded[user.id] -= 1
            if self._unrecorded[user.id] <= 0:
                del self._unrecorded[user.id]
            self.released(attempt)

    async def close(self) -> None:
        """Give failures still being written a last chance, then stop trying."""
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=RETRY_EVERY * 8)
            for task in pending:
                task.cancel()

    async def release(self, attempt: SignInAttempt | None, user_id: UUID, *, right: bool) -> None:
        """Give a slot back without counting a failure (``right``: the password was right,
        which also clears the failures)."""
        if attempt is None and not right:
            return

        async def write() -> None:
            async with self.store.write() as tx:
                row = await tx.lock_user(user_id)
                if attempt is not None:
                    await tx.remove_sign_in_attempt(attempt.id)
                if right and row is not None and row.failed_attempts + row.failed_series_count:
                    await tx.update_user(row.id, **CLEARED)

        await retried(write)
        self.released(attempt)

    async def settle(self, tx: Transaction, checked: Checked) -> UserRecord | None:
        """The right password was shown: lock the row, give the slot back, clear failures
        (and a block whose time has passed), store a rehash. Returns the row as it is now."""
        now = self.clock()
        row = await tx.lock_user(checked.user.id)
        if checked.attempt is not None:
            await tx.remove_sign_in_attempt(checked.attempt.id)
        if row is None:
            return None
        changes: dict[str, Any] = {}
        if row.failed_attempts or row.failed_series_count:
            changes.update(CLEARED)
        if row.blocked and not self.lockout.blocked(row, now):
            changes.update(blocked=False, blocked_due_date=None, locked_out=False)
        rehash = checked.identity.new_password_hash
        if rehash and row.password_hash == checked.user.password_hash:
            changes["password_hash"] = rehash
        return await tx.update_user(row.id, **changes) if changes else row

    def released(self, attempt: SignInAttempt | Checked | None) -> None:
        """Wake this node's sign-ins waiting for a slot of that user."""
        if isinstance(attempt, Checked):
            attempt = attempt.attempt
        if attempt is not None and (freed := self._slot_freed.pop(attempt.user_id, None)):
            freed.set()
