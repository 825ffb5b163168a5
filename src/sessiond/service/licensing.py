"""Licences in the service: which seat a session takes, installing licences, seat usage.

A call an actor makes checks the actor here: installing or reloading a licence and reading
the usage need an administrator (a licence installed with no actor is the server's own:
its ``licence_file`` at start, or the command line)."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime
from typing import Any

from .. import licence as licences
from ..errors import LicenceInvalid, NotConfigured
from ..licence import Licence
from ..models import AuditAction, LicenseType, ServiceType
from ..settings import Settings
from ..store import AuditRecord, SeatRequest, SessionRecord, Store, UserRecord
from ..store.state import SessionState
from .common import Actor, Clock, change_audit, require_admin, session_audit

log = logging.getLogger("sessiond.service")


def _read_head(path: str | os.PathLike[str], size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


class Licensing:
    """The installed licence (read from the store, shared by every node) and seat rules."""

    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.licence: Licence | None = None
        self._public_key = (
            licences.load_public_key(settings.licence_public_key)
            if settings.licence_public_key
            else None
        )

    async def refresh(self) -> None:
        self.licence = await self.store.get_licence()

    def license_type(self, user: UserRecord, service: ServiceType, now: datetime) -> LicenseType:
        """Web clients take web seats; desktop clients, and anything that says Unknown, take
        client seats; a personal licence of that kind is used when the user holds one."""
        if self.licence is not None and not self.licence.is_valid_at(now):
            raise LicenceInvalid(
                f"licence {self.licence.id} is valid from {self.licence.valid_from:%Y-%m-%d} "
                f"to {self.licence.valid_to:%Y-%m-%d}; an administrator must install a "
                "current licence"
            )
        if service == ServiceType.WEB_CLIENT:
            return LicenseType.PERSONAL_WEB if user.personal_web else LicenseType.CONCURRENT_WEB
        if user.personal_client:
            return LicenseType.PERSONAL_CLIENT
        return LicenseType.CONCURRENT_CLIENT

    def seat_request(
        self, license_type: LicenseType, now: datetime, client_address: str | None
    ) -> SeatRequest | None:
        if license_type in (LicenseType.PERSONAL_CLIENT, LicenseType.PERSONAL_WEB):
            return None  # personal seats are counted when they are given out

        def displaced(old: SessionRecord) -> AuditRecord:
            return session_audit(
                AuditAction.SESSION_DEACTIVATED,
                now,
                old,
                None,
                client_address,
                {
                    "reason": "licence limit: displaced by a newer session of the same user",
                    "license_type": license_type.wire,
                },
            )

        return SeatRequest(
            license_type=license_type,
            now=now,
            active_since=self._state().active_since(now),
            displace_oldest=self.settings.licence_policy == "deactivate_oldest",
            displaced_audit=displaced,
        )

    async def install_file(self, path: str | None = None, actor: Actor | None = None) -> Licence:
        """Check a licence file and make it the installation's licence (every node reads it
        from the store). A bad, expired or wrongly signed file changes nothing."""
        if actor is not None:
            require_admin(actor, "install a licence")
        source = path or self.settings.licence_file
        if source is None:
            raise NotConfigured("no licence file given, and the licence_file setting is not set")
        try:
            data = await asyncio.to_thread(_read_head, source, licences.MAX_LICENCE_BYTES + 1)
        except OSError as exc:
            raise LicenceInvalid(f"cannot read licence file {source}: {exc.strerror}") from None
        return await self.install(data, source=f"licence file {source}", actor=actor)

    async def install(
        self, data: bytes | str, *, source: str = "licence", actor: Actor | None = None
    ) -> Licence:
        if actor is not None:
            require_admin(actor, "install a licence")
        now = self.clock()
        licence = licences.parse(data, public_key=self._public_key, now=now, source=source)
        record = change_audit(
            AuditAction.LICENCE_INSTALLED,
            now,
            actor or Actor.system(),
            details={
                **licence.to_dict(),
                "source": source,
            },
        )
        changed = await self.store.install_licence(licence, now, record)
        self.licence = licence
        if changed:
            log.info("licence %s for %s installed", licence.id, licence.licensee)
        for warning in await self.warnings():
            log.warning("%s", warning)
        return licence

    async def reload(self, actor: Actor) -> Licence:
        """Install the ``licence_file`` again (an administrator replaced the file)."""
        require_admin(actor, "reload the licence")
        return await self.install_file(None, actor)

    async def warnings(self) -> list[str]:
        """Personal licences given out beyond what the installed licence allows (a smaller
        licence takes none back by itself: an administrator chooses whose to take)."""
        licence = await self.store.get_licence()
        if licence is None:
            return []
        usage = await self.store.licence_usage(self.clock(), None)
        out = []
        for name, kind in (
            ("personal client", LicenseType.PERSONAL_CLIENT),
            ("personal web", LicenseType.PERSONAL_WEB),
        ):
            given, seats = usage.get(kind, 0), licence.seats_of(kind)
            if given > seats:
                out.append(
                    f"{given} {name} licences are given out, more than the {seats} licence "
                    f"{licence.id} allows; take {name} licences back from some users"
                )
        # Open sessions beyond the seats (a smaller licence closes none by itself).
        in_use = (await self._usage())["Seats"]
        refuse = self.settings.licence_policy == "refuse"
        for name, wire in (
            ("concurrent client", "ConcurrentClient"),
            ("concurrent web", "ConcurrentWeb"),
        ):
            used, seats = in_use[wire]["InUse"], in_use[wire]["Seats"]
            if seats is not None and used > seats:
                out.append(
                    f"{used} {name} seats are in use, more than the {seats} licence "
                    f"{licence.id} has; the open sessions stay until they end, and a new "
                    f"sign-in of that kind {'is refused' if refuse else 'closes the oldest'} "
                    "meanwhile: close some sessions, or install a licence with more seats"
                )
        return out

    async def usage(self, actor: Actor) -> dict[str, Any]:
        """The installed licence, how many seats of each kind are in use, and the warnings
        (administrators)."""
        require_admin(actor, "see licence usage")
        return {**await self._usage(), "Warnings": await self.warnings()}

    def _state(self) -> SessionState:
        """The "is it open?" rule under the settings as they are now: seats count open
        sessions."""
        return SessionState(self.settings.security.session_inactivity_time)

    async def seats(self) -> dict[str, Any]:
        """How many seats of each kind are in use, and how many the licence has (None: not
        limited): the figures the node's metrics show."""
        seats: dict[str, Any] = (await self._usage())["Seats"]
        return seats

    async def _usage(self) -> dict[str, Any]:
        """The installed licence and how many seats of each kind are in use."""
        now = self.clock()
        usage = await self.store.licence_usage(now, self._state().active_since(now))
        licence = await self.store.get_licence()
        seats = {
            name: {
                "InUse": usage.get(kind, 0),
                "Seats": licence.seats_of(kind) if licence else None,
            }
            for name, kind in licences.SEAT_FIELDS.items()
        }
        return {
            "Licence": licence.to_dict() if licence else None,
            # No licence: seats are not limited, and there is no validity to speak of.
            "Valid": licence.is_valid_at(now) if licence else None,
            "Policy": self.settings.licence_policy,
            "Seats": seats,
        }

    async def personal_limit(self, license_type: LicenseType) -> int | None:
        licence = await self.store.get_licence()
        return licence.seats_of(license_type) if licence else None
