"""The five client calls against a real ``sessiond serve`` process on loopback."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from uuid import uuid4

import httpx
import pytest

from sessiond import (
    AsyncSessionClient,
    PermissionDenied,
    SessionClient,
    SessionNotFound,
    SessionToken,
)
from sessiond.errors import InvalidCredentials, NotConfigured, SessionRequired
from sessiond.keys import KeyRing
from sessiond.token import FIELDS

from .conftest import ServerProcess
from .test_token import ALTERNATIVES


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> SessionClient:
    assert server.admin_password, "serve printed no one-time administrator password"
    client = SessionClient(server.url)
    client.open_session("admin", server.admin_password)
    return client


@pytest.fixture(scope="module")
def user_password(server: ServerProcess) -> str:
    result = server.cli("users", "add", "ivanov", "--name", "Ivanov I.", "--password", "s3cret-pw")
    assert result.returncode == 0, result.stderr
    return "s3cret-pw"


def test_the_administrator_opens_a_session_whose_token_round_trips_and_verifies(
    server: ServerProcess, admin: SessionClient
) -> None:
    token = admin.session_token
    assert token is not None and token.is_administrator
    parsed = SessionToken.from_xml(token.to_xml())
    assert parsed == token
    parsed.verify(KeyRing.load(server.data_dir / "signature-keys.json").keys)
    assert admin.current_session()["SessionID"] == str(token.session_id)


def test_close_session_is_true_then_false_for_the_same_token(server: ServerProcess) -> None:
    with SessionClient(server.url) as client:
        client.open_session("admin", server.admin_password)
        assert client.close_session() is True
        assert client.close_session() is False
        with pytest.raises(SessionNotFound) as refused:
            client.current_session()
        assert refused.value.code == "session_not_found"


def test_an_administrator_closes_another_users_session(
    server: ServerProcess, admin: SessionClient, user_password: str
) -> None:
    with SessionClient(server.url) as user:
        token = user.open_session("ivanov", user_password)
        assert user.current_session()["UserName"] == "Ivanov I."
        assert admin.close_session_as_admin(token.session_id) is True
        assert admin.close_session_as_admin(token.session_id) is False
        with pytest.raises(SessionNotFound) as refused:
            user.current_session()
        assert refused.value.code == "session_not_found"
        assert "sign in again" in refused.value.message


def test_a_regular_user_may_not_administer(
    server: ServerProcess, admin: SessionClient, user_password: str
) -> None:
    with SessionClient(server.url) as user:
        user.open_session("ivanov", user_password)
        assert admin.session_token is not None
        with pytest.raises(PermissionDenied) as refused:
            user.close_session_as_admin(admin.session_token.session_id)
        assert refused.value.status == 403 and refused.value.code == "admin_required"
        assert "administrator" in refused.value.message
        with pytest.raises(PermissionDenied):
            user.increment_configuration_version()
        # the administrator's session is untouched
        assert admin.current_session()["UserLogin"] == "admin"


def test_a_regular_user_sees_and_closes_only_their_own_sessions(
    server: ServerProcess, admin: SessionClient, user_password: str
) -> None:
    with SessionClient(server.url) as first, SessionClient(server.url) as second:
        mine = [c.open_session("ivanov", user_password) for c in (first, second)]
        listed = first.list_sessions()
        assert {s["SessionID"] for s in listed} >= {str(t.session_id) for t in mine}
        assert {s["UserName"] for s in listed} == {"Ivanov I."}  # nobody else's
        assert admin.session_token is not None
        with pytest.raises(PermissionDenied):
            first.list_sessions(admin.session_token.user_id)
        assert first.close_session_as_admin(mine[1].session_id) is True  # log out elsewhere
        with pytest.raises(SessionNotFound):
            second.current_session()
        assert str(mine[1].session_id) not in {s["SessionID"] for s in first.list_sessions()}


def test_every_sign_in_gets_a_new_random_session_id(server: ServerProcess) -> None:
    with SessionClient(server.url) as client:
        ids = [client.open_session("admin", server.admin_password).session_id for _ in range(20)]
        assert len(set(ids)) == 20
        assert all(i.version == 4 for i in ids)  # 122 random bits each
        client.close_session()


def test_a_token_in_the_url_is_not_accepted(server: ServerProcess, admin: SessionClient) -> None:
    assert admin.session_token is not None
    auth = admin.session_token.to_auth_xml()
    for name in ("Tessa-Session", "tessa-session", "token", "session"):
        answer = httpx.get(f"{server.url}/api/v1/sessions/current", params={name: auth})
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "session_required"


def test_after_an_increment_every_next_response_carries_the_new_version(
    server: ServerProcess, admin: SessionClient, user_password: str
) -> None:
    with SessionClient(server.url) as user:
        user.open_session("ivanov", user_password)
        before = user.configuration_version
        assert before is not None
        seen: list[tuple[int | None, int]] = []
        user.on_configuration_version_changed(lambda old, new: seen.append((old, new)))
        info = admin.increment_configuration_version()
        assert info.version == before + 1
        assert info.modified_by_name == "Administrator"
        assert admin.configuration_version == before + 1
        user.current_session()
        assert user.configuration_version == before + 1
        assert seen == [(before, before + 1)]
        raw = httpx.get(f"{server.url}/api/v1/health")
        assert raw.headers["Tessa-Configuration-Version"] == str(before + 1)


async def test_the_async_client_mirrors_the_sync_one(
    server: ServerProcess, user_password: str
) -> None:
    async with AsyncSessionClient(server.url) as client:
        with pytest.raises(SessionRequired):
            await client.close_session()
        with pytest.raises(InvalidCredentials) as wrong:
            await client.open_session("ivanov", "wrong password")
        assert wrong.value.code == "invalid_credentials"
        token = await client.open_session("ivanov", user_password, culture="ru-RU", utc_offset=180)
        assert token.culture == "ru-RU" and token.utc_offset == 180
        with pytest.raises(PermissionDenied):
            await client.increment_configuration_version()
        assert await client.close_session() is True
        assert await client.close_session() is False


def test_windows_sign_in_says_clearly_that_it_is_not_configured(server: ServerProcess) -> None:
    with SessionClient(server.url) as client, pytest.raises(NotConfigured) as refused:
        client.open_session_windows_auth()
    assert refused.value.status == 501 and "not configured" in refused.value.message


# --- hostile tokens: always a 401 with a stable code, never a 500 ---------------------------


def _current(server: ServerProcess, header: str | bytes) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/sessions/current", headers={"Tessa-Session": header})


OTHER_ALTERNATIVES = {
    "AccessLevel": "Administrator",
    "LoginType": "Windows",
    "ServiceType": "WebClient",
    "DeviceType": "Tablet",
    "LicenseType": "ConcurrentClient",
    "Client64Bit": "true",
    "Client64BitOS": "false",
}


@pytest.mark.parametrize("name", [name for name, _a, _c in FIELDS])
def test_a_token_with_any_single_attribute_changed_is_refused(
    server: ServerProcess, admin: SessionClient, name: str
) -> None:
    assert admin.session_token is not None
    xml = admin.session_token.to_xml()
    assert _current(server, xml).status_code == 200
    current = re.search(rf' {name}="([^"]*)"', xml)
    value = (
        ALTERNATIVES[name]
        if current is None or current.group(1) != ALTERNATIVES[name]
        else (OTHER_ALTERNATIVES[name])
    )
    if current:
        tampered = re.sub(rf' {name}="[^"]*"', lambda _m: f' {name}="{value}"', xml)
    else:
        tampered = xml.replace(" KeyID=", f' {name}="{value}" KeyID=')
    assert tampered != xml
    response = _current(server, tampered)
    assert response.status_code == 401
    assert response.json()["error"]["code"] in ("token_signature_invalid", "token_invalid")


@pytest.mark.parametrize("name", ["SessionID", "UserID", "Expires", "KeyID", "Digest", "Signature"])
def test_an_auth_token_with_any_attribute_changed_is_refused(
    server: ServerProcess, admin: SessionClient, name: str
) -> None:
    assert admin.session_token is not None
    auth = admin.session_token.to_auth_xml()
    alternatives = {**ALTERNATIVES, "Digest": "0" * 64}
    tampered = re.sub(rf' {name}="[^"]*"', lambda _m: f' {name}="{alternatives[name]}"', auth)
    response = _current(server, tampered)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_signature_invalid"


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("truncated", lambda xml: xml[: len(xml) // 2]),
        ("doctype", lambda xml: '<!DOCTYPE SessionToken [<!ENTITY x "boom">]>' + xml),
        ("entity", lambda xml: xml.replace('UserName="', 'UserName="&x;')),
        ("garbage", lambda xml: "%%%"),
        ("huge", lambda xml: xml.replace('UserName="', 'UserName="' + "x" * 20000)),
    ],
)
def test_malformed_tokens_are_refused_as_token_invalid(
    server: ServerProcess, admin: SessionClient, case: str, make: object
) -> None:
    assert admin.session_token is not None and callable(make)
    response = _current(server, make(admin.session_token.to_xml()))
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "token_invalid"
    assert response.json()["error"]["message"]


def test_a_token_for_a_closed_session_is_refused(server: ServerProcess) -> None:
    with SessionClient(server.url) as client:
        token = client.open_session("admin", server.admin_password)
        client.close_session()
    response = _current(server, token.to_auth_xml())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "session_not_found"


def test_a_token_forged_with_another_key_is_refused(
    server: ServerProcess, admin: SessionClient
) -> None:
    assert admin.session_token is not None
    forged = replace(admin.session_token, session_id=uuid4()).signed(
        admin.session_token.key_id or "k", b"x" * 32
    )
    response = _current(server, forged.to_auth_xml())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_signature_invalid"


def test_a_missing_header_and_bad_requests_get_clear_codes(server: ServerProcess) -> None:
    missing = httpx.get(f"{server.url}/api/v1/sessions/current")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "session_required"
    cases = [
        b"{not json",
        b'{"Login": 5, "Password": []}',
        b'{"Login": "a", "Password": "b", "ServiceType": "Toaster"}',
        b'{"Login": "a", "Password": "b", "Surprise": 1}',
        b'{"Login": "a\\u0000", "Password": "b"}',
        b'{"Login": "a"}',
        b"[]",
    ]
    for body in cases:
        response = httpx.post(
            f"{server.url}/api/v1/sessions/open",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    big = httpx.post(f"{server.url}/api/v1/sessions/open", content=b"x" * 100_000)
    assert big.status_code == 413
    bad_id = httpx.delete(f"{server.url}/api/v1/sessions/not-a-guid")
    assert bad_id.status_code in (400, 401)
    assert "error" in bad_id.json()


def test_the_openapi_document_describes_the_api(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    assert "/api/v1/sessions/open" in doc["paths"]
    assert doc["components"]["securitySchemes"]["TessaSession"]["name"] == "Tessa-Session"


# --- the audit trail -------------------------------------------------------------------------


def test_audit_export_lists_every_event_with_session_and_actor(
    server: ServerProcess, admin: SessionClient, user_password: str
) -> None:
    with SessionClient(server.url) as user:
        with pytest.raises(InvalidCredentials):
            user.open_session("ivanov", "not the password")
        victim = user.open_session("ivanov", user_password)
        admin.close_session_as_admin(victim.session_id)
        mine = user.open_session("ivanov", user_password)
        user.close_session()
    admin.increment_configuration_version()

    result = server.cli("audit", "export", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_action: dict[str, list[dict[str, object]]] = {}
    for r in records:
        by_action.setdefault(str(r["action"]), []).append(r)

    assert any(r["session_id"] == str(victim.session_id) for r in by_action["Login"])
    failed = [r for r in by_action["LoginFailed"] if r["user_name"] == "Ivanov I."]
    assert failed and failed[-1]["client_address"] == "127.0.0.1"
    closed = [
        r for r in by_action["SessionClosedByAdmin"] if r["session_id"] == str(victim.session_id)
    ]
    assert closed and closed[0]["actor_name"] == "Administrator"
    logout = [r for r in by_action["Logout"] if r["session_id"] == str(mine.session_id)]
    assert logout and logout[0]["actor_name"] == "Ivanov I."
    increments = by_action["ConfigurationVersionIncremented"]
    assert increments[-1]["actor_name"] == "Administrator" and increments[-1]["session_id"]
    assert "version" in increments[-1]["details"]  # type: ignore[operator]

    as_csv = server.cli("audit", "export", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == len(records)
    assert {row["action"] for row in rows} >= {
        "Login",
        "LoginFailed",
        "Logout",
        "SessionClosedByAdmin",
        "ConfigurationVersionIncremented",
    }


def test_a_chunked_body_over_the_limit_is_refused(server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b'{"Login": "' + b"x" * 10_000

    response = httpx.post(f"{server.url}/api/v1/sessions/open", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "Tessa-Configuration-Version" in response.headers
    unknown = httpx.get(f"{server.url}/api/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "no_such_route"


def test_the_generated_password_was_changed_before_first_use(server: ServerProcess) -> None:
    # The fixture's first call was POST /sessions/change-password with the printed password
    # (test_service shows that signing in with it is refused as password_expired).
    assert server.one_time_password and server.one_time_password != server.admin_password
    with SessionClient(server.url) as client:
        with pytest.raises(InvalidCredentials):
            client.open_session("admin", server.one_time_password)
        assert client.open_session("admin", server.admin_password).is_administrator
