"""Every Windows path goes through the one sign-in pipeline: NTLM's last leg, the password typed
into the sign-in form (checked by Kerberos), in any spelling, from any address, is checked within
the same rules — the user's lockout, the limits on accounts no user is mapped to kept under one
identity — and an account no user is mapped to is refused without asking the domain when no
user may be provisioned for it. Against a real Samba AD DC; the DC's own ``badPwdCount`` says how
many wrong passwords really reached it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.infra.samba import SambaDomain

from .conftest import ServerProcess
from .test_windows_ntlm import (
    DOMAIN,
    PASSWORD,
    REALM,
    _b64,
    _unb64,
    add_user,
    audit,
    domain_config,
    start_server,
)

LIMIT = 3


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def _config(dc: SambaDomain, *, provision: bool) -> str:
    return (
        "[sessiond]\n"
        'trusted_proxies = ["127.0.0.0/8"]\n'
        'sign_in_slot_wait = "30s"\n'
        "[sessiond.security]\n"
        f"max_failed_login_attempts_before_blocked = {LIMIT}\n"
        "block_windows_and_ldap_users = true\n"
        f"unmapped_account_failures = {LIMIT}\n"
        "unmapped_address_failures = 0\n"
        + domain_config(dc, auto_provision=provision, ntlm_helpers=64)
    )


@pytest.fixture(scope="module")
def closed(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[ServerProcess]:
    """No provisioning: accounts no user is mapped to are never checked."""
    server = start_server(tmp_path_factory.mktemp("closed"), _config(samba_domain, provision=False))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def provisioning(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("open"), _config(samba_domain, provision=True))
    yield server
    server.stop()


def bad_passwords(dc: SambaDomain, name: str) -> int:
    """How many wrong passwords reached the DC (see :meth:`SambaDomain.count_bad_passwords`)."""
    value = dc.attributes(name, "badPwdCount").get("badPwdCount")
    if isinstance(value, list):
        value = value[0] if value else 0
    return int(value or 0)


def _domain_user(dc: SambaDomain, prefix: str) -> str:
    name = _unique(prefix)
    dc.add_user(name, PASSWORD)
    dc.count_bad_passwords(name)
    return name


def _ntlm(
    server: ServerProcess, who: str, password: str, address: str = "127.0.0.1"
) -> httpx.Response:
    """One NTLM sign-in, both legs on one connection (raw NTLMSSP under ``Authorization: NTLM``)."""
    import spnego

    client = spnego.client(who, password, protocol="ntlm")
    url = f"{server.url}/api/v1/sessions/open-windows"
    headers = {"X-Forwarded-For": address}
    with httpx.Client(timeout=60) as http:
        first = http.post(url, headers={**headers, "Authorization": "NTLM " + _b64(client.step())})
        if first.status_code != 401 or "Tessa-Negotiate-Id" not in first.headers:
            return first
        challenge = first.headers["WWW-Authenticate"].partition(" ")[2]
        return http.post(
            url,
            headers={
                **headers,
                "Authorization": "NTLM " + _b64(client.step(_unb64(challenge))),
                "Tessa-Negotiate-Id": first.headers["Tessa-Negotiate-Id"],
            },
        )


def _password(
    server: ServerProcess, login: str, password: str, domain: str | None, address: str
) -> httpx.Response:
    body = {"Login": login, "Password": password, **({"Domain": domain} if domain else {})}
    return httpx.post(
        f"{server.url}/api/v1/sessions/open",
        json=body,
        headers={"X-Forwarded-For": address},
        timeout=60,
    )


def _refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_ntlm_answers_an_unmapped_accounts_right_password_as_a_wrong_one_unchecked(
    closed: ServerProcess, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    name = _domain_user(dc, "nt-unmapped-")
    right = _ntlm(closed, f"{DOMAIN}\\{name}", PASSWORD)
    wrong = [_ntlm(closed, f"{DOMAIN}\\{name}", f"Wrong-{i}-pw") for i in range(8)]
    assert {_refusal(r) for r in [right, *wrong]} == {(401, "invalid_credentials")}
    assert {r.content for r in [right, *wrong]} == {right.content}
    assert bad_passwords(dc, name) == 0  # the domain was never asked
    reasons = [
        r["details"]["reason"] for r in audit(closed, "LoginFailed") if name in json.dumps(r)
    ]
    assert len(reasons) == 9 and all("password not checked" in r for r in reasons), reasons


def test_ntlm_wrong_passwords_are_held_to_the_users_lockout_under_50_parallel_tries(
    closed: ServerProcess, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    name = _domain_user(dc, "nt-guess-")
    add_user(closed, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda i: _ntlm(closed, f"{DOMAIN}\\{name}", f"Guess-{i}-pw"), range(50))
        )
    assert {_refusal(r) for r in answers} <= {
        (401, "invalid_credentials"),
        (503, "service_unavailable"),
    }
    assert sum(r.status_code == 401 for r in answers) >= 40, [r.text for r in answers[:3]]
    assert bad_passwords(dc, name) == LIMIT  # exactly the lockout's checks reached the DC
    checked = [
        r for r in audit(closed, "LoginFailed")
        if name in json.dumps(r) and "NT_STATUS_LOGON_FAILURE" in r["details"]["reason"]
    ]  # fmt: skip
    assert len(checked) == LIMIT
    blocked = [r for r in audit(closed, "UserBlocked") if name in json.dumps(r)]
    assert len(blocked) == 1
    # Blocked: the right password is refused too, unchecked.
    assert _refusal(_ntlm(closed, f"{DOMAIN}\\{name}", PASSWORD)) == (401, "invalid_credentials")
    assert bad_passwords(dc, name) == LIMIT


def test_spellings_paths_and_addresses_share_one_limit(
    provisioning: ServerProcess, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    name = _domain_user(dc, "nt-spell-")
    spellings = [
        (name, DOMAIN),
        (f"{DOMAIN}\\{name}", None),
        (f"{name}@{REALM}", None),
        (f"{name.upper()}@{REALM.lower()}", None),
    ]

    def attempt(i: int) -> httpx.Response:
        address = f"192.0.2.{i + 1}"
        if i % 3 == 0:  # NTLM's last leg names the same account
            return _ntlm(provisioning, f"{DOMAIN}\\{name}", f"Wrong-{i}-pw", address)
        login, domain = spellings[i % len(spellings)]
        return _password(provisioning, login, f"Wrong-{i}-pw", domain, address)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(attempt, range(30)))
    assert {_refusal(r) for r in answers} == {(401, "invalid_credentials")}
    assert bad_passwords(dc, name) == LIMIT
    # The limit holds for the right password too while it lasts: nothing is provisioned.
    assert _refusal(_password(provisioning, name, PASSWORD, DOMAIN, "192.0.2.99")) == (
        401,
        "invalid_credentials",
    )
    assert bad_passwords(dc, name) == LIMIT
    reasons = [str(r["details"]["reason"]) for r in audit(provisioning, "LoginFailed")]
    reached = [r for r in reasons if r.startswith(f"limit of {LIMIT}") and name in r.casefold()]
    assert reached and all(f"windows:{name}@{REALM}".casefold() in r for r in reached), reached


def test_a_provisioned_account_signs_in_by_ntlm(
    provisioning: ServerProcess, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    name = _domain_user(dc, "nt-new-")
    answer = _ntlm(provisioning, f"{DOMAIN}\\{name}", PASSWORD, "192.0.2.200")
    assert answer.status_code == 200, answer.text
    logins = [r for r in audit(provisioning, "Login") if name in json.dumps(r)]
    assert len(logins) == 1 and logins[0]["details"]["method"] == "ntlm"


def test_an_unknown_domain_is_refused_and_not_read_as_the_default_realm(
    provisioning: ServerProcess, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    name = _domain_user(dc, "nt-other-")
    for login, domain in ((f"OTHER\\{name}", None), (name, "D1"), (f"{name}@OTHER.TEST", None)):
        answer = _password(provisioning, login, PASSWORD, domain, "192.0.2.150")
        assert _refusal(answer) == (401, "invalid_credentials")
    assert bad_passwords(dc, name) == 0
    assert "OTHER" not in json.dumps(
        [r for r in audit(provisioning, "Login") if name in json.dumps(r)]
    )


@pytest.mark.parametrize("state", ["must_change", "expired"])
def test_an_expired_domain_password_gets_one_answer_on_every_path(
    closed: ServerProcess, samba_domain: SambaDomain, state: str
) -> None:
    dc = samba_domain
    name = _domain_user(dc, f"nt-{state[:4]}-")
    add_user(closed, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    if state == "must_change":
        dc.require_password_change(name)
    else:
        dc.expire_password(name)
    by_ntlm = _ntlm(closed, f"{DOMAIN}\\{name}", PASSWORD)
    by_password = _password(closed, name, PASSWORD, DOMAIN, "192.0.2.160")
    assert _refusal(by_ntlm) == _refusal(by_password) == (401, "password_expired")
    assert by_ntlm.json()["error"]["message"] == by_password.json()["error"]["message"]
    assert bad_passwords(dc, name) == 0  # the right password: nothing counted, here or there
