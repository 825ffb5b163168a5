"""Windows domain sign-in against a real Samba AD DC (the ``samba_domain`` fixture): every
answer of the domain is a documented refusal, over HTTP from real ``sessiond serve``
processes, with the audit reason naming what the domain said (docs/windows.md, "Refusals and
their audit reasons").

Accounts are put in each state the way tests/test_samba_infra.py records Samba 4.17 answering
for it. The audit trail is read with ``sessiond audit export``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ldap3
import pytest

from sessiond.auth.directory import Directory
from sessiond.auth.ldap import LdapAuthenticator
from sessiond.auth.windows import WindowsAuthenticator
from sessiond.errors import (
    InvalidCredentials,
    PasswordExpired,
    ServiceUnavailable,
    SettingsError,
)
from sessiond.settings import DirectorySettings, LdapSettings, WindowsSettings
from tests.infra.kerberos import KerberosRealm
from tests.infra.samba import AccountStates, DomainUser, SambaDomain, ServiceAccount

from .conftest import ServerProcess, free_port, server_env

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
    root.mkdir(parents=True, exist_ok=True)
    settings = root / "sessiond.toml"
    # Unmapped accounts are tried here on purpose: no limit per address for these servers.
    settings.write_text(config + "\n[sessiond.security]\nunmapped_address_failures = 0\n")
    data_dir = root / "sessiond-data"
    env = dc.subprocess_env(base=server_env(data_dir, SESSIOND_CONFIG=str(settings)), wrappers=True)
    env.pop("KRB5CCNAME", None)  # the server works from its settings, never a credential cache
    server = ServerProcess(data_dir, free_port(), env, root / "server.log")
    server.start()
    return server


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
    user: DomainUser = getattr(states, state)
    response = _open(kerberos_server, user.name, password, "SAMBA")
    assert _error(response) == (401, "invalid_credentials", "wrong login or password")
    assert _reasons(kerberos_server, user.name)[-1].startswith(reason)


@pytest.mark.parametrize("state", ["must_change", "password_expired"])
def test_kerberos_a_right_password_that_must_be_changed_says_where_to_change_it(
    kerberos_server: ServerProcess, states: States, state: str
) -> None:
    user: DomainUser = getattr(states, state)
    response = _open(kerberos_server, f"{user.name}@{user.realm}", PASSWORD)
    status, code, message = _error(response)
    assert (status, code) == (401, "password_expired")
    assert "Change a password" in message and "not changed through sessiond" in message
    assert response.json()["error"]["details"] == {"change_in_domain": True}
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


# --- Kerberos: the keytab ------------------------------------------------------------------


def test_a_stale_keytab_is_a_503_naming_it_and_a_fresh_one_works_without_a_restart(
    tmp_path: Path, samba_domain: SambaDomain, states: States
) -> None:
    dc = samba_domain
    keytab = tmp_path / "sessiond.keytab"
    svc = _service_account(dc, keytab)
    server = _server(tmp_path / "server", dc, _kerberos_config(dc, svc))
    try:
        _map(server, states.ok)
        assert _open(server, states.ok.name, PASSWORD, "SAMBA").status_code == 200

        dc.reset_service_password(svc)  # new keys, kvno 2: the keytab on disk is stale
        for _ in range(2):
            answer = _open(server, states.ok.name, PASSWORD, "SAMBA")
            status, code, _message = _error(answer)
            assert (status, code, _cause(answer)) == (503, "service_unavailable", "keytab_stale")
            message = _logged(server, answer)
            assert f"the keytab {keytab} holds no current key for {svc.principal}" in message
            assert "KRB5KRB_AP_ERR_BADKEYVER" in message
        lines = [line for line in _log(server).splitlines() if "holds no current key" in line]
        assert len(lines) == 2  # one line per refusal, saying how to fix it
        assert (
            f"samba-tool domain exportkeytab sessiond.keytab --principal={svc.principal}"
            in (lines[0])
        )
        assert f"ktpass -princ {svc.principal} -mapuser" in lines[0]
        # A wrong password is still just a wrong password.
        assert _error(_open(server, states.ok.name, WRONG, "SAMBA"))[:2] == (
            401,
            "invalid_credentials",
        )

        fresh = tmp_path / "fresh.keytab"
        dc.export_keytab(svc.principal, str(fresh))
        os.replace(fresh, keytab)  # the operator copies the new keytab over the old one
        pid = server.process.pid if server.process else None
        assert _open(server, states.ok.name, PASSWORD, "SAMBA").status_code == 200
        assert server.process is not None and server.process.pid == pid
    finally:
        server.stop()


def _set_enctypes(dc: SambaDomain, dn: str, value: int) -> None:
    """msDS-SupportedEncryptionTypes: 0x18 AES only, 0x4 RC4 only (AD's default without it)."""
    with dc.admin_connection() as conn:
        changes = {"msDS-SupportedEncryptionTypes": [(ldap3.MODIFY_REPLACE, [str(value)])]}
        assert conn.modify(dn, changes), conn.result


def test_an_aes_only_keytab_while_the_domain_issues_rc4_tickets_is_a_503_saying_so(
    tmp_path: Path, samba_domain: SambaDomain, states: States
) -> None:
    dc = samba_domain
    exported = tmp_path / "exported.keytab"
    svc = _service_account(dc, exported)  # AES allowed: aes256, aes128 and RC4 keys exported
    # What "ktpass -crypto AES256-SHA1" writes: the AES-256 key alone.
    keytab = tmp_path / "aes256.keytab"
    listing = subprocess.run(
        ["ktutil"], input=f"rkt {exported}\nlist -e\nquit\n", **_tool(dc)
    ).stdout
    slots = [line.split() for line in listing.splitlines() if line.split()[:1] != ["ktutil:"]]
    others = [row[0] for row in slots if row and row[0].isdigit() and "aes256" not in row[-1]]
    assert others, listing
    commands = "".join(f"delent {slot}\n" for slot in sorted(others, key=int, reverse=True))
    subprocess.run(["ktutil"], input=f"rkt {exported}\n{commands}wkt {keytab}\nquit\n", **_tool(dc))
    server = _server(
        tmp_path / "server", dc, _kerberos_config(dc, svc).replace(str(exported), str(keytab))
    )
    try:
        _map(server, states.ok)
        assert _open(server, states.ok.name, PASSWORD, "SAMBA").status_code == 200
        _set_enctypes(dc, svc.dn, 0x4)  # AES not enabled on the account: RC4 tickets
        answer = _open(server, states.ok.name, PASSWORD, "SAMBA")
        status, code, _message = _error(answer)
        assert (status, code, _cause(answer)) == (503, "service_unavailable", "keytab_keys_wrong")
        message = _logged(server, answer)
        assert f"the keytab {keytab} has no key of the type the domain encrypts" in message
        assert "KRB5KRB_AP_ERR_NOKEY" in message
        assert "This account supports Kerberos AES 256 bit encryption" in message
        _set_enctypes(dc, svc.dn, 0x18)
        assert _open(server, states.ok.name, PASSWORD, "SAMBA").status_code == 200
    finally:
        server.stop()


def _tool(dc: SambaDomain) -> dict[str, Any]:
    return {"env": dc.subprocess_env(), "capture_output": True, "text": True, "check": True}


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


def test_every_keytab_and_principal_fault_is_a_503_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samba_domain: SambaDomain, states: States
) -> None:
    dc = samba_domain
    svc = _service_account(dc, tmp_path / "good.keytab")
    other = _service_account(dc, tmp_path / "other.keytab")
    garbage = tmp_path / "garbage.keytab"
    garbage.write_bytes(b"not a keytab")
    unknown_spn = f"HTTP/{_unique('nowhere-')}.{dc.dns_domain}@{dc.realm}"
    faults = {
        "does not exist": ("keytab_unusable", svc.principal, tmp_path / "missing.keytab"),
        "is not a keytab": ("keytab_unusable", svc.principal, garbage),
        f"holds no key for {svc.principal}": (
            "keytab_wrong_principal",
            svc.principal,
            Path(other.keytab),
        ),
        f"the domain has no service principal {unknown_spn}": (
            "service_principal_unknown",
            unknown_spn,
            Path(svc.keytab),
        ),
    }
    for expected, (cause, principal, keytab) in faults.items():
        auth = _in_process(monkeypatch, dc, service_principal=principal, keytab=str(keytab))
        with pytest.raises(ServiceUnavailable) as refused:
            auth._kerberos_check(auth.names.parse(states.ok.down_level), PASSWORD)
        assert expected in refused.value.message, refused.value.message
        assert refused.value.details == {"cause": cause}
    good = _in_process(monkeypatch, dc, service_principal=svc.principal, keytab=svc.keytab)
    good._kerberos_check(good.names.parse(states.ok.down_level), PASSWORD)


