"""Signing in and changing one's own password: one pipeline for every login type.

Every sign-in has one shape, whatever the credentials:

1. **Find** the user the credentials name. When none is mapped, the backend whose accounts they
   name makes a :class:`~sessiond.auth.Claim` — the canonical account, and the identity limits
   are kept under — or nobody does (an unknown login).
2. **Reserve**: the user's attempt slot (:mod:`.attempts`), or a slot under the unmapped
   account's and the address's limits (:mod:`.unmapped`) — only when a user may be provisioned
   for it: otherwise an unmapped account is refused without asking the domain or the directory
   anything.
3. **Check** with the backend (Argon2, the domain, the directory, NTLM's last leg), outside any
   transaction.
4. **Settle** and **admit** (:mod:`.admission`): count a failure, or decide from the user's row
   as it is now and write the session with the rights that row has.

Steps 2 to 4 (and every refusal) happen in the account's *turn* (:mod:`.turns`): one sign-in of
an account at a time on a node, the others waiting for it a bounded time, then refused
unchecked; a refused turn pauses the account. So a flood at one account costs at most one check
at a time, and a fifth of one hashing thread, whatever its size.

Before the right password is shown, every refusal is the same ``invalid_credentials`` answer,
after the same work (a decoy hash where no real one is checked; none where no check may be
made — the account blocked, no slot, a limit reached — once the clock knows the floor) and no
sooner than the same floor (:mod:`.pacing`). Details (blocked until when, password expired,
licence full) come only after the right password. Which login types exist, how they check
and what they refuse after the check is the backends' business (:mod:`sessiond.auth`): this
module names none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn
from uuid import UUID

from .. import metrics, passwords
from ..auth import (
    Authenticator,
    Backend,
    Claim,
    Identity,
    PasswordCredentials,
    PlatformAuthenticator,
    ProofBackend,
)
from ..errors import (
    AccountNotMapped,
    Conflict,
    InvalidCredentials,
    LoginForbidden,
    NegotiateRequired,
    NotConfigured,
    PasswordExpired,
    PasswordRejected,
)
from ..keys import KeyRing
from ..models import AuditAction, ClientInfo, LoginType
from ..settings import Settings
from ..store import Store, UserRecord
from . import pacing
from .admission import WRONG, Admission, Opened, reason_of
from .attempts import Attempts, Checked, NotChecked
from .common import Actor, Clock, change_audit, login_failed
from .durable import Records
from .licensing import Licensing
from .lockout import CLEARED
from .pacing import RefusalPace
from .sessions import Sessions
from .turns import Turns, Waited
from .unmapped import UnmappedLimits
from .users import Users

log = logging.getLogger("sessiond.service")

Verify = Callable[[], Awaitable[Identity]]


@dataclass(frozen=True, slots=True)
class Unclaimed:
    """No backend claims the credentials: why (for the record), and who said so."""

    reason: str
    backend: Authenticator | None = None


class SignIn:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keys: KeyRing,
        clock: Clock,
        authenticators: Mapping[LoginType, Authenticator],
        proofs: Mapping[str, ProofBackend],
        hasher: PlatformAuthenticator,
        users: Users,
        sessions: Sessions,
        licensing: Licensing,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.authenticators = authenticators
        #: The proof backends by name (``negotiate``, ``openid``): how their sign-ins are
        #: asked for and counted.
        self.proofs = proofs
        self.hasher = hasher
        self.users = users
        self.sessions = sessions
        self.attempts = Attempts(settings, store, clock)
        self.unmapped = UnmappedLimits(settings, store, clock)
        backends: dict[LoginType, Backend] = {p.login_type: p for p in proofs.values()}
        backends.update(authenticators)
        self.admission = Admission(settings, store, keys, clock, backends, self.attempts, licensing)
        self.pace = RefusalPace()
        self.turns = Turns()
        self.records = Records(store)

    async def close(self) -> None:
        """Let refusals' records and failures still being written be written."""
        await self.records.close()
        await self.attempts.close()

    @property
    def _wait(self) -> float:
        return self.settings.sign_in_slot_wait.total_seconds()

    # --- the calls -----------------------------------------------------------------------

    async def open_session(
        self,
        credentials: PasswordCredentials,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> Opened:
        """A sign-in with a login and password: the session opened, with what its answer
        says (decided where it was written: see :class:`~.admission.Opened`)."""
        self.pace.begin(self._wait)
        who, password = credentials.display, credentials.password
        with metrics.sign_in("password"):  # the outcome, never which user or login type
            user = await self.users.find(credentials)
            found: tuple[Authenticator, Claim] | Unclaimed | None = None
            key: object = user.id if user is not None else None
            if user is None:  # a spelling only its backend reads (a UPN), or no user at all
                found = await self._claim(credentials)
                if isinstance(found, Unclaimed):
                    key = _login_key(who)
                else:
                    user = await self.users.find_account(found[1].account)
                    key = user.id if user is not None else found[1].key
            async with self._turn(key, user, who, client_address):
                if isinstance(found, Unclaimed):
                    await self._refuse(None, who, password, client_address, *_as_refusal(found))
                if user is None:
                    assert found is not None
                    backend, claim = found
                    await self._unmapped_may_be_checked(
                        backend, claim, who, password, client_address
                    )
                    checked = await self._check_unmapped(
                        backend, claim, lambda: backend.verify(None, credentials),
                        who, password, client_address,
                    )  # fmt: skip
                else:
                    mapped = user
                    backend = await self._backend_of(mapped, who, password, client_address)
                    checked = await self._check(
                        mapped, lambda: backend.verify(mapped, credentials), who, password,
                        client_address, backend,
                    )  # fmt: skip
            return await self.admission.admit(
                checked, checked.user.login_type, "a password", client, client_address
            )

    async def open_session_negotiate(
        self,
        token: bytes | None,
        handshake_id: str | None,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> tuple[Opened, bytes | None]:
        """Integrated sign-in (HTTP Negotiate). Returns the session opened and the backend's last
        token (mutual authentication), or raises :class:`NegotiateRequired` with the
        challenge when the exchange needs another leg."""
        if "negotiate" not in self.proofs:
            raise NotConfigured(
                "integrated sign-in is not configured on this server; sign in with a login "
                "and password"
            )
        return await self.open_session_proof(
            "negotiate", token, handshake_id, client, client_address
        )

    async def open_session_proof(
        self,
        name: str,
        token: bytes | None,
        handshake_id: str | None,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> tuple[Opened, bytes | None]:
        """A sign-in by the proof backend ``name`` (:attr:`proofs`), as
        :meth:`open_session_negotiate` describes."""
        proof = self.proofs.get(name)
        if proof is None:
            raise NotConfigured(
                f"sign-in by {name} is not configured on this server; sign in with a login "
                "and password"
            )
        if not token:
            raise NegotiateRequired(f"{proof.title}: send a Negotiate token")
        self.pace.begin(self._wait)
        with metrics.sign_in(name):  # a challenge is not an outcome
            try:
                claim = await proof.claim(token, handshake_id)
            except InvalidCredentials as exc:
                await self._audit(None, f"({proof.title})", client_address, _said(exc))
                await self.pace.hold(proof)
                raise
            last: list[bytes | None] = [None]
            if claim is None:  # a first leg, or a proof that needs no password (a ticket)
                try:
                    identity = await self._prove(proof, token, handshake_id, last)
                except InvalidCredentials as exc:
                    await self._audit(None, f"({proof.title})", client_address, _said(exc))
                    raise
                user = await self.users.find_account(identity.account)
                if user is None:
                    user = await self._provision(proof, identity, client_address)
                checked = Checked(user, identity)
            else:  # a password answer (NTLM): within the rules a typed password has
                checked = await self._check_answer(
                    proof, claim, token, handshake_id, last, client_address
                )
            session = await self.admission.admit(
                checked, proof.login_type, proof.title, client, client_address
            )
            return session, last[0]

    async def change_password(
        self,
        login: str,
        old_password: str,
        new_password: str,
        client_address: str | None = None,
        current_session: UUID | None = None,
    ) -> UserRecord:
        """A user whose password sessiond keeps changes it (also once it has expired). Their
        other sessions end (all of them without ``current_session``), unless the security
        options keep them."""
        self.pace.begin(self._wait)
        security = self.settings.security
        passwords.check_rules(new_password, security)  # the same for every login: tells nothing
        credentials = PasswordCredentials(login, old_password)
        user = await self.users.find(credentials)
        key = user.id if user is not None else _login_key(login)
        async with self._turn(key, user, login, client_address):
            return await self._change_password(
                user, credentials, new_password, client_address, current_session
            )

    async def _change_password(
        self,
        user: UserRecord | None,
        credentials: PasswordCredentials,
        new_password: str,
        client_address: str | None,
        current_session: UUID | None,
    ) -> UserRecord:
        security = self.settings.security
        login, old_password = credentials.login, credentials.password
        if user is None:
            await self._refuse(None, login, old_password, client_address, "unknown login")
        backend = await self._backend_of(user, login, old_password, client_address)
        verify: Verify = lambda: backend.verify(user, credentials)  # noqa: E731
        if backend.password_changed_in is not None:
            await self._changed_elsewhere(user, backend, verify, client_address)
        checked = await self._check(user, verify, login, old_password, client_address, backend)
        try:
            history = await self.store.password_history(user.id, security.unique_password_count)
            await passwords.check_reuse(new_password, history, self.hasher.matches, security)
            new_hash = await self.hasher.hash(new_password)
        except BaseException:
            await asyncio.shield(self.attempts.release(checked.attempt, user.id, right=True))
            raise
        now = self.clock()
        async with self.store.write() as tx:
            row = await self.attempts.settle(tx, checked)
            refusal = self.admission.refusal(
                checked, row, user.login_type, "a password", now, for_change=True
            )
            if row is None or refusal is not None:
                await tx.add_audit(
                    login_failed(row or user, login, now, client_address, reason_of(refusal))
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
        self.attempts.released(checked)
        if refusal is not None:
            raise refusal
        assert row is not None
        return row

    async def _changed_elsewhere(
        self, user: UserRecord, backend: Authenticator, verify: Verify, client_address: str | None
    ) -> NoReturn:
        """A password kept by the domain or a directory: once the old one is shown right (or
        right but expired), say where to change it."""
        try:
            checked = await self._check(user, verify, user.login, "", client_address, backend)
        except PasswordExpired:
            pass
        else:
            await asyncio.shield(self.attempts.release(checked.attempt, user.id, right=True))
        raise PasswordRejected(
            f"{user.login_type.wire} passwords are changed in the {backend.password_changed_in}"
            ", not here; then sign in with the new password",
            details={"rule": "changed_elsewhere"},
        )

    # --- which backend -------------------------------------------------------------------

    async def _backend_of(
        self, user: UserRecord, who: str, password: str, client_address: str | None
    ) -> Authenticator:
        """The backend that checks this user's passwords, or the uniform refusal."""
        backend = self.authenticators.get(user.login_type) if user.login_type.signs_in else None
        if backend is None:
            wire = user.login_type.wire
            proof = next((p for p in self.proofs.values() if p.login_type is user.login_type), None)
            reason = (
                f"login type {wire}: may not sign in"
                if not user.login_type.signs_in
                else f"{wire} users sign in by {proof.title}, not with a password"
                if proof is not None
                else f"sign-in of {wire} users is not configured on this server"
            )
            await self._refuse(user, who, password, client_address, reason)
        return backend

    async def _claim(
        self, credentials: PasswordCredentials
    ) -> tuple[Authenticator, Claim] | Unclaimed:
        """No user has these credentials: the backend whose account they name, and that
        account — or why not (to be refused, unchecked, in the login's turn)."""
        for backend in self.authenticators.values():
            try:
                claim = await backend.claim(credentials)
            except InvalidCredentials as exc:
                return Unclaimed(f"unknown login; {_said(exc)}", backend)
            if claim is not None:
                return backend, claim
        return Unclaimed("unknown login")

    @asynccontextmanager
    async def _turn(
        self, key: object, user: UserRecord | None, who: str, client_address: str | None
    ) -> AsyncIterator[None]:
        """The account's turn on this node (:mod:`.turns`), waited for until the sign-in's
        deadline — or the uniform refusal, unchecked and without any work, once it has not
        come in time. A turn that ends in a refusal pauses the account."""
        deadline = pacing.deadline.get() or time.monotonic()
        try:
            async with self.turns.take(key, deadline) as turn:
                self.pace.restart()
                try:
                    yield
                except InvalidCredentials:
                    turn.refused = True
                    raise
        except Waited as exc:
            await self._audit(user, who, client_address, exc.reason)
            raise InvalidCredentials(WRONG, reason=exc.reason) from None

    async def _unmapped_may_be_checked(
        self,
        backend: Authenticator | ProofBackend,
        claim: Claim,
        who: str,
        password: str,
        client_address: str | None,
    ) -> None:
        """An account no user is mapped to is checked only if one may be provisioned for it;
        otherwise it is refused as an unknown login is, without asking anyone."""
        if not backend.auto_provision:
            reason = (
                f"unknown login; {backend.login_type.wire} account {claim.account} is not "
                "mapped to a user (no provisioning: password not checked)"
            )
            await self._refuse(None, who, password, client_address, reason, backend)

    # --- checks --------------------------------------------------------------------------

    async def _check(
        self,
        user: UserRecord,
        verify: Verify,
        who: str,
        password: str,
        client_address: str | None,
        path: Backend,
    ) -> Checked:
        """Check within the user's lockout: a Checked, or the uniform refusal (held to the
        wrong-password time of ``path``, the backend that checks)."""
        try:
            attempt = await self.attempts.reserve(user)
        except NotChecked as exc:
            await self._refuse(user, who, password, client_address, exc.reason, path, checks=False)
        try:
            identity = await verify()
        except InvalidCredentials as exc:
            await asyncio.shield(
                self.attempts.count_failure(user, attempt, client_address, _said(exc))
            )
            self.pace.checked(path)
            await self.pace.hold(path)
            raise InvalidCredentials(WRONG) from None
        except (PasswordExpired, LoginForbidden) as exc:  # said only to the right password
            await asyncio.shield(self.attempts.release(attempt, user.id, right=True))
            await self._audit(user, user.login, client_address, exc.reason or exc.code)
            raise
        except BaseException:  # the domain is down, the request went away: nothing was shown
            await asyncio.shield(self.attempts.release(attempt, user.id, right=False))
            raise
        return Checked(user, identity, attempt)

    async def _check_unmapped(
        self,
        backend: Authenticator | ProofBackend,
        claim: Claim,
        verify: Verify,
        who: str,
        password: str,
        client_address: str | None,
    ) -> Checked:
        """An account no user is mapped to, for which one may be provisioned: check it within
        the limits on its identity and address, then provision."""
        try:
            held = await self.unmapped.hold(claim, client_address)
        except NotChecked as exc:
            await self._refuse(
                None, who, password, client_address, exc.reason, backend, checks=False
            )
        try:
            identity = await verify()
        except InvalidCredentials as exc:
            reason = f"unknown login; {backend.login_type.wire}: {_said(exc)}"
            await asyncio.shield(self.unmapped.settle(held, who, client_address, reason))
            self.pace.checked(backend)
            await self.pace.hold(backend)
            raise InvalidCredentials(WRONG) from None
        except BaseException:
            await asyncio.shield(self.unmapped.settle(held, who, client_address, None))
            raise
        await self.unmapped.settle(held, who, client_address, None)
        user = await self._provision(backend, identity, client_address)
        return Checked(user, identity)

    async def _check_answer(
        self,
        proof: ProofBackend,
        claim: Claim,
        token: bytes,
        handshake_id: str | None,
        last: list[bytes | None],
        client_address: str | None,
    ) -> Checked:
        """A proof leg that answers for an account with a password (NTLM's last leg), checked
        as a typed password is: the user's lockout, or the unmapped account's limits — or
        refused unchecked, and the handshake forgotten, when neither may be checked."""
        user = await self.users.find_account(claim.account)

        async def verify() -> Identity:
            identity = await self._prove(proof, token, handshake_id, last)
            proven = await self.users.find_account(identity.account)
            if user is not None and (proven is None or proven.id != user.id):
                raise InvalidCredentials(
                    WRONG, reason=f"the domain confirmed {identity.account}, not {claim.account}"
                )
            return identity

        try:
            key = user.id if user is not None else claim.key
            async with self._turn(key, user, claim.account, client_address):
                if user is not None:
                    return await self._check(user, verify, claim.account, "", client_address, proof)
                await self._unmapped_may_be_checked(proof, claim, claim.account, "", client_address)
                return await self._check_unmapped(
                    proof, claim, verify, claim.account, "", client_address
                )
        except BaseException:
            proof.abandon(handshake_id)
            raise

    async def _prove(
        self,
        proof: ProofBackend,
        token: bytes,
        handshake_id: str | None,
        last: list[bytes | None],
    ) -> Identity:
        step = await proof.step(token, handshake_id)
        if step.identity is None:
            raise NegotiateRequired(
                f"{proof.title} continues: answer the challenge",
                challenge=step.output,
                handshake_id=step.handshake_id,
                scheme=step.scheme,
            )
        last[0] = step.output
        return step.identity

    # --- refusals and provisioning -------------------------------------------------------

    async def _refuse(
        self,
        user: UserRecord | None,
        who: str,
        password: str,
        client_address: str | None,
        reason: str,
        path: Backend | None = None,
        *,
        checks: bool = True,
    ) -> NoReturn:
        """The answer every refusal gets before the right password is shown, in the time a
        wrong password takes on ``path`` (the backend that would have checked it; the
        platform's passwords when none): a decoy hash where Argon2 would have run, a LoginFailed
        record written, and the path's refusal floor (:mod:`.pacing`). Where no password may
        be checked (``checks`` false: blocked, no slot, a limit reached) there is no decoy
        once the path's floor is known: the clock alone holds the answer to it."""
        path = path or self.hasher
        if path is self.hasher and (checks or not self.pace.known(path)):
            await self.hasher.burn(password)
        await self._audit(user, who, client_address, reason)
        await self.pace.hold(path)
        raise InvalidCredentials(WRONG, reason=reason)

    async def _provision(
        self, backend: Authenticator | ProofBackend, identity: Identity, client_address: str | None
    ) -> UserRecord:
        """An account proved itself but maps to no user: create one if its backend allows it,
        otherwise refuse clearly (a proof that needs no password: it tells nothing new)."""
        account = identity.account or ""
        wire = backend.login_type.wire
        if not backend.auto_provision:
            await self._audit(None, account, client_address, f"{wire} account not mapped to a user")
            raise AccountNotMapped(
                f"the {wire} account {account} signed in correctly, but no platform user is "
                "mapped to it; ask an administrator to add one"
            )
        try:
            return await self.users.add_user(
                Actor.system(), account, name=identity.display_name or account,
                login_type=backend.login_type, account=account,
            )  # fmt: skip
        except Conflict:  # provisioned meanwhile by a concurrent sign-in
            user = await self.store.find_user_by_account(account)
            if user is None:
                raise
            return user

    async def _audit(
        self, user: UserRecord | None, who: str, client_address: str | None, reason: str
    ) -> None:
        await self.records.add(login_failed(user, who, self.clock(), client_address, reason))


def _said(exc: InvalidCredentials) -> str:
    return exc.reason or exc.message


def _login_key(login: str) -> str:
    """The turn of a login no user has: the login as typed, in one case."""
    return "login:" + login.strip().casefold()


def _as_refusal(unclaimed: Unclaimed) -> tuple[str, Authenticator | None]:
    return unclaimed.reason, unclaimed.backend
