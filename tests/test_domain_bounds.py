"""A domain controller that stops answering holds only the threads that wait on it.

The Samba AD DC of the ``samba_domain`` fixture is frozen (SIGSTOP to all of its processes:
its ports still accept connections, nothing answers) while Windows sign-ins are in flight
against real ``sessiond serve`` processes. A platform user's sign-in (Argon2, on threads of
its own) and token validations answer at once; the Windows sign-ins get ``503
service_unavailable`` with ``details.cause`` ``kdc_timeout`` within ``windows.kerberos_timeout``,
and an NTLM sign-in through winbind ``ntlm_auth_timeout`` within that setting
(docs/windows.md, "Timeouts and threads"). The DC is always thawed, and answering again,
before a test ends: the whole session shares it.

The bounds themselves (threads, callers waiting, the timeout) are shown on
:class:`sessiond.auth.outside.Outside` with a plain blocking function.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sessiond.auth.outside import Outside
from sessiond.errors import ServiceUnavailable
from tests.infra.samba import DomainUser, SambaDomain
from tests.test_windows_domain import (
    PASSWORD,
    _cause,
    _kerberos_config,
    _map,
    _open,
    _server,
    _service_account,
    _unique,
)
from tests.test_windows_ntlm import add_user, domain_config, start_server

from .conftest import ServerProcess

#: windows.kerberos_timeout, ntlm_auth_timeout and windows.directory.timeout of the servers.
KERBEROS_TIMEOUT = 4.0
NTLM_TIMEOUT = 3.0
DIRECTORY_TIMEOUT = 4.0
#: Windows sign-ins in flight while the DC is frozen: more than the 6 threads of asyncio's
#: default executor on 2 cores, which the KDC and Argon2 used to share.
IN_FLIGHT = 8
#: "Did not stall": an answer that waits on nothing the DC holds takes far less than this.
PROMPT = 2.0


@pytest.fixture(scope="module")
def account(samba_domain: SambaDomain) -> DomainUser:
    return samba_domain.add_user(_unique("bd-"), PASSWORD)


@pytest.fixture(scope="module")
def in_flight(samba_domain: SambaDomain) -> list[DomainUser]:
    """One account per sign-in in flight: a node checks one sign-in of an account at a time
    (docs/security.md), so that sign-ins of one account would wait on each other, not on the
    DC's threads."""
    return [samba_domain.add_user(_unique("bdf-"), PASSWORD) for _ in range(IN_FLIGHT)]


@pytest.fixture(scope="module")
def kerberos_server(
    tmp_path_factory: pytest.TempPathFactory,
    samba_domain: SambaDomain,
    account: DomainUser,
    in_flight: list[DomainUser],
) -> Iterator[ServerProcess]:
    """Windows passwords checked by Kerberos with the KDC proven, ``kerberos_timeout`` short."""
    dc = samba_domain
    root = tmp_path_factory.mktemp("domain-bounds")
    svc = _service_account(dc, root / "sessiond.keytab")
    config = _kerberos_config(dc, svc) + f'kerberos_timeout = "{KERBEROS_TIMEOUT:g}s"\n'
    server = _server(root / "server", dc, config)
    for user in (account, *in_flight):
        _map(server, user)
    yield server
    server.stop()


def _timed(
    call: Callable[..., httpx.Response], *args: object, **kwargs: object
) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call(*args, **kwargs)
    return time.monotonic() - started, response


def _platform_open(server: ServerProcess) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/sessions/open",
        json={"Login": "admin", "Password": server.admin_password},
        timeout=60,
    )


def _validate(server: ServerProcess, auth_token: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/api/v1/sessions/current",
        headers={"Tessa-Session": auth_token},
        timeout=60,
    )


def test_a_frozen_dc_holds_only_the_kerberos_threads_and_sign_ins_get_kdc_timeout(
    kerberos_server: ServerProcess,
    samba_domain: SambaDomain,
    account: DomainUser,
    in_flight: list[DomainUser],
) -> None:
    server, dc = kerberos_server, samba_domain
    assert _open(server, account.name, PASSWORD, "SAMBA").status_code == 200  # the DC works
    before = _platform_open(server)
    assert before.status_code == 200, before.text
    auth_token = before.json()["AuthToken"]

    with dc.frozen() as pids, ThreadPoolExecutor(IN_FLIGHT) as clients:
        assert len(pids) > 1  # samba and what it started (smbd, winbindd, workers)
        windows = [
            clients.submit(_timed, _open, server, user.name, PASSWORD, "SAMBA")
            for user in in_flight
        ]
        time.sleep(1.0)  # the sign-ins reach the server and wait on the KDC
        platform = _timed(_platform_open, server)
        validations = [_timed(_validate, server, auth_token) for _ in range(5)]
        answers = [future.result() for future in windows]

    took, response = platform
    assert response.status_code == 200, response.text
    assert took < PROMPT, f"a platform sign-in took {took:.1f} s while the DC was frozen"
    for took, response in validations:
        assert response.status_code == 200, response.text
        assert took < PROMPT, f"a validation took {took:.1f} s while the DC was frozen"
    for took, response in answers:
        assert response.status_code == 503, response.text
        assert _cause(response) == "kdc_timeout", response.text
        message = response.json()["error"]["message"]
        assert f"did not answer within {KERBEROS_TIMEOUT:g} s (windows.kerberos_timeout)" in (
            message
        )
        assert took < KERBEROS_TIMEOUT + PROMPT, f"a Windows sign-in was answered in {took:.1f} s"
    # The DC answers again, and so does sessiond: the threads stuck in libkrb5 came back.
    again = _open(server, account.name, PASSWORD, "SAMBA")
    assert again.status_code == 200, again.text


