"""Licences: the file, seats taken atomically under any concurrency, and the policies."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond.auth import PasswordCredentials
from sessiond.errors import LicenceInvalid, LicenceLimitReached, SessiondError
from sessiond.models import AuditAction, ClientInfo, LicenseType, ServiceType
from sessiond.service import Actor, SessionService

from . import licences
from .conftest import Clock, ServerProcess, free_port, server_env

SYSTEM = Actor.system()
DESKTOP = ClientInfo(service_type=ServiceType.DESKTOP_CLIENT)
WEB = ClientInfo(service_type=ServiceType.WEB_CLIENT)


async def _users(service: SessionService, count: int, prefix: str = "u") -> list[str]:
    logins = [f"{prefix}{i}" for i in range(count)]
    for login in logins:
        await service.users.add_user(SYSTEM, login, password="pw-1234")
    return logins


async def _open(service: SessionService, login: str, client: ClientInfo = DESKTOP) -> Any:
    return (await service.signin.open_session(PasswordCredentials(login, "pw-1234"), client)).token


# --- the file --------------------------------------------------------------------------------


async def test_a_bad_licence_file_names_the_problem_and_the_last_good_one_stays(
    make_service: Any, tmp_path: Path
) -> None:
    service = await make_service()
    good = licences.write_unsigned(tmp_path / "good.json")
    assert (await service.licensing.install_file(str(good))).seats_of(
        LicenseType.CONCURRENT_CLIENT
    ) == 10
    cases = {
        "not json": ("{not json", "not valid JSON: .* line 1 column 2"),
        "not an object": ("[1, 2]", 'must be an object with a "Licence" object'),
        "expired": ({"Licence": licences.body(ValidTo="2026-06-01")}, "expired on 2026-06-01"),
        "reversed": (
            {"Licence": licences.body(ValidFrom="2027-01-01", ValidTo="2026-12-01")},
            "ValidTo must be after ValidFrom",
        ),
        "negative": ({"Licence": licences.body(ConcurrentWeb=-1)}, "ConcurrentWeb must be a whole"),
        "fraction": ({"Licence": licences.body(PersonalWeb=1.5)}, "PersonalWeb must be a whole"),
        "bool": ({"Licence": licences.body(PersonalClient=True)}, "PersonalClient must be"),
        "unknown field": ({"Licence": licences.body(Unlimited=True)}, "unknown licence fields"),
        "bad date": ({"Licence": licences.body(ValidTo="soon")}, "ValidTo 'soon' is not a date"),
        "no id": ({"Licence": licences.body(ID="")}, "ID must be a non-empty text"),
        "huge": ('{"Licence": {"ID": "' + "x" * 70_000 + '"}}', "larger than 65536 bytes"),
        "binary": ("\udcff", "not UTF-8"),
    }
    for name, (document, problem) in cases.items():
        path = tmp_path / f"{name}.json"
        if document == "\udcff":
            path.write_bytes(b"\xff\xfe\x00")
        else:
            licences.write(path, document)
        with pytest.raises(LicenceInvalid, match=problem):
            await service.licensing.install_file(str(path))
        kept = await service.store.get_licence()
        assert kept is not None and kept.id == "L-2026-1", name
    with pytest.raises(LicenceInvalid, match="cannot read licence file"):
        await service.licensing.install_file(str(tmp_path / "missing.json"))


async def test_only_licences_signed_by_the_configured_key_are_accepted(
    make_service: Any, tmp_path: Path
) -> None:
    issuer, stranger = licences.Issuer(), licences.Issuer()
    service = await make_service(licence_public_key=issuer.public_key)
    signed = await service.licensing.install_file(str(issuer.write(tmp_path / "signed.json")))
    assert signed.signed
    tampered = json.loads((tmp_path / "signed.json").read_text())
    tampered["Licence"]["ConcurrentClient"] = 10_000
    licences.write(tmp_path / "tampered.json", tampered)
    with pytest.raises(LicenceInvalid, match="signature does not match"):
        await service.licensing.install_file(str(tmp_path / "tampered.json"))
    with pytest.raises(LicenceInvalid, match="signature does not match"):
        await service.licensing.install_file(str(stranger.write(tmp_path / "other.json")))
    with pytest.raises(LicenceInvalid, match="not signed"):
        await service.licensing.install_file(str(licences.write_unsigned(tmp_path / "plain.json")))
    installed = await service.store.get_licence()
    assert installed is not None and installed.seats_of(LicenseType.CONCURRENT_CLIENT) == 10


async def test_an_expired_licence_refuses_new_sessions(
    make_service: Any, tmp_path: Path, clock: Clock
) -> None:
    service = await make_service()
    await service.licensing.install_file(
        str(licences.write_unsigned(tmp_path / "l.json", ValidTo="2026-11-25T00:00:00Z"))
    )
    [login] = await _users(service, 1)
    await _open(service, login)
    clock.advance(days=1)
    with pytest.raises(LicenceInvalid) as refused:
        await _open(service, login)
    assert refused.value.status == 503 and "install a current licence" in refused.value.message


# --- seats -----------------------------------------------------------------------------------


async def test_web_and_desktop_clients_take_their_own_seats(
    make_service: Any, tmp_path: Path
) -> None:
    service = await make_service()
    await service.licensing.install(
        json.dumps({"Licence": licences.body(ConcurrentClient=2, ConcurrentWeb=1)})
    )
    logins = await _users(service, 3)
    web = await _open(service, logins[0], WEB)
    assert web.license_type == LicenseType.CONCURRENT_WEB
    with pytest.raises(LicenceLimitReached) as refused:
        await _open(service, logins[1], WEB)
    assert refused.value.message == "licence limit reached: 1 of 1 concurrent web sessions in use"
    assert refused.value.status == 429
    desktop = await _open(service, logins[1])
    assert desktop.license_type == LicenseType.CONCURRENT_CLIENT
    usage = await service.licensing.usage(SYSTEM)
    assert usage["Seats"]["ConcurrentWeb"] == {"InUse": 1, "Seats": 1}
    assert usage["Seats"]["ConcurrentClient"] == {"InUse": 1, "Seats": 2}


async def test_personal_licences_belong_to_named_users(make_service: Any) -> None:
    service = await make_service()
    await service.licensing.install(
        json.dumps({"Licence": licences.body(ConcurrentClient=0, PersonalClient=1)})
    )
    alice, bob = await _users(service, 2)
    with pytest.raises(LicenceLimitReached, match="0 of 0 concurrent client"):
        await _open(service, alice)
    await service.users.set_personal_licence(SYSTEM, alice, LicenseType.PERSONAL_CLIENT, True)
    with pytest.raises(LicenceLimitReached, match="1 of 1 personal client licences"):
        await service.users.set_personal_licence(SYSTEM, bob, LicenseType.PERSONAL_CLIENT, True)
    first, second = await _open(service, alice), await _open(service, alice)
    assert first.license_type == second.license_type == LicenseType.PERSONAL_CLIENT
    await service.users.set_personal_licence(SYSTEM, alice, LicenseType.PERSONAL_CLIENT, False)
    await service.users.set_personal_licence(SYSTEM, bob, LicenseType.PERSONAL_CLIENT, True)


async def test_deactivate_oldest_keeps_exactly_the_seats_and_audits_each_displacement(
    make_service: Any,
) -> None:
    service = await make_service(licence_policy="deactivate_oldest")
    await service.licensing.install(json.dumps({"Licence": licences.body(ConcurrentClient=10)}))
    logins = await _users(service, 5)
    results = await asyncio.gather(
        *(_open(service, logins[i % 5]) for i in range(200)), return_exceptions=True
    )
    opened = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, LicenceLimitReached) for r in refused), refused[:3]
    assert all("none of them is yours" in r.message for r in refused)  # type: ignore[union-attr]
    assert len(await service.store.list_sessions()) == 10
    displaced = await service.audit.records(action=AuditAction.SESSION_DEACTIVATED)
    assert len(displaced) == len(opened) - 10 > 0
    assert len({r.session_id for r in displaced}) == len(displaced)
    assert all(r.details["license_type"] == "ConcurrentClient" for r in displaced)
    # a user displaces only their own sessions
    by_session = {t.session_id: t.user_id for t in opened}
    assert all(by_session[r.session_id] == r.user_id for r in displaced)  # type: ignore[index]


async def test_200_concurrent_opens_in_process_for_10_seats(make_service: Any) -> None:
    service = await make_service()
    await service.licensing.install(json.dumps({"Licence": licences.body(ConcurrentClient=10)}))
    logins = await _users(service, 20)
    results = await asyncio.gather(
        *(_open(service, logins[i % 20]) for i in range(200)), return_exceptions=True
    )
    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"SessionToken": 10, "LicenceLimitReached": 190}
    assert len(await service.store.list_sessions()) == 10


@pytest.fixture(scope="module")
def licensed_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("licensed")
    licence = licences.write_unsigned(root / "licence.json", ConcurrentClient=10, ConcurrentWeb=1)
    data_dir = root / "sessiond-data"
    env = server_env(data_dir, SESSIOND_LICENCE_FILE=str(licence))
    proc = ServerProcess(data_dir, free_port(), env, root / "server.log")
    proc.start()
    yield proc
    proc.stop()


async def test_200_concurrent_sign_ins_over_http_for_10_seats(
    licensed_server: ServerProcess,
) -> None:
    url = licensed_server.url
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        admin = await http.post(
            "/api/v1/sessions/open",
            json={
                "Login": "admin",
                "Password": licensed_server.admin_password,
                "ServiceType": "WebClient",  # the administrator takes the one web seat
            },
        )
        assert admin.status_code == 200, admin.text
        headers = {"Tessa-Session": admin.json()["AuthToken"]}
        for i in range(20):
            created = await http.post(
                "/api/v1/users", json={"Login": f"racer{i}", "Password": "pw-1234"}, headers=headers
            )
            assert created.status_code == 201, created.text

        async def sign_in(i: int) -> httpx.Response:
            return await http.post(
                "/api/v1/sessions/open", json={"Login": f"racer{i % 20}", "Password": "pw-1234"}
            )

        answers = await asyncio.gather(*(sign_in(i) for i in range(200)))
        statuses = Counter(a.status_code for a in answers)
        assert statuses == {200: 10, 429: 190}, statuses
        refusals = {a.json()["error"]["message"] for a in answers if a.status_code == 429}
        assert refusals == {"licence limit reached: 10 of 10 concurrent client sessions in use"}
        assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {
            "licence_limit_reached"
        }
        usage = (await http.get("/api/v1/licences", headers=headers)).json()
        assert usage["Seats"]["ConcurrentClient"] == {"InUse": 10, "Seats": 10}
        assert usage["Licence"]["ID"] == "L-2026-1"
    shown = licensed_server.cli("licences", "show")
    assert shown.returncode == 0, shown.stderr
    assert "L-2026-1" in shown.stdout and "ConcurrentClient" in shown.stdout


def test_the_cli_installs_and_refuses_licences(
    licensed_server: ServerProcess, tmp_path: Path
) -> None:
    bad = licences.write(tmp_path / "bad.json", "{")
    refused = licensed_server.cli("licences", "install", str(bad))
    assert refused.returncode == 1
    assert "licence_invalid" in refused.stderr and "not valid JSON" in refused.stderr
    better = licences.write_unsigned(tmp_path / "more.json", ID="L-2026-2", ConcurrentClient=12)
    installed = licensed_server.cli("licences", "install", str(better))
    assert installed.returncode == 0, installed.stderr
    assert "L-2026-2" in licensed_server.cli("licences", "show").stdout


def test_a_user_change_refused_for_its_personal_licence_changes_nothing(tmp_path: Path) -> None:
    """A change of a user's name and personal licence is made whole or not at all: refused for
    the licence (none left), the name stays too. Before, the name was committed first and the
    caller was answered 429, as if nothing had changed."""
    licence = licences.write_unsigned(tmp_path / "licence.json", PersonalClient=0)
    data_dir = tmp_path / "sessiond-data"
    env = server_env(data_dir, SESSIOND_LICENCE_FILE=str(licence))
    node = ServerProcess(data_dir, free_port(), env, tmp_path / "server.log")
    node.start()
    try:
        admin = httpx.post(
            f"{node.url}/api/v1/sessions/open",
            json={"Login": "admin", "Password": node.admin_password},
            timeout=30,
        )
        headers = {"Tessa-Session": admin.json()["AuthToken"]}
        created = httpx.post(
            f"{node.url}/api/v1/users",
            json={"Login": "petra", "Name": "Petra", "Password": "pw-1234"},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        changed = httpx.patch(
            f"{node.url}/api/v1/users/petra",
            json={"Name": "Petra Renamed", "PersonalClient": True},
            headers=headers,
        )
        assert changed.status_code == 429, changed.text
        assert changed.json()["error"]["code"] == "licence_limit_reached"
        users = httpx.get(f"{node.url}/api/v1/users", headers=headers).json()
        [petra] = [u for u in users if u["Login"] == "petra"]
        assert (petra["Name"], petra["PersonalClient"]) == ("Petra", False)
        renamed = httpx.patch(
            f"{node.url}/api/v1/users/petra",
            json={"Name": "Petra Renamed", "PersonalClient": False},
            headers=headers,
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["Name"] == "Petra Renamed"
    finally:
        node.stop()


def test_every_refusal_is_an_error_with_a_code() -> None:
    assert issubclass(LicenceLimitReached, SessiondError) and LicenceLimitReached.code


# --- any file at all: a licence or LicenceInvalid, nothing else ------------------------------

from datetime import UTC, datetime  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sessiond import licence as licence_module  # noqa: E402

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_NOW = datetime(2026, 11, 24, tzinfo=UTC)


def _parse_or_refuse(data: bytes | str) -> None:
    try:
        licence_module.parse(data, public_key=None, now=_NOW)
    except LicenceInvalid:
        pass


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_a_licence_or_licence_invalid(data: bytes) -> None:
    _parse_or_refuse(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(licences.body())), _JSON)
def test_any_value_in_any_field_is_a_licence_or_licence_invalid(field: str, value: Any) -> None:
    _parse_or_refuse(json.dumps({"Licence": licences.body(**{field: value})}))
    _parse_or_refuse(json.dumps({"Licence": licences.body(), "Signature": value}))
    _parse_or_refuse(json.dumps(value))


async def test_a_smaller_licence_warns_about_personal_licences_given_out(
    make_service: Any,
) -> None:
    service = await make_service()
    await service.licensing.install(json.dumps({"Licence": licences.body(PersonalWeb=2)}))
    for login in await _users(service, 2, prefix="p"):
        await service.users.set_personal_licence(SYSTEM, login, LicenseType.PERSONAL_WEB, True)
    await service.licensing.install(json.dumps({"Licence": licences.body(PersonalWeb=1)}))
    usage = await service.licensing.usage(SYSTEM)
    assert usage["Seats"]["PersonalWeb"] == {"InUse": 2, "Seats": 1}
    assert usage["Warnings"] == [
        "2 personal web licences are given out, more than the 1 licence L-2026-1 allows; take "
        "personal web licences back from some users"
    ]
