"""The Samba AD DC test infrastructure (tests/infra/samba.py), checked against the real DC.

One domain controller serves the whole test session (fixture ``samba_domain``). What the DC
answers is recorded here as Samba 4.17 (Debian 12) really answers it; where Windows answers
differently, the comment says so.
"""

from __future__ import annotations

import base64
import datetime
import gc
import os
import socket
import ssl
import struct
import subprocess
import sys
import uuid
import warnings
from contextlib import suppress

import gssapi
import ldap3
import pytest
import spnego
from gssapi.raw import acquire_cred_with_password
from gssapi.raw.misc import GSSError
from ldap3.core.exceptions import LDAPException

from tests.infra._net import port_answers
from tests.infra.kerberos import KinitError
from tests.infra.samba import AccountStates, DomainUser, SambaDomain, ad_subcode

PASSWORD = "Pass-word-1"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def states(samba_domain: SambaDomain) -> AccountStates:
    """One account per state Active Directory reports, all with password ``PASSWORD``."""
    return samba_domain.add_users_in_each_state("", PASSWORD)


# ---------------------------------------------------------------------- the DC itself


def test_domain_controller_runs_on_its_own_loopback_address(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    assert dc.running
    assert dc.host.startswith("127.") and dc.host != "127.0.0.1"
    assert dc.ldap_url == f"ldap://{dc.host}:389"
    for port in (389, 636, 3268, 3269, 135, dc.kdc_port, dc.kpasswd_port, dc.dns_port):
        assert port_answers(port, dc.host), port
    assert dc.samba_version.startswith("4.")
    assert (dc.realm, dc.domain, dc.dc_fqdn) == ("SAMBA.TEST", "SAMBA", "dc1.samba.test")
    assert dc.certificate_name == "DC1.samba.test"  # Samba's own certificate: CN only, no SAN
    assert set(dc.timings) >= {"provision", "start", "configure"}
    with dc.admin_connection() as conn:
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["defaultNamingContext"])
        assert conn.entries[0]["defaultNamingContext"].value == "DC=samba,DC=test"


def _dns_query_a(name: str, address: str, port: int) -> list[str]:
    """A records for ``name`` from the DNS server at ``address``:``port`` (one UDP query)."""
    query_id = 0x5A5A
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, (address, port))
        reply = sock.recv(4096)
    rid, flags, _qd, answers, _ns, _ar = struct.unpack(">HHHHHH", reply[:12])
    assert rid == query_id
    if flags & 0x000F:  # rcode: NXDOMAIN and friends
        return []
    offset = 12 + len(question) + 4
    found = []
    for _ in range(answers):
        if reply[offset] & 0xC0 == 0xC0:
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        rtype, _rclass, _ttl, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == 1:
            found.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return found


