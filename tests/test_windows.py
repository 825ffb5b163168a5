"""Windows domain, LDAP and integrated Windows sign-in against a real KDC and a real slapd."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond import SessionClient
from sessiond.auth import PasswordCredentials
from sessiond.errors import AccountNotMapped, InvalidCredentials, LoginForbidden, RequestError
from sessiond.models import AccessLevel, AuditAction, ClientInfo, LoginType
from tests.infra.kerberos import KerberosRealm
from tests.infra.ldap import LdapServer, write_tls_files
from tests.infra.ntlm import NtlmUsers

from .conftest import ServerProcess, start_server

REALM = "SESSIOND.TEST"
DOMAIN = "SESSIOND"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def windows_server(
    tmp_path_factory: pytest.TempPathFactory,
    kerberos_realm: KerberosRealm,
    ldap_server: LdapServer,
    ntlm_users: NtlmUsers,
) -> Iterator[ServerProcess]:
    assert kerberos_realm.http_service is not None
    proc = start_server(
        tmp_path_factory.mktemp("windows"),
        f"""
[sessiond.windows]
realm = "{REALM}"
domains = {{ {DOMAIN} = "{REALM}" }}
service_principal = "HTTP/localhost@{REALM}"
keytab = "{kerberos_realm.keytab}"
krb5_config = "{kerberos_realm.krb5_conf}"
ntlm_user_file = "{ntlm_users.path}"

