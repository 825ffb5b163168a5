"""Signing in and changing one's own password: "may this user sign in now?", decided once.

A sign-in goes through three steps, and every decision about the user is made from the row as
it is at the step that acts on it:

1. **Reserve** (when the lockout applies): in one transaction, lock the user's row, count the
   checks in progress and take an attempt slot (see :mod:`.lockout`), or find the user blocked.
2. **Check** the password: the slow part (Argon2, the domain, the directory), outside any
   transaction.
3. **Settle**, in one transaction: lock the row again, give the slot back, and either count the
   failure (and block, once) or decide from the row *as it is now* — login type, block, password
   expiry, licence — and write the session with the rights the row has now, taking its seat.

Before the right password is shown, every refusal is the same ``invalid_credentials`` answer,
after the same work (a decoy hash where no real one is checked) and no sooner than the same
floor (:mod:`.pacing`): an unknown login, a wrong password, a blocked user, a user whose login
type is None or not configured here. Details (blocked until when, password expired, licence
full) come only after the right password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn
from uuid import UUID, uuid4

from .. import metrics, passwords
from ..auth import Authenticator, Identity, PasswordCredentials, PlatformAuthenticator
from ..auth.negotiate import NegotiateAcceptor
from ..errors import (
    AccountNotMapped,
    Conflict,
    InvalidCredentials,
    LicenceInvalid,
    LicenceLimitReached,
    LoginForbidden,
    NegotiateRequired,
    NotConfigured,
    PasswordExpired,
    PasswordRejected,
    SessiondError,
    UserBlocked,
)
from ..keys import KeyRing
from ..models import AuditAction, ClientInfo, LoginType
from ..settings import Settings
from ..store import AuditRecord, SessionRecord, SignInAttempt, Store, Transaction, UserRecord
from ..token import SessionToken
from .common import Actor, Clock, change_audit, login_failed, user_blocked
from .licensing import Licensing
from .lockout import CLEARED, Lockout, Slot
from .pacing import RefusalPace
from .sessions import Sessions
from .throttle import Limit
from .users import Users

log = logging.getLogger("sessiond.service")

WRONG = "wrong login or password"
DOMAIN_OR_PLATFORM = (LoginType.PLATFORM, LoginType.WINDOWS, LoginType.LDAP)
#: How long a password check may hold its slot if its node goes away before settling it.
ATTEMPT_LEASE = timedelta(minutes=2)
#: How often a sign-in waiting for a slot looks for one freed on another node (seconds).
SLOT_POLL = 0.1
#: Sign-ins of one user that may wait for a slot on one node; more are refused at once.
MAX_WAITING = 32


@dataclass(frozen=True, slots=True)
class _Held:
    """The throttle slots an unmapped account's check holds: its keys and the attempt rows."""

    keys: dict[str, Limit]
    attempts: list[UUID]


@dataclass(frozen=True, slots=True)
class Checked:
    """A password shown right for ``user`` as the row was when the check began."""

    user: UserRecord
    identity: Identity
    attempt: SignInAttempt | None = None


