"""The audit trail: every change recorded with its actor, a hash chain that names the first
edited, removed or inserted record, and reading it over the API and the client."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond import SessionClient
from sessiond.auth import PasswordCredentials
from sessiond.errors import InvalidCredentials, PermissionDenied
from sessiond.models import AccessLevel, AuditAction, ClientInfo, LicenseType
from sessiond.service import Actor, SessionService
from tests.infra.postgres import PostgresServer

from . import licences
from .conftest import ServerProcess, free_port, server_env

SYSTEM = Actor.system()


async def _actions(service: SessionService) -> list[str]:
    return [r.action.wire for r in await service.audit.records()]


async def test_every_change_is_recorded_with_its_actor(make_service: Any) -> None:
    service = await make_service()
    await service.users.add_user(
        SYSTEM, "chief", password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
    )
    token = (
        await service.signin.open_session(PasswordCredentials("chief", "pw-1234"), ClientInfo())
    ).token
    chief = Actor.of(await service.sessions.validate(token.to_auth_xml()), "10.0.0.7")
    await service.users.add_user(chief, "olga", password="pw-1234")
    await service.users.update_user(chief, "olga", name="Olga K.", time_zone_utc_offset=180)
    await service.licensing.install(
        json.dumps({"Licence": licences.body(PersonalWeb=2)}), actor=chief
    )
    await service.users.set_personal_licence(chief, "olga", LicenseType.PERSONAL_WEB, True)
    await service.users.set_password(chief, "olga", "pw-5678")
    await service.signin.change_password("olga", "pw-5678", "pw-9012")
    await service.users.set_blocked(chief, "olga", True)
    await service.users.set_blocked(chief, "olga", False)
    await service.users.remove_user(chief, "olga")
    records = [
        r
        for r in await service.audit.records()
        if r.actor_id == chief.id or r.user_name in ("olga", "Olga K.")
    ]
    by_action = {r.action: r for r in records}
    created = by_action[AuditAction.USER_CREATED]
    assert created.actor_name == "chief" and created.client_address == "10.0.0.7"
    assert created.details["login"] == "olga" and "password" not in json.dumps(created.details)
    changes = [r.details["changes"] for r in records if r.action == AuditAction.USER_CHANGED]
    assert changes == [
        {"name": ["olga", "Olga K."], "time_zone_utc_offset": [None, 180]},
        {"personal_web": [False, True]},
    ]
    installed = by_action[AuditAction.LICENCE_INSTALLED]
    assert installed.actor_name == "chief" and installed.details["PersonalWeb"] == 2
    assert by_action[AuditAction.PASSWORD_RESET].actor_name == "chief"
    changed = by_action[AuditAction.PASSWORD_CHANGED]
    assert changed.actor_name == "Olga K." and changed.user_name == "Olga K."
    assert by_action[AuditAction.USER_UNBLOCKED].actor_name == "chief"
    removed = by_action[AuditAction.USER_REMOVED]
    assert removed.details["login"] == "olga" and removed.actor_name == "chief"
    # The records about the removed user stay, with her id.
    assert {r.user_id for r in records if r.user_name == "Olga K."} == {removed.user_id}
    with pytest.raises(InvalidCredentials):
        await service.signin.open_session(PasswordCredentials("olga", "pw-9012"), ClientInfo())
    assert (await service.audit.verify()).ok


async def test_a_licence_installed_twice_is_recorded_once(make_service: Any) -> None:
    service = await make_service()
    body = json.dumps({"Licence": licences.body(ConcurrentClient=3)})
    await service.licensing.install(body)
    await service.licensing.install(body)
    assert (await _actions(service)).count("LicenceInstalled") == 1


async def test_settings_are_recorded_when_they_change_between_starts(make_service: Any) -> None:
    first = await make_service(server_code="node-1")
    await first.close()
    for overrides in ({}, {"touch_interval": "30s"}):
        service = await make_service(server_code="node-1", **overrides)
        await service.start(install_licence_file=True)  # as a server starts
        await service.close()
    service = await make_service(server_code="node-1", touch_interval="30s")
    await service.start(install_licence_file=True)
    records = [r for r in await service.audit.records(action=AuditAction.SETTINGS_CHANGED)]
    assert len(records) == 2  # the first start, and the change of touch_interval
    assert records[1].details["changed"] == {"touch_interval": ["PT1M", "PT30S"]}
    assert records[0].actor_name == "System"


def _cli(server: ServerProcess, *args: str) -> Any:
    return server.cli("audit", *args)


@pytest.fixture
def quiet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audited")
    data_dir = root / "sessiond-data"
    proc = ServerProcess(data_dir, free_port(), server_env(data_dir), root / "server.log")
    proc.start()
    yield proc
    proc.stop()


def _tamper(server: ServerProcess, statement: str, *params: Any) -> None:
    db = sqlite3.connect(server.data_dir / "sessiond.db")
    try:
        with db:
            if params:
                db.execute(statement, params)
            else:
                db.executescript(statement)
    finally:
        db.close()


def test_audit_verify_names_each_edited_removed_or_inserted_record(
    quiet_server: ServerProcess,
) -> None:
    with SessionClient(quiet_server.url) as client:
        for _ in range(3):
            client.open_session("admin", quiet_server.admin_password)
            client.close_session()
    ok = _cli(quiet_server, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "audit trail intact" in ok.stdout
    quiet_server.stop()  # the database is edited behind sessiond's back
    cases: list[tuple[str, tuple[Any, ...], str]] = [
        ("UPDATE audit SET user_name = 'mallory' WHERE id = 4", (), "record 4 was edited"),
        ("DELETE FROM audit WHERE id = 3", (), "record 3 removed"),
        (
            "INSERT INTO audit (id, at, action, details, prev_hash, hash) "
            "SELECT 1000, at, action, details, hash, hash FROM audit WHERE id = "
            "(SELECT max(id) FROM audit)",
            (),
            "record 1000 was added after the trail's last record",
        ),
        (
            # Make room for a record in the middle, then put one there.
            "UPDATE audit SET id = id + 100000 WHERE id >= 5;"
            "UPDATE audit SET id = id - 99999 WHERE id >= 100000;"
            "INSERT INTO audit (id, at, action, user_name, details, prev_hash, hash, key_id) "
            "SELECT 5, at, action, 'mallory', details, hash, hash, key_id FROM audit "
            "WHERE id = 4;",
            (),
            "record 5 was edited or inserted",
        ),
    ]
    db = quiet_server.data_dir / "sessiond.db"
    _tamper(quiet_server, "PRAGMA wal_checkpoint(TRUNCATE)")  # all in the main file
    pristine = db.read_bytes()
    for statement, params, named in cases:
        db.write_bytes(pristine)
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        _tamper(quiet_server, statement, *params)
        broken = _cli(quiet_server, "verify")
        assert broken.returncode == 1, (statement, broken.stdout)
        assert named in broken.stderr, broken.stderr
        assert "Traceback" not in broken.stderr


def test_records_removed_from_the_end_are_named(quiet_server: ServerProcess) -> None:
    with SessionClient(quiet_server.url) as client:
        client.open_session("admin", quiet_server.admin_password)
    quiet_server.stop()
    _tamper(quiet_server, "DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)")
    broken = _cli(quiet_server, "verify")
    assert broken.returncode == 1 and "removed from the end" in broken.stderr


async def test_two_nodes_writing_at_once_keep_one_chain(
    postgres_server: PostgresServer, tmp_path: Path, make_settings: Callable[..., Any]
) -> None:
    from sessiond.keys import KeyRing
    from sessiond.store import create_store

    url = postgres_server.new_database()
    KeyRing.generate().save(tmp_path / "keys.json")
    nodes = []
    for _ in range(2):
        settings = make_settings(database_url=url, signature_keys_file=tmp_path / "keys.json")
        node = SessionService(settings, create_store(url), KeyRing.load(tmp_path / "keys.json"))
        await node.start()
        nodes.append(node)
    a, b = nodes
    try:
        await a.users.add_user(SYSTEM, "pat", password="pw-1234")
        attempts = []
        for i in range(60):
            node = nodes[i % 2]
            password = "pw-1234" if i % 3 else "wrong"
            attempts.append(
                node.signin.open_session(PasswordCredentials("pat", password), ClientInfo())
            )
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert Counter(type(r).__name__ for r in results) == {
            "Opened": 40,
            "InvalidCredentials": 20,
        }
        report = await b.audit.verify()
        assert report.ok, report.problem
        assert report.checked == report.last_id >= 61
    finally:
        for node in nodes:
            await node.close()


def test_administrators_read_the_trail_over_the_api_and_the_client(
    server: ServerProcess,
) -> None:
    with SessionClient(server.url) as admin:
        admin.open_session("admin", server.admin_password)
        for i in range(3):
            httpx.post(
                f"{server.url}/api/v1/sessions/open",
                json={"Login": f"nobody-{i}", "Password": "x"},
            )
        page = admin.audit_records(action="LoginFailed", newest_first=True, limit=2)
        assert [r["Action"] for r in page["Records"]] == ["LoginFailed", "LoginFailed"]
        assert page["Records"][0]["ID"] > page["Records"][1]["ID"]
        assert page["Next"] == page["Records"][1]["ID"]
        rest = admin.audit_records(action="LoginFailed", newest_first=True, before=page["Next"])
        assert all(r["ID"] < page["Next"] for r in rest["Records"])
        named = admin.audit_records(user="nobody-1")
        assert [r["UserName"] for r in named["Records"]] == ["nobody-1"]
        logins = admin.audit_records(action=["Login", "Logout"])
        assert {r["Action"] for r in logins["Records"]} <= {"Login", "Logout"}
        server.cli("users", "add", "reader", "--password", "pw-1234")
        with SessionClient(server.url) as regular:
            regular.open_session("reader", "pw-1234")
            with pytest.raises(PermissionDenied):
                regular.audit_records()


def test_the_session_list_pages_with_filters(server: ServerProcess) -> None:
    server.cli("users", "add", "pager", "--password", "pw-1234")
    with SessionClient(server.url) as admin, httpx.Client(timeout=30) as http:
        admin.open_session("admin", server.admin_password)
        mine = []
        for i in range(12):
            answer = http.post(
                f"{server.url}/api/v1/sessions/open",
                json={
                    "Login": "pager",
                    "Password": "pw-1234",
                    "ServiceType": "WebClient" if i % 2 else "DesktopClient",
                },
            )
            mine.append(answer.json())
        assert admin.session_token is not None
        headers = {"Tessa-Session": admin.session_token.to_auth_xml()}
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            params: dict[str, Any] = {"user": "PAG", "limit": 5, "order": "created"}
            if after:
                params["after"] = after
            answer = http.get(f"{server.url}/api/v1/sessions", params=params, headers=headers)
            assert answer.status_code == 200, answer.text
            seen += [s["SessionID"] for s in answer.json()]
            pages += 1
            after = answer.headers.get("Tessa-Next-Page")
            if not after:
                break
        assert pages == 3 and len(seen) == len(set(seen)) == 12
        web = admin.list_sessions(user="pager", service_type="WebClient")
        assert len(web) == 6 and {s["ServiceType"] for s in web} == {"WebClient"}
        newest = admin.list_sessions(user="pager", descending=True)
        assert [s["SessionID"] for s in newest] == seen[::-1]
        bad = http.get(f"{server.url}/api/v1/sessions", params={"after": "junk"}, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_key_changes_and_user_removal_from_the_command_line_are_recorded(
    quiet_server: ServerProcess,
) -> None:
    rotated = quiet_server.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.split()[-1]
    added = quiet_server.cli("users", "add", "leaver", "--password", "pw-1234")
    assert added.returncode == 0, added.stderr
    removed = quiet_server.cli("users", "remove", "leaver", "--yes")
    assert removed.returncode == 0, removed.stderr
    records = [json.loads(line) for line in _cli(quiet_server, "export").stdout.splitlines()]
    [key] = [r for r in records if r["action"] == "SignatureKeyRotated"]
    assert key["details"] == {"key_id": new_key} and key["actor_name"] == "System"
    [gone] = [r for r in records if r["action"] == "UserRemoved"]
    assert gone["details"]["login"] == "leaver" and gone["actor_name"] == "System"
    assert _cli(quiet_server, "verify").returncode == 0