def test_a_frozen_dc_answering_ldap_binds_gets_directory_timeout_within_its_timeout(
    tmp_path: Path, samba_domain: SambaDomain, account: DomainUser, in_flight: list[DomainUser]
) -> None:
    dc = samba_domain
    server = _server(
        tmp_path / "server",
        dc,
        f"""
[sessiond.windows]
realm = "{dc.realm}"
password_check = "ldap"
negotiate = false

[sessiond.windows.directory]
url = "ldaps://{dc.dc_fqdn}:636"
ca_file = "{dc.ca_file}"
timeout = "{DIRECTORY_TIMEOUT:g}s"
""",
    )
    try:
        for user in (account, *in_flight):
            _map(server, user)
        assert _open(server, account.name, PASSWORD, "SAMBA").status_code == 200
        with dc.frozen(), ThreadPoolExecutor(IN_FLIGHT) as clients:
            windows = [
                clients.submit(_timed, _open, server, user.name, PASSWORD, "SAMBA")
                for user in in_flight
            ]
            time.sleep(0.5)
            platform = _timed(_platform_open, server)
            answers = [future.result() for future in windows]
    finally:
        server.stop()
    took, response = platform
    assert response.status_code == 200, response.text
    assert took < PROMPT, f"a platform sign-in took {took:.1f} s while the DC was frozen"
    for took, response in answers:
        assert response.status_code == 503, response.text
        # ldap3's own timeout on its first step (the TLS handshake here) and the whole
        # check's, both windows.directory.timeout, run out together: either answers.
        cause = _cause(response)
        assert cause in ("directory_timeout", "directory_unreachable"), response.text
        if cause == "directory_timeout":
            assert "(windows.directory.timeout)" in response.json()["error"]["message"]
        assert took < DIRECTORY_TIMEOUT + PROMPT, f"a Windows sign-in was answered in {took:.1f} s"


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data or b"").decode()


def test_ntlm_through_winbind_with_a_frozen_dc_is_a_503_within_ntlm_auth_timeout(
    tmp_path: Path, samba_domain: SambaDomain
) -> None:
    import spnego

    dc = samba_domain
    config = domain_config(dc, ntlm_auth_timeout=f"{NTLM_TIMEOUT:g}s")
    server = start_server(tmp_path / "ntlm", config)
    try:
        name = _unique("bd-ntlm-")
        dc.add_user(name, PASSWORD)
        add_user(server, name, "--login-type", "Windows", "--account", f"SAMBA\\{name}")
        url = f"{server.url}/api/v1/sessions/open-windows"
        client = spnego.client(f"SAMBA\\{name}", PASSWORD, protocol="ntlm")
        with httpx.Client(timeout=60) as http:  # one connection: it names the handshake
            first = http.post(url, headers={"Authorization": "NTLM " + _b64(client.step())})
            assert first.status_code == 401, first.text
            challenge = base64.b64decode(first.headers["WWW-Authenticate"].partition(" ")[2])
            answer = "NTLM " + _b64(client.step(challenge))
            headers = {
                "Authorization": answer,
                "Tessa-Negotiate-Id": first.headers["Tessa-Negotiate-Id"],
            }
            with dc.frozen():  # winbindd is one of the DC's processes: ntlm_auth waits on it
                took, second = _timed(http.post, url, headers=headers)
    finally:
        server.stop()
    assert second.status_code == 503, second.text
    assert _cause(second) == "ntlm_auth_timeout", second.text
    # Answered when the setting says: the helper is killed, not waited for.
    assert took < NTLM_TIMEOUT + 1.5, f"the NTLM sign-in was answered in {took:.1f} s"


# --- the bounds, with a function that blocks until it is let go -----------------------------


async def test_a_pool_refuses_callers_beyond_its_queue_at_once_and_times_out_the_others() -> None:
    pool = Outside(
        "kdc",
        "the KDC of TEST.REALM",
        workers=2,
        waiting=2,
        timeout=1.0,
        workers_setting="windows.kerberos_workers",
        timeout_setting="windows.kerberos_timeout",
    )
    release = threading.Event()
    try:
        calls = [asyncio.ensure_future(pool.run(release.wait, 30)) for _ in range(4)]
        await asyncio.sleep(0.1)
        assert pool.in_use == 4  # 2 running, 2 queued
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as busy:
            await pool.run(release.wait, 30)
        assert time.monotonic() - started < 0.5
        assert busy.value.details == {"cause": "kdc_busy"}
        assert "raise windows.kerberos_workers" in busy.value.message
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, ServiceUnavailable) for o in outcomes), outcomes
        assert {o.details["cause"] for o in outcomes if isinstance(o, ServiceUnavailable)} == {
            "kdc_timeout"
        }
        # The two that never started were cancelled; the two running still hold their threads.
        assert pool.in_use == 2
        release.set()
        for _ in range(50):
            if pool.in_use == 0:
                break
            await asyncio.sleep(0.02)
        assert pool.in_use == 0
        assert await pool.run(sum, [1, 2]) == 3
    finally:
        release.set()
        pool.shutdown()
