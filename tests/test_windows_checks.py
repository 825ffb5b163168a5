"""The Windows settings checked before the first sign-in, against a real Samba AD DC
(``samba_domain``): ``sessiond serve`` refuses a krb5.conf, keytab or service principal that
cannot work, in one line; ``sessiond check windows`` runs the whole chain and names the step
that fails; winbind's faults are named by their codes; and the 503s anonymous callers get name
the cause but no file, host or certificate (the log has those).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from sessiond.auth.kerberos import KerberosAcceptor
from sessiond.errors import ServiceUnavailable
from sessiond.settings import WindowsSettings
from tests.infra.samba import SambaDomain, ServiceAccount

from .conftest import ServerProcess, free_port, server_env
from .conftest import start_server as start_configured_server
from .test_windows_domain import _in_process, _kerberos_config, _service_account
from .test_windows_ntlm import (
    _curl_ntlm,
    _open_windows,
    _toml_table,
    add_user,
    domain_config,
    start_server,
)

PASSWORD = "Pass-word-1"


def _sessiond(
    root: Path, dc: SambaDomain, config: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``sessiond ARGS`` with these settings, in the environment a server for the domain has
    (nss_wrapper resolves dc1.samba.test; no Kerberos variable of the test process)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sessiond.toml").write_text(config)
    data_dir = root / "sessiond-data"
    env = dc.subprocess_env(
        base=server_env(data_dir, SESSIOND_CONFIG=str(root / "sessiond.toml")), wrappers=True
    )
    for name in ("KRB5_CONFIG", "KRB5CCNAME", "KRB5_KTNAME"):
        env.pop(name, None)  # everything comes from the settings
    return subprocess.run(
        [sys.executable, "-m", "sessiond", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _serve(root: Path, dc: SambaDomain, config: str) -> subprocess.CompletedProcess[str]:
    """``sessiond serve``, which must refuse to start: one that is still running after a
    minute (it started, and serves) is stopped and fails the test."""
    try:
        return _sessiond(root, dc, config, "serve", "--port", str(free_port()), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("sessiond serve started with these settings instead of refusing them")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain) -> ServiceAccount:
    root = tmp_path_factory.mktemp("checks-svc")
    return _service_account(samba_domain, root / "sessiond.keytab")


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error [invalid_settings]: invalid settings: "), lines[0]
    return lines[0]


# --- start-up ------------------------------------------------------------------------------


def _refusal(
    tmp_path: Path, dc: SambaDomain, svc: ServiceAccount, setting: str, value: Path | str
) -> str:
    """The one line ``sessiond serve`` refuses to start with, given the Kerberos settings with
    the value ``setting`` (a file: krb5.conf, the keytab) replaced by ``value``."""
    config = _kerberos_config(dc, svc).replace(setting, str(value))
    return _one_line(_serve(tmp_path / "serve", dc, config))


def test_serve_refuses_a_missing_krb5_conf_in_one_line(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    missing = tmp_path / "no-krb5.conf"
    line = _refusal(tmp_path, samba_domain, svc, samba_domain.krb5_conf, missing)
    assert f"{missing} (windows.krb5_config) does not exist" in line
    assert line.endswith("[krb5_config]")


def test_serve_refuses_a_malformed_krb5_conf_in_one_line(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    broken = tmp_path / "krb5.conf"
    broken.write_text("[libdefaults\n default_realm = SAMBA.TEST\n")
    line = _refusal(tmp_path, samba_domain, svc, samba_domain.krb5_conf, broken)
    assert "KRB5_CONFIG_BADFORMAT" in line and line.endswith("[krb5_config]")


def test_serve_refuses_a_krb5_conf_that_cannot_find_the_realm(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    other = tmp_path / "krb5.conf"
    other.write_text("[libdefaults]\n dns_lookup_kdc = false\n[realms]\n ELSEWHERE.TEST = {\n"
                     "  kdc = 127.0.0.1\n }\n")  # fmt: skip
    line = _refusal(tmp_path, samba_domain, svc, samba_domain.krb5_conf, other)
    assert "does not name the realm SAMBA.TEST under [realms]" in line
    assert line.endswith("[realm_unknown]")


def test_serve_refuses_a_missing_keytab_in_one_line(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    missing = tmp_path / "missing.keytab"
    line = _refusal(tmp_path, samba_domain, svc, svc.keytab, missing)
    assert f"{missing} (windows.keytab) does not exist" in line
    assert line.endswith("[keytab_unusable]")


def test_serve_refuses_a_keytab_without_the_service_principal_in_one_line(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    other = _service_account(samba_domain, tmp_path / "other.keytab")
    line = _refusal(tmp_path, samba_domain, svc, svc.keytab, other.keytab)
    assert f"holds no key for {svc.principal} (windows.service_principal)" in line
    assert other.principal in line and line.endswith("[keytab_wrong_principal]")


def test_serve_refuses_a_directory_that_does_not_answer(
    tmp_path: Path, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    with socket.socket() as sock:
        sock.bind((dc.host, 0))
        closed = sock.getsockname()[1]
    config = (
        f'[sessiond.windows]\nrealm = "{dc.realm}"\npassword_check = "ldap"\nnegotiate = false\n'
        f'[sessiond.windows.directory]\nurl = "ldaps://{dc.host}:{closed}"\n'
    )
    line = _one_line(_serve(tmp_path / "serve", dc, config))
    assert f"ldaps://{dc.host}:{closed} (windows.directory.url) does not accept" in line
    assert line.endswith("[directory_unreachable]")


# --- sessiond check windows ----------------------------------------------------------------


def _full_config(dc: SambaDomain, svc: ServiceAccount) -> str:
    """Kerberos with the KDC proof and a keytab, the directory over LDAPS, NTLM by winbind."""
    return (
        _kerberos_config(dc, svc).replace("negotiate = false", "negotiate = true")
        + f"""ntlm = "winbind"