def test_kerberos_configuration_faults_are_503s_and_unknown_realms_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samba_domain: SambaDomain, states: States
) -> None:
    dc = samba_domain
    broken = tmp_path / "krb5.conf"
    broken.write_text("[libdefaults\n default_realm = SAMBA.TEST\n")
    auth = _in_process(monkeypatch, dc, verify_kdc=False, krb5_config=str(broken))
    with pytest.raises(ServiceUnavailable, match=r"krb5\.conf \(windows\.krb5_config\)"):
        auth._kerberos_check(auth.names.parse(states.ok.down_level), PASSWORD)

    auth = _in_process(monkeypatch, dc, verify_kdc=False)
    with pytest.raises(InvalidCredentials) as refused:  # not read as the default realm
        auth._kerberos_check(auth.names.parse("someone@ELSEWHERE.TEST"), PASSWORD)
    assert refused.value.reason == "unknown realm ELSEWHERE.TEST"
    # The configured realm itself missing from krb5.conf is the server's fault.
    empty = tmp_path / "empty-krb5.conf"
    empty.write_text("[libdefaults]\n dns_lookup_kdc = false\n")
    auth = _in_process(monkeypatch, dc, verify_kdc=False, krb5_config=str(empty))
    with pytest.raises(ServiceUnavailable, match=r"no KDC is known for SAMBA\.TEST"):
        auth._kerberos_check(auth.names.parse(states.ok.down_level), PASSWORD)


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
    user: DomainUser = getattr(states, state)
    response = _open(ldap_server, user.name, password, "SAMBA")
    assert _error(response) == (401, "invalid_credentials", "wrong login or password")
    assert _reasons(ldap_server, user.name)[-1].startswith(reason)


