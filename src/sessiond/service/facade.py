"""SessionService: the parts of the service, wired — sign-in, sessions, users, licensing,
configuration and the audit trail, each a public attribute that the HTTP layer and the CLI call
directly. Every part checks its own actors (a call that needs an administrator refuses anyone
else there, whoever calls it). What is left here is the service's own: wiring, start and close,
reacting to other nodes' notices, and the calls that span several parts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping

from .. import metrics
from ..auth import Authenticator, PlatformAuthenticator
from ..auth.registry import load_authenticators, load_proofs
from ..errors import LicenceInvalid
from ..keys import AuditKeyRing, KeyRing
from ..models import LoginType
from ..settings import Settings
from ..store import (
    Store,
)
from ..store.notify import Notice
from .audit import Audit
from .common import Actor, Clock, require_admin, utc_now
from .configuration import Configuration
from .external import ExternalAccounts
from .licensing import Licensing
from .openid import OpenIdSignIn
from .sessions import Sessions
from .signin import SignIn
from .users import Users

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
        create: bool = True,
    ) -> None:
        """``create=False`` (administrative commands): a missing audit key ring is not
        created (writing an audit record then says where it is missing)."""
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.authenticators = load_authenticators(settings)
        if authenticators:
            self.authenticators.update(authenticators)
        audit_keys = settings.effective_audit_keys_file
        existed = audit_keys.exists()
        self.audit = Audit(
            store,
            clock,
            AuditKeyRing.open(audit_keys, create=create),
            audit_keys,
            created=not existed and create,
        )
        self.licensing = Licensing(settings, store, clock)
        self.configuration = Configuration(settings, store, clock, self.licensing.refresh)
        self.sessions = Sessions(settings, store, keys, clock)
        proofs = load_proofs(settings)
        sign_in_types = set(self.authenticators) | {p.login_type for p in proofs.values()}
        self.users = Users(
            settings, store, clock, self.platform, self.sessions, sign_in_types - {LoginType.NONE}
        )
        self.signin = SignIn(
            settings,
            store,
            keys,
            clock,
            self.authenticators,
            proofs,
            self.platform,
            self.users,
            self.sessions,
            self.licensing,
        )
        self.openid = OpenIdSignIn(self.signin)
        external = ExternalAccounts(store, clock, self.users)
        for backend in [*self.authenticators.values(), *proofs.values()]:
            backend.bind(external)

    @property
    def platform(self) -> PlatformAuthenticator:
        platform = self.authenticators[LoginType.PLATFORM]
        assert isinstance(platform, PlatformAuthenticator)
        return platform

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, *, install_licence_file: bool = False, listen: bool = False) -> None:
        """Open the store. A server (not a CLI command) also records its settings when they
        changed since its last start, and installs ``licence_file``. ``listen``: hear of other
        nodes' changes as they commit (PostgreSQL), before anything is read, so that nothing
        committed after the reads below is missed."""
        await self.store.open(self.configuration.build, self.clock())
        if listen:
            await self.store.listen(self.notified)
        await self.configuration.read()
        await self.licensing.refresh()
        await self.audit.check_keys(warn=install_licence_file)
        if install_licence_file:
            node = self.settings.server_code or socket.gethostname()
            await self.configuration.record_settings(node, self.platform)
        if install_licence_file and self.settings.licence_file:
            try:
                await self.licensing.install_file()
            except LicenceInvalid as exc:
                kept = self.licensing.licence
                log.error(
                    "licence not loaded: %s (%s)",
                    exc.message,
                    f"keeping licence {kept.id}" if kept else "no licence",
                )

    async def close(self) -> None:
        await self.configuration.close()
        await self.signin.close()
        try:  # a store that is down must not hold the shutdown
            async with asyncio.timeout(10):
                await self.sessions.flush_touches()
        except TimeoutError:
            log.warning("shutting down with last-activity touches not written")
        for authenticator in self.authenticators.values():
            await authenticator.close()
        for proof in self.signin.proofs.values():  # ntlm_auth helpers, providers' pools
            await proof.close()
        await self.store.close()

    # --- other nodes' changes ------------------------------------------------------------

    def notified(self, notice: Notice) -> None:
        """Another node (or this one) committed a change (PostgreSQL's notifications; see
        ``store/notify.py``). Called on the event loop, in commit order."""
        metrics.notified(notice.kind)
        if notice.kind == "version" and notice.version is not None:
            self.configuration.changed(notice.version)
        elif notice.kind == "revoked":
            # Sessions whose rows are gone (closed, displaced, swept; on any node, this one
            # included): whatever this node keeps about them goes. The validation cache would
            # find out at each session's next request anyway (on PostgreSQL it asks the store
            # every time); this frees the memory sooner.
            self.sessions.forget(notice.session_ids)
        elif notice.kind == "licence":
            self.configuration.reread_soon()  # a re-read takes the licence with it
        elif notice.kind == "resumed":  # notifications were lost while disconnected
            self.configuration.reread_soon()
            self.sessions.forget(None)  # which sessions went is not known: forget them all

    # --- calls that span several parts --------------------------------------------------

    async def close_user_sessions(self, actor: Actor, login: str) -> int:
        """Close every session of the user ``login`` names (administrators); returns how many
        were open. Users find the user, Sessions close its sessions."""
        require_admin(actor, "close a user's sessions")
        user = await self.users.get_user_by_login(login)
        return await self.sessions.close_user_sessions(actor, user.id)