ntlm_auth_config = {json.dumps(dc.smb_conf)}
ntlm_auth_environment = {_toml_table(dc.wrapper_env())}

[sessiond.windows.directory]
url = "ldaps://{dc.dc_fqdn}:636"
ca_file = "{dc.ca_file}"
bind_dn = "{dc.admin_principal}"
bind_password = "{dc.admin_password}"
"""
    )


def _steps(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {step["step"]: step for step in json.loads(result.stdout)}


def test_check_windows_passes_every_step_of_a_good_configuration(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    result = _sessiond(tmp_path, samba_domain, _full_config(samba_domain, svc), "check", "windows")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    names = [line.split(":", 1)[0] for line in lines]
    assert names == ["krb5.conf", "keytab", "self-test", "directory", "winbind", "ntlm_auth"]
    assert all(line.split(": ")[1] == "ok" for line in lines), result.stdout
    as_json = _sessiond(
        tmp_path, samba_domain, _full_config(samba_domain, svc), "check", "windows", "--json"
    )
    assert as_json.returncode == 0
    assert all(step["ok"] for step in _steps(as_json).values())


def test_check_windows_names_the_failing_step(tmp_path: Path, samba_domain: SambaDomain) -> None:
    dc = samba_domain
    stale = _service_account(dc, tmp_path / "stale.keytab")
    dc.reset_service_password(stale)  # the keytab keeps the keys of the old password
    result = _sessiond(tmp_path, dc, _full_config(dc, stale), "check", "windows", "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    steps = _steps(result)
    assert steps["krb5.conf"]["ok"] and steps["keytab"]["ok"]
    assert steps["self-test"]["ok"] is False
    assert steps["self-test"]["cause"] == "keytab_keys_wrong", steps["self-test"]
    assert steps["directory"]["ok"] and steps["winbind"]["ok"]
    plain = _sessiond(tmp_path, dc, _full_config(dc, stale), "check", "windows")
    assert plain.returncode == 2
    assert "self-test: failed [keytab_keys_wrong]: " in plain.stdout


def test_check_windows_names_an_unreachable_winbindd(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    dc = samba_domain
    empty = tmp_path / "no-winbindd"
    empty.mkdir()
    config = _full_config(dc, svc).replace(
        _toml_table(dc.wrapper_env()),
        _toml_table({**dc.wrapper_env(), "SELFTEST_WINBINDD_SOCKET_DIR": str(empty)}),
    )
    result = _sessiond(tmp_path, dc, config, "check", "windows", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    steps = _steps(result)
    assert steps["winbind"]["cause"] == "winbindd_unreachable"
    assert "WBC_ERR_WINBIND_NOT_AVAILABLE" in str(steps["winbind"]["detail"])
    assert steps["ntlm_auth"]["cause"] == "winbindd_unreachable"


# --- winbind's faults by their codes --------------------------------------------------------


def test_winbindd_unreachable_is_named_so_when_ntlm_auth_says_nothing(
    tmp_path: Path, samba_domain: SambaDomain
) -> None:
    """With Samba's default log level (0) ntlm_auth writes nothing on its standard error when
    winbindd does not answer (the fixture's smb.conf has log level 1): only ``BH
    NT_STATUS_UNSUCCESSFUL``, the same as for a refused privileged pipe. The cause comes from
    winbindd's own code (wbinfo --ping-dc), not from the absence of words."""
    dc = samba_domain
    quiet = tmp_path / "smb.conf"
    quiet.write_text(Path(dc.smb_conf).read_text().replace("log level = 1", "log level = 0"))
    empty = tmp_path / "no-winbindd"
    empty.mkdir()
    config = domain_config(dc).replace(json.dumps(dc.smb_conf), json.dumps(str(quiet)))
    config = config.replace(
        _toml_table(dc.wrapper_env()),
        _toml_table({**dc.wrapper_env(), "SELFTEST_WINBINDD_SOCKET_DIR": str(empty)}),
    )
    server = start_server(tmp_path / "server", config)
    # A mapped account: one no user is mapped to is refused before the domain is asked.
    add_user(server, "anyone", "--login-type", "Windows", "--account", "SAMBA\\anyone")
    try:
        status, body = _curl_ntlm(dc, _open_windows(server), "SAMBA\\anyone", PASSWORD)
    finally:
        server.stop()
    assert status == 503, body
    error = json.loads(body)["error"]
    assert error["details"]["cause"] == "winbindd_unreachable"
    log = server.log_path.read_text()
    assert "WBC_ERR_WINBIND_NOT_AVAILABLE" in log and "winbind_privileged_pipe" not in log


# --- what anonymous callers are told ---------------------------------------------------------


def test_503s_to_anonymous_sign_ins_name_the_cause_but_no_file_or_host(
    tmp_path: Path, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    """A keytab whose keys are stale and a directory whose certificate cannot be verified:
    the bodies carry the code, the cause and a generic message; the log has the rest."""
    dc = samba_domain
    stale = _service_account(dc, tmp_path / "stale.keytab")
    name = f"chk-{uuid.uuid4().hex[:8]}"
    dc.add_user(name, PASSWORD)
    config = _kerberos_config(dc, stale) + (
        f'\n[sessiond.ldap]\nurl = "ldaps://{dc.dc_fqdn}:636"\nsearch_base = "{dc.base_dn}"\n'
    )
    server = _domain_server(tmp_path / "server", dc, config)
    try:
        dc.reset_service_password(stale)  # after start: the proof fails at sign-in
        _add_windows_user(server, name)
        assert server.cli("users", "add", "ldap-" + name, "--login-type", "Ldap").returncode == 0
        url = f"{server.url}/api/v1/sessions/open"
        bodies = {
            "keytab_stale": httpx.post(
                url, json={"Login": name, "Password": PASSWORD, "Domain": "SAMBA"}, timeout=60
            ),
            "directory_certificate": httpx.post(
                url, json={"Login": "ldap-" + name, "Password": PASSWORD}, timeout=60
            ),
        }
    finally:
        server.stop()
    log = server.log_path.read_text()
    for cause, response in bodies.items():
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "service_unavailable"
        assert error["details"] == {"cause": cause}
        kind = "Windows" if cause.startswith("keytab") else "LDAP"
        assert error["message"] == (
            f"{kind} sign-in is unavailable on this server: cause {cause}; the administrator "
            "will find details in the log"
        )
        for secret in (stale.keytab, dc.krb5_conf, dc.dc_fqdn, dc.host, "/", "CN=", "samba.test"):
            assert secret not in response.text, (secret, response.text)
        assert f"[{cause}]" in log
    assert stale.keytab in log and dc.dc_fqdn in log


def test_the_console_sign_in_page_names_the_cause_but_no_file(
    tmp_path: Path, samba_domain: SambaDomain
) -> None:
    dc = samba_domain
    stale = _service_account(dc, tmp_path / "stale.keytab")
    name = f"chk-{uuid.uuid4().hex[:8]}"
    dc.add_user(name, PASSWORD)
    server = _domain_server(tmp_path / "server", dc, _kerberos_config(dc, stale))
    try:
        dc.reset_service_password(stale)
        _add_windows_user(server, name)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            form = client.get("/console/sign-in")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token
            answer = client.post(
                "/console/sign-in",
                data={"csrf": token.group(1), "login": name, "password": PASSWORD},
            )
    finally:
        server.stop()
    assert answer.status_code == 503, answer.text
    assert "cause keytab_stale" in answer.text
    assert stale.keytab not in answer.text and "keytab " not in answer.text


def _domain_server(root: Path, dc: SambaDomain, config: str) -> ServerProcess:
    return start_configured_server(root, config, env=dc.server_environment)


def _add_windows_user(server: ServerProcess, name: str) -> None:
    added = server.cli("users", "add", name, "--login-type", "Windows", "--account",
                       f"SAMBA\\{name}")  # fmt: skip
    assert added.returncode == 0, added.stderr


# --- krb5.conf faults after start, in process -------------------------------------------------


def test_a_krb5_conf_gone_after_start_is_krb5_config_not_realm_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samba_domain: SambaDomain
) -> None:
    """MIT krb5 skips a krb5.conf it cannot open and then says only that it knows no KDC
    (KRB5_REALM_UNKNOWN): the file itself is what is wrong."""
    gone = tmp_path / "gone-krb5.conf"
    auth = _in_process(monkeypatch, samba_domain, verify_kdc=False, krb5_config=str(gone))
    with pytest.raises(ServiceUnavailable) as refused:
        auth._kerberos_check(auth.names.parse("SAMBA\\someone"), PASSWORD)
    assert refused.value.details == {"cause": "krb5_config"}
    assert f"{gone} (windows.krb5_config) does not exist" in refused.value.message
    assert "KRB5_REALM_UNKNOWN" in refused.value.message


def test_a_malformed_krb5_conf_is_krb5_config_for_integrated_sign_in_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samba_domain: SambaDomain, svc: ServiceAccount
) -> None:
    broken = tmp_path / "krb5.conf"
    broken.write_text("[libdefaults\n default_realm = SAMBA.TEST\n")
    monkeypatch.setenv("KRB5_CONFIG", str(broken))
    acceptor = KerberosAcceptor(
        WindowsSettings(
            realm=samba_domain.realm,
            service_principal=svc.principal,
            keytab=Path(svc.keytab),
            krb5_config=broken,
            verify_kdc=False,
        )
    )
    with pytest.raises(ServiceUnavailable) as refused:
        acceptor._credentials()
    assert refused.value.details == {"cause": "krb5_config"}, refused.value.message
