"""The server's side of Windows domain sign-in against a real Samba AD DC (the
``samba_domain`` fixture): a stale keytab or one with the wrong keys, every keytab, principal
and krb5.conf fault, a certificate that does not name the address, the domain out of reach
and cleartext LDAP are each a 503 or a refusal to start naming the setting to fix
(docs/windows.md). The accounts' own answers are in tests/test_windows_domain.py, whose
helpers these tests share.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import ldap3
import pytest

from sessiond.auth.directory import Directory
from sessiond.auth.ldap import LdapAuthenticator
from sessiond.errors import InvalidCredentials, ServiceUnavailable, SettingsError
from sessiond.settings import DirectorySettings, LdapSettings
from tests.infra.samba import DomainUser, SambaDomain

from .conftest import free_port, server_env
from .test_windows_domain import (
    PASSWORD,
    WRONG,
    _cause,
    _error,
    _in_process,
    _kerberos_config,
    _log,
    _logged,
    _login,
    _map,
    _open,
    _server,
    _service_account,
    _unique,
)


@pytest.fixture(scope="module")
def ok(samba_domain: SambaDomain) -> DomainUser:
    """A usable account, password ``PASSWORD``."""
    return samba_domain.add_user(_unique("wd-ok-"), PASSWORD)


# --- Kerberos: the keytab ------------------------------------------------------------------


def test_a_stale_keytab_is_a_503_naming_it_and_a_fresh_one_works_without_a_restart(
    tmp_path: Path, samba_domain: SambaDomain, ok: DomainUser
) -> None:
    dc = samba_domain
    keytab = tmp_path / "sessiond.keytab"
    svc = _service_account(dc, keytab)
    server = _server(tmp_path / "server", dc, _kerberos_config(dc, svc))
    try:
        _map(server, ok)
        assert _open(server, ok.name, PASSWORD, "SAMBA").status_code == 200

        dc.reset_service_password(svc)  # new keys, kvno 2: the keytab on disk is stale
        for _ in range(2):
            answer = _open(server, ok.name, PASSWORD, "SAMBA")
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
        assert _error(_open(server, ok.name, WRONG, "SAMBA"))[:2] == (
            401,
            "invalid_credentials",
        )

        fresh = tmp_path / "fresh.keytab"
        dc.export_keytab(svc.principal, str(fresh))
        os.replace(fresh, keytab)  # the operator copies the new keytab over the old one
        pid = server.process.pid if server.process else None
        assert _open(server, ok.name, PASSWORD, "SAMBA").status_code == 200
        assert server.process is not None and server.process.pid == pid
    finally:
        server.stop()


def _set_enctypes(dc: SambaDomain, dn: str, value: int) -> None:
    """msDS-SupportedEncryptionTypes: 0x18 AES only, 0x4 RC4 only (AD's default without it)."""
    with dc.admin_connection() as conn:
        changes = {"msDS-SupportedEncryptionTypes": [(ldap3.MODIFY_REPLACE, [str(value)])]}
        assert conn.modify(dn, changes), conn.result


def test_an_aes_only_keytab_while_the_domain_issues_rc4_tickets_is_a_503_saying_so(
    tmp_path: Path, samba_domain: SambaDomain, ok: DomainUser
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
        _map(server, ok)
        assert _open(server, ok.name, PASSWORD, "SAMBA").status_code == 200
        _set_enctypes(dc, svc.dn, 0x4)  # AES not enabled on the account: RC4 tickets
        answer = _open(server, ok.name, PASSWORD, "SAMBA")
        status, code, _message = _error(answer)
        assert (status, code, _cause(answer)) == (503, "service_unavailable", "keytab_keys_wrong")
        message = _logged(server, answer)
        assert f"the keytab {keytab} has no key of the type the domain encrypts" in message
        assert "KRB5KRB_AP_ERR_NOKEY" in message
        assert "This account supports Kerberos AES 256 bit encryption" in message
        _set_enctypes(dc, svc.dn, 0x18)
        assert _open(server, ok.name, PASSWORD, "SAMBA").status_code == 200
    finally:
        server.stop()


def _tool(dc: SambaDomain) -> dict[str, Any]:
    return {"env": dc.subprocess_env(), "capture_output": True, "text": True, "check": True}


def test_every_keytab_and_principal_fault_is_a_503_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samba_domain: SambaDomain, ok: DomainUser
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
            auth._kerberos_check(auth.names.parse(ok.down_level), PASSWORD)
        assert expected in refused.value.message, refused.value.message
        assert refused.value.details == {"cause": cause}
    good = _in_process(monkeypatch, dc, service_principal=svc.principal, keytab=svc.keytab)
    good._kerberos_check(good.names.parse(ok.down_level), PASSWORD)


def test_kerberos_configuration_faults_are_503s_and_unknown_realms_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samba_domain: SambaDomain, ok: DomainUser
) -> None:
    dc = samba_domain
    broken = tmp_path / "krb5.conf"
    broken.write_text("[libdefaults\n default_realm = SAMBA.TEST\n")
    auth = _in_process(monkeypatch, dc, verify_kdc=False, krb5_config=str(broken))
    with pytest.raises(ServiceUnavailable, match=r"krb5\.conf \(windows\.krb5_config\)"):
        auth._kerberos_check(auth.names.parse(ok.down_level), PASSWORD)

    auth = _in_process(monkeypatch, dc, verify_kdc=False)
    with pytest.raises(InvalidCredentials) as refused:  # not read as the default realm
        auth._kerberos_check(auth.names.parse("someone@ELSEWHERE.TEST"), PASSWORD)
    assert refused.value.reason == "unknown realm ELSEWHERE.TEST"
    # The configured realm itself missing from krb5.conf is the server's fault.
    empty = tmp_path / "empty-krb5.conf"
    empty.write_text("[libdefaults]\n dns_lookup_kdc = false\n")
    auth = _in_process(monkeypatch, dc, verify_kdc=False, krb5_config=str(empty))
    with pytest.raises(ServiceUnavailable, match=r"no KDC is known for SAMBA\.TEST"):
        auth._kerberos_check(auth.names.parse(ok.down_level), PASSWORD)


def test_ldaps_to_an_address_fails_on_the_certificate_name(
    samba_domain: SambaDomain, ok: DomainUser
) -> None:
    dc = samba_domain
    directory = Directory(
        DirectorySettings(url=dc.ldaps_url, ca_file=Path(dc.ca_file)), section="windows.directory"
    )
    with pytest.raises(ServiceUnavailable) as refused:
        directory.bind(ok.upn, PASSWORD)
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
    tmp_path: Path, samba_domain: SambaDomain, ok: DomainUser
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

        _map(server, ok)
        _map(server, ok, "Ldap")
        causes = {
            ok.name: "kdc_unreachable",
            _login(ok, "Ldap"): "directory_unreachable",
        }
        for login, cause in causes.items():
            responses = [_open(server, login, PASSWORD) for _ in range(2)]
            answers = [_error(response) for response in responses]
            assert answers[0] == answers[1], answers
            assert answers[0][:2] == (503, "service_unavailable")
            assert [_cause(response) for response in responses] == [cause, cause]
        kdc = _logged(server, _open(server, ok.name, PASSWORD))
        assert "the KDC of SAMBA.TEST cannot be reached (KRB5_KDC_UNREACH" in kdc
        directory = _logged(server, _open(server, _login(ok, "Ldap"), PASSWORD))
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
