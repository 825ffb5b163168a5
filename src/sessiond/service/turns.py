"""One sign-in of an account at a time on this node, and a pause after each refusal.

A flood of guesses at one account used to run a full Argon2 hash for every guess (the check,
or a decoy once the account was blocked): a thousand at once filled the hashing threads' queue,
and everyone else's sign-in waited behind them. Now a sign-in takes its account's *turn* before
anything that costs: the check, the decoy, or a refusal held to the floor. Only one sign-in of
an account holds the turn on a node; the others wait for it in order, up to the sign-in's
deadline (``sign_in_slot_wait`` after it arrived), and are then refused unchecked, with no work
but their record. A turn that ended in a refusal while other sign-ins of the account were
waiting keeps the account closed for :data:`PAUSE` times as long as it took (at most
:data:`MAX_PAUSE`): a flood at one account gets at most one hash in ``PAUSE + 1`` hash times, a
fifth of one hashing thread, whatever its size. Guesses one after another (nobody waiting)
are not paused: they never have more than one hash in flight, and a refusal answered alone
stays the same as before.

Accounts are keyed as the lockout keys them: the user, the unmapped account's identity, or for
an unknown login the login itself, so that guesses at an unknown login wait, pause and are
refused in the same shape as guesses at an existing one.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .attempts import NotChecked
from .pacing import CAP

#: After a turn that ended in a refusal with others waiting, the account's next turn waits this
#: many times as long as that turn took: one hash in five at most (docs/benchmarks.md, "flood").
PAUSE = 4.0
#: The longest pause after one refusal (seconds).
MAX_PAUSE = PAUSE * CAP
WAITED = "too many sign-ins of this account at once; password not checked"


class Waited(NotChecked):
    """The account's turn did not come before the sign-in's deadline."""


@dataclass
class Turn:
    """An account's turn, held by one sign-in: ``began`` (monotonic seconds), and whether it
    ended in a refusal (then the account pauses)."""

    began: float
    refused: bool = False


class Turns:
    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[object, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._waiting: Counter[object] = Counter()

    @asynccontextmanager
    async def take(self, key: object, deadline: float) -> AsyncIterator[Turn]:
        """Wait (until ``deadline``, monotonic seconds) for the account's turn, in order of
        arrival; :class:`Waited` if it does not come in time."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        self._waiting[key] += 1
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                await lock.acquire()
        except TimeoutError:
            raise Waited(WAITED) from None
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
        turn = Turn(time.monotonic())
        try:
            yield turn
        finally:
            pause = min(MAX_PAUSE, PAUSE * (time.monotonic() - turn.began))
            if turn.refused and pause > 0 and self._waiting[key]:
                asyncio.get_running_loop().call_later(pause, lock.release)
            else:
                lock.release()


def _loop_time(deadline: float) -> float:
    """``deadline`` (``time.monotonic()``) on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
