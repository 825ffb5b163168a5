"""SessionService: open, validate and close sessions, administer users, keep the configuration
version, and write the audit trail. Plain async Python: no HTTP in here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from .. import passwords
from .._version import __version__
from ..auth import Authenticator, Identity, PasswordCredentials, PlatformAuthenticator
from ..auth.negotiate import NegotiateAcceptor
from ..auth.windows import WindowsNames
from ..errors import (
    AccountNotMapped,
    Conflict,
    InvalidCredentials,
    LicenceInvalid,
    LoginForbidden,
    NegotiateRequired,
    NotConfigured,
    NotFound,
    PasswordExpired,
    RequestError,
    SessiondError,
    SessionExpired,
    SessionNotFound,
    TokenSignatureInvalid,
    UserBlocked,
)
from ..keys import KeyRing
from ..licence import Licence
from ..models import (
    AccessLevel,
    AuditAction,
    ClientInfo,
    ConfigurationInfo,
    LicenseType,
    LoginType,
)
from ..settings import Settings
from ..store import (
    AuditRecord,
    BuildInfo,
    FailurePolicy,
    SessionClosure,
    SessionRecord,
    Store,
    UserRecord,
)
from ..token import AuthToken, SessionToken
from .common import (
    SYSTEM,
    Actor,
    Clock,
    actor_audit,
    require_admin,
    session_audit,
    utc_now,
)
from .licensing import Licensing

VERIFIED_TOKENS_KEPT = 10_000
MAX_CONFIGURATION_WAIT = 60.0  # seconds a long poll for a configuration change may hold
log = logging.getLogger("sessiond.service")


class SessionService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: KeyRing,
        *,
        clock: Clock = utc_now,
        authenticators: Mapping[LoginType, Authenticator] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.platform = PlatformAuthenticator(settings.argon2)
        self.authenticators: dict[LoginType, Authenticator] = {LoginType.PLATFORM: self.platform}
        self.windows_names = WindowsNames(settings.windows) if settings.windows else None
        self.negotiate: NegotiateAcceptor | None = None
        if settings.windows:
            from ..auth.windows import WindowsAuthenticator

            self.authenticators[LoginType.WINDOWS] = WindowsAuthenticator(settings.windows)
            if settings.windows.negotiate:
                self.negotiate = NegotiateAcceptor(settings.windows)
        if settings.ldap:
            from ..auth.ldap import LdapAuthenticator

            self.authenticators[LoginType.LDAP] = LdapAuthenticator(settings.ldap)
        if authenticators:
            self.authenticators.update(authenticators)
        self.licensing = Licensing(settings, store, clock)
        self._verified_tokens: dict[str, AuthToken] = {}
        self._touches: dict[UUID, datetime] = {}
        self._toucher: asyncio.Task[None] | None = None
        self._version = 0
        self._version_read_at = 0.0
        self._version_lock = asyncio.Lock()
        self._version_changed = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def build(self) -> BuildInfo:
        s = self.settings
        return BuildInfo(
            version=s.build_version or __version__,
            name=s.build_name,
            date=None,
            description=s.description,
        )

    async def start(self, *, install_licence_file: bool = False) -> None:
        """Open the store. A server (not a CLI command) also installs ``licence_file``."""
        await self.store.open(self.build, self.clock())
        await self._read_version()
        await self.licensing.refresh()
        if install_licence_file and self.settings.licence_file:
            try:
                await self.licensing.install_file()
            except LicenceInvalid as exc:
                kept = f"keeping licence {self.licence.id}" if self.licence else "no licence"
                log.error("licence not loaded: %s (%s)", exc.message, kept)

    async def close(self) -> None:
        await self.flush_touches()
        for authenticator in self.authenticators.values():
            await authenticator.close()
        await self.store.close()

    # --- configuration version -----------------------------------------------------------

    async def _read_version(self) -> int:
        if self._version_read_at:  # another node or the CLI may have installed a licence
            await self.licensing.refresh()
        info = await self.store.get_configuration()
        self._saw_version(info.version)
        self._version_read_at = time.monotonic()
        return self._version

    def _saw_version(self, version: int) -> None:
        if version > self._version:
            self._version = version
            # Wake everyone waiting for a change, and give later waiters a fresh event.
            self._version_changed.set()
            self._version_changed = asyncio.Event()

    async def configuration_version(self) -> int:
        """The current version, re-read from the store at most once per poll interval, so a
        change made by another node or by the CLI shows within that interval."""
        interval = self.settings.configuration_poll_interval.total_seconds()
        if time.monotonic() - self._version_read_at < interval:
            return self._version
        async with self._version_lock:
            if time.monotonic() - self._version_read_at >= interval:
                await self._read_version()
        return self._version

    async def get_configuration(self) -> ConfigurationInfo:
        info = await self.store.get_configuration()
        self._saw_version(info.version)
        return info

    async def wait_for_configuration_change(self, after: int, wait: float) -> int:
        """The version, as soon as it is greater than ``after``, or after ``wait`` seconds
        (a long poll: a client subscribes by asking again with the version it got)."""
        deadline = time.monotonic() + max(0.0, min(wait, MAX_CONFIGURATION_WAIT))
        poll = max(0.05, self.settings.configuration_poll_interval.total_seconds())
        while True:
            version = await self.configuration_version()
            remaining = deadline - time.monotonic()
            if version > after or remaining <= 0:
                return version
            # This node's increments wake the wait at once; another node's show at the next
            # re-read of the store, one poll interval later at most.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._version_changed.wait(), min(poll, remaining))

    async def increment_configuration_version(self, actor: Actor) -> ConfigurationInfo:
        require_admin(actor, "increment the configuration version")
        now = self.clock()
        info = await self.store.increment_configuration_version(
            at=now,
            by_id=actor.id,
            by_name=actor.name,
            build=self.build,
            audit=actor_audit(AuditAction.CONFIGURATION_VERSION_INCREMENTED, now, actor),
        )
        self._saw_version(info.version)
        return info

    # --- opening -------------------------------------------------------------------------

    async def open_session(
        self,
        credentials: PasswordCredentials,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> SessionToken:
        """Authenticate by login and password (platform, Windows domain or LDAP user)."""
        now = self.clock()
        user = await self._find_user(credentials)
        if user is None:
            identity, login_type = await self._verify_unmapped(credentials, now, client_address)
            user = await self._provision(identity, login_type, now, client_address)
        await self._check_may_sign_in(user, now, client_address)
        authenticator = self.authenticators.get(user.login_type)
        if authenticator is None:
            raise NotConfigured(
                f"sign-in of {user.login_type.wire} users is not configured on this server"
            )
        try:
            identity = await authenticator.verify(user, credentials)
        except InvalidCredentials as exc:
            await self._failed_login(user, now, client_address, exc.reason or exc.message)
            raise
        if user.login_type == LoginType.PLATFORM:
            if user.password_changed is None:
                raise PasswordExpired(
                    "this is a one-time password: change it (POST "
                    "/api/v1/sessions/change-password, or client.change_password), then sign in",
                    details={"one_time": True},
                )
            expiry = passwords.expires_at(user.password_changed, self.settings.security)
            if expiry is not None and now >= expiry:
                raise PasswordExpired(
                    f"the password expired on {expiry:%Y-%m-%d}; change it "
                    "(POST /api/v1/sessions/change-password), then sign in",
                    details={"expired": expiry.isoformat()},
                )
        changes: dict[str, Any] = {}
        if identity.new_password_hash:
            changes["password_hash"] = identity.new_password_hash
        if user.failed_attempts or user.failed_series_count:
            changes.update(failed_attempts=0, failed_series_count=0, failed_series_start=None)
        if user.blocked:  # a block whose time has passed
            changes.update(blocked=False, blocked_due_date=None)
        if changes:
            user = await self.store.update_user(user.id, **changes)
        return await self._create_session(user, client, client_address, now)

    async def _verify_unmapped(
        self, credentials: PasswordCredentials, now: datetime, client_address: str | None
    ) -> tuple[Identity, LoginType]:
        """No user has this login or account: check the password with the domain or the
        directory anyway, so the refusal can say what is really wrong (and auto-provisioning
        can create the user). With neither configured, it costs what a wrong password costs."""
        kind: LoginType | None = None
        if self.windows_names and self.windows_names.looks_like_account(
            credentials.login, credentials.domain
        ):
            kind = LoginType.WINDOWS
        elif LoginType.LDAP in self.authenticators and not credentials.domain:
            kind = LoginType.LDAP
        if kind is None:
            await self.platform.burn(credentials.password)
            await self._audit_failure(credentials.display, now, client_address, "unknown login")
            raise InvalidCredentials("wrong login or password")
        try:
            identity = await self.authenticators[kind].verify(None, credentials)
        except InvalidCredentials as exc:
            reason = f"unknown login; {kind.wire}: {exc.reason or exc.message}"
            await self._audit_failure(credentials.display, now, client_address, reason)
            raise
        return identity, kind

    async def _provision(
        self,
        identity: Identity,
        login_type: LoginType,
        now: datetime,
        client_address: str | None,
    ) -> UserRecord:
        """A domain or directory account proved itself but maps to no user: create one if the
        settings allow it, otherwise refuse clearly."""
        section = self.settings.windows if login_type == LoginType.WINDOWS else self.settings.ldap
        account = identity.account or ""
        if section is None or not section.auto_provision:
            await self._audit_failure(
                account, now, client_address, f"{login_type.wire} account not mapped to a user"
            )
            raise AccountNotMapped(
                f"the {login_type.wire} account {account} signed in correctly, but no platform "
                "user is mapped to it; ask an administrator to add one"
            )
        try:
            return await self.add_user(
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

    async def _audit_failure(
        self, who: str, now: datetime, client_address: str | None, reason: str
    ) -> None:
        await self.store.add_audit(
            AuditRecord(
                AuditAction.LOGIN_FAILED,
                now,
                user_name=who,
                client_address=client_address,
                details={"reason": reason},
            )
        )

    async def open_session_negotiate(
        self,
        token: bytes | None,
        handshake_id: str | None,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> tuple[SessionToken, bytes | None]:
        """Integrated Windows sign-in (SPNEGO: Kerberos, or NTLM as the fallback).

        Returns the session and the acceptor's last token (mutual authentication), or raises
        :class:`NegotiateRequired` with the challenge when the exchange needs another leg."""
        if self.negotiate is None or self.windows_names is None:
            raise NotConfigured(
                "integrated Windows sign-in is not configured on this server; sign in with a "
                "login and password"
            )
        if not token:
            raise NegotiateRequired(
                "integrated Windows sign-in: send an Authorization: Negotiate token"
            )
        now = self.clock()
        try:
            result = await self.negotiate.step(token, handshake_id)
        except InvalidCredentials as exc:
            await self._audit_failure(
                "(integrated sign-in)", now, client_address, exc.reason or exc.message
            )
            raise
        if not result.complete or result.principal is None:
            raise NegotiateRequired(
                "integrated Windows sign-in continues: answer the challenge",
                challenge=result.output,
                handshake_id=result.handshake_id,
            )
        user = await self._find_user(PasswordCredentials(result.principal, ""))
        if user is None:
            account = self.windows_names.parse(result.principal)
            identity = Identity(account=account.down_level, display_name=account.name)
            user = await self._provision(identity, LoginType.WINDOWS, now, client_address)
        await self._check_may_sign_in(user, now, client_address)
        if user.login_type != LoginType.WINDOWS:
            await self._audit_failure(
                user.name, now, client_address, f"{user.login_type.wire} user, not Windows"
            )
            raise LoginForbidden(
                f"user {user.login!r} signs in with a {user.login_type.wire} login, not Windows"
            )
        session = await self._create_session(
            user, client, client_address, now, method=result.protocol
        )
        return session, result.output

    async def _find_user(self, credentials: PasswordCredentials) -> UserRecord | None:
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

    def canonical_account(self, login_type: LoginType, account: str | None) -> str | None:
        """How an administrator's spelling of an account is stored (Windows: DOMAIN\\name)."""
        if account is None or not account.strip():
            return None
        if login_type == LoginType.WINDOWS and self.windows_names:
            try:
                return self.windows_names.parse(account).down_level
            except InvalidCredentials:
                raise RequestError(
                    f"{account!r} is not a Windows account name: use DOMAIN\\name or name@REALM"
                ) from None
        return account.strip()

    async def _check_may_sign_in(
        self, user: UserRecord, now: datetime, client_address: str | None
    ) -> None:
        """Refuse (with a LoginFailed record) users who may not sign in at all right now."""
        refusal: SessiondError | None = None
        if user.login_type == LoginType.NONE:
            refusal = LoginForbidden(
                f"user {user.login!r} may not sign in (login type None); ask an administrator"
            )
        elif user.blocked and (user.blocked_due_date is None or user.blocked_due_date > now):
            until = user.blocked_due_date
            refusal = UserBlocked(
                f"user {user.login!r} is blocked"
                + (f" until {until.isoformat()}" if until else "; ask an administrator to unblock")
                + ".",
                details={"blocked_until": until.isoformat() if until else None},
            )
        if refusal is None:
            return
        await self.store.add_audit(_login_failed(user, now, client_address, refusal.code))
        raise refusal

    async def _failed_login(
        self, user: UserRecord, now: datetime, client_address: str | None, reason: str
    ) -> None:
        """Count the failure; block the user when the security options say so."""
        security = self.settings.security
        audit = _login_failed(user, now, client_address, reason)
        applies = user.login_type == LoginType.PLATFORM or security.block_windows_and_ldap_users

        def decide(counted: UserRecord) -> tuple[datetime | None, AuditRecord] | None:
            if not applies:
                return None
            total = security.max_failed_login_attempts_before_blocked
            series = security.max_failed_login_attempts_in_series
            until: datetime | None
            if total and counted.failed_attempts >= total:
                until, why = None, f"{counted.failed_attempts} failed sign-ins"
            elif series and counted.failed_series_count >= series:
                until = now + security.blocked_series_due_date_time
                why = (
                    f"{counted.failed_series_count} failed sign-ins within "
                    f"{security.failed_login_attempts_series_time}"
                )
            else:
                return None
            return until, AuditRecord(
                AuditAction.USER_BLOCKED,
                now,
                user_id=user.id,
                user_name=user.name,
                actor_name=SYSTEM,
                client_address=client_address,
                details={"reason": why, "until": until.isoformat() if until else None},
            )

        policy = FailurePolicy(
            at=now,
            series_window_start=now - security.failed_login_attempts_series_time,
            decide=decide,
        )
        await self.store.record_failed_login(user.id, audit, policy)

    async def _create_session(
        self,
        user: UserRecord,
        client: ClientInfo,
        client_address: str | None,
        now: datetime,
        *,
        method: str | None = None,
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
        record = SessionRecord(token, now, client_address)
        await self.store.add_session(
            record,
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
            ),
            self.licensing.seat_request(license_type, now, client_address),
        )
        return token

    # --- licences ------------------------------------------------------------------------

    @property
    def licence(self) -> Licence | None:
        return self.licensing.licence

    async def install_licence_file(self, path: str | None = None) -> Licence:
        return await self.licensing.install_file(path)

    async def install_licence(self, data: bytes | str, *, source: str = "licence") -> Licence:
        return await self.licensing.install(data, source=source)

    async def reload_licence(self, actor: Actor) -> Licence:
        require_admin(actor, "reload the licence")
        return await self.licensing.install_file()

    async def licence_usage(self, actor: Actor) -> dict[str, Any]:
        require_admin(actor, "see licence usage")
        return {**await self.licensing.usage(), "Warnings": await self.licensing.warnings()}

    async def set_personal_licence(
        self, actor: Actor, login: str, license_type: LicenseType, holds: bool
    ) -> UserRecord:
        require_admin(actor, "give out personal licences")
        if license_type not in (LicenseType.PERSONAL_CLIENT, LicenseType.PERSONAL_WEB):
            raise RequestError("a personal licence is PersonalClient or PersonalWeb")
        user = await self.get_user_by_login(login)
        limit = await self.licensing.personal_limit(license_type)
        closure = (
            None if holds else self._closure(actor, "personal licence taken back", license_type)
        )
        return await self.store.set_personal_licence(user.id, license_type, holds, limit, closure)

    # --- validating ----------------------------------------------------------------------

    def _verified(self, auth_text: str) -> AuthToken:
        """Parse and check a token's signature. The same text always gives the same answer
        while this process holds the same keys, so good answers are remembered (bounded)."""
        auth = self._verified_tokens.get(auth_text)
        if auth is None:
            auth = AuthToken.from_xml(auth_text)
            auth.verify(self.keys.keys)
            if len(self._verified_tokens) >= VERIFIED_TOKENS_KEPT:
                self._verified_tokens.clear()
            self._verified_tokens[auth_text] = auth
        return auth

    async def validate(self, auth_text: str, client_address: str | None = None) -> SessionRecord:
        """The per-request check: signature, session row, absolute expiry, inactivity; then a
        throttled last-activity touch. Returns the session as stored."""
        auth = self._verified(auth_text)
        now = self.clock()
        if auth.expires <= now:
            await self._expire(auth.session_id, now, client_address, "absolute lifetime")
            raise SessionExpired("the session has expired; sign in again")
        record = await self.store.get_session(auth.session_id)
        if record is None:
            raise SessionNotFound("the session is closed; sign in again")
        if record.token.signature != auth.signature or record.token.user_id != auth.user_id:
            raise TokenSignatureInvalid("the session token does not match the session")
        # A touch this node has queued but not yet written counts as written.
        last_activity = record.last_activity
        queued = self._touches.get(auth.session_id)
        if queued is not None and queued > last_activity:
            last_activity = queued
        inactivity = self.settings.security.session_inactivity_time
        if inactivity and now - last_activity > inactivity:
            await self._expire(auth.session_id, now, client_address, "inactivity")
            raise SessionExpired("the session was closed after inactivity; sign in again")
        if now - last_activity >= self.settings.touch_interval:
            self._queue_touch(auth.session_id, now)
        return record

    def _queue_touch(self, session_id: UUID, now: datetime) -> None:
        """Touches are written in batches, one transaction each, by one task: a request never
        waits for the database's write lock just to say it was active."""
        self._touches[session_id] = now
        if self._toucher is None or self._toucher.done():
            self._toucher = asyncio.create_task(self._write_touches(), name="sessiond-touches")

    async def _write_touches(self) -> None:
        while self._touches:
            batch, self._touches = self._touches, {}
            try:
                await self.store.touch_sessions(batch)
            except Exception:
                log.exception("writing %d last-activity touches failed; retrying", len(batch))
                for session_id, at in batch.items():
                    self._touches.setdefault(session_id, at)
                await asyncio.sleep(1)

    async def flush_touches(self) -> None:
        """Wait until every queued touch is written (the sweeper and shutdown do)."""
        while self._toucher is not None and not self._toucher.done():
            await asyncio.shield(self._toucher)

    async def _expire(
        self, session_id: UUID, now: datetime, client_address: str | None, reason: str
    ) -> bool:
        record = await self.store.get_session(session_id)
        if record is None:
            return False
        audit = session_audit(
            AuditAction.SESSION_EXPIRED, now, record, None, client_address, {"reason": reason}
        )
        return await self.store.delete_session(session_id, audit) is not None

    # --- closing -------------------------------------------------------------------------

    async def close_session(self, auth_text: str, client_address: str | None = None) -> bool:
        """Close the session the token names; True if it was still open."""
        auth = self._verified(auth_text)
        now = self.clock()
        if auth.expires <= now:
            await self._expire(auth.session_id, now, client_address, "absolute lifetime")
            return False
        record = await self.store.get_session(auth.session_id)
        if record is None or record.token.signature != auth.signature:
            return False
        actor = Actor.of(record, client_address)
        audit = session_audit(AuditAction.LOGOUT, now, record, actor, client_address)
        return await self.store.delete_session(auth.session_id, audit) is not None

    async def close_session_as_admin(self, actor: Actor, session_id: UUID) -> bool:
        require_admin(actor, "close another user's session")
        now = self.clock()
        record = await self.store.get_session(session_id)
        if record is None:
            return False
        audit = session_audit(
            AuditAction.SESSION_CLOSED_BY_ADMIN, now, record, actor, actor.client_address
        )
        return await self.store.delete_session(session_id, audit) is not None

    async def close_user_sessions(self, actor: Actor, login: str) -> int:
        """Close every session of one user (administrators); returns how many were open."""
        require_admin(actor, "close a user's sessions")
        user = await self.get_user_by_login(login)
        closure = self._closure(actor, "all sessions of the user closed")
        closed = await self.store.delete_user_sessions(user.id, closure)
        now = self.clock()
        return sum(1 for record in closed if self._expiry_reason(record, now) is None)

    async def sweep(self) -> int:
        """Remove sessions past their lifetime or inactivity timeout, each audited as
        SessionExpired; returns how many. Safe on several nodes at once."""
        await self.flush_touches()  # so that no session this node saw active looks idle
        now = self.clock()
        inactivity = self.settings.security.session_inactivity_time
        idle_before = now - inactivity if inactivity else None
        total = 0
        while True:
            swept = await self.store.sweep_sessions(
                now,
                idle_before,
                lambda record: session_audit(
                    AuditAction.SESSION_EXPIRED,
                    now,
                    record,
                    None,
                    None,
                    {
                        "reason": "absolute lifetime"
                        if record.token.expires <= now
                        else "inactivity",
                        "by": "sweeper",
                    },
                ),
            )
            total += len(swept)
            if len(swept) < 500:
                return total

    async def list_sessions(
        self, actor: Actor, user_id: UUID | None = None
    ) -> Sequence[SessionRecord]:
        require_admin(actor, "list sessions")
        return await self.store.list_sessions(user_id)

    # --- users ---------------------------------------------------------------------------

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
    ) -> UserRecord:
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
            password_changed=now if password_hash else None,
        )
        await self.store.add_user(user)
        if password_hash:
            await self.store.add_password_history(user.id, password_hash, now)
        return user

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
    ) -> UserRecord:
        """Change how a user signs in and who they are; None leaves a field as it is.
        Changing the access level or the login type ends the user's open sessions."""
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
        if not changes:
            return user
        rights_change = (
            changes.get("access_level", user.access_level) != user.access_level
            or changes.get("login_type", user.login_type) != user.login_type
        )
        # A session carries the rights it was opened with: end them with the change, so that
        # a demoted administrator or a user who must now sign in another way starts afresh.
        closure = (
            self._closure(actor, "access level or login type changed") if rights_change else None
        )
        return await self.store.update_user(user.id, close_sessions=closure, **changes)

    def _closure(
        self, actor: Actor, reason: str, license_type: LicenseType | None = None
    ) -> SessionClosure:
        now = self.clock()

        def audit(record: SessionRecord) -> AuditRecord:
            expired = self._expiry_reason(record, now)
            if expired is not None:  # it had already ended; it is only being cleared away
                return session_audit(
                    AuditAction.SESSION_EXPIRED, now, record, None, None, {"reason": expired}
                )
            return session_audit(
                AuditAction.SESSION_CLOSED_BY_ADMIN,
                now,
                record,
                actor,
                actor.client_address,
                {"reason": reason},
            )

        return SessionClosure(audit, license_type)

    def _expiry_reason(self, record: SessionRecord, now: datetime) -> str | None:
        if record.token.expires <= now:
            return "absolute lifetime"
        inactivity = self.settings.security.session_inactivity_time
        if inactivity and now - record.last_activity > inactivity:
            return "inactivity"
        return None

    async def get_user_by_login(self, login: str) -> UserRecord:
        user = await self.store.find_user_by_login(login)
        if user is None:
            raise NotFound(f"no user with login {login!r}")
        return user

    async def list_users(self, actor: Actor) -> Sequence[UserRecord]:
        require_admin(actor, "list users")
        return await self.store.list_users()

    async def set_password(self, actor: Actor, login: str, password: str) -> UserRecord:
        """An administrator sets a platform user's password (the same rules apply)."""
        require_admin(actor, "set a user's password")
        return await self._change_password(await self.get_user_by_login(login), password)

    async def change_password(
        self, login: str, old_password: str, new_password: str, client_address: str | None = None
    ) -> UserRecord:
        """A platform user changes their own password — also once it has expired."""
        now = self.clock()
        user = await self.store.find_user_by_login(login.strip())
        if user is None or user.login_type != LoginType.PLATFORM:
            await self.platform.burn(old_password)
            raise InvalidCredentials("wrong login or password")
        await self._check_may_sign_in(user, now, client_address)
        try:
            await self.platform.verify(user, PasswordCredentials(login, old_password))
        except InvalidCredentials as exc:
            await self._failed_login(user, now, client_address, exc.reason or exc.message)
            raise
        return await self._change_password(user, new_password)

    async def _change_password(self, user: UserRecord, password: str) -> UserRecord:
        security = self.settings.security
        passwords.check_rules(password, security)
        history = await self.store.password_history(user.id, security.unique_password_count)
        await passwords.check_reuse(password, history, self.platform.matches, security)
        now = self.clock()
        password_hash = await self.platform.hash(password)
        user = await self.store.update_user(
            user.id,
            password_hash=password_hash,
            password_changed=now,
            failed_attempts=0,
            failed_series_count=0,
            failed_series_start=None,
        )
        await self.store.add_password_history(user.id, password_hash, now)
        return user

    async def password_expires(self, user_id: UUID) -> datetime | None:
        """The expiry of a platform user's password, once its warning period has begun."""
        user = await self.store.get_user(user_id)
        security = self.settings.security
        if user is None or user.login_type != LoginType.PLATFORM:
            return None
        if passwords.warning_due(user.password_changed, security, self.clock()):
            return passwords.expires_at(user.password_changed, security)
        return None

    async def set_blocked(
        self, actor: Actor, login: str, blocked: bool, until: datetime | None = None
    ) -> UserRecord:
        require_admin(actor, "block or unblock users")
        user = await self.get_user_by_login(login)
        now = self.clock()
        audit = None
        if blocked:
            audit = AuditRecord(
                AuditAction.USER_BLOCKED,
                now,
                user_id=user.id,
                user_name=user.name,
                actor_id=actor.id,
                actor_name=actor.name,
                client_address=actor.client_address,
                details={"until": until.isoformat() if until else None, "by": "administrator"},
            )
        return await self.store.update_user(
            user.id,
            audit,
            close_sessions=self._closure(actor, "user blocked") if blocked else None,
            blocked=blocked,
            blocked_due_date=until if blocked else None,
            failed_attempts=0,
        )

    async def ensure_first_administrator(self) -> tuple[UserRecord, str | None] | None:
        """Create the first administrator if there are no users at all.

        Returns the user and, when it was generated, the one-time password (None if it came
        from settings); None if users already exist.
        """
        if await self.store.count_users():
            return None
        password = self.settings.admin_password
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(15)
        try:
            user = await self.add_user(
                Actor.system(),
                self.settings.admin_login,
                name="Administrator",
                password=password,
                access_level=AccessLevel.ADMINISTRATOR,
            )
        except Conflict:  # another node created it meanwhile
            return None
        if generated:
            # A generated password has been printed on a console: it must be changed at the
            # first sign-in (a password never "changed" is a one-time password).
            user = await self.store.update_user(user.id, password_changed=None)
        return user, (password if generated else None)

    # --- audit ---------------------------------------------------------------------------

    async def audit_records(
        self,
        *,
        since: datetime | None = None,
        action: AuditAction | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Sequence[AuditRecord]:
        return await self.store.list_audit(
            since=since, action=action, after_id=after_id, limit=limit
        )


def _login_failed(
    user: UserRecord, now: datetime, client_address: str | None, reason: str
) -> AuditRecord:
    """A LoginFailed record about a known user."""
    return AuditRecord(
        AuditAction.LOGIN_FAILED,
        now,
        user_id=user.id,
        user_name=user.name,
        client_address=client_address,
        details={"reason": reason, "login": user.login},
    )
