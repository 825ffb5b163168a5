"""Security options: lockout (total and in a series), password rules, expiry; the sweeper."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sessiond.auth import PasswordCredentials
from sessiond.errors import (
    InvalidCredentials,
    PasswordExpired,
    PasswordRejected,
    SessionExpired,
    SessionNotFound,
    UserBlocked,
)
from sessiond.models import AuditAction, ClientInfo, LoginType
from sessiond.service import Actor, SessionService
from tests.infra.ldap import LdapServer

from .conftest import Clock

SYSTEM = Actor.system()


async def _sign_in(service: SessionService, login: str, password: str) -> Any:
    opened = await service.signin.open_session(PasswordCredentials(login, password), ClientInfo())
    return opened.token


async def _fail(service: SessionService, login: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(InvalidCredentials):
            await _sign_in(service, login, "wrong")


async def _reasons(service: SessionService, login: str) -> list[str]:
    failed = await service.audit.records(action=AuditAction.LOGIN_FAILED)
    return [r.details["reason"] for r in failed if r.details.get("login") == login]


NOT_CHECKED = "user blocked; password not checked"


async def test_a_user_is_blocked_after_n_failures_until_an_administrator_unblocks(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(security={"max_failed_login_attempts_before_blocked": 3})
    await service.users.add_user(SYSTEM, "ivan", password="right-pw")
    await _fail(service, "ivan", 2)
    await _sign_in(service, "ivan", "right-pw")  # a success starts the count again
    await _fail(service, "ivan", 3)
    # Blocked: the password is no longer checked, and the answer is the wrong-password one.
    with pytest.raises(InvalidCredentials):
        await _sign_in(service, "ivan", "right-pw")
    clock.advance(days=30)
    with pytest.raises(InvalidCredentials):
        await _sign_in(service, "ivan", "right-pw")
    assert await _reasons(service, "ivan") == ["wrong login or password"] * 5 + [NOT_CHECKED] * 2
    [record] = await service.audit.records(action=AuditAction.USER_BLOCKED)
    assert record.user_name == "ivan" and "3 failed sign-ins" in record.details["reason"]
    assert record.details["until"] is None and record.actor_name == "System"
    await service.users.set_blocked(SYSTEM, "ivan", False)
    await _sign_in(service, "ivan", "right-pw")


async def test_failures_in_a_series_block_for_the_block_duration(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(
        security={
            "max_failed_login_attempts_in_series": 3,
            "failed_login_attempts_series_time": "5m",
            "blocked_series_due_date_time": "15m",
        }
    )
    await service.users.add_user(SYSTEM, "olga", password="right-pw")
    for _ in range(4):  # slow failures never make a series
        await _fail(service, "olga", 1)
        clock.advance(minutes=3)
    await _sign_in(service, "olga", "right-pw")
    await _fail(service, "olga", 2)
    clock.advance(minutes=4)
    await _fail(service, "olga", 1)  # the third inside five minutes
    user = await service.users.get_user_by_login("olga")
    assert user.blocked and user.blocked_due_date == clock.now + timedelta(minutes=15)
    [record] = await service.audit.records(action=AuditAction.USER_BLOCKED)
    assert record.details["until"] == user.blocked_due_date.isoformat()
    with pytest.raises(InvalidCredentials):
        await _sign_in(service, "olga", "right-pw")
    clock.advance(minutes=14)
    with pytest.raises(InvalidCredentials):
        await _sign_in(service, "olga", "right-pw")
    clock.advance(minutes=2)
    await _sign_in(service, "olga", "right-pw")
    user = await service.users.get_user_by_login("olga")
    assert not user.blocked and user.failed_series_count == 0


async def test_a_blocked_user_sees_the_block_only_after_the_right_password(
    service: SessionService, clock: Clock
) -> None:
    """Without a lockout the password is checked as for anyone; only the right one is told
    about the block."""
    await service.users.add_user(SYSTEM, "vera", password="right-pw")
    until = clock.now + timedelta(hours=1)
    await service.users.set_blocked(SYSTEM, "vera", True, until)
    with pytest.raises(InvalidCredentials):
        await _sign_in(service, "vera", "wrong")
    with pytest.raises(UserBlocked) as blocked:
        await _sign_in(service, "vera", "right-pw")
    assert blocked.value.details["blocked_until"] == until.isoformat()
    assert until.isoformat() in blocked.value.message


async def test_unblocking_clears_every_failure_count(make_service: Any) -> None:
    service = await make_service(
        security={
            "max_failed_login_attempts_before_blocked": 10,
            "max_failed_login_attempts_in_series": 3,
        }
    )
    await service.users.add_user(SYSTEM, "petr", password="right-pw")
    await _fail(service, "petr", 3)
    await service.users.set_blocked(SYSTEM, "petr", False)
    user = await service.users.get_user_by_login("petr")
    assert (user.failed_attempts, user.failed_series_count, user.blocked) == (0, 0, False)
    await _fail(service, "petr", 2)  # a fresh series: two more do not block
    await _sign_in(service, "petr", "right-pw")


async def test_lockout_spares_directory_users_unless_asked(
    make_service: Any, ldap_server: LdapServer
) -> None:
    ldap = {
        "url": ldap_server.uri,
        "start_tls": True,
        "ca_file": ldap_server.ca_file,
        "search_base": "ou=people,dc=sessiond,dc=test",
    }
    for block_them, prefix in ((False, "spared"), (True, "blocked")):
        service = await make_service(
            ldap=ldap,
            security={
                "max_failed_login_attempts_before_blocked": 2,
                "block_windows_and_ldap_users": block_them,
            },
        )
        uid = f"{prefix}-ldap"
        ldap_server.add_user(uid, "Ldap-pw-1")
        await service.users.add_user(SYSTEM, uid, login_type=LoginType.LDAP)
        await _fail(service, uid, 2)
        if block_them:
            with pytest.raises(InvalidCredentials):
                await _sign_in(service, uid, "Ldap-pw-1")
        else:
            token = await _sign_in(service, uid, "Ldap-pw-1")
            assert token.login_type == LoginType.LDAP
        reasons = await _reasons(service, uid)
        assert len(reasons) == (3 if block_them else 2)
        assert (reasons[-1] == NOT_CHECKED) is block_them
        await service.close()


async def test_password_rules_refuse_short_weak_and_reused_passwords(make_service: Any) -> None:
    service = await make_service(
        security={
            "min_password_length": 6,
            "enforce_strong_passwords": True,
            "unique_password_count": 2,
        }
    )
    for weak, rule in (
        ("Ab1!", "min_length"),
        ("abcdefgh1!", "strength"),
        ("Abcdefgh12", "strength"),
    ):
        with pytest.raises(PasswordRejected) as refused:
            await service.users.add_user(SYSTEM, "pavel", password=weak)
        assert refused.value.code == "password_rejected" and refused.value.status == 422
        assert refused.value.details["rule"] == rule
    await service.users.add_user(SYSTEM, "pavel", password="First-pw-1")
    await service.signin.change_password("pavel", "First-pw-1", "Second-pw-2")
    for reused in ("First-pw-1", "Second-pw-2"):
        with pytest.raises(PasswordRejected, match="used recently") as refused:
            await service.signin.change_password("pavel", "Second-pw-2", reused)
        assert refused.value.details["rule"] == "reuse"
    await service.signin.change_password("pavel", "Second-pw-2", "Third-pw-3")
    await service.signin.change_password("pavel", "Third-pw-3", "First-pw-1")  # three back: allowed
    with pytest.raises(InvalidCredentials):
        await service.signin.change_password("pavel", "not-mine", "Fourth-pw-4")


async def test_an_expired_password_is_refused_until_it_is_changed(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(
        security={
            "password_expiration_time": "30d",
            "password_expiration_notification_time": "5d",
        }
    )
    user = await service.users.add_user(SYSTEM, "rita", password="Rita-pw-1")
    clock.advance(days=24)
    await _sign_in(service, "rita", "Rita-pw-1")
    assert await service.users.password_expires(user.id) is None
    clock.advance(days=2)  # inside the warning period
    await _sign_in(service, "rita", "Rita-pw-1")
    assert await service.users.password_expires(user.id) == user.created + timedelta(days=30)
    clock.advance(days=5)
    with pytest.raises(PasswordExpired) as expired:
        await _sign_in(service, "rita", "Rita-pw-1")
    assert expired.value.code == "password_expired" and expired.value.status == 401
    assert "change it" in expired.value.message
    with pytest.raises(InvalidCredentials):  # a wrong password is not told it has expired
        await _sign_in(service, "rita", "wrong")
    await service.signin.change_password("rita", "Rita-pw-1", "Rita-pw-2")
    await _sign_in(service, "rita", "Rita-pw-2")


async def test_the_sweeper_removes_expired_and_idle_sessions_and_audits_them(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(
        session_expiration_time_span="8h", security={"session_inactivity_time": "1h"}
    )
    await service.users.add_user(SYSTEM, "sam", password="Sam-pw-1")
    busy = (await _sign_in(service, "sam", "Sam-pw-1")).to_auth_xml()
    idle = (await _sign_in(service, "sam", "Sam-pw-1")).to_auth_xml()
    assert await service.sessions.sweep() == 0
    for _ in range(3):
        clock.advance(minutes=40)
        await service.sessions.validate(busy)
    assert await service.sessions.sweep() == 1  # the idle one
    with pytest.raises(SessionNotFound):
        await service.sessions.validate(idle)
    for _ in range(12):
        clock.advance(minutes=40)
        try:
            await service.sessions.validate(busy)
        except SessionExpired:
            break
    else:
        pytest.fail("the session outlived its absolute lifetime")
    records = await service.audit.records(action=AuditAction.SESSION_EXPIRED)
    reasons = [(r.details["reason"], r.details.get("by")) for r in records]
    assert reasons == [("inactivity", "sweeper"), ("absolute lifetime", None)]
    assert await service.sessions.sweep() == 0


async def test_an_administrator_closes_all_sessions_of_a_user(make_service: Any) -> None:
    service = await make_service()
    await service.users.add_user(SYSTEM, "tom", password="Tom-pw-1")
    tokens = [(await _sign_in(service, "tom", "Tom-pw-1")).to_auth_xml() for _ in range(3)]
    assert await service.close_user_sessions(SYSTEM, "tom") == 3
    for token in tokens:
        with pytest.raises(SessionNotFound):
            await service.sessions.validate(token)
    closed = await service.audit.records(action=AuditAction.SESSION_CLOSED_BY_ADMIN)
    assert len(closed) == 3 and all(r.actor_name == "System" for r in closed)


def test_a_running_server_sweeps_expired_sessions_by_itself(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import json
    import time

    from sessiond import SessionClient

    from .conftest import ServerProcess, free_port, server_env

    root = tmp_path_factory.mktemp("sweeping")
    data_dir = root / "sessiond-data"
    env = server_env(
        data_dir, SESSIOND_SWEEP_INTERVAL="0.2", SESSIOND_SESSION_EXPIRATION_TIME_SPAN="1"
    )
    server = ServerProcess(data_dir, free_port(), env, root / "server.log")
    server.start()
    try:
        with SessionClient(server.url) as client:
            token = client.open_session("admin", server.admin_password)
        deadline = time.monotonic() + 20  # the sweep is due after ~1.2 s; allow a slow machine
        swept: list[dict[str, Any]] = []
        while not swept and time.monotonic() < deadline:
            time.sleep(0.3)
            out = server.cli("audit", "export", "--action", "SessionExpired").stdout
            swept = [json.loads(line) for line in out.splitlines()]
        assert swept, "the sweeper never removed the expired session"
        assert swept[0]["session_id"] == str(token.session_id)
        assert swept[0]["details"] == {"reason": "absolute lifetime", "by": "sweeper"}
    finally:
        server.stop()


async def test_closing_a_users_sessions_counts_only_those_still_open(
    make_service: Any, clock: Clock
) -> None:
    service = await make_service(session_expiration_time_span="1h")
    await service.users.add_user(SYSTEM, "una", password="Una-pw-1")
    await _sign_in(service, "una", "Una-pw-1")
    clock.advance(minutes=61)  # the first has ended, but the sweeper has not come by
    for _ in range(2):
        await _sign_in(service, "una", "Una-pw-1")
    assert await service.close_user_sessions(SYSTEM, "una") == 2
    closed = await service.audit.records(action=AuditAction.SESSION_CLOSED_BY_ADMIN)
    expired = await service.audit.records(action=AuditAction.SESSION_EXPIRED)
    assert len(closed) == 2 and len(expired) == 1
    assert expired[0].details == {"reason": "absolute lifetime"}
