"""Kerberos through HTTP Negotiate against a real Samba AD DC: the keytab given to GSSAPI as a
credential store, a stale keytab as an honest 503 that recovers without a restart, and the
client's ``httpx.Auth`` flow raising only sessiond errors.

Each server here has a service principal of its own (``HTTP/<name>.samba.test``: an SPN lives
on one account only, and tests/test_samba_infra.py holds ``HTTP/localhost``); the client asks
for it with ``service_hostname``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond import SessionClient
from sessiond.errors import InvalidCredentials, NotConfigured, ServiceUnavailable
from tests.infra.samba import SambaDomain, ServiceAccount

from .conftest import ServerProcess
from .test_windows_ntlm import (
    DOMAIN,
    PASSWORD,
    REALM,
    add_user,
    failure_reasons,
    login_method,
    start_server,
)


@pytest.fixture(autouse=True)
def _release_gssapi_objects() -> Iterator[None]:
    """Release the GSSAPI objects a test made (pyspnego's client contexts) when it ends, not
    in a later test's garbage collection, which may run under a KRB5_CONFIG that test broke on
    purpose (their release then raises inside ``__dealloc__``)."""
    yield
    gc.collect()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@dataclass
class Kerberos:
    dc: SambaDomain
    server: ServerProcess
    svc: ServiceAccount
    keytab: Path

    @property
    def host(self) -> str:
        return self.svc.host

    def user(self, prefix: str) -> tuple[str, str]:
        """A domain user mapped to a Windows user of sessiond, and a fresh ticket cache."""
        name = _unique(prefix)
        self.dc.add_user(name, PASSWORD)
        add_user(self.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
        return name, self.dc.kinit(name, PASSWORD)

    def client(self, **options: Any) -> SessionClient:
        return SessionClient(self.server.url, service_hostname=self.host, **options)


@pytest.fixture(scope="module")
def kerberos(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[Kerberos]:
    dc = samba_domain
    root = tmp_path_factory.mktemp("negotiate")
    keytab = root / "sessiond.keytab"
    svc = dc.add_service_account("HTTP", f"{_unique('sessiond-')}.samba.test", keytab=str(keytab))
    server = start_server(root / "server", _config(dc, svc.principal, keytab))
    yield Kerberos(dc, server, svc, keytab)
    server.stop()


def _config(dc: SambaDomain, principal: str, keytab: Path) -> str:
    return f"""[sessiond.windows]
realm = "{REALM}"
domains = {{ {DOMAIN} = "{REALM}" }}
service_principal = "{principal}"
keytab = "{keytab}"
krb5_config = "{dc.krb5_conf}"
ntlm = "off"
"""


def test_kerberos_signs_in_with_the_keytab_given_as_a_credential_store(kerberos: Kerberos) -> None:
    name, ccache = kerberos.user("krb-")
    with kerberos.dc.activate(ccache=ccache):
        for protocol in ("negotiate", "kerberos"):  # SPNEGO-wrapped, and a bare Kerberos token
            with kerberos.client(windows_protocol=protocol) as client:
                token = client.open_session_windows_auth()
            assert token.user_login == f"{DOMAIN}\\{name}"
            assert login_method(kerberos.server, token.session_id) == "kerberos"


def test_a_stale_keytab_is_a_503_and_a_re_exported_one_works_without_a_restart(
    kerberos: Kerberos,
) -> None:
    server = kerberos.server
    assert server.process is not None
    pid = server.process.pid
    name, before = kerberos.user("stale-")
    with kerberos.dc.activate(ccache=before), kerberos.client() as client:
        client.open_session_windows_auth()
    # The service account's password is reset: the domain's keys move on (kvno + 1), and the
    # keytab sessiond reads still holds the old ones.
    kerberos.dc.reset_service_password(kerberos.svc)
    after = kerberos.dc.kinit(name, PASSWORD)  # a new ticket, made with the new key
    with kerberos.dc.activate(ccache=after):
        with kerberos.client() as client, pytest.raises(ServiceUnavailable) as refused:
            client.open_session_windows_auth()
        assert refused.value.status == 503
        assert refused.value.details["cause"] == "keytab_stale"
        assert "keytab" in refused.value.message
        log = server.log_path.read_text()
        assert "keytab_stale" in log
        assert f"samba-tool domain exportkeytab {kerberos.keytab}" in log
        # The operator re-exports the keytab to the same path; the same process signs in.
        kerberos.dc.export_keytab(kerberos.svc.principal, str(kerberos.keytab))
        with kerberos.client() as client:
            token = client.open_session_windows_auth()
    assert token.user_login == f"{DOMAIN}\\{name}"
    assert server.process.pid == pid and server.process.poll() is None


def test_a_missing_keytab_is_a_503_and_its_return_is_noticed(kerberos: Kerberos) -> None:
    _name, ccache = kerberos.user("gone-")
    aside = kerberos.keytab.with_suffix(".aside")
    os.replace(kerberos.keytab, aside)
    try:
        with kerberos.dc.activate(ccache=ccache):
            answer = _negotiate_by_hand(kerberos)
    finally:
        os.replace(aside, kerberos.keytab)
    assert answer.status_code == 503
    assert answer.json()["error"]["details"]["cause"] == "keytab_unusable"
    with kerberos.dc.activate(ccache=ccache), kerberos.client() as client:
        client.open_session_windows_auth()


def _negotiate_by_hand(kerberos: Kerberos, host: str | None = None) -> httpx.Response:
    return _negotiate_to(kerberos.server, host or kerberos.host)


def _negotiate_to(server: ServerProcess, host: str, protocol: str = "negotiate") -> httpx.Response:
    """One leg with a ticket for ``HTTP/host`` from the active credential cache."""
    import base64

    import spnego

    context = spnego.client(hostname=host, service="HTTP", protocol=protocol)
    return httpx.post(
        f"{server.url}/api/v1/sessions/open-windows",
        headers={"Authorization": "Negotiate " + base64.b64encode(context.step()).decode()},
    )


def test_a_ticket_for_another_service_is_the_callers_fault(kerberos: Kerberos) -> None:
    other = kerberos.dc.add_service_account("HTTP", f"{_unique('elsewhere-')}.samba.test")
    _name, ccache = kerberos.user("astray-")
    with kerberos.dc.activate(ccache=ccache):
        answer = _negotiate_by_hand(kerberos, other.host)
    assert answer.status_code == 401, answer.text
    assert "another service" in answer.json()["error"]["message"]


def test_only_the_service_principal_is_accepted_from_a_keytab_holding_others(
    tmp_path: Path, samba_domain: SambaDomain
) -> None:
    """The keytab holds the keys of sessiond's service principal and of another service's
    (a shared or host keytab): a ticket for the other is refused, and the audit names the
    principal it was for; one for ``service_principal`` signs in. A keytab without
    ``service_principal`` is this server's fault, a 503."""
    dc = samba_domain
    keytab = tmp_path / "shared.keytab"
    ours = dc.add_service_account("HTTP", f"{_unique('ours-')}.samba.test", keytab=str(keytab))
    other = dc.add_service_account("HTTP", f"{_unique('other-')}.samba.test")
    dc.export_keytab(other.principal, str(keytab))  # appended: both principals' keys
    server = start_server(tmp_path / "server", _config(dc, ours.principal, keytab))
    try:
        name = _unique("bound-")
        dc.add_user(name, PASSWORD)
        add_user(server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
        with dc.activate(ccache=dc.kinit(name, PASSWORD)):
            for protocol in ("negotiate", "kerberos"):  # SPNEGO-wrapped, and bare
                refused = _negotiate_to(server, other.host, protocol)
                assert refused.status_code == 401, refused.text
                error = refused.json()["error"]
                assert error["code"] == "invalid_credentials"
                assert "another service" in error["message"]
            reasons = [r for r in failure_reasons(server) if other.principal.lower() in r.lower()]
            assert len(reasons) == 2, failure_reasons(server)
            assert all(ours.principal.lower() in r.lower() for r in reasons), reasons
            signed_in = _negotiate_to(server, ours.host)
            assert signed_in.status_code == 200, signed_in.text
            assert f'UserLogin="{DOMAIN}\\{name}"' in signed_in.json()["Token"]
            os.replace(other.keytab, keytab)  # now only the other service's keys
            missing = _negotiate_to(server, ours.host)
        assert missing.status_code == 503, missing.text
        assert missing.json()["error"]["details"]["cause"] == "keytab_wrong_principal"
        # The details are for the administrator: in the log, not in an anonymous caller's body.
        assert ours.principal not in missing.text
        assert f"no key for {ours.principal}" in server.log_path.read_text()
    finally:
        server.stop()


def test_the_200_carries_the_mutual_authentication_token(kerberos: Kerberos) -> None:
    _name, ccache = kerberos.user("mutual-")
    with kerberos.dc.activate(ccache=ccache):
        answer = _negotiate_by_hand(kerberos)
    assert answer.status_code == 200, answer.text
    scheme, _, token = answer.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Negotiate" and token
    assert "Tessa-Negotiate-Id" not in answer.headers


# --- the client raises sessiond errors only ------------------------------------------------------


def test_a_wrong_explicit_password_is_invalid_credentials_not_a_kerberos_error(
    kerberos: Kerberos,
) -> None:
    name, _ccache = kerberos.user("explicit-")
    with kerberos.dc.activate(ccache=str(Path(kerberos.dc.tmpdir) / "no-such-ccache")):
        with (
            kerberos.client(
                windows_username=f"{name}@{REALM}",
                windows_password="Wrong-pass-1",
                windows_protocol="kerberos",
            ) as client,
            pytest.raises(InvalidCredentials) as refused,
        ):
            client.open_session_windows_auth()
        assert "wrong login or password" in refused.value.message
        with kerberos.client(
            windows_username=f"{name}@{REALM}",
            windows_password=PASSWORD,
            windows_protocol="kerberos",
        ) as client:
            assert client.open_session_windows_auth().user_login == f"{DOMAIN}\\{name}"


def test_no_credentials_at_all_is_not_configured(kerberos: Kerberos, tmp_path: Path) -> None:
    with (
        kerberos.dc.activate(ccache=str(tmp_path / "empty-ccache")),
        kerberos.client(windows_protocol="kerberos") as client,
        pytest.raises(NotConfigured) as refused,
    ):
        client.open_session_windows_auth()
    assert "kinit" in refused.value.message


def test_curl_negotiate_still_works(kerberos: Kerberos) -> None:
    import subprocess

    curl = shutil.which("curl")
    assert curl
    name, ccache = kerberos.user("curl-")
    result = subprocess.run(
        [curl, "--silent", "--negotiate", "-u", ":", "-X", "POST",
         "--resolve", f"{kerberos.host}:{kerberos.server.port}:127.0.0.1",
         f"http://{kerberos.host}:{kerberos.server.port}/api/v1/sessions/open-windows"],
        env=kerberos.dc.subprocess_env(ccache=ccache),
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f'UserLogin="{DOMAIN}\\{name}"' in json.loads(result.stdout)["Token"]
