"""Accounts an outside provider proved (OpenID Connect), held as users before the sign-in
pipeline looks them up: the first-sign-in match by a claim, provisioning, and the access
level a provider's groups give. Backends ask for it through
:class:`~sessiond.auth.base.Accounts`; every change is made on the locked row and audited as
the server's (System) with the provider named.
"""

from __future__ import annotations

import logging

from ..auth.base import ExternalAccount
from ..errors import Conflict
from ..models import AccessLevel, AuditAction
from ..store import Store, UserRecord
from .common import Actor, Clock, change_audit
from .users import Users

log = logging.getLogger("sessiond.service")


class ExternalAccounts:
    def __init__(self, store: Store, clock: Clock, users: Users) -> None:
        self.store = store
        self.clock = clock
        self.users = users

    async def hold_external(self, account: ExternalAccount) -> None:
        user = await self.store.find_user_by_account(account.account)
        if user is None and account.match_login:
            user = await self._match(account)
        if user is None and account.provision:
            user = await self._provision(account)
        if user is not None and account.access_level is not None:
            await self._access_level(user, account)

    async def _match(self, account: ExternalAccount) -> UserRecord | None:
        """The user of this login type whose login is the claim, with no account yet, takes
        the account (once: later sign-ins find it by the account)."""
        assert account.match_login is not None
        found = await self.store.find_user_by_login(account.match_login)
        if found is None or found.login_type != account.login_type or found.account:
            return None
        now = self.clock()
        async with self.store.write() as tx:
            row = await tx.lock_user(found.id)
            if row is None or row.login_type != account.login_type or row.account:
                return None  # changed meanwhile: the pipeline decides on what is there now
            updated = await tx.update_user(row.id, account=account.account)
            details = {
                "changes": {"account": [None, account.account]},
                "reason": f"first sign-in through {account.via}, matched by its login",
            }
            await tx.add_audit(
                change_audit(AuditAction.USER_CHANGED, now, Actor.system(), updated, details)
            )
        return updated

    async def _provision(self, account: ExternalAccount) -> UserRecord | None:
        """A new user for the account: its login is the provider's name for it, or the account
        itself when that login is taken."""
        level = account.access_level or AccessLevel.REGULAR
        for login in dict.fromkeys((account.login, account.account)):
            try:
                return await self.users.add_user(
                    Actor.system(), login, name=account.name, login_type=account.login_type,
                    account=account.account, access_level=level,
                )  # fmt: skip
            except Conflict:
                user = await self.store.find_user_by_account(account.account)
                if user is not None:  # provisioned meanwhile by a concurrent sign-in
                    return user
        return None

    async def _access_level(self, user: UserRecord, account: ExternalAccount) -> None:
        """The level the provider's groups give (its sessions end with a change, as any)."""
        if user.login_type != account.login_type or user.access_level == account.access_level:
            return
        try:
            await self.users.update_user(
                Actor.system(), user.login, access_level=account.access_level
            )
        except Conflict as exc:  # the last administrator who can sign in stays one
            log.warning("access level of %s kept: %s", user.login, exc.message)
