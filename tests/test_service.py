"""The service core on a real SQLite store, with a clock the tests move by hand."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from sessiond.auth import PasswordCredentials
from sessiond.errors import (
    Conflict,
    InvalidCredentials,
    PasswordExpired,
    PasswordRejected,
    PermissionDenied,
    SessionExpired,
    SessionNotFound,
    UserBlocked,
)
from sessiond.models import AccessLevel, AuditAction, ClientInfo, LoginType
from sessiond.service import Actor, SessionService

from .conftest import Clock

SYSTEM = Actor.system()
CLIENT = ClientInfo()


async def _user(service: SessionService, login: str = "ivanov", **kw: Any) -> None:
    await service.add_user(SYSTEM, login, password=kw.pop("password", "pw-1234"), **kw)


async def _open(service: SessionService, login: str = "ivanov", password: str = "pw-1234") -> str:
    token = await service.open_session(PasswordCredentials(login, password), CLIENT, "10.1.1.1")
    return token.to_auth_xml()


async def test_a_session_expires_at_its_absolute_lifetime(make_service: Any, clock: Clock) -> None:
    service = await make_service(session_expiration_time_span="2h")
    await _user(service)
    auth = await _open(service)
    clock.advance(hours=1, minutes=59)
    await service.validate(auth)
    clock.advance(minutes=2)
    with pytest.raises(SessionExpired):
        await service.validate(auth)
    expired = await service.audit_records(action=AuditAction.SESSION_EXPIRED)
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
        await service.validate(auth)
    clock.advance(minutes=31)
    with pytest.raises(SessionExpired, match="inactivity"):
        await service.validate(auth)
    with pytest.raises(SessionNotFound):
        await service.validate(auth)


async def test_last_activity_is_written_at_most_once_per_touch_interval(
    service: SessionService, clock: Clock
) -> None:
    await _user(service)
    auth = await _open(service)
    opened = clock.now
    for _ in range(10):
        clock.advance(seconds=5)
        record = await service.validate(auth)
    assert record.last_activity == opened  # 50 s of calls: no write yet
    clock.advance(seconds=15)
    await service.validate(auth)
    await service.flush_touches()  # touches are written in batches, off the request path
    record = await service.validate(auth)
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
    failed = await service.audit_records(action=AuditAction.LOGIN_FAILED)
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
    await service.set_blocked(SYSTEM, "ivanov", True, clock.now + timedelta(minutes=15))
    with pytest.raises(UserBlocked) as refused:
        await _open(service)
    assert refused.value.details["blocked_until"]
    clock.advance(minutes=16)
    await _open(service)
    assert [r.action for r in await service.audit_records(action=AuditAction.USER_BLOCKED)]


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
    regular = Actor.of(await service.validate(auth))
    assert regular.access_level == AccessLevel.REGULAR
    with pytest.raises(PermissionDenied):
        await service.increment_configuration_version(regular)
    other = await service.add_user(SYSTEM, "other", password="pw-1234")
    other_session = Actor.of(await service.validate(await _open(service, "other")))
    with pytest.raises(PermissionDenied):
        await service.close_session_as_admin(regular, other_session.session_id)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied):
        await service.list_sessions(regular, other.id)
    # A regular user sees and closes their own sessions only.
    assert [r.id for r in await service.list_sessions(regular)] == [regular.session_id]
    assert await service.close_session_as_admin(regular, regular.session_id)  # type: ignore[arg-type]


async def test_the_configuration_version_is_monotonic_and_attributed(
    service: SessionService,
) -> None:
    first = await service.get_configuration()
    info = await service.increment_configuration_version(SYSTEM)
    assert info.version == first.version + 1
    assert info.modified_by_name == "System" and info.modified_by_id is None
    assert await service.configuration_version() == info.version


async def test_too_short_passwords_are_refused(service: SessionService) -> None:
    with pytest.raises(PasswordRejected, match="at least 4"):
        await _user(service, password="abc")


async def test_the_first_administrator_is_created_once(make_service: Any) -> None:
    service = await make_service()
    created = await service.ensure_first_administrator()
    assert created is not None
    user, password = created
    assert user.is_administrator and password and len(password) >= 16
    assert await service.ensure_first_administrator() is None
    with pytest.raises(PasswordExpired) as one_time:  # printed once: it must be changed
        await _open(service, "admin", password)
    assert one_time.value.details == {"one_time": True}
    await service.change_password("admin", password, "Changed-pw-1")
    await _open(service, "admin", "Changed-pw-1")


async def test_changing_rights_or_blocking_ends_the_users_sessions(service: SessionService) -> None:
    await service.add_user(
        SYSTEM, "chief", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    await service.add_user(
        SYSTEM, "boss", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    auth = await _open(service, "boss")
    admin = Actor.of(await service.validate(auth))
    await service.increment_configuration_version(admin)
    await service.update_user(SYSTEM, "boss", access_level=AccessLevel.REGULAR)
    with pytest.raises(SessionNotFound):  # the old session cannot act as an administrator
        await service.validate(auth)
    auth = await _open(service, "boss")
    await service.set_blocked(SYSTEM, "boss", True)
    with pytest.raises(SessionNotFound):
        await service.validate(auth)
    reasons = [
        r.details["reason"]
        for r in await service.audit_records(action=AuditAction.SESSION_CLOSED_BY_ADMIN)
    ]
    assert reasons == ["access level, login type or account changed", "user blocked"]
    with pytest.raises(UserBlocked):  # no lockout here: the right password shows the block
        await _open(service, "boss")
    refused = await service.audit_records(action=AuditAction.LOGIN_FAILED)
    assert refused[-1].details == {"reason": "user_blocked", "login": "boss"}


async def test_the_last_administrator_who_can_sign_in_stays_one(service: SessionService) -> None:
    await service.add_user(
        SYSTEM, "solo", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    for change in (
        service.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR),
        service.update_user(SYSTEM, "solo", login_type=LoginType.NONE),
        service.set_blocked(SYSTEM, "solo", True),
    ):
        with pytest.raises(Conflict, match="last administrator"):
            await change
    assert (await service.get_user_by_login("solo")).is_administrator
    await service.add_user(
        SYSTEM, "second", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    await service.set_blocked(SYSTEM, "second", True)  # a blocked one cannot administer
    with pytest.raises(Conflict):
        await service.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR)
    await service.set_blocked(SYSTEM, "second", False)
    demoted = await service.update_user(SYSTEM, "solo", access_level=AccessLevel.REGULAR)
    assert not demoted.is_administrator


async def test_two_administrators_demoting_each_other_at_once_leave_one(
    service: SessionService,
) -> None:
    for login in ("ann", "bob"):
        await service.add_user(
            SYSTEM, login, password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
        )
    results = await asyncio.gather(
        service.update_user(SYSTEM, "ann", access_level=AccessLevel.REGULAR),
        service.update_user(SYSTEM, "bob", access_level=AccessLevel.REGULAR),
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
        await service.validate(auth)  # each queues a touch; none waits for it
    clock.advance(minutes=20)  # 40 minutes after opening, 20 after the queued touches
    for auth in tokens:
        await service.validate(auth)  # not expired: the queued touch counts as activity
    await service.flush_touches()
    sessions = await service.store.list_sessions()
    assert len(sessions) == 50
    assert {s.last_activity for s in sessions} == {clock.now}
