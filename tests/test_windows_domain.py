"""Windows domain sign-in against a real Samba AD DC (the ``samba_domain`` fixture): every
answer of the domain for an account in each state is a documented refusal, over HTTP from
real ``sessiond serve`` processes, with the audit reason naming what the domain said
(docs/windows.md, "Refusals and their audit reasons"), by Kerberos and by an LDAP bind.
The server's own faults (keytab, settings, the domain out of reach) are in
tests/test_windows_domain_setup.py, which shares the helpers here.

Accounts are put in each state the way tests/test_samba_infra.py records Samba 4.17 answering
for it. The audit trail is read with ``sessiond audit export``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ldap3
import pytest

from sessiond.auth.windows import WindowsAuthenticator
from sessiond.errors import (
    InvalidCredentials,
    PasswordExpired,
)
from sessiond.settings import WindowsSettings
from tests.infra.kerberos import KerberosRealm
from tests.infra.samba import AccountStates, DomainUser, SambaDomain, ServiceAccount

from .conftest import ServerProcess, start_server

PASSWORD = "Pass-word-1"
WRONG = "Wrong-pass-1"
REVOKED = "KDC: account disabled, locked out, expired or outside its logon hours"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class States(AccountStates):
    """One account per state Active Directory reports, all with password ``PASSWORD``."""

    logon_hours: DomainUser
    workstation: DomainUser


@pytest.fixture(scope="module")
def states(samba_domain: SambaDomain) -> States:
    dc = samba_domain
    made = dc.add_users_in_each_state("wd-", PASSWORD)
    return States(
        **vars(made),
        logon_hours=dc.add_user(_unique("wd-hours-"), PASSWORD, logonHours=bytes(21)),
        workstation=dc.add_user(_unique("wd-ws-"), PASSWORD, userWorkstations="OTHERPC"),
    )


# --- servers -----------------------------------------------------------------------------


def _server(root: Path, dc: SambaDomain, config: str) -> ServerProcess:
    """A ``sessiond serve`` for the domain: its krb5.conf and, through nss_wrapper, its DC's
    name (``dc1.samba.test``, the name in the DC's certificate)."""
    # Unmapped accounts are tried here on purpose: no limit per address for these servers.
    config += "\n[sessiond.security]\nunmapped_address_failures = 0\n"
    return start_server(root, config, env=dc.server_environment)


def _service_account(dc: SambaDomain, keytab: Path) -> ServiceAccount:
    """sessiond's own service account, with an SPN no other test uses and its keytab."""
    return dc.add_service_account(
        "HTTP", f"{_unique('sessiond-')}.{dc.dns_domain}", keytab=str(keytab)
    )


def _kerberos_config(dc: SambaDomain, svc: ServiceAccount) -> str:
    return f"""
[sessiond.windows]
realm = "{dc.realm}"
domains = {{ {dc.domain} = "{dc.realm}" }}
service_principal = "{svc.principal}"
keytab = "{svc.keytab}"
krb5_config = "{dc.krb5_conf}"
negotiate = false
"""


@pytest.fixture(scope="module")
def kerberos_server(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain, states: States
) -> Iterator[ServerProcess]:
    """Passwords checked by Kerberos with the KDC proven; Ldap-type users against the DC with
    no search account (anonymous searches, which AD refuses)."""
    dc = samba_domain
    root = tmp_path_factory.mktemp("domain-kerberos")
    svc = _service_account(dc, root / "sessiond.keytab")
    server = _server(
        root / "server",
        dc,
        _kerberos_config(dc, svc)
        + f"""
[sessiond.ldap]
url = "ldaps://{dc.dc_fqdn}:636"
ca_file = "{dc.ca_file}"
search_base = "{dc.base_dn}"
search_filter = "(sAMAccountName={{login}})"
""",
    )
    for user in states.all():
        _map(server, user)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ldap_server(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain, states: States
) -> Iterator[ServerProcess]:
    """Passwords checked by a bind to AD over LDAPS (password_check = "ldap"); Ldap-type users
    found by a search account."""
    dc = samba_domain
    search = dc.add_user(_unique("wd-search-"), PASSWORD)
    server = _server(
        tmp_path_factory.mktemp("domain-ldap"),
        dc,
        f"""
[sessiond.windows]
realm = "{dc.realm}"
password_check = "ldap"
negotiate = false

[sessiond.windows.directory]
url = "ldaps://{dc.dc_fqdn}:636"
ca_file = "{dc.ca_file}"

[sessiond.ldap]
url = "ldap://{dc.dc_fqdn}:389"
start_tls = true
ca_file = "{dc.ca_file}"
bind_dn = "{search.upn}"
bind_password = "{PASSWORD}"
search_base = "{dc.base_dn}"
search_filter = "(sAMAccountName={{login}})"
""",
    )
    for user in states.all():
        _map(server, user)
    yield server
    server.stop()


def _map(server: ServerProcess, user: DomainUser, login_type: str = "Windows") -> None:
    account = user.down_level if login_type == "Windows" else user.name
    args = ("--login-type", login_type, "--account", account)
    result = server.cli("users", "add", _login(user, login_type), *args)
    assert result.returncode == 0, result.stdout + result.stderr


def _login(user: DomainUser, login_type: str = "Windows") -> str:
    return user.name if login_type == "Windows" else f"l-{user.name}"


def _open(
    server: ServerProcess, login: str, password: str, domain: str | None = None
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/sessions/open",
        json={"Login": login, "Password": password, "Domain": domain},
        timeout=60,
    )


def _error(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def _cause(response: httpx.Response) -> str | None:
    """A 503's named cause (``details.cause``)."""
    details = response.json()["error"].get("details") or {}
    return details.get("cause")


def _reasons(server: ServerProcess, who: str) -> list[str]:
    """The reasons of the LoginFailed records about ``who`` (a user's name, or the login
    given for an account no user is mapped to), oldest first."""
    result = server.cli("audit", "export", "--action", "LoginFailed")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return [str(r["details"]["reason"]) for r in records if r["user_name"] == who]


def _log(server: ServerProcess) -> str:
    return server.log_path.read_text(encoding="utf-8", errors="replace")


def _logged(server: ServerProcess, response: httpx.Response) -> str:
    """What a 503 means in full: the body names only its cause, with a generic message (no
    file, host or certificate to an anonymous caller); the log line naming it says the rest."""
    cause = _cause(response)
    assert response.json()["error"]["message"] in (
        f"{kind} sign-in is unavailable on this server: cause {cause}; the administrator will "
        "find details in the log"
        for kind in ("Windows", "LDAP")
    )
    lines = [line for line in _log(server).splitlines() if f"[{cause}]" in line]
    assert lines, cause
    return lines[-1]


def _in_process(
    monkeypatch: pytest.MonkeyPatch, dc: SambaDomain, **windows: Any
) -> WindowsAuthenticator:
    """A WindowsAuthenticator in this process; the environment it sets is put back after."""
    settings = {"realm": dc.realm, "krb5_config": dc.krb5_conf, "negotiate": False, **windows}
    # What a server sets at start; the keytab is never taken from the environment.
    monkeypatch.setenv("KRB5_CONFIG", str(settings["krb5_config"]))
    monkeypatch.setenv("KRB5_KTNAME", f"FILE:{dc.keytab}")
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    return WindowsAuthenticator(WindowsSettings(**settings))


def _assert_refused(server: ServerProcess, user: DomainUser, password: str, reason: str) -> None:
    """``user`` signing in with ``password`` is refused as a wrong password is, and the audit
    reason starts with ``reason`` (what the domain said)."""
    response = _open(server, user.name, password, "SAMBA")
    assert _error(response) == (401, "invalid_credentials", "wrong login or password")
    assert _reasons(server, user.name)[-1].startswith(reason)


def _assert_change_in_domain(response: httpx.Response) -> None:
    """A right password that must be changed: 401 password_expired, change it in the domain."""
    status, code, message = _error(response)
    assert (status, code) == (401, "password_expired")
    assert "Change a password" in message and "not changed through sessiond" in message
    assert response.json()["error"]["details"] == {"change_in_domain": True}


# --- Kerberos: each state of the account ---------------------------------------------------


def test_kerberos_right_password_signs_in(kerberos_server: ServerProcess, states: States) -> None:
    response = _open(kerberos_server, states.ok.name, PASSWORD, "SAMBA")
    assert response.status_code == 200, response.text
    assert f'UserLogin="SAMBA\\{states.ok.name}"' in response.json()["Token"]
    # The KDC does not check userWorkstations for the initial ticket (a bind answers 531).
    assert _open(kerberos_server, states.workstation.name, PASSWORD, "SAMBA").status_code == 200


@pytest.mark.parametrize(
    ("state", "password", "reason"),
    [
        ("ok", WRONG, "KDC: password incorrect (KRB5KDC_ERR_PREAUTH_FAILED: Preauthentication"),
        ("disabled", PASSWORD, f"{REVOKED} (KRB5KDC_ERR_CLIENT_REVOKED"),
        ("account_expired", PASSWORD, f"{REVOKED} (KRB5KDC_ERR_CLIENT_REVOKED"),
        ("locked", PASSWORD, f"{REVOKED} (KRB5KDC_ERR_CLIENT_REVOKED"),
        ("locked", WRONG, f"{REVOKED} (KRB5KDC_ERR_CLIENT_REVOKED"),
        ("logon_hours", PASSWORD, f"{REVOKED} (KRB5KDC_ERR_CLIENT_REVOKED"),
        # A wrong password for an expired one is a wrong password, nothing more.
        ("must_change", WRONG, "KDC: password incorrect (KRB5KDC_ERR_PREAUTH_FAILED"),
        ("password_expired", WRONG, "KDC: password incorrect (KRB5KDC_ERR_PREAUTH_FAILED"),
    ],
)
def test_kerberos_refusals_are_uniform_and_audited_with_the_kdcs_answer(
    kerberos_server: ServerProcess, states: States, state: str, password: str, reason: str
) -> None:
    _assert_refused(kerberos_server, getattr(states, state), password, reason)


@pytest.mark.parametrize("state", ["must_change", "password_expired"])
def test_kerberos_a_right_password_that_must_be_changed_says_where_to_change_it(
    kerberos_server: ServerProcess, states: States, state: str
) -> None:
    user: DomainUser = getattr(states, state)
    response = _open(kerberos_server, f"{user.name}@{user.realm}", PASSWORD)
    _assert_change_in_domain(response)
    # Not counted as a failed sign-in, yet recorded, with the domain's answer.
    assert _reasons(kerberos_server, user.name)[-1] == (
        "KDC: password expired or must be changed (KRB5KDC_ERR_KEY_EXP: Password has expired)"
    )


def test_kerberos_unknown_and_unmapped_accounts_tell_nothing(
    kerberos_server: ServerProcess, samba_domain: SambaDomain
) -> None:
    nobody = _unique("wd-nobody-")
    # An account no user is mapped to whose right password must be changed: as a wrong one.
    unmapped = samba_domain.add_user(_unique("wd-unmapped-"), PASSWORD)
    samba_domain.count_bad_passwords(unmapped.name)
    samba_domain.require_password_change(unmapped.name)
    answers = [_open(kerberos_server, name, PASSWORD, "SAMBA") for name in (nobody, unmapped.name)]
    for answer in answers:
        assert _error(answer) == (401, "invalid_credentials", "wrong login or password")
    assert answers[0].content == answers[1].content
    # Neither is asked of the domain: no provisioning, so nothing is learnt by checking.
    not_checked = "is not mapped to a user (no provisioning: password not checked)"
    (missing,) = _reasons(kerberos_server, f"SAMBA\\{nobody}")
    assert missing == f"unknown login; Windows account SAMBA\\{nobody} {not_checked}"
    (expired,) = _reasons(kerberos_server, f"SAMBA\\{unmapped.name}")
    assert expired == f"unknown login; Windows account SAMBA\\{unmapped.name} {not_checked}"
    from .test_windows_pipeline import bad_passwords

    assert bad_passwords(samba_domain, unmapped.name) == 0


def test_an_mit_kdc_says_expired_to_any_password_so_the_right_one_is_confirmed_first(
    monkeypatch: pytest.MonkeyPatch, kerberos_realm: KerberosRealm
) -> None:
    """MIT's KDC answers KRB5KDC_ERR_KEY_EXP before it looks at the password (Samba and
    Windows only to the right one): a wrong password must still be a wrong password."""
    name = _unique("mit-expired-")
    kerberos_realm.add_user(name, PASSWORD)
    # (kadmin.local through the realm's helper: the fixture has no public "expire" helper)
    kerberos_realm._kadmin_local(
        ["modprinc", "-pwexpire", "yesterday", kerberos_realm.principal(name)]
    )
    monkeypatch.setenv("KRB5_CONFIG", kerberos_realm.krb5_conf)
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    auth = WindowsAuthenticator(
        WindowsSettings(
            realm=kerberos_realm.realm,
            krb5_config=kerberos_realm.krb5_conf,
            verify_kdc=False,
            negotiate=False,
        )
    )
    account = auth.names.parse(name)
    with pytest.raises(InvalidCredentials) as wrong:
        auth._kerberos_check(account, WRONG)
    assert wrong.value.reason == (
        "KDC: password incorrect (KRB5KDC_ERR_PREAUTH_FAILED; the password has expired too: "
        "KRB5KDC_ERR_KEY_EXP)"
    )
    with pytest.raises(PasswordExpired) as expired:
        auth._kerberos_check(account, PASSWORD)
    assert expired.value.details == {"change_in_domain": True}
    assert expired.value.reason is not None
    assert expired.value.reason.startswith("KDC: password expired or must be changed")


# --- LDAP bind (password_check = "ldap"): AD's sub-codes -----------------------------------


@pytest.mark.parametrize(
    ("state", "password", "reason"),
    [
        ("ok", WRONG, "directory: wrong password (AD data 52e)"),
        ("disabled", PASSWORD, "directory: account disabled (AD data 533)"),
        ("account_expired", PASSWORD, "directory: account expired (AD data 701)"),
        ("locked", PASSWORD, "directory: account locked out (AD data 775)"),
        ("locked", WRONG, "directory: account locked out (AD data 775)"),
        ("logon_hours", PASSWORD, "directory: sign-in not permitted at this time (logon hours)"),
        ("workstation", PASSWORD, "directory: sign-in not permitted from this workstation"),
        ("must_change", WRONG, "directory: wrong password (AD data 52e)"),
    ],
)
def test_ldap_bind_refusals_are_uniform_and_audited_with_ads_sub_code(
    ldap_server: ServerProcess, states: States, state: str, password: str, reason: str
) -> None:
    _assert_refused(ldap_server, getattr(states, state), password, reason)


@pytest.mark.parametrize(
    ("state", "sub_code"), [("must_change", "773"), ("password_expired", "532")]
)
def test_ldap_bind_a_right_password_that_must_be_changed_is_password_expired(
    ldap_server: ServerProcess, samba_domain: SambaDomain, states: States, state: str, sub_code: str
) -> None:
    user: DomainUser = getattr(states, state)
    _assert_change_in_domain(_open(ldap_server, user.down_level, PASSWORD))
    # The same account with no user mapped to it: refused as a wrong password is, without
    # asking the domain (no provisioning).
    unmapped = samba_domain.add_user(_unique("wd-unm-"), PASSWORD)
    if sub_code == "773":
        samba_domain.require_password_change(unmapped.name)
    else:
        samba_domain.expire_password(unmapped.name)
    answer = _open(ldap_server, unmapped.name, PASSWORD, "SAMBA")
    assert _error(answer) == (401, "invalid_credentials", "wrong login or password")
    (reason,) = _reasons(ldap_server, f"SAMBA\\{unmapped.name}")
    assert reason.endswith("(no provisioning: password not checked)")


def test_ldap_bind_right_password_and_ldap_users_with_a_search_account(
    ldap_server: ServerProcess, samba_domain: SambaDomain, states: States
) -> None:
    assert _open(ldap_server, states.ok.principal, PASSWORD).status_code == 200
    ldap_user = samba_domain.add_user(_unique("wd-ldap-"), PASSWORD)
    _map(ldap_server, ldap_user, "Ldap")
    _map(ldap_server, states.locked, "Ldap")
    assert _open(ldap_server, _login(ldap_user, "Ldap"), PASSWORD).status_code == 200
    locked = _login(states.locked, "Ldap")
    assert _error(_open(ldap_server, locked, PASSWORD))[:2] == (401, "invalid_credentials")
    assert _reasons(ldap_server, locked)[-1] == "directory: account locked out (AD data 775)"


def test_ad_refuses_anonymous_searches_so_a_missing_bind_dn_is_a_503_naming_it(
    kerberos_server: ServerProcess, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    user = dc.add_user(_unique("wd-anon-"), PASSWORD)
    # What AD (here Samba) answers an anonymous search, over LDAPS.
    conn = ldap3.Connection(ldap3.Server(dc.ldaps_url, tls=dc.ldap_tls(), get_info=ldap3.NONE))
    conn.open()
    conn.search(dc.base_dn, f"(sAMAccountName={user.name})")
    assert conn.result["description"] == "operationsError"
    assert "00002020: Operation unavailable without authentication" in conn.result["message"]
    conn.unbind()

    _map(kerberos_server, user, "Ldap")
    for _ in range(2):
        answer = _open(kerberos_server, _login(user, "Ldap"), PASSWORD)
        status, code, _message = _error(answer)
        assert (status, code, _cause(answer)) == (
            503,
            "service_unavailable",
            "search_needs_bind_dn",
        )
        message = _logged(kerberos_server, answer)
        assert "refuses anonymous searches" in message
        assert "set ldap.bind_dn and bind_password (a search account)" in message
    assert "refuses anonymous searches" in _log(kerberos_server)