class SignIn:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: KeyRing,
        clock: Clock,
        authenticators: dict[LoginType, Authenticator],
        negotiate: NegotiateAcceptor | None,
        users: Users,
        sessions: Sessions,
        licensing: Licensing,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.authenticators = authenticators
        platform = authenticators[LoginType.PLATFORM]
        assert isinstance(platform, PlatformAuthenticator)
        self.platform = platform
        self.negotiate = negotiate
        self.users = users
        self.sessions = sessions
        self.licensing = licensing
        self.lockout = Lockout(settings.security)
        self._slot_freed: weakref.WeakValueDictionary[UUID, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._waiting: Counter[UUID] = Counter()
        self.pace = RefusalPace()

    # --- the calls -----------------------------------------------------------------------

    async def open_session(
        self, credentials: PasswordCredentials, client: ClientInfo, client_address: str | None
    ) -> SessionToken:
        self.pace.begin()
        with metrics.sign_in() as counted:  # counts the outcome, by the user's login type
            user = await self.users.find(credentials)
            if user is None:
                identity, kind = await self._verify_unmapped(credentials, client_address)
                user = await self._provision(identity, kind, client_address)
                checked = Checked(user, identity)
            else:
                counted.login_type = user.login_type
                checked = await self._check(user, credentials, client_address)
            counted.login_type = checked.user.login_type
            return await self._admit(checked, checked.user.login_type, client, client_address)

    async def open_session_negotiate(
        self,
        token: bytes | None,
        handshake_id: str | None,
        client: ClientInfo,
        client_address: str | None,
    ) -> tuple[SessionToken, bytes | None]:
        """Integrated Windows sign-in (SPNEGO: Kerberos, or NTLM as the fallback). Returns the
        session and the acceptor's last token (mutual authentication), or raises
        :class:`NegotiateRequired` with the challenge when the exchange needs another leg."""
        with metrics.sign_in(LoginType.WINDOWS):  # a challenge is not an outcome
            return await self._negotiate(token, handshake_id, client, client_address)

    async def _negotiate(
        self,
        token: bytes | None,
        handshake_id: str | None,
        client: ClientInfo,
        client_address: str | None,
    ) -> tuple[SessionToken, bytes | None]:
        names = self.users.windows_names
        if self.negotiate is None or names is None:
            raise NotConfigured(
                "integrated Windows sign-in is not configured on this server; sign in with a "
                "login and password"
            )
        if not token:
            raise NegotiateRequired("integrated Windows sign-in: send a Negotiate token")
        try:
            result = await self.negotiate.step(token, handshake_id)
        except InvalidCredentials as exc:
            await self._audit(
                None, "(integrated sign-in)", client_address, exc.reason or exc.message
            )
            raise
        if not result.complete or result.principal is None:
            raise NegotiateRequired(
                "integrated Windows sign-in continues: answer the challenge",
                challenge=result.output,
                handshake_id=result.handshake_id,
                scheme=result.scheme,
            )
        account = names.parse(result.principal)
        identity = Identity(account=account.down_level, display_name=account.name)
        user = await self.users.find(PasswordCredentials(result.principal, ""))
        if user is None:
            user = await self._provision(identity, LoginType.WINDOWS, client_address)
        session = await self._admit(
            Checked(user, identity), LoginType.WINDOWS, client, client_address, result.protocol
        )
        return session, result.output

    async def change_password(
        self,
        login: str,
        old_password: str,
        new_password: str,
        client_address: str | None,
        current_session: UUID | None = None,
    ) -> UserRecord:
        """A platform user changes their own password (also once it has expired). Their other
        sessions end (all of them without ``current_session``), unless the security options
        keep them."""
        self.pace.begin()
        security = self.settings.security
        passwords.check_rules(new_password, security)  # the same for every login: tells nothing
        credentials = PasswordCredentials(login, old_password)
        user = await self.users.find(credentials)
        if user is None or user.login_type not in DOMAIN_OR_PLATFORM:
            reason = "unknown login" if user is None else f"{user.login_type.wire} user"
            await self._refuse(user, credentials, client_address, reason)
        if user.login_type != LoginType.PLATFORM:
            await self._domain_password(user, credentials, client_address)
        checked = await self._check(user, credentials, client_address)
        try:
            history = await self.store.password_history(user.id, security.unique_password_count)
            await passwords.check_reuse(new_password, history, self.platform.matches, security)
            new_hash = await self.platform.hash(new_password)
        except BaseException:
            await asyncio.shield(self._release(checked.attempt, user.id, right=True))
            raise
        now = self.clock()
        async with self.store.write() as tx:
            row = await self._settle(tx, checked)
            refusal = self._refusal(checked, row, LoginType.PLATFORM, now, for_change=True)
            if row is None or refusal is not None:
                await tx.add_audit(
                    login_failed(row or user, login, now, client_address, _reason(refusal))
                )
            else:
                row = await tx.update_user(
                    row.id, password_hash=new_hash, password_changed=now, **CLEARED
                )
                await tx.add_password_history(row.id, new_hash, now)
                actor = Actor(row.id, row.name, row.access_level, current_session, client_address)
                await tx.add_audit(change_audit(AuditAction.PASSWORD_CHANGED, now, actor, row))
                if not security.keep_other_sessions_on_password_change:
                    await self.sessions.end_user_sessions(
                        tx, row.id, actor, AuditAction.LOGOUT, "password changed",
                        except_session=current_session,
                    )  # fmt: skip
        self._slot_released(checked)
        if refusal is not None:
            raise refusal
        assert row is not None
        return row

    async def _domain_password(
        self, user: UserRecord, credentials: PasswordCredentials, client_address: str | None
    ) -> NoReturn:
        """A Windows or Ldap user's password belongs to the domain or the directory: once the
        old one is shown right (or right but expired), say where to change it."""
        try:
            checked = await self._check(user, credentials, client_address)
        except PasswordExpired:
            pass
        else:
            await asyncio.shield(self._release(checked.attempt, user.id, right=True))
        raise PasswordRejected(
            f"{user.login_type.wire} passwords are changed in the "
            + (
                "domain (Ctrl+Alt+Del on Windows, or the domain's tools)"
                if user.login_type == LoginType.WINDOWS
                else "directory"
            )
            + ", not here; then sign in with the new password",
            details={"rule": "changed_elsewhere"},
        )

    # --- 1. reserve ----------------------------------------------------------------------

    async def _check(
        self, user: UserRecord, credentials: PasswordCredentials, client_address: str | None
    ) -> Checked:
        """Check the password, within the lockout: a Checked, or the uniform refusal."""
        authenticator = (
            self.authenticators.get(user.login_type) if user.login_type != LoginType.NONE else None
        )
        if authenticator is None:
            reason = (
                "login type None: may not sign in"
                if user.login_type == LoginType.NONE
                else f"sign-in of {user.login_type.wire} users is not configured on this server"
            )
            await self._refuse(user, credentials, client_address, reason)
        attempt = None
        if self.lockout.applies(user.login_type):
            attempt = await self._reserve(user, credentials, client_address)
        try:
            identity = await authenticator.verify(user, credentials)
        except InvalidCredentials as exc:
            await asyncio.shield(
                self._count_failure(user, attempt, client_address, exc.reason or exc.message)
            )
            self.pace.checked()
            await self.pace.hold()
            raise InvalidCredentials(WRONG) from None
        except PasswordExpired as exc:  # the domain's answer to the right, but expired, password
            await asyncio.shield(self._release(attempt, user.id, right=True))
            await self._audit(user, user.login, client_address, exc.reason or exc.code)
            raise
        except BaseException:  # the domain is down, the request went away: nothing was shown
            await asyncio.shield(self._release(attempt, user.id, right=False))
            raise
        return Checked(user, identity, attempt)

    async def _reserve(
        self, user: UserRecord, credentials: PasswordCredentials, client_address: str | None
    ) -> SignInAttempt:
        """Take one of the user's attempt slots, waiting a bounded time for one to free up."""
        deadline = time.monotonic() + self.settings.sign_in_slot_wait.total_seconds()
        if self._waiting[user.id] >= MAX_WAITING:
            await self._refuse(user, credentials, client_address, "too many sign-ins at once")
        self._waiting[user.id] += 1
        try:
            while True:
                freed = self._slot_freed.setdefault(user.id, asyncio.Event())
                slot = await self._try_reserve(user, client_address)
                if isinstance(slot, SignInAttempt):
                    return slot
                if slot is not Slot.WAIT or time.monotonic() >= deadline:
                    reason = (
                        "no attempt slot freed in time; password not checked"
                        if slot is Slot.WAIT
                        else "user blocked; password not checked"
                    )
                    await self._refuse(user, credentials, client_address, reason)
                timeout = max(0.0, min(SLOT_POLL, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), timeout)
        finally:
            self._waiting[user.id] -= 1
            if not self._waiting[user.id]:
                del self._waiting[user.id]

    async def _try_reserve(
        self, user: UserRecord, client_address: str | None
    ) -> SignInAttempt | Slot:
        now = self.clock()
        async with self.store.write() as tx:
            row = await tx.lock_user(user.id)
            if row is None:
                return Slot.BLOCKED
            slot = self.lockout.slot(row, await tx.sign_in_attempts(row.id, now), now)
            if slot is Slot.FREE:
                attempt = SignInAttempt(uuid4(), row.id, now, now + ATTEMPT_LEASE)
                await tx.add_sign_in_attempt(attempt)
                return attempt
            if slot is Slot.EXHAUSTED:  # the limits were lowered below this user's failures
                block = self.lockout.exhausted_block(row, now)
                await tx.update_user(row.id, blocked=True, blocked_due_date=block.until)
                await tx.add_audit(user_blocked(row, now, None, block.until, block.reason))
        return slot

    async def _refuse(
        self,
        user: UserRecord | None,
        credentials: PasswordCredentials,
        client_address: str | None,
        reason: str,
    ) -> NoReturn:
        """The answer every refusal gets before the right password is shown, after the same
        work: a hash verified, a LoginFailed record written."""
        await self.platform.burn(credentials.password)
        await self._audit(user, credentials.display, client_address, reason)
        await self.pace.hold()
        raise InvalidCredentials(WRONG, reason=reason)

    # --- 3. settle -----------------------------------------------------------------------

    async def _count_failure(
        self,
        user: UserRecord,
        attempt: SignInAttempt | None,
        client_address: str | None,
        reason: str,
    ) -> None:
        now = self.clock()
        async with self.store.write() as tx:
            row = await tx.lock_user(user.id)
            if attempt is not None:
                await tx.remove_sign_in_attempt(attempt.id)
            await tx.add_audit(login_failed(row or user, user.login, now, client_address, reason))
            if row is not None and self.lockout.applies(row.login_type):
                changes, block = self.lockout.count_failure(row, now)
                await tx.update_user(row.id, **changes)
                if block is not None:
                    await tx.add_audit(user_blocked(row, now, None, block.until, block.reason))
        self._slot_released(attempt)

    async def _release(self, attempt: SignInAttempt | None, user_id: UUID, *, right: bool) -> None:
        """Give a slot back without counting a failure (``right``: the password was right,
        which also clears the failures)."""
        if attempt is None and not right:
            return
        async with self.store.write() as tx:
            row = await tx.lock_user(user_id)
            if attempt is not None:
                await tx.remove_sign_in_attempt(attempt.id)
            if right and row is not None and row.failed_attempts + row.failed_series_count:
                await tx.update_user(row.id, **CLEARED)
        self._slot_released(attempt)

    async def _settle(self, tx: Transaction, checked: Checked) -> UserRecord | None:
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
            changes.update(blocked=False, blocked_due_date=None)
        rehash = checked.identity.new_password_hash
        if rehash and row.password_hash == checked.user.password_hash:
            changes["password_hash"] = rehash
        return await tx.update_user(row.id, **changes) if changes else row

    def _refusal(
        self,
        checked: Checked,
        row: UserRecord | None,
        expected: LoginType,
        now: datetime,
        *,
        for_change: bool = False,
    ) -> SessiondError | None:
        """May the user whose password (or ticket) was just shown sign in now? Decided from the
        locked row; None if so."""
        if row is None:
            return InvalidCredentials(WRONG, reason="the user was removed during the sign-in")
        if row.login_type == LoginType.NONE:
            return LoginForbidden(
                f"user {row.login!r} may not sign in (login type None); ask an administrator"
            )
        if row.login_type != expected:
            if expected == LoginType.WINDOWS and checked.user.login_type == row.login_type:
                return LoginForbidden(
                    f"user {row.login!r} signs in with a {row.login_type.wire} login, not Windows"
                )
            return InvalidCredentials(WRONG, reason="the login type changed during the sign-in")
        if row.account != checked.user.account:
            return InvalidCredentials(WRONG, reason="the account changed during the sign-in")
        if self.lockout.blocked(row, now):
            until = row.blocked_due_date
            return UserBlocked(
                f"user {row.login!r} is blocked"
                + (f" until {until.isoformat()}" if until else "; ask an administrator to unblock")
                + ".",
                details={"blocked_until": until.isoformat() if until else None},
            )
        if row.login_type != LoginType.PLATFORM:
            return None
        if row.password_changed != checked.user.password_changed:
            return InvalidCredentials(WRONG, reason="the password changed during the sign-in")
        if for_change:
            return None
        if row.password_changed is None:
            return PasswordExpired(
                "this is a one-time password: change it, then sign in",
                details={"one_time": True},
            )
        expiry = passwords.expires_at(row.password_changed, self.settings.security)
        if expiry is not None and now >= expiry:
            return PasswordExpired(
                f"the password expired on {expiry:%Y-%m-%d}; change it, then sign in",
                details={"expired": expiry.isoformat()},
            )
        return None

    async def _admit(
        self,
        checked: Checked,
        expected: LoginType,
        client: ClientInfo,
        client_address: str | None,
        method: str | None = None,
    ) -> SessionToken:
        """Settle a right password: decide from the locked row, and write the session with
        the rights the row has now, in the same transaction."""
        now = self.clock()
        async with self.store.write() as tx:
            row = await self._settle(tx, checked)
            refusal = self._refusal(checked, row, expected, now)
            token = None
            if row is not None and refusal is None:
                try:
                    token = await self._mint(tx, row, client, client_address, now, method)
                except (LicenceLimitReached, LicenceInvalid) as exc:
                    refusal = exc
            if refusal is not None:
                who = row or checked.user
                await tx.add_audit(
                    login_failed(who, who.login, now, client_address, _reason(refusal))
                )
        self._slot_released(checked.attempt)
        if refusal is not None:
            raise refusal
        assert token is not None
        return token

    async def _mint(
        self,
        tx: Transaction,
        user: UserRecord,
        client: ClientInfo,
        client_address: str | None,
        now: datetime,
        method: str | None,
    ) -> SessionToken:
        s = self.settings
        license_type = self.licensing.license_type(user, client.service_type, now)
        token = SessionToken(
            session_id=uuid4(),
            user_id=user.id,
            user_name=user.name,
            user_login=user.account if user.login_type != LoginType.PLATFORM else user.login,
            access_level=user.access_level,
            application_id=client.application_id,
            created=now,
            expires=now + s.session_expiration_time_span,
            license_type=license_type,
            login_type=user.login_type,
            service_type=client.service_type,
            device_type=client.device_type,
            culture=client.culture,
            ui_culture=client.ui_culture,
            utc_offset=client.utc_offset,
            time_zone_utc_offset=user.time_zone_utc_offset,
            server_code=s.server_code,
            instance_name=client.instance_name or s.instance_name,
            host_ip=client_address,
            host_name=client.host_name,
            os_name=client.os_name,
            user_agent=client.user_agent,
            client_64bit=client.client_64bit,
            client_64bit_os=client.client_64bit_os,
        ).signed(self.keys.current, self.keys.current_key)
        seat = self.licensing.seat_request(license_type, now, client_address)
        await tx.add_session(SessionRecord(token, now, client_address), seat)
        await tx.add_audit(
            AuditRecord(
                AuditAction.LOGIN,
                now,
                session_id=token.session_id,
                user_id=user.id,
                user_name=user.name,
                actor_id=user.id,
                actor_name=user.name,
                client_address=client_address,
                details={
                    "login_type": user.login_type.wire,
                    "service_type": client.service_type.wire,
                    "license_type": license_type.wire,
                    **({"method": method} if method else {}),
                },
            )
        )
        return token

    def _slot_released(self, attempt: SignInAttempt | Checked | None) -> None:
        """Wake this node's sign-ins waiting for a slot of that user."""
        if isinstance(attempt, Checked):
            attempt = attempt.attempt
        if attempt is not None and (freed := self._slot_freed.pop(attempt.user_id, None)):
            freed.set()

    # --- accounts no user is mapped to ---------------------------------------------------

    async def _verify_unmapped(
        self, credentials: PasswordCredentials, client_address: str | None
    ) -> tuple[Identity, LoginType]:
        """No user has this login or account: check the password with the domain or the
        directory anyway when auto-provisioning may create the user, within the limit on
        refused attempts per account and per address (:mod:`.throttle`). Whatever the answer,
        a refusal is the same as a wrong password's — a right password for an account no user
        is mapped to included — so no one learns here whether a domain password is right.
        With neither configured, it costs what a wrong password costs."""
        kind: LoginType | None = None
        names = self.users.windows_names
        if names and names.looks_like_account(credentials.login, credentials.domain):
            kind = LoginType.WINDOWS
        elif LoginType.LDAP in self.authenticators and not credentials.domain:
            kind = LoginType.LDAP
        if kind is None:
            await self._refuse(None, credentials, client_address, "unknown login")
        section = self.settings.windows if kind == LoginType.WINDOWS else self.settings.ldap
        provisions = section is not None and section.auto_provision
        held = await self._hold_unmapped(kind, credentials, client_address)
        try:
            identity = await self.authenticators[kind].verify(None, credentials)
        except InvalidCredentials as exc:
            reason = f"unknown login; {kind.wire}: {exc.reason or exc.message}"
            await asyncio.shield(self._settle_unmapped(held, credentials, client_address, reason))
            await self.pace.hold()
            raise InvalidCredentials(WRONG) from None
        except BaseException:
            await asyncio.shield(self._settle_unmapped(held, credentials, client_address, None))
            raise
        if not provisions:
            source = "domain" if kind == LoginType.WINDOWS else "directory"
            reason = (
                f"{kind.wire} account {identity.account or credentials.display} is not mapped to "
                f"a user (the {source} accepted the password)"
            )
            await asyncio.shield(self._settle_unmapped(held, credentials, client_address, reason))
            await self.pace.hold()
            raise InvalidCredentials(WRONG, reason=reason)
        await self._settle_unmapped(held, credentials, client_address, None)
        return identity, kind

    def _unmapped_keys(
        self, kind: LoginType, credentials: PasswordCredentials, client_address: str | None
    ) -> dict[str, Limit]:
        """The throttle keys of an attempt, with their limits: the account, the address."""
        security = self.settings.security
        window = security.unmapped_failures_window
        account = credentials.display
        names = self.users.windows_names
        if kind == LoginType.WINDOWS and names is not None:
            with contextlib.suppress(InvalidCredentials):
                account = names.parse(credentials.login, credentials.domain).down_level
        keys = {
            f"{kind.wire}:{account.strip().casefold()}": Limit(
                security.unmapped_account_failures, window
            )
        }
        if client_address:
            keys[f"address:{client_address}"] = Limit(security.unmapped_address_failures, window)
        return {key: limit for key, limit in keys.items() if limit.limit}

    async def _hold_unmapped(
        self, kind: LoginType, credentials: PasswordCredentials, client_address: str | None
    ) -> _Held:
        """Take a slot under each key, or refuse — unchecked, as a wrong password is — when a
        key has reached its limit or every slot it has is taken by a check in progress."""
        keys = self._unmapped_keys(kind, credentials, client_address)
        held = _Held(keys, [])
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
            reason = f"too many refused sign-ins from this {what}; password not checked"
            await self._refuse(None, credentials, client_address, reason)
        return held

    async def _settle_unmapped(
        self,
        held: _Held,
        credentials: PasswordCredentials,
        client_address: str | None,
        refused: str | None,
    ) -> None:
        """Give the slots back; a refusal (``refused``: its reason) is counted under every key
        and recorded, and a key that reaches its limit is recorded too."""
        if not held.keys and refused is None:
            return
        now = self.clock()
        async with self.store.write() as tx:
            for attempt in held.attempts:
                await tx.remove_throttle_attempts(attempt)
            if refused is None:
                return
            await tx.add_audit(
                login_failed(None, credentials.display, now, client_address, refused)
            )
            for key in sorted(held.keys):
                limit = held.keys[key]
                changes, reached = limit.refused(await tx.lock_throttle(key, now), now)
                await tx.update_throttle(key, **changes)
                if reached:
                    note = (
                        f"limit of {limit.limit} refused sign-ins within {limit.window} reached "
                        f"for {key}: refused unchecked until {changes['blocked_until']:%H:%M:%S}"
                    )
                    await tx.add_audit(
                        login_failed(None, credentials.display, now, client_address, note)
                    )

    async def _provision(
        self, identity: Identity, login_type: LoginType, client_address: str | None
    ) -> UserRecord:
        """A domain or directory account proved itself but maps to no user: create one if the
        settings allow it, otherwise refuse clearly."""
        section = self.settings.windows if login_type == LoginType.WINDOWS else self.settings.ldap
        account = identity.account or ""
        if section is None or not section.auto_provision:
            reason = f"{login_type.wire} account not mapped to a user"
            await self._audit(None, account, client_address, reason)
            raise AccountNotMapped(
                f"the {login_type.wire} account {account} signed in correctly, but no platform "
                "user is mapped to it; ask an administrator to add one"
            )
        try:
            return await self.users.add_user(
                Actor.system(),
                account,
                name=identity.display_name or account,
                login_type=login_type,
                account=account,
            )
        except Conflict:  # provisioned meanwhile by a concurrent sign-in
            user = await self.store.find_user_by_account(account)
            if user is None:
                raise
            return user

    async def _audit(
        self, user: UserRecord | None, who: str, client_address: str | None, reason: str
    ) -> None:
        await self.store.add_audit(login_failed(user, who, self.clock(), client_address, reason))


def _reason(refusal: SessiondError | None) -> str:
    if refusal is None:
        return "refused"
    return refusal.reason or refusal.code
