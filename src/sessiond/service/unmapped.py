"""Limits on accounts no user is mapped to, whose passwords are checked with the domain or the
directory only so that a user may be provisioned for them.

Refused attempts are counted per account and per address (:mod:`.throttle`). The account's key
is the :class:`~sessiond.auth.Claim`'s: one identity for every spelling of the account and every
path that checks its password (typed into the sign-in form, or answered by NTLM), so that no
spelling, path or address gets a limit of its own. A check holds a slot under each key across
the check, in transactions that lock the keys, so the limit holds under parallel tries on one
node or several. When a key is full, :class:`~.attempts.NotChecked` asks the pipeline to refuse
unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

from ..auth import Claim
from ..settings import Settings
from ..store import Store
from .attempts import ATTEMPT_LEASE, NotChecked
from .common import Clock, login_failed
from .durable import retried
from .throttle import Limit


@dataclass(frozen=True, slots=True)
class Held:
    """The throttle slots a check holds: its keys and the attempt rows."""

    keys: dict[str, Limit]
    attempts: list[UUID]


class UnmappedLimits:
    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    def keys(self, claim: Claim, client_address: str | None) -> dict[str, Limit]:
        """The throttle keys of an attempt, with their limits: the account, the address."""
        security = self.settings.security
        window = security.unmapped_failures_window
        keys = {claim.key: Limit(security.unmapped_account_failures, window)}
        if client_address:
            keys[f"address:{client_address}"] = Limit(security.unmapped_address_failures, window)
        return {key: limit for key, limit in keys.items() if limit.limit}

    async def hold(self, claim: Claim, client_address: str | None) -> Held:
        """Take a slot under each key, or :class:`NotChecked` when a key has reached its limit
        or every slot it has is taken by a check in progress."""
        keys = self.keys(claim, client_address)
        held = Held(keys, [])
        if not keys:
            return held
        now = self.clock()
        full: str | None = None
        async with self.store.write() as tx:
            for key in sorted(keys):  # one order everywhere: no two attempts wait in a circle
                row = await tx.lock_throttle(key, now)
                if not keys[key].free(row, await tx.throttle_attempts(key, now), now):
                    full = key
            if full is None:
                for key in sorted(keys):
                    attempt = uuid4()
                    await tx.add_throttle_attempt(attempt, key, now + ATTEMPT_LEASE)
                    held.attempts.append(attempt)
        if full is not None:
            what = "address" if full.startswith("address:") else "account"
            raise NotChecked(f"too many refused sign-ins from this {what}; password not checked")
        return held

    async def settle(
        self, held: Held, who: str, client_address: str | None, refused: str | None
    ) -> None:
        """Give the slots back; a refusal (``refused``: its reason) is counted under every key
        and recorded, and a key that reaches its limit is recorded too."""
        if not held.keys and refused is None:
            return
        now = self.clock()

        async def write() -> None:
            async with self.store.write() as tx:
                for attempt in held.attempts:
                    await tx.remove_throttle_attempts(attempt)
                if refused is None:
                    return
                await tx.add_audit(login_failed(None, who, now, client_address, refused))
                for key in sorted(held.keys):
                    limit = held.keys[key]
                    changes, reached = limit.refused(await tx.lock_throttle(key, now), now)
                    await tx.update_throttle(key, **changes)
                    if reached:
                        note = (
                            f"limit of {limit.limit} refused sign-ins within {limit.window} "
                            f"reached for {key}: refused unchecked until "
                            f"{changes['blocked_until']:%H:%M:%S}"
                        )
                        await tx.add_audit(login_failed(None, who, now, client_address, note))

        await retried(write)  # a refusal checked is counted whatever fails after the check
