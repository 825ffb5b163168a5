"""Refusals before the right password take the same time, whatever work they needed.

A wrong password costs a hash and two short write transactions (the attempt slot taken, then
settled); an unknown login or a blocked user costs a decoy hash and one. The difference is a few
milliseconds — small beside the hash, but steady, so that enough tries would tell an existing
account from an unknown one. So every such refusal ends no sooner than a floor after its
sign-in began: the 90th percentile of the last wrong-password refusals' own durations (capped).
Refusals then all take about that long; an answer that already took longer is not held.
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


class RefusalPace:
    """Floors kept per path: each backend that checks passwords (Argon2, the KDC, the directory,
    NTLM through the domain) has its own wrong-password time, and a refusal is held to the
    floor of the path it would have been checked on."""

    def __init__(self) -> None:
        self._recent: dict[object, deque[float]] = {}

    def begin(self) -> None:
        started.set(time.monotonic())

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
