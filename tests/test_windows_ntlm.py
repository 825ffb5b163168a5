"""NTLM for domain accounts, checked by the domain through winbind (``windows.ntlm =
"winbind"``): a real Samba AD DC (``samba_domain``), Samba's own ``ntlm_auth`` driven by real
``sessiond serve`` processes, and real clients (curl, pyspnego through the sessiond client).

The DC's winbindd is reached the way tests/infra/samba.py explains: ``ntlm_auth`` gets
``--configfile`` (``windows.ntlm_auth_config``) and the nss_wrapper variables
(``windows.ntlm_auth_environment`` = ``dc.wrapper_env()``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond import AsyncSessionClient, SessionClient
from sessiond.errors import InvalidCredentials, ServiceUnavailable
from tests.infra.samba import SambaDomain

from .conftest import ServerProcess
from .conftest import start_server as start_configured_server

REALM = "SAMBA.TEST"
DOMAIN = "SAMBA"
PASSWORD = "Pass-word-1"


@pytest.fixture(autouse=True)
def _release_gssapi_objects() -> Iterator[None]:
    """Release the GSSAPI objects a test made (pyspnego's client contexts) when it ends, not
    in a later test's garbage collection, which may run under a KRB5_CONFIG that test broke on
    purpose (their release then raises inside ``__dealloc__``)."""
    yield
    gc.collect()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def _toml_table(values: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + " }"


def domain_config(dc: SambaDomain, **extra: object) -> str:
    """A ``[sessiond.windows]`` section for the Samba domain, NTLM through winbind."""
    lines = [
        "[sessiond.windows]",
        f'realm = "{REALM}"',
        f'domains = {{ {DOMAIN} = "{REALM}" }}',
        f"krb5_config = {json.dumps(dc.krb5_conf)}",
        "verify_kdc = false",
        'ntlm = "winbind"',
        f"ntlm_auth_config = {json.dumps(dc.smb_conf)}",
        f"ntlm_auth_environment = {_toml_table(dc.wrapper_env())}",
    ]
    for key, value in extra.items():
        if isinstance(value, dict):
            lines.append(f"{key} = {_toml_table(value)}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def start_server(root: Path, config: str) -> ServerProcess:
    # The server finds everything through its settings.
    unset = ("KRB5_CONFIG", "KRB5CCNAME", "KRB5_KTNAME", "NTLM_USER_FILE")
    return start_configured_server(root, config, unset=unset)


def add_user(server: ServerProcess, login: str, *args: str) -> None:
    result = server.cli("users", "add", login, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def audit(server: ServerProcess, action: str) -> list[dict[str, object]]:
    result = server.cli("audit", "export", "--action", action)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def login_method(server: ServerProcess, session_id: object) -> object:
    logins = [r for r in audit(server, "Login") if r["session_id"] == str(session_id)]
    assert logins, "no Login record"
    return logins[0]["details"]["method"]  # type: ignore[index]


def failure_reasons(server: ServerProcess) -> list[str]:
    return [str(r["details"]) for r in audit(server, "LoginFailed")]


@pytest.fixture
def no_kerberos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This (client) process has no Kerberos: a krb5.conf that knows no realm, no ticket."""
    conf = tmp_path / "krb5.conf"
    conf.write_text("[libdefaults]\n\tdns_lookup_kdc = false\n\tdns_lookup_realm = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ccache'}")
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)


@dataclass
class Domain:
    dc: SambaDomain
    server: ServerProcess
    group: str

    def member(self, prefix: str) -> str:
        """A domain user in the required group, mapped to a Windows user of sessiond."""
        name = _unique(prefix)
        self.dc.add_user(name, PASSWORD)
        self.dc.add_to_group(self.group, name)
        add_user(self.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
        return name


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain) -> Iterator[Domain]:
    dc = samba_domain
    group = _unique("sessiond-users-")
    dc.add_group(group)
    config = domain_config(dc, require_membership_of=f"{DOMAIN}\\{group}")
    server = start_server(tmp_path_factory.mktemp("ntlm-winbind"), config)
    yield Domain(dc, server, group)
    server.stop()


def _open_windows(server: ServerProcess) -> str:
    return f"{server.url}/api/v1/sessions/open-windows"