@pytest.mark.parametrize(
    ("state", "sub_code"), [("must_change", "773"), ("password_expired", "532")]
)
def test_ldap_bind_a_right_password_that_must_be_changed_is_password_expired(
    ldap_server: ServerProcess, samba_domain: SambaDomain, states: States, state: str, sub_code: str
) -> None:
    user: DomainUser = getattr(states, state)
    status, code, message = _error(_open(ldap_server, user.down_level, PASSWORD))
    assert (status, code) == (401, "password_expired")
    assert "Change a password" in message and "not changed through sessiond" in message
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


def test_ldaps_to_an_address_fails_on_the_certificate_name(
    samba_domain: SambaDomain, states: States
) -> None:
    dc = samba_domain
    directory = Directory(
        DirectorySettings(url=dc.ldaps_url, ca_file=Path(dc.ca_file)), section="windows.directory"
    )
    with pytest.raises(ServiceUnavailable) as refused:
        directory.bind(states.ok.upn, PASSWORD)
    message = refused.value.message
    assert refused.value.details == {"cause": "directory_certificate"}
    assert "cannot be verified" in message and "windows.directory.url" in message
    assert "not an IP address" in message


# --- the domain unreachable, start-up warnings, cleartext refused --------------------------


def _closed_port(host: str) -> int:
    """A port on ``host`` nothing listens on."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_kdc_or_directory_is_a_503_every_time_with_the_same_message(
    tmp_path: Path, samba_domain: SambaDomain, states: States
) -> None:
    dc = samba_domain
    closed = _closed_port(dc.host)
    krb5_conf = tmp_path / "krb5.conf"
    text = Path(dc.krb5_conf).read_text()
    krb5_conf.write_text(
        text.replace(f"kdc = {dc.host}:{dc.kdc_port}", f"kdc = {dc.host}:{closed}")
    )
    url = f"ldap://{dc.dc_fqdn}:{closed}"
    server = _server(
        tmp_path / "server",
        dc,
        f"""