def test_dc_host_name_resolves_without_etc_hosts(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    # Samba's own DNS server, on a free port, knows the DC and forwards nothing.
    assert _dns_query_a("dc1.samba.test", dc.host, dc.dns_port) == [dc.host]
    assert _dns_query_a("example.com", dc.host, dc.dns_port) == []
    # Child processes resolve it through nss_wrapper.
    result = subprocess.run(
        ["getent", "hosts", "dc1.samba.test"],
        capture_output=True,
        text=True,
        env=dc.subprocess_env(wrappers=True),
        timeout=10,
        check=True,
    )
    assert result.stdout.split()[0] == dc.host
    connect = f"import socket; socket.create_connection(('{dc.dc_fqdn}', 389), 5).close()"
    subprocess.run(
        [sys.executable, "-c", connect],
        env=dc.subprocess_env(wrappers=True),
        timeout=30,
        check=True,
    )
    assert dc.ldap_host_url == "ldap://dc1.samba.test:389"


# ---------------------------------------------------------------------- Kerberos


def test_kinit_with_a_users_password(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    user = dc.add_user(_unique("kin-"), PASSWORD)
    ccache = dc.kinit(user.name, PASSWORD)
    listing = subprocess.run(
        ["klist", ccache], capture_output=True, text=True, env=dc.subprocess_env(), check=True
    ).stdout
    assert f"Default principal: {user.principal}" in listing
    assert "krbtgt/SAMBA.TEST@SAMBA.TEST" in listing
    with pytest.raises(KinitError, match="Password incorrect"):
        dc.kinit(user.name, "Wrong-pass-1")


def test_kinit_refusals_by_account_state(samba_domain: SambaDomain, states: AccountStates) -> None:
    """What MIT kinit says for each state, as the Samba KDC answers it."""
    dc = samba_domain

    def refusal(user: DomainUser) -> str:
        with pytest.raises(KinitError) as caught:
            dc.kinit(user.name, PASSWORD)
        return caught.value.output

    revoked = "Client's credentials have been revoked"  # KDC_ERR_CLIENT_REVOKED
    assert revoked in refusal(states.disabled)
    assert revoked in refusal(states.account_expired)
    assert revoked in refusal(states.locked)
    # KDC_ERR_KEY_EXPIRED: kinit asks for a new password, and there is none on its stdin.
    assert "Password expired.  You must change it now." in refusal(states.must_change)
    assert "Password expired.  You must change it now." in refusal(states.password_expired)
    with pytest.raises(KinitError, match="not found in Kerberos database"):
        dc.kinit(_unique("nobody-"), PASSWORD)
    dc.kinit(states.ok.name, PASSWORD)


def test_gssapi_password_check_by_account_state(
    samba_domain: SambaDomain, states: AccountStates
) -> None:
    """What in-process GSSAPI (acquire_cred_with_password, as sessiond's Kerberos check does)
    reports: always major "No credentials were supplied...", the KDC's error as the minor."""
    dc = samba_domain

    def minor(name: str, password: str = PASSWORD) -> str | None:
        principal = gssapi.Name(dc.principal(name), gssapi.NameType.kerberos_principal)
        with dc.activate():
            try:
                acquire_cred_with_password(principal, password.encode(), usage="initiate")
            except GSSError as exc:
                return str(exc.gen_message()).split("Minor (", 1)[1].split("): ", 1)[1]
        return None

    assert minor(states.ok.name) is None
    assert minor(states.ok.name, "Wrong-pass-1") == "Preauthentication failed"
    nobody = _unique("nobody-")
    assert minor(nobody) == f"Client '{nobody}@SAMBA.TEST' not found in Kerberos database"
    revoked = "Client's credentials have been revoked"
    assert minor(states.disabled.name) == revoked
    assert minor(states.account_expired.name) == revoked
    assert minor(states.locked.name) == revoked
    assert minor(states.must_change.name) == "Password has expired"
    assert minor(states.password_expired.name) == "Password has expired"


def _service_ticket(dc: SambaDomain, ccache: str, target: str) -> bytes:
    with dc.activate(ccache=ccache):
        name = gssapi.Name(target, gssapi.NameType.hostbased_service)
        ctx = gssapi.SecurityContext(name=name, usage="initiate", mech=gssapi.MechType.kerberos)
        token = ctx.step()
    assert token is not None
    return token


def _accept(dc: SambaDomain, keytab: str, token: bytes) -> str:
    with dc.activate(keytab=keytab):
        creds = gssapi.Credentials(usage="accept", store={"keytab": keytab})
        ctx = gssapi.SecurityContext(creds=creds, usage="accept")
        ctx.step(token)
        assert ctx.complete
        return str(ctx.initiator_name)


def test_service_account_keytab_and_stale_keytab(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    svc = dc.add_service_account("HTTP", "localhost")
    assert svc.principal == "HTTP/localhost@SAMBA.TEST"
    listing = subprocess.run(
        ["klist", "-k", "-e", svc.keytab], capture_output=True, text=True, check=True
    ).stdout
    assert "aes256-cts-hmac-sha1-96" in listing
    # The keytab works for the service itself (userPrincipalName = SPN, as ktpass sets it).
    subprocess.run(
        ["kinit", "-k", "-t", svc.keytab, "-c", dc.ccache_path("svc"), svc.principal],
        env=dc.subprocess_env(),
        check=True,
        capture_output=True,
    )

    user = dc.add_user(_unique("kt-"), PASSWORD)
    token = _service_ticket(dc, dc.kinit(user.name, PASSWORD), svc.gss_name)
    assert _accept(dc, svc.keytab, token) == user.principal

    # pyspnego, as sessiond's Negotiate acceptor uses it.
    with dc.activate(ccache=dc.kinit(user.name, PASSWORD)):
        client = spnego.client(hostname="localhost", service="HTTP", protocol="negotiate")
        first = client.step()
    with dc.activate(keytab=svc.keytab):
        server = spnego.server(protocol="negotiate", service="HTTP")
        server.step(first)
        assert server.complete
        assert server.negotiated_protocol == "kerberos"
        assert server.client_principal == user.principal

    # A new password means new keys (kvno 2): the exported keytab is stale. A fresh ccache is
    # needed, or the client reuses its cached kvno-1 ticket.
    renewed = dc.reset_service_password(svc)
    assert renewed.keytab == svc.keytab
    token = _service_ticket(dc, dc.kinit(user.name, PASSWORD), svc.gss_name)
    with pytest.raises(GSSError, match="kvno 2 not found in keytab; keytab is likely out of date"):
        _accept(dc, svc.keytab, token)
    fresh = dc.export_keytab(svc.principal, os.path.join(dc.tmpdir, "fresh.keytab"))
    assert _accept(dc, fresh, token) == user.principal


# ---------------------------------------------------------------------- LDAP


def test_ldap_starttls_bind_verifies_the_dc_certificate(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    user = dc.add_user(_unique("ldap-"), PASSWORD, mail="someone@samba.test")
    server = ldap3.Server(dc.ldap_url, tls=dc.ldap_tls(), get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=user.upn, password=PASSWORD, raise_exceptions=False)
    conn.open()
    assert conn.start_tls()
    assert conn.bind(), conn.result
    # (Samba does not implement the Who am I? extended operation: read our own entry.)
    conn.search(user.dn, "(objectClass=user)", ldap3.BASE, attributes=["mail"])
    assert conn.entries[0]["mail"].value == "someone@samba.test"
    conn.unbind()
    # Every spelling AD accepts: UPN, NetBIOS\name, principal, DN.
    for who in (user.upn, user.down_level, user.principal, user.dn):
        assert dc.bind(who, PASSWORD)["result"] == 0, who
    assert dc.bind(user.upn, PASSWORD, start_tls=False)["result"] == 0  # LDAPS

    # The certificate names DC1.samba.test only: the address alone does not match it ...
    strict = ldap3.Tls(
        validate=ssl.CERT_REQUIRED, ca_certs_file=dc.ca_file, version=ssl.PROTOCOL_TLS_CLIENT
    )
    refusal = _start_tls_refusal(dc.ldap_url, strict)
    assert f"doesn't match any name in ['{dc.host}']" in refusal
    # ... and a CA that did not sign it is refused.
    system_ca = ldap3.Tls(validate=ssl.CERT_REQUIRED, valid_names=[dc.certificate_name])
    refusal = _start_tls_refusal(dc.ldap_url, system_ca)
    assert "CERTIFICATE_VERIFY_FAILED" in refusal


def _start_tls_refusal(url: str, tls: ldap3.Tls) -> str:
    """The error of a StartTLS that must fail."""
    conn = ldap3.Connection(ldap3.Server(url, tls=tls, get_info=ldap3.NONE))
    conn.open()
    message = None
    # After a failed handshake or host name check ldap3 drops its TLS socket without closing
    # it: let it go here, quietly, rather than warn in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            conn.start_tls()
        except LDAPException as exc:
            message = str(exc)
        finally:
            with suppress(LDAPException):
                conn.unbind()
            if conn.socket is not None:
                conn.socket.close()
            gc.collect()
    assert message is not None, "StartTLS succeeded"
    return message


def test_ldap_bind_sub_codes(samba_domain: SambaDomain, states: AccountStates) -> None:
    """The ``data NNN`` in a failed bind's message, over StartTLS and LDAPS alike.

    Samba 4.17 produces 52e, 530, 531, 532, 533, 701, 773 and 775. It never produces 525: an
    unknown account answers 52e, like a wrong password (Windows says 525 there). A wrong
    password answers 52e whatever state the account is in, except locked out (775).
    """
    dc = samba_domain

    def code(user: str, password: str = PASSWORD) -> str | None:
        answers = {ad_subcode(dc.bind(user, password, start_tls=tls)) for tls in (True, False)}
        assert len(answers) == 1, answers
        return answers.pop()

    assert code(states.ok.upn) is None
    assert code(states.ok.upn, "Wrong-pass-1") == "52e"  # wrong password
    assert code(f"{_unique('nobody-')}@samba.test") == "52e"  # unknown (Windows: 525)
    assert code(states.disabled.upn) == "533"
    assert code(states.must_change.upn) == "773"
    assert code(states.password_expired.upn) == "532"
    assert code(states.account_expired.upn) == "701"
    assert code(states.locked.upn) == "775"
    assert code(states.locked.upn, "Wrong-pass-1") == "775"  # locked wins over wrong
    # A wrong password on an account in any other state is just a wrong password.
    for user in (
        states.disabled,
        states.must_change,
        states.password_expired,
        states.account_expired,
    ):
        assert code(user.upn, "Wrong-pass-1") == "52e"
    result = dc.bind(states.disabled.upn, PASSWORD)
    assert result["result"] == 49  # invalidCredentials
    assert result["message"].startswith("80090308: LdapErr: DSID-0C0903A9, comment: ")

    # Logon hours: none allowed -> 530. Workstations: only another machine -> 531.
    night = dc.add_user(_unique("hours-"), PASSWORD, logonHours=bytes(21))
    assert code(night.upn) == "530"
    elsewhere = dc.add_user(_unique("ws-"), PASSWORD, userWorkstations="OTHERPC")
    assert code(elsewhere.upn) == "531"


def test_account_state_helpers_round_trip(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    user = dc.add_user(_unique("rt-"), PASSWORD)
    dc.disable_user(user.name)
    assert ad_subcode(dc.bind(user.upn, PASSWORD)) == "533"
    dc.enable_user(user.name)
    assert dc.bind(user.upn, PASSWORD)["result"] == 0

    tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    dc.set_account_expiry(user.name, tomorrow)
    assert dc.bind(user.upn, PASSWORD)["result"] == 0
    dc.expire_account(user.name)
    assert ad_subcode(dc.bind(user.upn, PASSWORD)) == "701"
    dc.set_account_expiry(user.name, None)

    tries = dc.lock_out(user.name)
    # Threshold 3: the third wrong bind still answers 52e (and locks), the fourth 775.
    assert tries == 4
    attributes = dc.attributes(user.name, "lockoutTime", "badPwdCount")
    assert attributes["badPwdCount"] == ["3"]
    assert attributes["lockoutTime"] != ["0"]
    dc.unlock(user.name)
    assert dc.bind(user.upn, PASSWORD)["result"] == 0

    dc.set_password(user.name, "New-pass-2", must_change=True)
    assert ad_subcode(dc.bind(user.upn, "New-pass-2")) == "773"
    dc.set_password(user.name, "New-pass-3")
    assert dc.bind(user.upn, "New-pass-3")["result"] == 0
    dc.expire_password(user.name)
    assert ad_subcode(dc.bind(user.upn, "New-pass-3")) == "532"

    dc.delete(user.name)
    with pytest.raises(KeyError):
        dc.dn_of(user.name)


def test_domain_lockout_policy(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    try:
        dc.set_lockout_policy(5, duration_minutes=10, reset_after_minutes=10)
        with dc.admin_connection() as conn:
            conn.search(
                dc.base_dn, "(objectClass=domain)", ldap3.BASE, attributes=["lockoutThreshold"]
            )
            assert str(conn.entries[0]["lockoutThreshold"].value) == "5"
    finally:
        dc.set_lockout_policy(0)


def test_groups(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    first = dc.add_user(_unique("g1-"), PASSWORD)
    second = dc.add_user(_unique("g2-"), PASSWORD)
    group = _unique("grp-")
    group_dn = dc.add_group(group, [first.name], description="test group")
    dc.add_to_group(group, second.name)
    for user in (first, second):
        member_of = dc.attributes(user.name, "memberOf")["memberOf"]
        assert group_dn in member_of
    # Kerberos tickets carry the membership too; the group is visible to winbind.
    result = subprocess.run(
        ["wbinfo", "--group-info", f"SAMBA\\{group}"],
        capture_output=True,
        text=True,
        env=dc.subprocess_env(wrappers=True),
        timeout=30,
        check=True,
    )
    assert result.stdout.lower().startswith(f"samba\\{group}".lower())


# ---------------------------------------------------------------------- NTLM via ntlm_auth


def test_ntlm_auth_checks_a_password_with_the_dc(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    user = dc.add_user(_unique("nt-"), PASSWORD)
    assert dc.ntlm_auth(user.name, PASSWORD)[0]
    accepted, output = dc.ntlm_auth(user.name, "Wrong-pass-1")
    assert not accepted
    assert output.startswith("NT_STATUS_WRONG_PASSWORD")


def test_ntlm_auth_statuses_by_account_state(
    samba_domain: SambaDomain, states: AccountStates
) -> None:
    dc = samba_domain

    def status(name: str) -> str:
        accepted, output = dc.ntlm_auth(name, PASSWORD)
        assert not accepted
        return output.split(":", 1)[0]

    assert status(states.disabled.name) == "NT_STATUS_ACCOUNT_DISABLED"
    assert status(states.must_change.name) == "NT_STATUS_PASSWORD_MUST_CHANGE"
    assert status(states.password_expired.name) == "NT_STATUS_PASSWORD_EXPIRED"
    assert status(states.account_expired.name) == "NT_STATUS_ACCOUNT_EXPIRED"
    assert status(states.locked.name) == "NT_STATUS_ACCOUNT_LOCKED_OUT"
    assert status(_unique("nobody-")) == "NT_STATUS_NO_SUCH_USER"


def _squid_exchange(dc: SambaDomain, user: str, password: str) -> tuple[str, str]:
    """A real NTLM exchange: pyspnego's client <-> ntlm_auth's squid-2.5-ntlmssp helper."""
    client = spnego.client(user, password, protocol="ntlm")
    with dc.ntlm_helper("squid-2.5-ntlmssp") as helper:
        code, challenge = helper.ask("YR", client.step())
        assert code == "TT"
        return helper.ask("KK", client.step(base64.b64decode(challenge)))


def test_squid_ntlmssp_helper(samba_domain: SambaDomain, states: AccountStates) -> None:
    dc = samba_domain
    user = states.ok
    assert _squid_exchange(dc, user.down_level, PASSWORD) == ("AF", user.down_level)
    # A UPN-style name is answered with the down-level name.
    assert _squid_exchange(dc, user.principal, PASSWORD) == ("AF", user.down_level)
    # A wrong password and an unknown user look the same through NTLMSSP.
    refused = ("NA", "NT_STATUS_LOGON_FAILURE")
    assert _squid_exchange(dc, user.down_level, "Wrong-pass-1") == refused
    assert _squid_exchange(dc, f"SAMBA\\{_unique('nobody-')}", PASSWORD) == refused
    expected = {
        states.disabled: "NT_STATUS_ACCOUNT_DISABLED",
        states.must_change: "NT_STATUS_PASSWORD_MUST_CHANGE",
        states.password_expired: "NT_STATUS_PASSWORD_EXPIRED",
        states.account_expired: "NT_STATUS_ACCOUNT_EXPIRED",
        states.locked: "NT_STATUS_ACCOUNT_LOCKED_OUT",
    }
    for account, status in expected.items():
        assert _squid_exchange(dc, account.down_level, PASSWORD) == ("NA", status)


def test_gss_spnego_helper_with_ntlm(samba_domain: SambaDomain, states: AccountStates) -> None:
    dc = samba_domain
    user = states.ok

    def exchange(password: str) -> tuple[str, str]:
        client = spnego.client(
            user.down_level,
            password,
            protocol="negotiate",
            options=spnego.NegotiateOptions.use_ntlm,
        )
        with dc.ntlm_helper("gss-spnego") as helper:
            code, challenge = helper.ask("YR", client.step())
            assert code == "TT"
            return helper.ask("KK", client.step(base64.b64decode(challenge)))

    # "AF <token or *> <user>" / "NA <token or *> <status>"
    assert exchange(PASSWORD) == ("AF", f"* {user.down_level}")
    assert exchange("Wrong-pass-1") == ("NA", "* NT_STATUS_LOGON_FAILURE")


def test_environments(samba_domain: SambaDomain, monkeypatch: pytest.MonkeyPatch) -> None:
    dc = samba_domain
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    env = dc.subprocess_env(ccache="/tmp/x", wrappers=True)
    assert env["KRB5_CONFIG"] == dc.krb5_conf
    assert env["KRB5CCNAME"] == "FILE:/tmp/x"
    assert env["SELFTEST_WINBINDD_SOCKET_DIR"] == dc.winbindd_socket_dir
    assert "libnss_wrapper.so" in env["LD_PRELOAD"]
    with dc.activate(ccache="/tmp/y"):
        assert os.environ["KRB5CCNAME"] == "FILE:/tmp/y"
    assert "KRB5CCNAME" not in os.environ


def test_helpers_reconnect_when_the_dc_drops_their_connection(samba_domain: SambaDomain) -> None:
    dc = samba_domain
    dc.dn_of("Administrator")  # the helpers' connection is open now
    conn = dc._admin_conn
    assert conn is not None and conn.socket is not None
    conn.socket.shutdown(socket.SHUT_RDWR)  # as when samba closes an idle connection
    user = dc.add_user(_unique("re-"), PASSWORD)
    assert dc.dn_of(user.name) == user.dn
    assert dc._admin_conn is not conn
