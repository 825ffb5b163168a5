"""Accounts that the domain or the directory knows and no user is mapped to.

Without provisioning, the domain is never asked about them: a right password answers as a wrong
one does, and nothing counts against the domain's own lockout. With provisioning, their
passwords are checked within a limit on refused attempts per account and per address; the
account's limit is kept under one identity for every spelling of it (``name`` + domain,
``DOMAIN\\name``, ``name@REALM``) and every address, and holds under parallel tries (SQLite,
and two nodes on one PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sessiond.auth import PasswordCredentials
from sessiond.errors import InvalidCredentials
from sessiond.keys import KeyRing
from sessiond.models import AuditAction, ClientInfo
from sessiond.service import SessionService
from sessiond.service.throttle import Limit
from sessiond.settings import load_settings
from sessiond.store import Throttle, create_store
from tests.infra.ldap import LdapServer
from tests.infra.postgres import PostgresServer

from .conftest import FAST_ARGON2

DOMAIN = "SESSIOND"
REALM = "SESSIOND.TEST"
LIMITS = {"unmapped_account_failures": 5, "unmapped_address_failures": 20}


def _windows(ldap_server: LdapServer, *, provision: bool = True) -> dict[str, Any]:
    """Windows passwords checked by a directory bind (slapd stands in for the domain here)."""
    return {
        "realm": REALM,
        "password_check": "ldap",
        "directory": {"url": ldap_server.uri, "start_tls": True, "ca_file": ldap_server.ca_file},
        "bind_format": "uid={login},ou=people,dc=sessiond,dc=test",
        "verify_kdc": False,
        "negotiate": False,
        "auto_provision": provision,
    }


def _spelling(account: str, i: int) -> tuple[str, str | None]:
    """The same account, spelt one of the ways a person may type it."""
    return [
        (account, DOMAIN),
        (f"{DOMAIN}\\{account}", None),
        (f"{account}@{REALM}", None),
        (f"{account.upper()}@{REALM.lower()}", None),
    ][i % 4]


async def _try(
    service: SessionService,
    login: str,
    password: str,
    address: str,
    domain: str | None = DOMAIN,
) -> str:
    try:
        await service.signin.open_session(
            PasswordCredentials(login, password, domain), ClientInfo(), address
        )
    except InvalidCredentials as refused:
        assert refused.to_dict() == {
            "error": {"code": "invalid_credentials", "message": "wrong login or password"}
        }
        return "refused"
    return "opened"


KINDS = {
    "unknown login; Windows account": "not mapped: not checked",
    "unknown login; Windows:": "checked: wrong password",
    "limit of 5 refused sign-ins": "limit reached",
    "too many refused sign-ins from this account": "refused unchecked",
}


async def _reasons(service: SessionService, login: str) -> Counter[str]:
    records = await service.audit.records(action=AuditAction.LOGIN_FAILED)
    return Counter(
        next(kind for prefix, kind in KINDS.items() if r.details["reason"].startswith(prefix))
        for r in records
        if login.casefold() in (r.user_name or "").casefold()
    )


async def _race(nodes: list[SessionService], ldap_server: LdapServer) -> None:
    account = f"unmapped{uuid.uuid4().hex[:6]}"
    ldap_server.add_user(account, "Right-pw-1")
    # Parallel wrong passwords, in every spelling, from as many addresses.
    tries = []
    for i in range(32):
        login, domain = _spelling(account, i)
        node = nodes[i % len(nodes)]
        tries.append(_try(node, login, f"Wrong-{i}", f"10.9.1.{i}", domain))
    assert set(await asyncio.gather(*tries)) == {"refused"}
    # Once the account's limit is reached, even the right password is refused unchecked.
    assert await _try(nodes[0], account, "Right-pw-1", "10.9.0.1") == "refused"
    reasons = await _reasons(nodes[0], account)
    assert reasons == {"checked: wrong password": 5, "limit reached": 1, "refused unchecked": 28}
    records = await nodes[0].audit.records(action=AuditAction.LOGIN_FAILED)
    keys = {
        r.details["reason"].split(" reached for ")[1].split(": refused")[0]
        for r in records
        if r.details["reason"].startswith("limit of 5")
        and account.casefold() in (r.user_name or "").casefold()
    }
    assert keys == {f"windows:{account}@{REALM}".casefold()}

    address = "10.9.2.1"
    logins = [f"addr{uuid.uuid4().hex[:6]}{i}" for i in range(25)]
    results = await asyncio.gather(
        *(_try(nodes[i % len(nodes)], login, "x", address) for i, login in enumerate(logins))
    )
    assert set(results) == {"refused"}
    records = await nodes[0].audit.records(action=AuditAction.LOGIN_FAILED)
    by_address = Counter(
        r.details["reason"].split(";")[0] for r in records if r.client_address == address
    )
    assert by_address["unknown login"] == 20
    assert by_address["too many refused sign-ins from this address"] == 5


async def test_without_provisioning_the_domain_is_never_asked(
    make_service: Any, ldap_server: LdapServer
) -> None:
    service = await make_service(windows=_windows(ldap_server, provision=False), security=LIMITS)
    account = f"unmapped{uuid.uuid4().hex[:6]}"
    ldap_server.add_user(account, "Right-pw-1")
    answers = await asyncio.gather(
        _try(service, account, "Right-pw-1", "10.9.3.1"),
        *(_try(service, account, f"Wrong-{i}", f"10.9.3.{i + 2}") for i in range(30)),
    )
    assert set(answers) == {"refused"}
    assert await _reasons(service, account) == {"not mapped: not checked": 31}


async def test_unmapped_accounts_are_limited_under_parallel_tries(
    make_service: Any, ldap_server: LdapServer
) -> None:
    service = await make_service(windows=_windows(ldap_server), security=LIMITS)
    await _race([service], ldap_server)


async def test_the_limit_holds_on_two_nodes(
    postgres_server: PostgresServer, ldap_server: LdapServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database()
    KeyRing.generate().save(tmp_path / "keys.json")
    make: Callable[[], SessionService] = lambda: SessionService(  # noqa: E731
        load_settings(
            None,
            database_url=url,
            data_dir=tmp_path,
            signature_keys_file=tmp_path / "keys.json",
            argon2=FAST_ARGON2,
            windows=_windows(ldap_server),
            security=LIMITS,
        ),
        create_store(url),
        KeyRing.load(tmp_path / "keys.json"),
    )
    nodes = [make(), make()]
    try:
        for node in nodes:
            await node.start()
        await _race(nodes, ldap_server)
    finally:
        for node in nodes:
            await node.close()


def test_the_count_starts_afresh_only_after_a_whole_window_without_a_refusal() -> None:
    """Refusals straddling a window's end are counted together, as Active Directory counts
    bad passwords until "Reset account lockout counter after" has passed without one: so no
    more than the limit reach the domain close together (a count per fixed window let
    2 x (limit - 1) through within seconds)."""
    limit = Limit(3, timedelta(minutes=15))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    row = Throttle("Windows:corp\\ann", 0, start)
    checked = []
    for minutes in (0, 14.9, 15.1, 15.2, 15.3, 15.4):
        now = start + timedelta(minutes=minutes)
        if not limit.free(row, 0, now):
            continue
        checked.append(minutes)
        changes, _ = limit.refused(row, now)
        row = replace(row, **changes)
    assert checked == [0, 14.9, 15.1]
    # Blocked for a window after the limit; then counted afresh.
    later = start + timedelta(minutes=15.1) + timedelta(minutes=15)
    assert limit.free(row, 0, later)
    assert limit.refused(row, later) == ({"failures": 1, "window_start": later}, False)
    # A window without a refusal between two refusals: the second starts a new count.
    quiet = Throttle(row.key, 2, start, None)
    assert limit.counted(quiet, start + timedelta(minutes=15)) == 0
    assert limit.counted(quiet, start + timedelta(minutes=14)) == 2
