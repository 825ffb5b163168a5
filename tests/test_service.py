"""The service core on a real SQLite store, with a clock the tests move by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sessiond.auth import PasswordCredentials
from sessiond.errors import (
    Conflict,
    InvalidCredentials,
    PasswordExpired,
    PasswordRejected,
    PermissionDenied,
    RequestError,
    SessionExpired,
    SessionNotFound,
    UserBlocked,
)
from sessiond.models import AccessLevel, AuditAction, ClientInfo, LicenseType, LoginType
from sessiond.service import Actor, SessionService
from sessiond.store import AuditQuery

from . import licences
from .conftest import Clock

SYSTEM = Actor.system()
CLIENT = ClientInfo()


async def _user(service: SessionService, login: str = "ivanov", **kw: Any) -> None:
    await service.users.add_user(SYSTEM, login, password=kw.pop("password", "pw-1234"), **kw)


async def _open(service: SessionService, login: str = "ivanov", password: str = "pw-1234") -> str:
    opened = await service.signin.open_session(
        PasswordCredentials(login, password), CLIENT, "10.1.1.1"
    )
    return opened.token.to_auth_xml()


async def test_a_session_expires_at_its_absolute_lifetime(make_service: Any, clock: Clock) -> None:
    service = await make_service(session_expiration_time_span="2h")
    await _user(service)
    auth = await _open(service)
    clock.advance(hours=1, minutes=59)
    await service.sessions.validate(auth)
    clock.advance(minutes=2)
    with pytest.raises(SessionExpired):
        await service.sessions.validate(auth)
    expired = await service.audit.records(action=AuditAction.SESSION_EXPIRED)
    assert len(expired) == 1 and expired[0].details == {"reason": "absolute lifetime"}
    assert not await service.store.list_sessions()


async def test_inactivity_closes_a_session_and_activity_keeps_it(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(security={"session_inactivity_time": "30m"}, touch_interval=60)
    await _user(service)
    auth = await _open(service)
    for _ in range(5):  # 2.5 hours of steady work
        clock.advance(minutes=29)
        await service.sessions.validate(auth)
    clock.advance(minutes=31)
    with pytest.raises(SessionExpired, match="inactivity"):
        await service.sessions.validate(auth)
    with pytest.raises(SessionNotFound):
        await service.sessions.validate(auth)


async def test_last_activity_is_written_at_most_once_per_touch_interval(
    service: SessionService, clock: Clock
) -> None:
    await _user(service)
    auth = await _open(service)
    opened = clock.now
    for _ in range(10):
        clock.advance(seconds=5)
        record = await service.sessions.validate(auth)
    assert record.last_activity == opened  # 50 s of calls: no write yet
    clock.advance(seconds=15)
    await service.sessions.validate(auth)
    await service.sessions.flush_touches()  # touches are written in batches, off the request path
    record = await service.sessions.validate(auth)
    assert record.last_activity == clock.now


async def test_wrong_password_unknown_login_and_forbidden_login_type(
    service: SessionService,
) -> None:
    await _user(service)
    await _user(service, "dismissed", login_type=LoginType.NONE)
    await _user(service, "domain", login_type=LoginType.WINDOWS, account="CORP\\domain")
    refusals = []
    for login, password in (
        ("ivanov", "nope"),
        ("nobody", "pw-1234"),
        ("dismissed", "pw-1234"),  # login type None: never checked
        ("domain", "pw-1234"),  # Windows sign-in is not configured on this server
    ):
        with pytest.raises(InvalidCredentials) as refused:
            await _open(service, login=login, password=password)
        refusals.append(refused.value.to_dict())
    assert all(r == refusals[0] for r in refusals)  # no hint which one was wrong
    failed = await service.audit.records(action=AuditAction.LOGIN_FAILED)
    assert [r.details["reason"] for r in failed] == [
        "wrong login or password",
        "unknown login",
        "login type None: may not sign in",
        "sign-in of Windows users is not configured on this server",
    ]
    assert (await service.store.find_user_by_login("IVANOV")) is not None  # case-insensitive


async def test_a_blocked_user_is_refused_until_the_block_ends(
    service: SessionService, clock: Clock
) -> None:
    await _user(service)
    await service.users.set_blocked(SYSTEM, "ivanov", True, clock.now + timedelta(minutes=15))
    with pytest.raises(UserBlocked) as refused:
        await _open(service)
    assert refused.value.details["blocked_until"]
    clock.advance(minutes=16)
    await _open(service)
    assert [r.action for r in await service.audit.records(action=AuditAction.USER_BLOCKED)]


async def test_a_password_is_rehashed_when_the_argon2_cost_changes(
    make_service: Any,
) -> None:
    cheap = await make_service()
    await _user(cheap)
    before = (await cheap.store.find_user_by_login("ivanov")).password_hash  # type: ignore[union-attr]
    await cheap.close()
    dearer = await make_service(argon2={"time_cost": 2, "memory_cost": 8192, "parallelism": 1})
    await _open(dearer)
    after = (await dearer.store.find_user_by_login("ivanov")).password_hash  # type: ignore[union-attr]
    assert before != after
    assert after is not None and after.startswith("$argon2id$") and ",t=2," in after
    await _open(dearer)  # the new hash verifies


async def test_administrative_calls_need_an_administrator(service: SessionService) -> None:
    await _user(service)
    auth = await _open(service)
    regular = Actor.of(await service.sessions.validate(auth))
    assert regular.access_level == AccessLevel.REGULAR
    with pytest.raises(PermissionDenied):
        await service.configuration.increment(regular)
    other = await service.users.add_user(SYSTEM, "other", password="pw-1234")
    other_session = Actor.of(await service.sessions.validate(await _open(service, "other")))
    with pytest.raises(PermissionDenied):
        await service.sessions.close_session_as_admin(regular, other_session.session_id)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        await service.sessions.list_sessions(regular, other.id)
    # A regular user sees and closes their own sessions only.
    assert [r.id for r in await service.sessions.list_sessions(regular)] == [regular.session_id]
    assert await service.sessions.close_session_as_admin(regular, regular.session_id)  # type: ignore[arg-type]


async def test_every_part_checks_its_own_actors(service: SessionService, tmp_path: Path) -> None:
    """The parts are called directly (by the HTTP layer, the console, the CLI): a call that
    needs an administrator is refused in the part itself, and changes nothing."""
    await _user(service)
    regular = Actor.of(await service.sessions.validate(await _open(service)))
    licence = json.dumps({"Licence": licences.body(ConcurrentClient=3)})
    admin, web_seat = AccessLevel.ADMINISTRATOR, LicenseType.PERSONAL_WEB
    licence_file = licences.write(tmp_path / "licence.json", json.loads(licence))
    before = await service.audit.records()
    refused: list[Callable[[], Awaitable[object]]] = [
        lambda: service.users.list_users(regular),
        lambda: service.users.add_user(regular, "mallory", password="pw-1234"),
        lambda: service.users.set_blocked(regular, "ivanov", True),
        lambda: service.users.set_password(regular, "ivanov", "Other-pw-1"),
        lambda: service.users.update_user(regular, "ivanov", access_level=admin),
        lambda: service.users.set_personal_licence(regular, "ivanov", web_seat, True),
        lambda: service.users.remove_user(regular, "ivanov"),
        lambda: service.sessions.close_user_sessions(regular, regular.id),  # type: ignore[arg-type]
        lambda: service.close_user_sessions(regular, "ivanov"),
        lambda: service.configuration.increment(regular),
        lambda: service.licensing.install(licence, actor=regular),
        lambda: service.licensing.install_file(str(licence_file), regular),
        lambda: service.licensing.reload(regular),
        lambda: service.licensing.usage(regular),
        lambda: service.audit.page(regular, AuditQuery()),
        lambda: service.audit.record_key_change(regular, AuditAction.SIGNATURE_KEY_ROTATED, "k2"),
    ]
    for call in refused:
        with pytest.raises(PermissionDenied, match="only an administrator may"):
            await call()
    assert service.licensing.licence is None
    assert await service.store.get_licence() is None
    assert [u.login for u in await service.users.list_users(SYSTEM)] == ["ivanov"]
    assert len(await service.sessions.list_sessions(SYSTEM)) == 1
    assert await service.audit.records() == before  # nothing done, nothing recorded


async def test_the_configuration_version_is_monotonic_and_attributed(
    service: SessionService,
) -> None:
    first = await service.configuration.get()
    info = await service.configuration.increment(SYSTEM)
    assert info.version == first.version + 1
    assert info.modified_by_name == "System" and info.modified_by_id is None
    assert await service.configuration.version() == info.version


async def test_too_short_passwords_are_refused(service: SessionService) -> None:
    with pytest.raises(PasswordRejected, match="at least 4"):
        await _user(service, password="abc")


async def test_the_first_administrator_is_created_once(make_service: Any) -> None:
    service = await make_service()
    created = await service.users.ensure_first_administrator()
    assert created is not None
    user, password = created
    assert user.is_administrator and password and len(password) >= 16
    assert await service.users.ensure_first_administrator() is None
    with pytest.raises(PasswordExpired) as one_time:  # printed once: it must be changed
        await _open(service, "admin", password)
    assert one_time.value.details == {"one_time": True}
    await service.signin.change_password("admin", password, "Changed-pw-1")
    await _open(service, "admin", "Changed-pw-1")


async def test_changing_rights_or_blocking_ends_the_users_sessions(service: SessionService) -> None:
    await service.users.add_user(
        SYSTEM, "chief", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    await service.users.add_user(
        SYSTEM, "boss", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    auth = await _open(service, "boss")
    admin = Actor.of(await service.sessions.validate(auth))
    await service.configuration.increment(admin)
    await service.users.update_user(SYSTEM, "boss", access_level=AccessLevel.REGULAR)
    with pytest.raises(SessionNotFound):  # the old session cannot act as an administrator
        await service.sessions.validate(auth)
    auth = await _open(service, "boss")
    await service.users.set_blocked(SYSTEM, "boss", True)
    with pytest.raises(SessionNotFound):
        await service.sessions.validate(auth)
    reasons = [
        r.details["reason"]
        for r in await service.audit.records(action=AuditAction.SESSION_CLOSED_BY_ADMIN)
    ]
    assert reasons == ["access level, login type or account changed", "user blocked"]
    with pytest.raises(UserBlocked):  # no lockout here: the right password shows the block
        await _open(service, "boss")
    refused = await service.audit.records(action=AuditAction.LOGIN_FAILED)
    assert refused[-1].details == {"reason": "user_blocked", "login": "boss"}


async def test_the_last_administrator_who_can_sign_in_stays_one(service: SessionService) -> None:
    await service.users.add_user(
        SYSTEM, "solo", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    for change in (
        service.users.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR),
        service.users.update_user(SYSTEM, "solo", login_type=LoginType.NONE),
        service.users.set_blocked(SYSTEM, "solo", True),
    ):
        with pytest.raises(Conflict, match="last administrator"):
            await change
    assert (await service.users.get_user_by_login("solo")).is_administrator
    await service.users.add_user(
        SYSTEM, "second", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    await service.users.set_blocked(SYSTEM, "second", True)  # a blocked one cannot administer
    with pytest.raises(Conflict):
        await service.users.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR)
    await service.users.set_blocked(SYSTEM, "second", False)
    demoted = await service.users.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR)
    assert not demoted.is_administrator


async def test_the_last_administrator_counts_only_those_who_can_sign_in_on_this_server(
    service: SessionService,
) -> None:
    """Neither Windows nor LDAP is configured here: an administrator of either kind cannot sign
    in, nor can a platform administrator without a password."""
    await service.users.add_user(
        SYSTEM, "solo", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    # Switching the only one to a login type this server has no backend for.
    for login_type in (LoginType.LDAP, LoginType.WINDOWS):
        with pytest.raises(Conflict, match="last administrator who can sign in on this server"):
            await service.users.update_user(SYSTEM, "solo", login_type=login_type)
    # Beside an administrator who has no password to sign in with.
    await service.users.add_user(SYSTEM, "nopass", access_level=AccessLevel.ADMINISTRATOR)
    with pytest.raises(Conflict, match="last administrator"):
        await service.users.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR)
    with pytest.raises(Conflict, match="last administrator"):
        await service.users.remove_user(SYSTEM, "solo")
    # Beside a Windows administrator, on a server without Windows sign-in.
    await service.users.add_user(
        SYSTEM, "domainadmin", login_type=LoginType.WINDOWS, account="CORP\\domainadmin",
        access_level=AccessLevel.ADMINISTRATOR,
    )  # fmt: skip
    with pytest.raises(Conflict, match="last administrator"):
        await service.users.set_blocked(SYSTEM, "solo", True)
    solo = await service.users.get_user_by_login("solo")
    assert solo.is_administrator and solo.login_type == LoginType.PLATFORM and not solo.blocked
    # Once the other has a password, the change is allowed.
    await service.users.set_password(SYSTEM, "nopass", "pw-5678")
    blocked = await service.users.set_blocked(SYSTEM, "solo", True)
    assert blocked.blocked


async def test_a_block_whose_end_is_past_is_refused(service: SessionService, clock: Clock) -> None:
    await _user(service)
    auth = await _open(service)
    for until in (clock.now - timedelta(seconds=1), clock.now, datetime.fromtimestamp(0, UTC)):
        with pytest.raises(RequestError, match="not in the future") as refused:
            await service.users.set_blocked(SYSTEM, "ivanov", True, until)
        assert refused.value.details == {"rule": "block_end_past"}
    user = await service.users.get_user_by_login("ivanov")
    assert not user.blocked and user.blocked_due_date is None
    await service.sessions.validate(auth)  # nothing happened to the user's sessions
    assert not await service.audit.records(action=AuditAction.USER_BLOCKED)
    blocked = await service.users.set_blocked(
        SYSTEM, "ivanov", True, clock.now + timedelta(hours=1)
    )
    assert blocked.blocked


async def test_two_administrators_demoting_each_other_at_once_leave_one(
    service: SessionService,
) -> None:
    for login in ("ann", "bob"):
        await service.users.add_user(
            SYSTEM, login, password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
        )
    results = await asyncio.gather(
        service.users.update_user(SYSTEM, "ann", access_level=AccessLevel.REGULAR),
        service.users.update_user(SYSTEM, "bob", access_level=AccessLevel.REGULAR),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "UserRecord"]


async def test_touches_are_written_in_batches_and_a_queued_touch_counts(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(security={"session_inactivity_time": "30m"})
    await _user(service)
    tokens = [await _open(service) for _ in range(50)]
    clock.advance(minutes=20)
    for auth in tokens:
        await service.sessions.validate(auth)  # each queues a touch; none waits for it
    clock.advance(minutes=20)  # 40 minutes after opening, 20 after the queued touches
    for auth in tokens:
        await service.sessions.validate(auth)  # not expired: the queued touch counts as activity
    await service.sessions.flush_touches()
    sessions = await service.store.list_sessions()
    assert len(sessions) == 50
    assert {s.last_activity for s in sessions} == {clock.now}