def _curl_ntlm(dc: SambaDomain, url: str, user: str, password: str) -> tuple[int, str]:
    curl = shutil.which("curl")
    assert curl, "curl is installed by scripts/test"
    result = subprocess.run(
        [curl, "--silent", "--ntlm", "-u", f"{user}:{password}", "-X", "POST", url,
         "--write-out", "\n%{http_code}"],
        env=dc.subprocess_env(wrappers=True),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


# --- a domain account signs in by NTLM -------------------------------------------------------


def test_curl_ntlm_with_a_domain_account_opens_a_session(domain: Domain) -> None:
    name = domain.member("nt-curl-")
    status, body = _curl_ntlm(domain.dc, _open_windows(domain.server), f"SAMBA\\{name}", PASSWORD)
    assert status == 200, body
    answer = json.loads(body)
    assert f'UserLogin="{DOMAIN}\\{name}"' in answer["Token"]
    current = httpx.get(
        f"{domain.server.url}/api/v1/sessions/current",
        headers={"Tessa-Session": answer["AuthToken"]},
    )
    assert current.status_code == 200 and current.json()["LoginType"] == "Windows"
    logins = [r for r in audit(domain.server, "Login") if r["user_name"] == name]
    assert logins and logins[-1]["details"]["method"] == "ntlm"  # type: ignore[index]


def test_the_ntlm_challenge_answers_in_the_scheme_the_client_used(domain: Domain) -> None:
    import spnego

    name = domain.member("nt-scheme-")
    client = spnego.client(f"SAMBA\\{name}", PASSWORD, protocol="ntlm")
    with httpx.Client() as http:
        first = http.post(
            _open_windows(domain.server),
            headers={"Authorization": "NTLM " + _b64(client.step())},
        )
        assert first.status_code == 401
        scheme, _, challenge = first.headers["WWW-Authenticate"].partition(" ")
        assert scheme == "NTLM" and challenge
        handshake = first.headers["Tessa-Negotiate-Id"]
        second = http.post(
            _open_windows(domain.server),
            headers={
                "Authorization": "NTLM " + _b64(client.step(_unb64(challenge))),
                "Tessa-Negotiate-Id": handshake,
            },
        )
    assert second.status_code == 200, second.text


def _ntlm_challenge(response: httpx.Response) -> bytes:
    assert response.status_code == 401, response.text
    scheme, _, challenge = response.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "NTLM" and challenge
    return _unb64(challenge)


def test_the_second_leg_continues_the_handshake_on_another_connection(domain: Domain) -> None:
    """The server names each handshake by an id of its own: a leg carrying it continues the
    handshake whatever connection it comes on (a client's pool, a proxy's)."""
    import spnego

    name = domain.member("nt-hop-")
    client = spnego.client(f"{DOMAIN}\\{name}", PASSWORD, protocol="ntlm")
    with httpx.Client() as http:  # the first leg's connection, closed before the second
        first = http.post(
            _open_windows(domain.server),
            headers={"Authorization": "NTLM " + _b64(client.step())},
        )
    answer = "NTLM " + _b64(client.step(_ntlm_challenge(first)))
    handshake = first.headers["Tessa-Negotiate-Id"]
    with httpx.Client() as http:  # an id the server never issued continues nothing
        stray = http.post(
            _open_windows(domain.server),
            headers={"Authorization": answer, "Tessa-Negotiate-Id": "no-such-handshake"},
        )
    assert stray.status_code == 401, stray.text
    assert stray.json()["error"]["code"] == "invalid_credentials"
    assert "no handshake in progress" in stray.json()["error"]["message"]
    with httpx.Client() as http:  # a fresh connection, carrying the id
        second = http.post(
            _open_windows(domain.server),
            headers={"Authorization": answer, "Tessa-Negotiate-Id": handshake},
        )
    assert second.status_code == 200, second.text
    assert f'UserLogin="{DOMAIN}\\{name}"' in second.json()["Token"]


@pytest.mark.usefixtures("no_kerberos")
async def test_concurrent_ntlm_sign_ins_on_one_async_client_all_succeed(domain: Domain) -> None:
    """Ten sign-ins at once share the client's connection pool, so a handshake's second leg
    often goes out on another connection than its first: with the client's own pool, then
    with a pool of four connections (where they must)."""
    name = domain.member("nt-many-")
    options: dict[str, Any] = {
        "windows_username": f"{DOMAIN}\\{name}",
        "windows_password": PASSWORD,
        "windows_protocol": "ntlm",
    }
    sessions: set[object] = set()
    async with (
        httpx.AsyncClient(limits=httpx.Limits(max_connections=4)) as four,
        AsyncSessionClient(domain.server.url, **options) as own_pool,
        AsyncSessionClient(domain.server.url, http=four, **options) as small_pool,
    ):
        for client in (own_pool, small_pool):
            outcomes = await asyncio.gather(
                *(client.open_session_windows_auth() for _ in range(10)), return_exceptions=True
            )
            failed = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
            assert not failed, f"{len(failed)} of 10 sign-ins failed: {failed}"
            sessions.update(
                outcome.session_id for outcome in outcomes if not isinstance(outcome, BaseException)
            )
    assert len(sessions) == 20


def _b64(data: bytes | None) -> str:
    import base64

    return base64.b64encode(data or b"").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


@pytest.mark.usefixtures("no_kerberos")
def test_the_client_signs_in_by_ntlm_and_by_ntlm_inside_negotiate(domain: Domain) -> None:
    name = domain.member("nt-client-")
    who = f"{DOMAIN}\\{name}"
    for protocol in ("ntlm", "negotiate"):  # raw NTLMSSP; SPNEGO falling back to NTLM
        with SessionClient(
            domain.server.url,
            windows_username=who,
            windows_password=PASSWORD,
            windows_protocol=protocol,
        ) as client:
            token = client.open_session_windows_auth()
            assert client.current_session()["LoginType"] == "Windows"
        assert token.user_login == who
        assert login_method(domain.server, token.session_id) == "ntlm"


@pytest.mark.usefixtures("no_kerberos")
async def test_the_async_client_runs_the_same_negotiate_flow(domain: Domain) -> None:
    name = domain.member("nt-async-")
    async with AsyncSessionClient(
        domain.server.url,
        windows_username=f"{name}@{REALM.lower()}",  # a UPN-style name works too
        windows_password=PASSWORD,
        windows_protocol="negotiate",
    ) as client:
        token = await client.open_session()  # no login and password: integrated sign-in
    assert token.user_login == f"{DOMAIN}\\{name}"


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_kerberos")
def test_a_wrong_password_is_refused_with_the_domains_answer_in_the_audit(
    domain: Domain,
) -> None:
    name = domain.member("nt-wrong-")
    status, body = _curl_ntlm(
        domain.dc, _open_windows(domain.server), f"SAMBA\\{name}", "Wrong-pass-1"
    )
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_credentials"
    for protocol in ("ntlm", "negotiate"):
        with (
            SessionClient(
                domain.server.url,
                windows_username=f"{DOMAIN}\\{name}",
                windows_password="Wrong-pass-1",
                windows_protocol=protocol,
            ) as client,
            pytest.raises(InvalidCredentials) as refused,
        ):
            client.open_session_windows_auth()
        assert refused.value.status == 401
        assert "NT_STATUS" not in refused.value.message  # the domain's answer stays inside
    mine = [reason for reason in failure_reasons(domain.server) if name in reason]
    assert len(mine) == 3, mine
    assert all("NT_STATUS_LOGON_FAILURE" in reason for reason in mine), mine


def test_a_user_outside_the_required_group_is_refused(domain: Domain) -> None:
    name = _unique("nt-outsider-")
    domain.dc.add_user(name, PASSWORD)  # right password, but not in the group
    add_user(domain.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    status, body = _curl_ntlm(domain.dc, _open_windows(domain.server), f"SAMBA\\{name}", PASSWORD)
    assert status == 401, body
    mine = [reason for reason in failure_reasons(domain.server) if name in reason]
    assert mine and f"not a member of {DOMAIN}\\{domain.group}" in mine[-1].replace("\\\\", "\\")
    domain.dc.add_to_group(domain.group, name)  # a member now: the same sign-in works
    status, body = _curl_ntlm(domain.dc, _open_windows(domain.server), f"SAMBA\\{name}", PASSWORD)
    assert status == 200, body


def test_a_disabled_domain_account_is_told_so_after_the_right_password(domain: Domain) -> None:
    name = domain.member("nt-off-")
    domain.dc.disable_user(name)
    status, body = _curl_ntlm(domain.dc, _open_windows(domain.server), f"SAMBA\\{name}", PASSWORD)
    assert status == 403  # said only to the right password
    assert json.loads(body)["error"]["code"] == "login_forbidden"
    assert "disabled" in json.loads(body)["error"]["message"]
    mine = [reason for reason in failure_reasons(domain.server) if name in reason]
    assert mine and "NT_STATUS_ACCOUNT_DISABLED" in mine[-1]


@pytest.mark.usefixtures("no_kerberos")
def test_ntlmv1_is_refused(domain: Domain, monkeypatch: pytest.MonkeyPatch) -> None:
    name = domain.member("nt-v1-")
    # pyspnego's NTLM client answers with NTLMv1 (NTLM2 session response) below level 3.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "1")
    with (
        SessionClient(
            domain.server.url,
            windows_username=f"{DOMAIN}\\{name}",
            windows_password=PASSWORD,
            windows_protocol="ntlm",
        ) as client,
        pytest.raises(InvalidCredentials) as refused,
    ):
        client.open_session_windows_auth()
    assert "NTLMv1" in refused.value.message
    mine = [reason for reason in failure_reasons(domain.server) if name in reason]
    assert mine and "allow_ntlmv1 = false" in mine[-1]
    monkeypatch.setenv("LM_COMPAT_LEVEL", "3")  # NTLMv2: the same account signs in
    with SessionClient(
        domain.server.url,
        windows_username=f"{DOMAIN}\\{name}",
        windows_password=PASSWORD,
        windows_protocol="ntlm",
    ) as client:
        assert client.open_session_windows_auth().user_login == f"{DOMAIN}\\{name}"


# --- when winbind cannot do it: 503 with a named cause -----------------------------------------


@pytest.fixture(scope="module")
def no_winbindd(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[ServerProcess]:
    """A server whose ntlm_auth looks for winbindd where none listens, with two helpers."""
    root = tmp_path_factory.mktemp("ntlm-no-winbindd")
    empty = root / "no-winbindd"
    empty.mkdir()
    env = {**samba_domain.wrapper_env(), "SELFTEST_WINBINDD_SOCKET_DIR": str(empty)}
    config = domain_config(samba_domain, ntlm_helpers=2)
    config = config.replace(
        f"ntlm_auth_environment = {_toml_table(samba_domain.wrapper_env())}",
        f"ntlm_auth_environment = {_toml_table(env)}",
    )
    server = start_server(root, config)
    yield server
    server.stop()


def _first_leg(server: ServerProcess, who: str) -> httpx.Response:
    import spnego

    client = spnego.client(who, PASSWORD, protocol="ntlm")
    return httpx.post(
        _open_windows(server),
        headers={"Authorization": "Negotiate " + _b64(client.step())},
    )


def test_winbindd_not_running_is_a_503_naming_it(
    no_winbindd: ServerProcess, samba_domain: SambaDomain
) -> None:
    # A mapped account: one no user is mapped to is refused before the domain is asked.
    add_user(no_winbindd, "anyone", "--login-type", "Windows", "--account", f"{DOMAIN}\\anyone")
    status, body = _curl_ntlm(samba_domain, _open_windows(no_winbindd), "SAMBA\\anyone", PASSWORD)
    assert status == 503, body
    error = json.loads(body)["error"]
    assert error["code"] == "service_unavailable"
    assert error["details"]["cause"] == "winbindd_unreachable"
    assert "winbindd_unreachable" in no_winbindd.log_path.read_text()


def test_ntlm_auth_processes_are_bounded(no_winbindd: ServerProcess) -> None:
    # The challenge needs no winbindd: two handshakes bind the two helpers, a third waits.
    first = _first_leg(no_winbindd, "SAMBA\\one")
    second = _first_leg(no_winbindd, "SAMBA\\two")
    assert first.status_code == second.status_code == 401
    assert first.headers["Tessa-Negotiate-Id"] != second.headers["Tessa-Negotiate-Id"]
    third = _first_leg(no_winbindd, "SAMBA\\three")
    assert third.status_code == 503
    assert third.json()["error"]["details"]["cause"] == "ntlm_helpers_busy"
    assert "[ntlm_helpers_busy]" in no_winbindd.log_path.read_text()  # what the body leaves out
    assert len(_children(no_winbindd, "ntlm_auth")) == 2


def _children(server: ServerProcess, name: str) -> list[int]:
    assert server.process is not None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm", encoding="utf-8") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if int(fields[1]) == server.process.pid and comm == name:
            found.append(int(entry))
    return found


@contextmanager
def _traversable(*paths: str) -> Iterator[None]:
    """Let other users pass through these directories (not list them), for one test."""
    saved = {path: stat.S_IMODE(os.stat(path).st_mode) for path in paths}
    try:
        for path, mode in saved.items():
            os.chmod(path, mode | 0o011)
        yield
    finally:
        for path, mode in saved.items():
            os.chmod(path, mode)


def test_no_access_to_the_privileged_pipe_is_a_503_naming_it(
    tmp_path: Path, samba_domain: SambaDomain
) -> None:
    """ntlm_auth run as ``nobody`` reaches winbindd's public pipe but not its privileged one
    (a directory of mode 0750 owned by root): what a service account outside the
    ``winbindd_priv`` group meets."""
    dc = samba_domain
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian system"
    # Where nobody can read the files (pytest's own folders are root's alone).
    shared = Path(tempfile.mkdtemp(prefix="sessiond-ntlm-"))
    os.chmod(shared, 0o755)
    smb_conf = shutil.copy(dc.smb_conf, shared / "smb.conf")
    hosts = shutil.copy(dc.hosts_file, shared / "hosts")
    for path in (smb_conf, hosts):
        os.chmod(path, 0o644)
    wrapper = shared / "ntlm_auth"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec {setpriv} --reuid=nobody --regid=nogroup --clear-groups "
        '/usr/bin/ntlm_auth "$@"\n'
    )
    os.chmod(wrapper, 0o755)
    env = {**dc.wrapper_env(), "NSS_WRAPPER_HOSTS": str(hosts)}
    config = domain_config(dc, ntlm_auth=str(wrapper))
    config = config.replace(f"ntlm_auth_config = {json.dumps(dc.smb_conf)}",
                            f"ntlm_auth_config = {json.dumps(str(smb_conf))}")  # fmt: skip
    config = config.replace(
        f"ntlm_auth_environment = {_toml_table(dc.wrapper_env())}",
        f"ntlm_auth_environment = {_toml_table(env)}",
    )
    server = start_server(tmp_path / "server", config)
    name = _unique("nt-priv-")
    dc.add_user(name, PASSWORD)
    add_user(server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    try:
        with _traversable(dc.tmpdir, dc.run_dir, dc.winbindd_socket_dir):
            status, body = _curl_ntlm(dc, _open_windows(server), f"SAMBA\\{name}", PASSWORD)
    finally:
        server.stop()
        shutil.rmtree(shared, ignore_errors=True)
    assert status == 503, body
    assert json.loads(body)["error"]["details"]["cause"] == "winbind_privileged_pipe"
    assert "winbindd_priv" in server.log_path.read_text()


def test_domain_statuses_that_are_not_the_users_fault_are_503s() -> None:
    """What a member whose DC is down, or whose machine trust broke, hears from winbind (a DC
    cannot be made unreachable from its own winbindd, so these are the answers as Samba
    documents them, classified by the same code the server runs)."""
    from sessiond.auth.winbind import WinbindNtlm, parse_reply
    from sessiond.settings import WindowsSettings

    winbind = WinbindNtlm(WindowsSettings(realm=REALM, ntlm="winbind", negotiate=False,
                                          verify_kdc=False))  # fmt: skip
    for status, cause in (
        ("NT_STATUS_NO_LOGON_SERVERS", "domain_unreachable"),
        ("NT_STATUS_DOMAIN_CONTROLLER_NOT_FOUND", "domain_unreachable"),
        ("NT_STATUS_TRUSTED_RELATIONSHIP_FAILURE", "domain_trust"),
    ):
        error = winbind._refusal(status, [])
        assert isinstance(error, ServiceUnavailable) and error.details["cause"] == cause
    assert isinstance(winbind._refusal("NT_STATUS_WRONG_PASSWORD", []), InvalidCredentials)
    reply = parse_reply("gss-spnego", "BH NT_STATUS_UNSUCCESSFUL * NT_STATUS_UNSUCCESSFUL")
    assert (reply.code, reply.token) == ("BH", None)
    assert parse_reply("gss-spnego", "NA * NT_STATUS_LOGON_FAILURE").text == (
        "NT_STATUS_LOGON_FAILURE"
    )
    assert parse_reply("squid-2.5-ntlmssp", "AF SAMBA\\alice").text == "SAMBA\\alice"
