"""SessionService: the one object the HTTP layer and the CLI talk to. It wires the parts —
sign-in, sessions, users, licensing, configuration — and hands each call to the part whose
rule it is; it decides nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

from .. import metrics
from ..auth import Authenticator, PasswordCredentials, PlatformAuthenticator
from ..auth.registry import load_authenticators, load_negotiate
from ..errors import LicenceInvalid
from ..keys import KeyRing
from ..licence import Licence
from ..models import AccessLevel, AuditAction, ClientInfo, ConfigurationInfo, LicenseType, LoginType
from ..settings import Settings
from ..store import (
    AuditQuery,
    AuditRecord,
    BuildInfo,
    ChainReport,
    SessionQuery,
    SessionRecord,
    Store,
    UserRecord,
)
from ..store.notify import Notice
from ..token import SessionToken
from .common import Actor, Clock, change_audit, require_admin, utc_now
from .configuration import Configuration
from .licensing import Licensing
from .sessions import Sessions
from .signin import SignIn
from .users import Users

log = logging.getLogger("sessiond.service")
AUDIT_PAGE_LIMIT = 1000


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
        self.authenticators = load_authenticators(settings)
        if authenticators:
            self.authenticators.update(authenticators)
        self.licensing = Licensing(settings, store, clock)
        self.configuration = Configuration(settings, store, clock, self.licensing.refresh)
        self.sessions = Sessions(settings, store, keys, clock)
        self.users = Users(settings, store, clock, self.platform, self.sessions)
        self.signin = SignIn(
            settings,
            store,
            keys,
            clock,
            self.authenticators,
            load_negotiate(settings),
            self.platform,
            self.users,
            self.sessions,
            self.licensing,
        )

    @property
    def platform(self) -> PlatformAuthenticator:
        platform = self.authenticators[LoginType.PLATFORM]
        assert isinstance(platform, PlatformAuthenticator)
        return platform

    @property
    def build(self) -> BuildInfo:
        return self.configuration.build

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, *, install_licence_file: bool = False, listen: bool = False) -> None:
        """Open the store. A server (not a CLI command) also records its settings when they
        changed since its last start, and installs ``licence_file``. ``listen``: hear of other
        nodes' changes as they commit (PostgreSQL), before anything is read, so that nothing
        committed after the reads below is missed."""
        await self.store.open(self.build, self.clock())
        if listen:
            await self.store.listen(self.notified)
        await self.configuration.read()
        await self.licensing.refresh()
        if install_licence_file:
            node = self.settings.server_code or socket.gethostname()
            await self.configuration.record_settings(node)
        if install_licence_file and self.settings.licence_file:
            try:
                await self.licensing.install_file()
            except LicenceInvalid as exc:
                kept = f"keeping licence {self.licence.id}" if self.licence else "no licence"
                log.error("licence not loaded: %s (%s)", exc.message, kept)

    async def close(self) -> None:
        await self.configuration.close()
        try:  # a store that is down must not hold the shutdown
            async with asyncio.timeout(10):
                await self.sessions.flush_touches()
        except TimeoutError:
            log.warning("shutting down with last-activity touches not written")
        for authenticator in self.authenticators.values():
            await authenticator.close()
        if self.signin.proof is not None:  # ntlm_auth helpers
            await self.signin.proof.close()
        await self.store.close()

    # --- other nodes' changes ------------------------------------------------------------

    def notified(self, notice: Notice) -> None:
        """Another node (or this one) committed a change (PostgreSQL's notifications; see
        ``store/notify.py``). Called on the event loop, in commit order."""
        metrics.notified(notice.kind)
        if notice.kind == "version" and notice.version is not None:
            self.configuration.changed(notice.version)
        elif notice.kind == "revoked":
            self.revoked(notice.session_ids)
        elif notice.kind == "licence":
            self.configuration.reread_soon()  # a re-read takes the licence with it
        elif notice.kind == "resumed":  # notifications were lost while disconnected
            self.configuration.reread_soon()
            self.revoked(None)

    def revoked(self, session_ids: Collection[UUID] | None) -> None:
        """Sessions whose rows are gone (closed, displaced, swept; on any node, this one
        included): whatever this node keeps about them must go. ``None``: which is not known
        (too many to name, or notifications were missed): forget every session kept. The
        validation cache would find out at each session's next request anyway (on PostgreSQL
        it asks the store every time); this frees the memory sooner."""
        self.sessions.forget(session_ids)

    # --- signing in ----------------------------------------------------------------------

    async def open_session(
        self,
        credentials: PasswordCredentials,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> SessionToken:
        """Authenticate by login and password (platform, Windows domain or LDAP user)."""
        return await self.signin.open_session(credentials, client, client_address)

    async def open_session_negotiate(
        self,
        token: bytes | None,
        handshake_id: str | None,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> tuple[SessionToken, bytes | None]:
        return await self.signin.open_session_negotiate(token, handshake_id, client, client_address)

    async def change_password(
        self,
        login: str,
        old_password: str,
        new_password: str,
        client_address: str | None = None,
        current_session: UUID | None = None,
    ) -> UserRecord:
        return await self.signin.change_password(
            login, old_password, new_password, client_address, current_session
        )

    # --- sessions ------------------------------------------------------------------------

    async def validate(self, auth_text: str, client_address: str | None = None) -> SessionRecord:
        with metrics.validating():
            return await self.sessions.validate(auth_text, client_address)

    async def validate_view(
        self,
        auth_text: str,
        client_address: str | None,
        render: Callable[[SessionRecord], bytes],
    ) -> bytes:
        """Validate, and answer with ``render(session)``, remembered (see Sessions)."""
        with metrics.validating():
            return await self.sessions.validate_view(auth_text, client_address, render)

    async def close_session(self, auth_text: str, client_address: str | None = None) -> bool:
        closed = await self.sessions.close_session(auth_text, client_address)
        metrics.sessions_closed("user", closed)
        return closed

    async def close_session_as_admin(self, actor: Actor, session_id: UUID) -> bool:
        closed = await self.sessions.close_session_as_admin(actor, session_id)
        metrics.sessions_closed("admin" if actor.is_administrator else "user", closed)
        return closed

    async def close_user_sessions(self, actor: Actor, login: str) -> int:
        require_admin(actor, "close a user's sessions")
        user = await self.users.get_user_by_login(login)
        closed = await self.sessions.close_user_sessions(actor, user.id)
        metrics.sessions_closed("admin", closed)
        return closed

    async def list_sessions(
        self, actor: Actor, user_id: UUID | None = None
    ) -> Sequence[SessionRecord]:
        return await self.sessions.list_sessions(actor, user_id)

    async def sessions_page(
        self, actor: Actor, query: SessionQuery, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[SessionRecord], str | None]:
        return await self.sessions.page(actor, query, cursor, limit)

    async def sweep(self) -> int:
        return await self.sessions.sweep()

    async def flush_touches(self) -> None:
        await self.sessions.flush_touches()

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
        return await self.users.add_user(
            actor,
            login,
            name=name,
            password=password,
            access_level=access_level,
            login_type=login_type,
            account=account,
        )

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
        return await self.users.update_user(
            actor,
            login,
            name=name,
            access_level=access_level,
            login_type=login_type,
            account=account,
            time_zone_utc_offset=time_zone_utc_offset,
        )

    async def set_blocked(
        self, actor: Actor, login: str, blocked: bool, until: datetime | None = None
    ) -> UserRecord:
        return await self.users.set_blocked(actor, login, blocked, until)

    async def set_password(self, actor: Actor, login: str, password: str) -> UserRecord:
        return await self.users.set_password(actor, login, password)

    async def set_personal_licence(
        self, actor: Actor, login: str, license_type: LicenseType, holds: bool
    ) -> UserRecord:
        return await self.users.set_personal_licence(actor, login, license_type, holds)

    async def remove_user(self, actor: Actor, login: str) -> UserRecord:
        return await self.users.remove_user(actor, login)

    async def get_user_by_login(self, login: str) -> UserRecord:
        return await self.users.get_user_by_login(login)

    async def list_users(self, actor: Actor) -> Sequence[UserRecord]:
        return await self.users.list_users(actor)

    async def password_expires(self, user_id: UUID) -> datetime | None:
        return await self.users.password_expires(user_id)

    async def ensure_first_administrator(self) -> tuple[UserRecord, str | None] | None:
        return await self.users.ensure_first_administrator()

    def canonical_account(self, login_type: LoginType, account: str | None) -> str | None:
        return self.users.canonical_account(login_type, account)

    # --- configuration -------------------------------------------------------------------

    async def configuration_version(self) -> int:
        return await self.configuration.version()

    async def get_configuration(self) -> ConfigurationInfo:
        return await self.configuration.get()

    async def wait_for_configuration_change(self, after: int, wait: float) -> int:
        return await self.configuration.wait_for_change(after, wait)

    async def increment_configuration_version(self, actor: Actor) -> ConfigurationInfo:
        return await self.configuration.increment(actor)

    # --- licences ------------------------------------------------------------------------

    @property
    def licence(self) -> Licence | None:
        return self.licensing.licence

    async def install_licence_file(
        self, path: str | None = None, actor: Actor | None = None
    ) -> Licence:
        if actor is not None:
            require_admin(actor, "install a licence")
        return await self.licensing.install_file(path, actor)

    async def install_licence(
        self, data: bytes | str, *, source: str = "licence", actor: Actor | None = None
    ) -> Licence:
        if actor is not None:
            require_admin(actor, "install a licence")
        return await self.licensing.install(data, source=source, actor=actor)

    async def reload_licence(self, actor: Actor) -> Licence:
        require_admin(actor, "reload the licence")
        return await self.licensing.install_file(None, actor)

    async def licence_usage(self, actor: Actor) -> dict[str, Any]:
        require_admin(actor, "see licence usage")
        return {**await self.licensing.usage(), "Warnings": await self.licensing.warnings()}

    # --- audit ---------------------------------------------------------------------------

    async def audit_records(
        self,
        *,
        since: datetime | None = None,
        action: AuditAction | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Sequence[AuditRecord]:
        """Audit records, oldest first (in-process use: the CLI, tests)."""
        query = AuditQuery(
            actions=(action,) if action else (), since=since, after_id=after_id, limit=limit
        )
        return await self.store.list_audit(query)

    async def audit_page(
        self, actor: Actor, query: AuditQuery, limit: int = 100
    ) -> tuple[list[AuditRecord], int | None]:
        """One page of the audit trail for an administrator, and the id to continue after (or
        before, newest first); None when this was the last page."""
        require_admin(actor, "read the audit trail")
        limit = max(1, min(limit, AUDIT_PAGE_LIMIT))
        records = list(await self.store.list_audit(replace(query, limit=limit + 1)))
        more = len(records) > limit
        records = records[:limit]
        return records, (records[-1].id if more and records else None)

    async def record_key_change(self, actor: Actor, action: AuditAction, key_id: str) -> None:
        """A SignatureKeyRotated or SignatureKeyRetired record (the key ring is a file the
        command line changes; the record goes where every node's records go)."""
        require_admin(actor, "change the signature keys")
        record = change_audit(action, self.clock(), actor, details={"key_id": key_id})
        await self.store.add_audit(record)

    async def verify_audit(self) -> ChainReport:
        """Walk the audit trail's hash chain (see ``sessiond.store.chain``)."""
        return await self.store.verify_audit()
