"""Proof that the directory test infrastructure (tests/infra) really works.

Real processes only: an MIT KDC (krb5kdc), OpenLDAP (slapd), curl; no mocks, no skips.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import gssapi
import gssapi.raw
import ldap3
import pytest
import spnego
from gssapi.raw.misc import GSSError
from gssapi.raw.named_tuples import AcquireCredResult
from ldap3.core.exceptions import LDAPSocketOpenError
from spnego.exceptions import BadMechanismError, SpnegoError

from tests.infra._net import free_port
from tests.infra._process import stop_process, wait_for_ports
from tests.infra.kerberos import KerberosRealm, KinitError
from tests.infra.ldap import LdapServer, write_tls_files
from tests.infra.ntlm import NtlmUsers


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _exchange(
    client: spnego.ContextProxy, server: spnego.ContextProxy, max_rounds: int = 5
) -> None:
    """Run a GSSAPI/SPNEGO/NTLM token exchange until the acceptor is complete (bounded)."""
    token = client.step()
    for _ in range(max_rounds):
        assert token is not None, "initiator produced no token before the acceptor completed"
        reply = server.step(token)
        if server.complete:
            if reply is not None and not client.complete:
                client.step(reply)  # mutual auth (AP-REP) / final SPNEGO mechListMIC
            return
        token = client.step(reply)
    raise AssertionError(f"exchange not complete after {max_rounds} rounds")


def _password_creds(principal: str, password: str) -> AcquireCredResult:
    name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
    return gssapi.raw.acquire_cred_with_password(name, password.encode(), usage="initiate")


# --------------------------------------------------------------------------- (a) kinit


def test_kinit_cli_right_password_gets_tgt(kerberos_realm: KerberosRealm) -> None:
    user = kerberos_realm.add_user(_unique("alice"), "Right-Pass-1")

    ccache = kerberos_realm.kinit(user, "Right-Pass-1")

    listing = kerberos_realm.klist(ccache)
    assert f"Default principal: {user}" in listing
    assert f"krbtgt/{kerberos_realm.realm}@{kerberos_realm.realm}" in listing


def test_kinit_cli_wrong_password_fails(kerberos_realm: KerberosRealm) -> None:
    user = kerberos_realm.add_user(_unique("alice"), "Right-Pass-1")

    with pytest.raises(KinitError) as info:
        kerberos_realm.kinit(user, "wrong-password")

    assert info.value.returncode != 0
    assert (
        "Password incorrect" in info.value.output or "Preauthentication failed" in info.value.output
    )


def test_gssapi_acquire_cred_with_password(kerberos_realm: KerberosRealm) -> None:
    user = kerberos_realm.add_user(_unique("bob"), "Bob-Pass-1")

    with kerberos_realm.activate():
        result = _password_creds(user, "Bob-Pass-1")
        assert str(gssapi.Credentials(result.creds).name) == user
        assert result.lifetime is not None and result.lifetime > 0

        with pytest.raises(GSSError, match=r"Preauthentication failed|Password incorrect"):
            _password_creds(user, "Bob-Pass-2")
        with pytest.raises(GSSError, match="not found in Kerberos database"):
            _password_creds(f"nobody@{kerberos_realm.realm}", "whatever")


# --------------------------------------------------------------------------- (b) SPNEGO / Kerberos


def test_spnego_kerberos_exchange_in_process(kerberos_realm: KerberosRealm) -> None:
    user = kerberos_realm.add_user(_unique("carol"), "Carol-Pass-1")
    ccache = kerberos_realm.kinit(user, "Carol-Pass-1")
    assert kerberos_realm.http_service is not None
    assert kerberos_realm.http_service.principal == f"HTTP/localhost@{kerberos_realm.realm}"

    with kerberos_realm.activate(ccache=ccache):
        client = spnego.client(hostname="localhost", service="HTTP", protocol="negotiate")
        server = spnego.server(protocol="negotiate")
        _exchange(client, server)

    assert server.complete and client.complete
    assert server.client_principal == user
    assert server.negotiated_protocol == "kerberos"
    # The service ticket is for the non-canonicalised name HTTP/localhost.
    assert f"HTTP/localhost@{kerberos_realm.realm}" in kerberos_realm.klist(ccache)

    # Session keys agree: a message wrapped by one side unwraps on the other.
    wrapped = client.wrap(b"hello", encrypt=True)
    assert server.unwrap(wrapped.data).data == b"hello"


@pytest.mark.parametrize("client_protocol", ["kerberos", "negotiate"])
def test_spnego_kerberos_rejected_without_service_key(
    kerberos_realm: KerberosRealm, client_protocol: str
) -> None:
    """The acceptor really uses the keytab: without the HTTP/localhost key it refuses.

    Surprise (pyspnego 0.12.4 + gssapi 1.12.0): python-gssapi returns the KRB-ERROR token
    instead of raising, and pyspnego then fails with ``AttributeError`` rather than a
    ``SpnegoError``, so a server must treat *any* exception from ``step()`` as a failure
    and must not read ``client_principal`` of an incomplete context (it raises too).
    """
    user = kerberos_realm.add_user(_unique("dave"), "Dave-Pass-1")
    ccache = kerberos_realm.kinit(user, "Dave-Pass-1")
    other_keytab = kerberos_realm.ccache_path(_unique("other-keytab"))
    kerberos_realm.add_service("HTTP", _unique("other"), keytab=other_keytab)

    with kerberos_realm.activate(ccache=ccache, keytab=other_keytab):
        client = spnego.client(hostname="localhost", service="HTTP", protocol=client_protocol)
        server = spnego.server(protocol="negotiate")
        token = client.step()
        assert token is not None
        with pytest.raises((SpnegoError, AttributeError)):
            server.step(token)
    assert not server.complete  # (reading server.client_principal would raise AttributeError)


def test_curl_negotiate_against_server_subprocess(
    kerberos_realm: KerberosRealm,
) -> None:
    """A real HTTP client (curl --negotiate) to http://localhost:PORT of a server child process."""
    curl = shutil.which("curl")
    assert curl is not None, "curl is required (scripts/system-packages.txt)"
    user = kerberos_realm.add_user(_unique("erin"), "Erin-Pass-1")
    ccache = kerberos_realm.kinit(user, "Erin-Pass-1")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _NEGOTIATE_HTTP_SERVER, str(port)],
        env=kerberos_realm.subprocess_env(),  # KRB5_KTNAME -> keytab with HTTP/localhost
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_ports(server, [port], timeout=15, what="negotiate test server")
        anonymous = subprocess.run(
            [
                curl,
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://localhost:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        assert anonymous.stdout == "401"
        result = subprocess.run(
            [
                curl,
                "-sS",
                "--max-time",
                "10",
                "--negotiate",
                "-u",
                ":",
                f"http://localhost:{port}/",
            ],
            env=kerberos_realm.subprocess_env(ccache=ccache),
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    finally:
        stop_process(server)
    assert result.stdout == f"kerberos {user}"


_NEGOTIATE_HTTP_SERVER = r"""
import base64, http.server, sys
import spnego

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Negotiate "):
            self.send_response(401)
            self.send_header("WWW-Authenticate", "Negotiate")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ctx = spnego.server(protocol="negotiate")
        try:
            out = ctx.step(base64.b64decode(auth[len("Negotiate "):]))
        except Exception as exc:  # bad token: report it in a 403 body
            out = None
            error = repr(exc).encode()
        else:
            error = b"multi-leg exchanges are not supported by this tiny server"
        if not ctx.complete:
            self.send_response(403)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        body = f"{ctx.negotiated_protocol} {ctx.client_principal}".encode()
        self.send_response(200)
        if out:
            self.send_header("WWW-Authenticate", "Negotiate " + base64.b64encode(out).decode())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


# --------------------------------------------------------------------------- (c) LDAP bind/search


def _ldap_connection(
    server: ldap3.Server, user: str | None, password: str | None
) -> ldap3.Connection:
    return ldap3.Connection(server, user=user, password=password, receive_timeout=10)


def test_ldap_simple_bind_and_search(ldap_server: LdapServer) -> None:
    uid = _unique("frank")
    dn = ldap_server.add_user(uid, "Frank-Pass-1", cn="Frank Sinatra", mail=f"{uid}@sessiond.test")
    group = ldap_server.add_group(_unique("admins"), [dn])
    server = ldap3.Server(ldap_server.host, port=ldap_server.port, connect_timeout=5)

    good = _ldap_connection(server, dn, "Frank-Pass-1")
    assert good.bind(), good.result
    assert good.extend.standard.who_am_i() == f"dn:{dn}"
    assert good.search(ldap_server.people_dn, f"(uid={uid})", attributes=["cn", "mail", "memberOf"])
    assert len(good.entries) == 1
    entry = good.entries[0]
    assert entry.entry_dn == dn
    assert entry.cn.value == "Frank Sinatra"
    assert entry.mail.value == f"{uid}@sessiond.test"
    assert entry.memberOf.value == group
    good.unbind()

    bad = _ldap_connection(server, dn, "Frank-Pass-2")
    assert not bad.bind()
    assert bad.result["description"] == "invalidCredentials"

    anonymous = _ldap_connection(server, None, None)
    assert anonymous.bind()
    assert anonymous.search(ldap_server.people_dn, f"(uid={uid})", attributes=["userPassword"])
    # userPassword is only usable to bind: anonymous readers get no value.
    assert anonymous.response is not None
    assert not anonymous.response[0]["raw_attributes"].get("userPassword")
    anonymous.unbind()


# --------------------------------------------------------------------------- (d) LDAPS / StartTLS


def _verifying_tls(ca_file: str) -> ldap3.Tls:
    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=ca_file,
        version=ssl.PROTOCOL_TLS_CLIENT,
    )


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_ldaps_bind_verifies_certificate(ldap_server: LdapServer, host: str) -> None:
    uid = _unique("grace")
    dn = ldap_server.add_user(uid, "Grace-Pass-1")
    server = ldap3.Server(
        host,
        port=ldap_server.ldaps_port,
        use_ssl=True,
        tls=_verifying_tls(ldap_server.ca_file),
        connect_timeout=5,
    )

    conn = _ldap_connection(server, dn, "Grace-Pass-1")
    assert conn.bind(), conn.result
    assert conn.extend.standard.who_am_i() == f"dn:{dn}"
    conn.unbind()


def test_starttls_bind_verifies_certificate(ldap_server: LdapServer) -> None:
    uid = _unique("heidi")
    dn = ldap_server.add_user(uid, "Heidi-Pass-1")
    server = ldap3.Server(
        "localhost",
        port=ldap_server.port,
        tls=_verifying_tls(ldap_server.ca_file),
        connect_timeout=5,
    )

    conn = _ldap_connection(server, dn, "Heidi-Pass-1")
    conn.open()
    assert conn.start_tls(), conn.result
    assert conn.tls_started
    assert conn.bind(), conn.result
    assert conn.extend.standard.who_am_i() == f"dn:{dn}"
    conn.unbind()


def test_ldaps_rejects_untrusted_ca(ldap_server: LdapServer, tmp_path: Path) -> None:
    """Verification is real: against another CA the TLS handshake fails."""
    other_ca, _, _ = write_tls_files(str(tmp_path), ["localhost"])
    server = ldap3.Server(
        "localhost",
        port=ldap_server.ldaps_port,
        use_ssl=True,
        tls=_verifying_tls(other_ca),
        connect_timeout=5,
    )
    conn = _ldap_connection(server, ldap_server.admin_dn, ldap_server.admin_password)
    with pytest.raises(LDAPSocketOpenError, match="CERTIFICATE_VERIFY_FAILED"):
        conn.bind()


# --------------------------------------------------------------------------- (e) NTLM


@pytest.mark.parametrize("server_protocol", ["ntlm", "negotiate"])
def test_ntlm_exchange_in_process(ntlm_users: NtlmUsers, server_protocol: str) -> None:
    name = _unique("ivan")
    client_name = ntlm_users.add_user(name, "Ivan-Pass-1", domain="SESSIOND")
    assert client_name == f"SESSIOND\\{name}"

    client = spnego.client(
        client_name,
        "Ivan-Pass-1",
        hostname="localhost",
        service="HTTP",
        protocol="ntlm",
    )
    with ntlm_users.activate():
        server = spnego.server(protocol=server_protocol)
        _exchange(client, server)

    assert server.complete
    assert server.negotiated_protocol == "ntlm"
    assert server.client_principal == f"SESSIOND\\{name}"


def test_ntlm_upn_user_and_wrong_password(ntlm_users: NtlmUsers) -> None:
    upn = f"{_unique('judy')}@SESSIOND.TEST"
    assert ntlm_users.add_user(upn, "Judy-Pass-1", domain=None) == upn

    with ntlm_users.activate():
        server = spnego.server(protocol="negotiate")
        _exchange(spnego.client(upn, "Judy-Pass-1", protocol="ntlm"), server)
        assert server.client_principal == upn

        server = spnego.server(protocol="negotiate")
        with pytest.raises(SpnegoError):
            _exchange(spnego.client(upn, "Judy-Pass-2", protocol="ntlm"), server)
        assert not server.complete


def test_negotiate_acceptor_takes_kerberos_and_ntlm(
    kerberos_realm: KerberosRealm, ntlm_users: NtlmUsers
) -> None:
    """One Negotiate acceptor setup (keytab + NTLM_USER_FILE) accepts every kind of client token."""
    krb_user = kerberos_realm.add_user(_unique("kate"), "Kate-Pass-1")
    ccache = kerberos_realm.kinit(krb_user, "Kate-Pass-1")
    ntlm_name = _unique("leo")
    ntlm_client_name = ntlm_users.add_user(ntlm_name, "Leo-Pass-1")

    clients: dict[str, Callable[[], spnego.ContextProxy]] = {
        # raw Kerberos AP-REQ (GSSAPI krb5 mech, no SPNEGO wrapper)
        "kerberos-raw": lambda: spnego.client(
            hostname="localhost", service="HTTP", protocol="kerberos"
        ),
        # SPNEGO NegTokenInit with Kerberos (what browsers / curl --negotiate send)
        "kerberos-spnego": lambda: spnego.client(
            hostname="localhost", service="HTTP", protocol="negotiate"
        ),
        # raw NTLMSSP (what some clients send as "Negotiate TlRMTVNT...")
        "ntlm-raw": lambda: spnego.client(
            ntlm_client_name, "Leo-Pass-1", hostname="localhost", protocol="ntlm"
        ),
        # SPNEGO with NTLM inside (no Kerberos principal for that user name -> fallback)
        "ntlm-spnego": lambda: spnego.client(
            ntlm_client_name,
            "Leo-Pass-1",
            hostname="localhost",
            service="HTTP",
            protocol="negotiate",
        ),
    }
    expected = {
        "kerberos-raw": ("kerberos", krb_user),
        "kerberos-spnego": ("kerberos", krb_user),
        "ntlm-raw": ("ntlm", f"SESSIOND\\{ntlm_name}"),
        "ntlm-spnego": ("ntlm", f"SESSIOND\\{ntlm_name}"),
    }
    seen = {}
    with kerberos_realm.activate(ccache=ccache), ntlm_users.activate():
        for label, make_client in clients.items():
            server = spnego.server(protocol="negotiate")
            _exchange(make_client(), server)
            assert server.complete, label
            seen[label] = (server.negotiated_protocol, server.client_principal)
    assert seen == expected


def test_negotiate_acceptor_without_ntlm_user_file_refuses_ntlm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without NTLM_USER_FILE a Negotiate acceptor offers Kerberos only: NTLM is refused."""
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)
    client = spnego.client("SESSIOND\\nobody", "pw", hostname="localhost", protocol="ntlm")
    server = spnego.server(protocol="negotiate")
    with pytest.raises(BadMechanismError, match="NTLM_USER_FILE"):
        _exchange(client, server)


def test_infra_helpers_clean_up_after_themselves() -> None:
    """Context managers stop the daemons and remove their folders."""
    with KerberosRealm(http_host=None) as realm, LdapServer() as directory:
        assert realm.running and directory.running
        realm_dir, ldap_dir = realm.tmpdir, directory.tmpdir
    assert not realm.running and not directory.running
    assert not os.path.exists(realm_dir) and not os.path.exists(ldap_dir)
