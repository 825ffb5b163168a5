"""The last step of every sign-in, whatever proved the caller: decide from the user's row, locked
and read again, and write the session with the rights that row has now, in one transaction.

Everything the caller is answered with (:class:`Opened`) comes from that transaction: nothing
is read after the commit, so an answer that fails (a 503) means no session was opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import uuid4

from .. import passwords
from ..auth import Backend
from ..errors import (
    InvalidCredentials,
    LicenceInvalid,
    LicenceLimitReached,
    LoginForbidden,
    SessiondError,
    UserBlocked,
)
from ..keys import KeyRing
from ..models import AuditAction, ClientInfo, LoginType
from ..settings import SecuritySettings, Settings
from ..store import AuditRecord, SessionRecord, Store, Transaction, UserRecord
from ..token import SessionToken
from .attempts import Attempts, Checked
from .common import Clock, login_failed
from .licensing import Licensing

WRONG = "wrong login or password"


@dataclass(frozen=True, slots=True)
class Opened:
    """A session just opened, with all its answer says: decided in the transaction that wrote
    it, so that the answer needs no read after the commit."""

    token: SessionToken
    #: When the user's password expires, once its warning period has begun (else None).
    password_expires: datetime | None
    #: How long the session may stay idle (None: no inactivity limit).
    inactivity: timedelta | None


class Admission:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: KeyRing,
        clock: Clock,
        backends: Mapping[LoginType, Backend],
        attempts: Attempts,
        licensing: Licensing,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.backends = backends
        self.attempts = attempts
        self.licensing = licensing

    def refusal(
        self,
        checked: Checked,
        row: UserRecord | None,
        expected: LoginType,
        title: str,
        now: datetime,
        *,
        for_change: bool = False,
    ) -> SessiondError | None:
        """May the user whose password (or proof) was just shown sign in now? Decided from the
        locked row; None if so. ``expected``: the login type the proof was for (``title``: how
        that sign-in is named)."""
        if row is None:
            return InvalidCredentials(WRONG, reason="the user was removed during the sign-in")
        backend = self.backends.get(row.login_type)
        if row.login_type != expected:
            if backend is None or row.login_type == checked.user.login_type:
                return LoginForbidden(
                    f"user {row.login!r} may not sign in with {title} (its login type is "
                    f"{row.login_type.wire}); ask an administrator"
                )
            return InvalidCredentials(WRONG, reason="the login type changed during the sign-in")
        if backend is None:
            return LoginForbidden(
                f"user {row.login!r} may not sign in (login type {row.login_type.wire}); "
                "ask an administrator"
            )
        if row.account != checked.user.account:
            return InvalidCredentials(WRONG, reason="the account changed during the sign-in")
        if self.attempts.lockout.blocked(row, now):
            until = row.blocked_due_date
            return UserBlocked(
                f"user {row.login!r} is blocked"
                + (f" until {until.isoformat()}" if until else "; ask an administrator to unblock")
                + ".",
                details={"blocked_until": until.isoformat() if until else None},
            )
        return backend.after_check(
            row, checked.user, now, self.settings.security, for_change=for_change
        )

    async def admit(
        self,
        checked: Checked,
        expected: LoginType,
        title: str,
        client: ClientInfo,
        client_address: str | None,
    ) -> Opened:
        """Settle a right password (or proof): decide from the locked row, and write the session
        with the rights the row has now, in the same transaction; the answer is taken from that
        row and what was written."""
        now = self.clock()
        async with self.store.write() as tx:
            row = await self.attempts.settle(tx, checked)
            refusal = self.refusal(checked, row, expected, title, now)
            token = None
            if row is not None and refusal is None:
                try:
                    token = await self._mint(tx, row, client, client_address, now, checked)
                except (LicenceLimitReached, LicenceInvalid) as exc:
                    refusal = exc
            if refusal is not None:
                who = row or checked.user
                await tx.add_audit(
                    login_failed(who, who.login, now, client_address, reason_of(refusal))
                )
        self.attempts.released(checked)
        if refusal is not None:
            raise refusal
        assert token is not None and row is not None
        security = self.settings.security
        return Opened(token, password_warning(row, security, now), security.session_inactivity_time)

    async def _mint(
        self,
        tx: Transaction,
        user: UserRecord,
        client: ClientInfo,
        client_address: str | None,
        now: datetime,
        checked: Checked,
    ) -> SessionToken:
        s = self.settings
        license_type = self.licensing.license_type(user, client.service_type, now)
        token = SessionToken(
            session_id=uuid4(),
            user_id=user.id,
            user_name=user.name,
            user_login=self.backends[user.login_type].token_login(user),
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
        await self.backends[user.login_type].admitted(tx, token.session_id, checked.identity)
        method = checked.identity.method
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


def password_warning(
    user: UserRecord, security: SecuritySettings, now: datetime
) -> datetime | None:
    """When a platform user's password expires, once its warning period has begun."""
    if user.login_type != LoginType.PLATFORM:
        return None
    if passwords.warning_due(user.password_changed, security, now):
        return passwords.expires_at(user.password_changed, security)
    return None


def reason_of(refusal: SessiondError | None) -> str:
    if refusal is None:
        return "refused"
    return refusal.reason or refusal.code