[sessiond.windows]
realm = "{dc.realm}"
krb5_config = "{krb5_conf}"
verify_kdc = false
negotiate = false

[sessiond.ldap]
url = "{url}"
allow_cleartext_ldap = true
bind_dn = "{dc.admin_principal}"
bind_password = "{dc.admin_password}"
search_base = "{dc.base_dn}"
""",
    )
    try:
        log = _log(server)
        warnings = [line for line in log.splitlines() if "WARNING" in line]
        verify = [line for line in warnings if "windows.verify_kdc = false" in line]
        cleartext = [line for line in warnings if "ldap.allow_cleartext_ldap = true" in line]
        assert len(verify) == 1 and "whatever answers as the KDC of SAMBA.TEST" in verify[0]
        assert len(cleartext) == 1 and url in cleartext[0]

        _map(server, states.ok)
        _map(server, states.ok, "Ldap")
        causes = {
            states.ok.name: "kdc_unreachable",
            _login(states.ok, "Ldap"): "directory_unreachable",
        }
        for login, cause in causes.items():
            responses = [_open(server, login, PASSWORD) for _ in range(2)]
            answers = [_error(response) for response in responses]
            assert answers[0] == answers[1], answers
            assert answers[0][:2] == (503, "service_unavailable")
            assert [_cause(response) for response in responses] == [cause, cause]
        kdc = _logged(server, _open(server, states.ok.name, PASSWORD))
        assert "the KDC of SAMBA.TEST cannot be reached (KRB5_KDC_UNREACH" in kdc
        directory = _logged(server, _open(server, _login(states.ok, "Ldap"), PASSWORD))
        assert f"the directory {url} cannot be reached" in directory
        assert "invalid server address" not in directory
    finally:
        server.stop()


@pytest.mark.parametrize("section", ["ldap", "windows.directory"])
def test_plain_ldap_without_starttls_stops_the_server_at_start(
    tmp_path: Path, samba_domain: SambaDomain, section: str
) -> None:
    dc = samba_domain
    url = f"ldap://{dc.dc_fqdn}:389"
    if section == "ldap":
        config = f'[sessiond.ldap]\nurl = "{url}"\nsearch_base = "{dc.base_dn}"\n'
    else:
        config = (
            f'[sessiond.windows]\nrealm = "{dc.realm}"\npassword_check = "ldap"\n'
            f'negotiate = false\n[sessiond.windows.directory]\nurl = "{url}"\n'
        )
    (tmp_path / "sessiond.toml").write_text(config)
    data_dir = tmp_path / "sessiond-data"
    env = dc.subprocess_env(
        base=server_env(data_dir, SESSIOND_CONFIG=str(tmp_path / "sessiond.toml")), wrappers=True
    )
    result = subprocess.run(
        [sys.executable, "-m", "sessiond", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error [invalid_settings]: invalid settings: {section}.url {url}")
    assert f"{section}.allow_cleartext_ldap = true" in lines[0]


def test_cleartext_is_refused_when_the_authenticator_is_built(samba_domain: SambaDomain) -> None:
    with pytest.raises(SettingsError, match=r"ldap\.allow_cleartext_ldap = true"):
        LdapAuthenticator(LdapSettings(url=samba_domain.ldap_url))
    LdapAuthenticator(LdapSettings(url=samba_domain.ldap_url, start_tls=True))
    LdapAuthenticator(LdapSettings(url=samba_domain.ldaps_url))