[sessiond.ldap]
url = "{ldap_server.uri}"
start_tls = true
ca_file = "{ldap_server.ca_file}"
search_base = "ou=people,dc=sessiond,dc=test"
search_filter = "(uid={{login}})"
""",
        env=lambda env: env | kerberos_realm.env(),
        # The server must find its keys through its settings, not a client's credential cache.
        unset=["KRB5CCNAME"],
    )
    yield proc
    proc.stop()


@contextlib.contextmanager
def _ticket_client(
    server: ServerProcess, realm: KerberosRealm, ccache: str
) -> Iterator[SessionClient]:
    """A client of ``server`` at ``localhost`` (the service principal's host) with the tickets
    in ``ccache``, for integrated sign-in by Kerberos."""
    with (
        realm.activate(ccache=ccache),
        SessionClient(server.url.replace("127.0.0.1", "localhost")) as client,
    ):
        yield client


def _ntlm_client(server: ServerProcess, who: str, password: str) -> SessionClient:
    """A client of ``server`` that signs in as ``who`` by an NTLM handshake."""
    return SessionClient(
        server.url, windows_username=who, windows_password=password, windows_protocol="ntlm"
    )


def _add_user(server: ServerProcess, login: str, *args: str) -> None:
    result = server.cli("users", "add", login, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def _audit(server: ServerProcess, action: str) -> list[dict[str, object]]:
    result = server.cli("audit", "export", "--action", action)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_user_with_a_ticket_signs_in_without_a_password(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm
) -> None:
    name = _unique("alice")
    kerberos_realm.add_user(name, "Alice-pw-1")
    _add_user(windows_server, name, "--login-type", "Windows", "--account", f"{name}@{REALM}")
    ccache = kerberos_realm.kinit(name, "Alice-pw-1")
    with _ticket_client(windows_server, kerberos_realm, ccache) as client:
        token = client.open_session_windows_auth()
        assert client.current_session()["LoginType"] == "Windows"
        again = client.open_session()  # no login and password: the same integrated path
    assert token.user_login == f"{DOMAIN}\\{name}"
    assert token.login_type.wire == "Windows" and again.user_id == token.user_id
    logins = [
        r for r in _audit(windows_server, "Login") if r["session_id"] == str(token.session_id)
    ]
    assert logins and logins[0]["details"]["method"] == "kerberos"  # type: ignore[index]


def test_curl_negotiate_opens_a_session(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm
) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is installed by scripts/test"
    name = _unique("carol")
    kerberos_realm.add_user(name, "Carol-pw-1")
    _add_user(windows_server, name, "--login-type", "Windows")
    ccache = kerberos_realm.kinit(name, "Carol-pw-1")
    url = f"http://localhost:{windows_server.port}/api/v1/sessions/open-windows"
    result = subprocess.run(
        [curl, "--silent", "--negotiate", "-u", ":", "-X", "POST", url],
        env=kerberos_realm.subprocess_env(ccache=ccache),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert f'UserLogin="{DOMAIN}\\{name}"' in answer["Token"]
    header = httpx.get(
        f"{windows_server.url}/api/v1/sessions/current",
        headers={"Tessa-Session": answer["AuthToken"]},
    )
    assert header.status_code == 200 and header.json()["LoginType"] == "Windows"


def test_without_a_token_the_server_asks_for_negotiate(windows_server: ServerProcess) -> None:
    response = httpx.post(f"{windows_server.url}/api/v1/sessions/open-windows")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Negotiate"
    assert response.json()["error"]["code"] == "negotiate_required"
    garbage = httpx.post(
        f"{windows_server.url}/api/v1/sessions/open-windows",
        headers={"Authorization": "Negotiate AAAA"},
    )
    assert garbage.status_code == 401
    assert garbage.json()["error"]["code"] == "invalid_credentials"
    not_base64 = httpx.post(
        f"{windows_server.url}/api/v1/sessions/open-windows",
        headers={"Authorization": "Negotiate !!!"},
    )
    assert not_base64.status_code == 400


@pytest.mark.parametrize(
    "spelling", ["login+domain", "DOMAIN\\login", "login@REALM", "login@realm lower case"]
)
def test_domain_login_password_and_domain_open_a_session(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm, spelling: str
) -> None:
    name = _unique("dave")
    kerberos_realm.add_user(name, "Dave-pw-1")
    _add_user(windows_server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    login, domain = {
        "login+domain": (name, DOMAIN),
        "DOMAIN\\login": (f"{DOMAIN}\\{name}", None),
        "login@REALM": (f"{name}@{REALM}", None),
        "login@realm lower case": (f"{name}@{REALM.lower()}", None),
    }[spelling]
    with SessionClient(windows_server.url) as client:
        token = client.open_session(login, "Dave-pw-1", domain)
    assert token.user_login == f"{DOMAIN}\\{name}" and token.login_type.wire == "Windows"


def test_a_wrong_domain_password_is_refused_and_audited(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm
) -> None:
    name = _unique("erin")
    kerberos_realm.add_user(name, "Erin-pw-1")
    _add_user(windows_server, name, "--login-type", "Windows")
    with SessionClient(windows_server.url) as client, pytest.raises(InvalidCredentials) as refused:
        client.open_session(name, "wrong", DOMAIN)
    assert refused.value.status == 401 and refused.value.code == "invalid_credentials"
    assert "Preauthentication" not in refused.value.message  # the reason stays in the audit
    failed = [r for r in _audit(windows_server, "LoginFailed") if r["user_name"] == name]
    assert failed, "no LoginFailed record"
    assert "reauthentication failed" in str(failed[-1]["details"])


def test_a_domain_user_is_told_to_change_the_password_in_the_domain(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm
) -> None:
    name = _unique("gail")
    kerberos_realm.add_user(name, "Gail-pw-1")
    _add_user(windows_server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")

    def change(old: str) -> httpx.Response:
        return httpx.post(
            f"{windows_server.url}/api/v1/sessions/change-password",
            json={"Login": name, "OldPassword": old, "NewPassword": "Gail-pw-2"},
            timeout=30,
        )

    wrong = change("not-hers")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    right = change("Gail-pw-1")  # only the right password learns where to change it
    assert right.status_code == 422, right.text
    body = right.json()["error"]
    assert body["details"] == {"rule": "changed_elsewhere"} and "domain" in body["message"]
    with SessionClient(windows_server.url) as client:  # and nothing changed
        client.open_session(name, "Gail-pw-1", DOMAIN)


def test_an_account_mapped_to_no_user_answers_as_a_wrong_password_does(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm
) -> None:
    name = _unique("frank")
    kerberos_realm.add_user(name, "Frank-pw-1")
    answers = []
    for password in ("Frank-pw-1", "nope"):  # the right password tells no more than a wrong one
        answer = httpx.post(
            f"{windows_server.url}/api/v1/sessions/open",
            json={"Login": name, "Password": password, "Domain": DOMAIN},
        )
        answers.append((answer.status_code, answer.content))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and b"invalid_credentials" in answers[0][1]
    reasons = [r["details"]["reason"] for r in _audit(windows_server, "LoginFailed")]
    # No user may be provisioned for it: the domain is not asked, right password or wrong.
    unmapped = (
        f"unknown login; Windows account {DOMAIN}\\{name} is not mapped to a user "
        "(no provisioning: password not checked)"
    )
    assert reasons.count(unmapped) == 2
    # Integrated sign-in proved who the caller is with a ticket: telling them is no oracle.
    ccache = kerberos_realm.kinit(name, "Frank-pw-1")
    with (
        _ticket_client(windows_server, kerberos_realm, ccache) as client,
        pytest.raises(AccountNotMapped),
    ):
        client.open_session_windows_auth()


def test_a_platform_user_cannot_sign_in_by_windows_identity(
    windows_server: ServerProcess, kerberos_realm: KerberosRealm
) -> None:
    name = _unique("gina")
    kerberos_realm.add_user(name, "Gina-pw-1")
    _add_user(windows_server, name, "--password", "platform-pw", "--account", f"{DOMAIN}\\{name}")
    ccache = kerberos_realm.kinit(name, "Gina-pw-1")
    with (
        _ticket_client(windows_server, kerberos_realm, ccache) as client,
        pytest.raises(LoginForbidden),
    ):
        client.open_session_windows_auth()


def test_ldap_users_sign_in_against_the_directory(
    windows_server: ServerProcess, ldap_server: LdapServer
) -> None:
    uid = _unique("hank")
    ldap_server.add_user(uid, "Hank-pw-1", cn="Hank H.")
    _add_user(windows_server, f"h.{uid}", "--login-type", "Ldap", "--account", uid)
    with SessionClient(windows_server.url) as client:
        token = client.open_session(f"h.{uid}", "Hank-pw-1")
        assert token.login_type.wire == "Ldap" and token.user_login == uid
        with pytest.raises(InvalidCredentials) as refused:
            client.open_session(f"h.{uid}", "Hank-pw-2")
        assert refused.value.code == "invalid_credentials"
        with pytest.raises(RequestError):
            client.open_session(f"h.{uid}", "")


def test_the_directory_never_accepts_an_empty_password(ldap_server: LdapServer) -> None:
    # LDAP treats a bind with a DN and no password as an anonymous, successful bind.
    from sessiond.auth.directory import Directory
    from sessiond.settings import DirectorySettings

    uid = _unique("kate")
    dn = ldap_server.add_user(uid, "Kate-pw-1")
    directory = Directory(
        DirectorySettings(url=ldap_server.ldaps_uri, ca_file=Path(ldap_server.ca_file))
    )
    directory.bind(dn, "Kate-pw-1")
    for wrong in ("", "Kate-pw-2"):
        with pytest.raises(InvalidCredentials):
            directory.bind(dn, wrong)


def test_directory_checks_over_tls_raise_no_warning_and_refuse_a_foreign_ca(
    ldap_server: LdapServer, tmp_path: Path
) -> None:
    """python-ldap over LDAPS and StartTLS: no deprecation warning (ldap3 gave one per TLS
    connection), a certificate from another CA refused as the certificate's fault."""
    import warnings

    from sessiond.auth.directory import Directory
    from sessiond.errors import ServiceUnavailable
    from sessiond.settings import DirectorySettings

    uid = _unique("lena")
    dn = ldap_server.add_user(uid, "Lena-pw-1", cn="Lena Lund")
    other_ca, _, _ = write_tls_files(str(tmp_path), ["127.0.0.1"])
    base = {"search_base": ldap_server.people_dn, "ca_file": Path(ldap_server.ca_file)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for url, start_tls in ((ldap_server.ldaps_uri, False), (ldap_server.uri, True)):
            directory = Directory(DirectorySettings(url=url, start_tls=start_tls, **base))
            assert directory.find(uid).dn == dn and directory.find(uid).name == "Lena Lund"
            directory.bind(dn, "Lena-pw-1")
            with pytest.raises(InvalidCredentials):
                directory.bind(dn, "Lena-pw-2")
            foreign = Directory(
                DirectorySettings(url=url, start_tls=start_tls, **(base | {"ca_file": other_ca}))
            )
            with pytest.raises(ServiceUnavailable) as refused:
                foreign.bind(dn, "Lena-pw-1")
            assert refused.value.details == {"cause": "directory_certificate"}
            assert "ldap.ca_file" in refused.value.message
    # The server's code imports no ldap3 at all.
    code = "import sys, sessiond.server.app, sessiond.auth.directory; print('ldap3' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr


def test_a_directory_that_never_finishes_the_tls_handshake_is_a_503_in_bounded_time() -> None:
    """libldap 2.5 does not bound a TLS handshake with a silent peer: the check is given up
    after twice the timeout."""
    import socket
    import threading
    import time

    from sessiond.auth.directory import Directory
    from sessiond.errors import ServiceUnavailable
    from sessiond.settings import DirectorySettings

    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(silent.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    port = silent.getsockname()[1]
    try:
        for url, start_tls in (
            (f"ldaps://127.0.0.1:{port}", False),
            (f"ldap://127.0.0.1:{port}", True),
        ):
            directory = Directory(DirectorySettings(url=url, start_tls=start_tls, timeout="1s"))
            answers: list[BaseException | None] = []

            def check(
                directory: Directory = directory, answers: list[BaseException | None] = answers
            ) -> None:
                try:
                    directory.bind("cn=someone", "pw")
                    answers.append(None)
                except BaseException as exc:
                    answers.append(exc)

            started = time.monotonic()
            checking = threading.Thread(target=check, daemon=True)
            checking.start()
            checking.join(timeout=30)
            assert not checking.is_alive(), "the check stalled"
            assert time.monotonic() - started < 30  # did not stall
            with pytest.raises(ServiceUnavailable) as refused:
                if answers[0] is not None:
                    raise answers[0]
            # LDAPS: the handshake never ends, the check is given up after 2 s; StartTLS: the
            # request has no answer in 1 s.
            cause, within = (
                ("directory_unreachable", "2 s") if not start_tls else ("directory_failed", "1 s")
            )
            assert refused.value.details == {"cause": cause}
            assert f"no answer within {within}" in refused.value.message
    finally:
        silent.close()
        for sock in held:  # ends the abandoned handshake
            sock.close()


def test_an_ntlm_handshake_opens_a_session(
    windows_server: ServerProcess, ntlm_users: NtlmUsers
) -> None:
    name = _unique("ivan")
    who = ntlm_users.add_user(name, "Ivan-pw-1", domain=DOMAIN)
    _add_user(windows_server, name, "--login-type", "Windows", "--account", who)
    with _ntlm_client(windows_server, who, "Ivan-pw-1") as client:
        token = client.open_session_windows_auth()
    assert token.user_login == f"{DOMAIN}\\{name}"
    logins = [
        r for r in _audit(windows_server, "Login") if r["session_id"] == str(token.session_id)
    ]
    assert logins[0]["details"]["method"] == "ntlm"  # type: ignore[index]
    with _ntlm_client(windows_server, who, "wrong") as client, pytest.raises(InvalidCredentials):
        client.open_session_windows_auth()


def test_administrators_set_login_type_and_account_over_the_api(
    windows_server: ServerProcess,
) -> None:
    with SessionClient(windows_server.url) as admin:
        admin.open_session("admin", windows_server.admin_password)
        assert admin.session_token is not None
        headers = {"Tessa-Session": admin.session_token.to_auth_xml()}
        login = _unique("jack")
        created = httpx.post(
            f"{windows_server.url}/api/v1/users",
            json={"Login": login, "Password": "jack-pw-1"},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        changed = httpx.patch(
            f"{windows_server.url}/api/v1/users/{login}",
            json={"LoginType": "Windows", "Account": f"{login}@{REALM}"},
            headers=headers,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["LoginType"] == "Windows"
        assert changed.json()["Account"] == f"{DOMAIN}\\{login}"
        bad = httpx.patch(
            f"{windows_server.url}/api/v1/users/{login}",
            json={"LoginType": "Martian"},
            headers=headers,
        )
        assert bad.status_code == 400 and "LoginType" in bad.json()["error"]["message"]


def test_the_settings_example_for_a_server_is_complete(tmp_path: Path) -> None:
    from sessiond.errors import SettingsError
    from sessiond.settings import load_settings

    with pytest.raises(SettingsError, match="service_principal and keytab"):
        load_settings(None, windows={"realm": REALM, "negotiate": False})
    settings = load_settings(
        None, windows={"realm": "corp.example.com", "verify_kdc": False, "negotiate": False}
    )
    assert settings.windows is not None and settings.windows.realm == "CORP.EXAMPLE.COM"


# --- in-process: the service with directory-checked accounts --------------------------------


def _directory(ldap_server: LdapServer) -> dict[str, object]:
    return {"url": ldap_server.uri, "start_tls": True, "ca_file": ldap_server.ca_file}


async def test_windows_passwords_by_directory_bind_with_auto_provisioning(
    make_service: Any, ldap_server: LdapServer
) -> None:
    service = await make_service(
        windows={
            "realm": REALM,
            "password_check": "ldap",
            "directory": _directory(ldap_server),
            "bind_format": "uid={login},ou=people,dc=sessiond,dc=test",
            "verify_kdc": False,
            "negotiate": False,
            "auto_provision": True,
        }
    )
    uid = _unique("liam")
    ldap_server.add_user(uid, "Liam-pw-1")
    opened = await service.signin.open_session(
        PasswordCredentials(uid, "Liam-pw-1", DOMAIN), ClientInfo()
    )
    token = opened.token
    assert token.login_type == LoginType.WINDOWS and token.user_login == f"{DOMAIN}\\{uid}"
    user = await service.store.find_user_by_account(f"{DOMAIN}\\{uid}")
    assert user is not None and user.access_level == AccessLevel.REGULAR
    again = await service.signin.open_session(
        PasswordCredentials(f"{uid}@{REALM}", "Liam-pw-1"), ClientInfo()
    )
    assert again.token.user_id == user.id
    with pytest.raises(InvalidCredentials):
        await service.signin.open_session(PasswordCredentials(uid, "wrong", DOMAIN), ClientInfo())


async def test_ldap_users_are_provisioned_from_the_directory_when_allowed(
    make_service: Any, ldap_server: LdapServer
) -> None:
    ldap = {
        **_directory(ldap_server),
        "search_base": "ou=people,dc=sessiond,dc=test",
        "name_attribute": "cn",
    }
    strict = await make_service(ldap=ldap)
    uid = _unique("mona")
    ldap_server.add_user(uid, "Mona-pw-1", cn="Mona M.")
    with pytest.raises(InvalidCredentials):  # as a wrong password: no oracle
        await strict.signin.open_session(PasswordCredentials(uid, "Mona-pw-1"), ClientInfo())
    await strict.close()
    open_door = await make_service(ldap={**ldap, "auto_provision": True})
    credentials = PasswordCredentials(uid, "Mona-pw-1")
    token = (await open_door.signin.open_session(credentials, ClientInfo())).token
    assert token.login_type == LoginType.LDAP and token.user_name == "Mona M."
    failed = await open_door.audit.records(action=AuditAction.LOGIN_FAILED)
    assert any("not mapped" in str(r.details) for r in failed)
