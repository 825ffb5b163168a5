"""Refusals before the right password take the same time, whatever work they needed.

A wrong password costs a hash and two short write transactions (the attempt slot taken, then
settled); an unknown login or a blocked user costs a decoy hash and one. The difference is a few
milliseconds — small beside the hash, but steady, so that enough tries would tell an existing
account from an unknown one. So every such refusal ends no sooner than a floor after its
sign-in began: the 90th percentile of the last wrong-password refusals' own durations (capped).
Refusals then all take about that long; an answer that already took longer is not held.

A check's time is counted from when the sign-in got its account's turn (:mod:`.turns`), not
from its arrival: waiting behind other sign-ins of the same account is not part of it. A refusal
that needs no check (the account blocked, no slot, a limit reached) does no work at all once a
floor is known: it is held to the floor by the clock (:meth:`RefusalPace.known`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextvars import ContextVar

KEPT = 64
CAP = 2.0  # seconds: a floor never grows past this, whatever slow checks were seen

#: When the sign-in (or password change) this task is handling began (monotonic seconds).
started: ContextVar[float | None] = ContextVar("sessiond_sign_in_started", default=None)
#: The latest time the sign-in this task is handling may still wait for its turn or a slot.
deadline: ContextVar[float | None] = ContextVar("sessiond_sign_in_deadline", default=None)


class RefusalPace:
    """Floors kept per path: each backend that checks passwords (Argon2, the KDC, the directory,
    NTLM through the domain) has its own wrong-password time, and a refusal is held to the
    floor of the path it would have been checked on."""

    def __init__(self) -> None:
        self._recent: dict[object, deque[float]] = {}

    def begin(self, wait: float = 0.0) -> None:
        """A sign-in arrives; it may wait up to ``wait`` seconds for its turn and a slot."""
        now = time.monotonic()
        started.set(now)
        deadline.set(now + wait)

    def restart(self) -> None:
        """The sign-in got its account's turn: its check (or refusal) is timed from now."""
        started.set(time.monotonic())

    def known(self, path: object) -> bool:
        """Has a wrong password been timed on ``path`` (so a refusal can be held by the clock
        alone)?"""
        return bool(self._recent.get(path))

    def checked(self, path: object) -> None:
        """A wrong password was checked on ``path`` and its failure settled: learn how long
        that took."""
        began = started.get()
        if began is not None:
            recent = self._recent.setdefault(path, deque(maxlen=KEPT))
            recent.append(time.monotonic() - began)

    def floor(self, path: object) -> float:
        recent = self._recent.get(path)
        if not recent:
            return 0.0
        ordered = sorted(recent)
        return min(CAP, ordered[int(0.9 * (len(ordered) - 1))])

    async def hold(self, path: object) -> None:
        """Wait until the path's floor has passed since the sign-in began."""
        began = started.get()
        if began is None:
            return
        remaining = began + self.floor(path) - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
