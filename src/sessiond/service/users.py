"""Users: finding them by login or account, and what administrators change about them.

Every change that takes rights away ends the user's sessions in the same transaction (a session
carries the rights it was opened with), and the installation always keeps one administrator who
can sign in *on this server*: a login type whose backend is configured here (the platform's
always; Windows and Ldap only with their sections), a password set for a platform user, and not
blocked. No change may leave none — decided over the administrators' rows, locked, in the
transaction that writes the change.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from .. import passwords
from ..auth import PasswordCredentials, PlatformAuthenticator
from ..auth.accounts import WindowsNames
from ..errors import Conflict, InvalidCredentials, LicenceLimitReached, NotFound, RequestError
from ..models import (
    AccessLevel,
    AuditAction,
    LicenseType,
    LoginType,
    openid_account,
    openid_identity,
)
from ..settings import Settings
from ..store import Store, Transaction, UserRecord
from ..store.codec import SEAT_NAMES
from .admission import password_warning
from .common import Actor, Clock, change_audit, require_admin, user_blocked, user_fields
from .lockout import CLEARED, Lockout
from .sessions import Sessions

_PERSONAL_FIELDS = {
    LicenseType.PERSONAL_CLIENT: "personal_client",
    LicenseType.PERSONAL_WEB: "personal_web",
}


class Users:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        platform: PlatformAuthenticator,
        sessions: Sessions,
        sign_in_types: Collection[LoginType] = (LoginType.PLATFORM,),
    ) -> None:
        """``sign_in_types``: the login types this server has a backend for (who can sign in
        here at all)."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.platform = platform
        self.sessions = sessions
        self.sign_in_types = frozenset(sign_in_types)
        self.windows_names = WindowsNames(settings.windows) if settings.windows else None

    # --- finding -------------------------------------------------------------------------

    async def find(self, credentials: PasswordCredentials) -> UserRecord | None:
        """The user a sign-in names: by login, or by the Windows or LDAP account."""
        login = credentials.login.strip()
        if not login:
            return None
        if not credentials.domain:
            user = await self.store.find_user_by_login(login)
            if user is not None:
                return user
        for account in self._account_candidates(login, credentials.domain):
            user = await self.store.find_user_by_account(account)
            if user is not None:
                return user
        return None

    def _account_candidates(self, login: str, domain: str | None) -> list[str]:
        names = self.windows_names
        if names and names.looks_like_account(login, domain):
            try:
                return names.candidates(login, domain)
            except InvalidCredentials:
                return []
        if domain:
            return [f"{domain.strip()}\\{login}"]
        return [login]

    async def find_account(self, account: str | None) -> UserRecord | None:
        """The user mapped to an account a backend proved or claimed (any spelling)."""
        if not account or not account.strip():
            return None
        for candidate in self._account_candidates(account.strip(), None):
            user = await self.store.find_user_by_account(candidate)
            if user is not None:
                return user
        return None

    def canonical_account(self, login_type: LoginType, account: str | None) -> str | None:
        """How an administrator's spelling of an account is stored (Windows: DOMAIN\\name)."""
        if account is None or not account.strip():
            return None
        if login_type == LoginType.OPEN_ID:
            pair = openid_identity(account)
            if pair is None:
                raise RequestError(
                    f"{account!r} is not an OpenId account: give the provider's issuer and the "
                    "account's subject as ISSUER#SUBJECT (openid:ISSUER#SUBJECT)"
                )
            return openid_account(*pair)
        if login_type == LoginType.WINDOWS and self.windows_names:
            try:
                return self.windows_names.parse(account).down_level
            except InvalidCredentials:
                raise RequestError(
                    f"{account!r} is not a Windows account name: use DOMAIN\\name or name@REALM"
                ) from None
        return account.strip()

    async def get_user_by_login(self, login: str) -> UserRecord:
        user = await self.store.find_user_by_login(login)
        if user is None:
            raise NotFound(f"no user with login {login!r}")
        return user

    async def list_users(self, actor: Actor) -> Sequence[UserRecord]:
        require_admin(actor, "list users")
        return await self.store.list_users()

    async def password_expires(self, user_id: UUID) -> datetime | None:
        """The expiry of a platform user's password, once its warning period has begun."""
        user = await self.store.get_user(user_id)
        if user is None:
            return None
        return password_warning(user, self.settings.security, self.clock())

    # --- changing ------------------------------------------------------------------------

    async def add_user(
        self,
        actor: Actor,
        login: str,
        *,
        name: str | None = None,
        password: str | None = None,
        access_level: AccessLevel = AccessLevel.REGULAR,
        login_type: LoginType = LoginType.PLATFORM,
        account: str | None = None,
        one_time_password: bool = False,
    ) -> UserRecord:
        """Add a user (a password only for platform users; ``one_time_password``: it must be
        changed before it signs anyone in)."""
        require_admin(actor, "add users")
        login = login.strip()
        if not login:
            raise RequestError("a login must not be empty")
        now = self.clock()
        account = self.canonical_account(login_type, account)
        if login_type in (LoginType.WINDOWS, LoginType.LDAP) and not account:
            account = self.canonical_account(login_type, login)
        password_hash = None
        if password is not None:
            passwords.check_rules(password, self.settings.security)
            password_hash = await self.platform.hash(password)
        user = UserRecord(
            id=uuid4(),
            login=login,
            name=name or login,
            created=now,
            access_level=access_level,
            login_type=login_type,
            account=account,
            password_hash=password_hash,
            password_changed=now if password_hash and not one_time_password else None,
        )
        async with self.store.write() as tx:
            await tx.add_user(user)
            if password_hash:
                await tx.add_password_history(user.id, password_hash, now)
            await tx.add_audit(
                change_audit(AuditAction.USER_CREATED, now, actor, user, user_fields(user))
            )
        return user

    async def remove_user(self, actor: Actor, login: str) -> UserRecord:
        """Remove a user: their sessions end, their row and password history go. The audit
        trail keeps every record about them (each carries their id and name), and a
        UserRemoved record says who removed whom; the login is free again for a new user, who
        gets a new id."""
        require_admin(actor, "remove users")
        user = await self.get_user_by_login(login)
        now = self.clock()
        async with self.store.write() as tx:
            row = await self._lock(tx, user.id, demoting=True)
            if actor.id == row.id:
                raise Conflict("an administrator cannot remove their own user")
            await self._keep_an_administrator(tx, row, None)
            await self.sessions.end_user_sessions(
                tx, row.id, actor, AuditAction.SESSION_CLOSED_BY_ADMIN, "user removed"
            )
            await tx.delete_user(row.id)
            await tx.add_audit(
                change_audit(AuditAction.USER_REMOVED, now, actor, row, user_fields(row))
            )
        return row

    async def update_user(
        self,
        actor: Actor,
        login: str,
        *,
        name: str | None = None,
        access_level: AccessLevel | None = None,
        login_type: LoginType | None = None,
        account: str | None = None,
        time_zone_utc_offset: int | None = None,
        personal: Mapping[LicenseType, bool | None] | None = None,
    ) -> UserRecord:
        """Change how a user signs in and who they are, and which personal licences they hold
        (``personal``); None leaves a field as it is. Changing the access level or the login
        type ends the user's open sessions. All of it is one transaction, whose result is the
        answer: a change is made whole or not at all."""
        require_admin(actor, "change users")
        user = await self.get_user_by_login(login)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if access_level is not None:
            changes["access_level"] = access_level
        if login_type is not None:
            changes["login_type"] = login_type
        kind = login_type if login_type is not None else user.login_type
        if account is not None:
            changes["account"] = self.canonical_account(kind, account)
        elif login_type in (LoginType.WINDOWS, LoginType.LDAP) and not user.account:
            changes["account"] = self.canonical_account(kind, user.login)
        if time_zone_utc_offset is not None:
            changes["time_zone_utc_offset"] = time_zone_utc_offset
        seats = {seat: holds for seat, holds in (personal or {}).items() if holds is not None}
        for seat in seats:
            if seat not in _PERSONAL_FIELDS:
                raise RequestError("a personal licence is PersonalClient or PersonalWeb")
        if not changes and not seats:
            return user
        now = self.clock()
        async with self.store.write() as tx:
            row = await self._lock(tx, user.id, demoting="access_level" in changes or login_type)
            rights = any(
                key in changes and changes[key] != getattr(row, key)
                for key in ("access_level", "login_type", "account")
            )
            updated = await tx.update_user(row.id, **changes) if changes else row
            await self._keep_an_administrator(tx, row, updated)
            for seat, holds in seats.items():
                updated = await self._personal(tx, actor, updated, seat, holds)
            await self._record_change(tx, now, actor, row, updated)
            if rights:
                # A session carries the rights it was opened with: end them with the change.
                await self.sessions.end_user_sessions(
                    tx, row.id, actor, AuditAction.SESSION_CLOSED_BY_ADMIN,
                    "access level, login type or account changed",
                )  # fmt: skip
        return updated

    async def set_blocked(
        self, actor: Actor, login: str, blocked: bool, until: datetime | None = None
    ) -> UserRecord:
        """Block (until a time, or until lifted; the user's sessions end) or unblock (which
        also clears the failed sign-ins counted so far). A block whose end is not in the future
        is refused: it would block nobody, yet end the user's sessions and read as a block."""
        require_admin(actor, "block or unblock users")
        user = await self.get_user_by_login(login)
        now = self.clock()
        if blocked and until is not None and until <= now:
            raise RequestError(
                f"the block's end {until.isoformat()} is not in the future: give a later time, "
                "none to block until lifted, or unblock the user",
                details={"rule": "block_end_past"},
            )
        async with self.store.write() as tx:
            row = await self._lock(tx, user.id, demoting=blocked)
            if not blocked:
                await tx.add_audit(change_audit(AuditAction.USER_UNBLOCKED, now, actor, row))
                return await tx.update_user(
                    row.id, blocked=False, blocked_due_date=None, locked_out=False, **CLEARED
                )
            updated = await tx.update_user(
                row.id, blocked=True, blocked_due_date=until, locked_out=False
            )
            await self._keep_an_administrator(tx, row, updated)
            await tx.add_audit(user_blocked(row, now, actor, until, "by an administrator"))
            await self.sessions.end_user_sessions(
                tx, row.id, actor, AuditAction.SESSION_CLOSED_BY_ADMIN, "user blocked"
            )
        return updated

    async def set_password(self, actor: Actor, login: str, password: str) -> UserRecord:
        """An administrator sets a user's password (the same rules apply); every session of
        the user ends."""
        require_admin(actor, "set a user's password")
        user = await self.get_user_by_login(login)
        security = self.settings.security
        passwords.check_rules(password, security)
        history = await self.store.password_history(user.id, security.unique_password_count)
        await passwords.check_reuse(password, history, self.platform.matches, security)
        password_hash = await self.platform.hash(password)
        now = self.clock()
        async with self.store.write() as tx:
            row = await self._lock(tx, user.id)
            updated = await tx.update_user(
                row.id, password_hash=password_hash, password_changed=now, **CLEARED
            )
            await tx.add_password_history(row.id, password_hash, now)
            await tx.add_audit(change_audit(AuditAction.PASSWORD_RESET, now, actor, row))
            await self.sessions.end_user_sessions(
                tx, row.id, actor, AuditAction.SESSION_CLOSED_BY_ADMIN, "password reset"
            )
        return updated

    async def set_personal_licence(
        self, actor: Actor, login: str, license_type: LicenseType, holds: bool
    ) -> UserRecord:
        require_admin(actor, "give out personal licences")
        if license_type not in _PERSONAL_FIELDS:
            raise RequestError("a personal licence is PersonalClient or PersonalWeb")
        user = await self.get_user_by_login(login)
        async with self.store.write() as tx:
            row = await self._lock(tx, user.id)
            updated = await self._personal(tx, actor, row, license_type, holds)
            await self._record_change(tx, self.clock(), actor, row, updated)
        return updated

    async def _personal(
        self, tx: Transaction, actor: Actor, row: UserRecord, license_type: LicenseType, holds: bool
    ) -> UserRecord:
        """Give a personal licence (within the licence's count) or take it back (its sessions
        end), in the transaction that holds the user's row."""
        licence = await tx.lock_licence()
        if holds and licence is not None:
            limit = licence.seats_of(license_type)
            given = await tx.count_personal_licences(license_type, row.id)
            if given >= limit:
                raise LicenceLimitReached(
                    f"licence limit reached: {given} of {limit} "
                    f"{SEAT_NAMES[license_type]} licences are given out"
                )
        updated = await tx.update_user(row.id, **{_PERSONAL_FIELDS[license_type]: holds})
        if not holds:
            await self.sessions.end_user_sessions(
                tx, row.id, actor, AuditAction.SESSION_CLOSED_BY_ADMIN,
                "personal licence taken back", license_type=license_type,
            )  # fmt: skip
        return updated

    async def ensure_first_administrator(self) -> tuple[UserRecord, str | None] | None:
        """Create the first administrator if there are no users at all.

        Returns the user and, when it was generated, the one-time password (None if it came
        from settings); None if users already exist.
        """
        if await self.store.count_users():
            return None
        password = self.settings.admin_password_value
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(15)
        try:
            # A generated password has been printed on a console: it must be changed at the
            # first sign-in.
            user = await self.add_user(
                Actor.system(),
                self.settings.admin_login,
                name="Administrator",
                password=password,
                access_level=AccessLevel.ADMINISTRATOR,
                one_time_password=generated,
            )
        except Conflict:  # another node created it meanwhile
            return None
        return user, (password if generated else None)

    # --- the rules -----------------------------------------------------------------------

    @staticmethod
    async def _lock(tx: Transaction, user_id: UUID, *, demoting: object = False) -> UserRecord:
        """Lock the user (and first, for a change that may leave no administrator, every
        administrator: the one lock order that never deadlocks two such changes)."""
        if demoting:
            await tx.lock_administrators()
        row = await tx.lock_user(user_id)
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        return row

    @staticmethod
    async def _record_change(
        tx: Transaction, now: datetime, actor: Actor, before: UserRecord, after: UserRecord
    ) -> None:
        """A UserChanged record listing each changed field as [before, after]."""
        changes = {
            name: [_plain(getattr(before, name)), _plain(getattr(after, name))]
            for name in _RECORDED_FIELDS
            if getattr(before, name) != getattr(after, name)
        }
        if changes:
            await tx.add_audit(
                change_audit(AuditAction.USER_CHANGED, now, actor, after, {"changes": changes})
            )

    async def _keep_an_administrator(
        self, tx: Transaction, before: UserRecord, after: UserRecord | None
    ) -> None:
        now = self.clock()
        if not self._can_administer(before, now):
            return
        if after is not None and self._can_administer(after, now):
            return
        others = [
            u
            for u in await tx.lock_administrators()
            if u.id != before.id and self._can_administer(u, now)
        ]
        if not others:
            raise Conflict(
                f"{before.login} is the last administrator who can sign in on this server: "
                "first make another user an administrator who can (a login type configured "
                "here, a password set for a Platform user, not blocked)"
            )

    def _can_administer(self, user: UserRecord, now: datetime) -> bool:
        """An administrator who can sign in on this server: a login type with a backend here,
        a password to check for a platform user, and no block in force."""
        return (
            user.access_level == AccessLevel.ADMINISTRATOR
            and user.login_type in self.sign_in_types
            and (user.login_type != LoginType.PLATFORM or user.password_hash is not None)
            and not Lockout.blocked(user, now)
        )


_RECORDED_FIELDS = (
    "login",
    "name",
    "access_level",
    "login_type",
    "account",
    "time_zone_utc_offset",
    "personal_client",
    "personal_web",
)


def _plain(value: Any) -> Any:
    return value.wire if isinstance(value, AccessLevel | LoginType) else value
