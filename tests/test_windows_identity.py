"""Who a Windows sign-in is, on every path: ``require_membership_of`` holds for a password typed
into the sign-in form, for a Kerberos ticket and for NTLM alike (nested groups included), and a
user principal name that differs from the account's name (``u.person@samba.test`` for
``SAMBA\\upnuser``) signs in as that account, held to its lockout. Against a real Samba AD DC:
memberships read through winbind (``ntlm = "winbind"``) and through the directory's
``tokenGroups``; UPNs found by the directory (a DC's own winbindd does not resolve them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sessiond import SessionClient
from sessiond.errors import InvalidCredentials
from tests.infra.samba import SambaDomain, ServiceAccount

from .conftest import ServerProcess, start_server
from .test_windows_ntlm import DOMAIN, PASSWORD, REALM, add_user, audit, domain_config
from .test_windows_pipeline import _ntlm, _password, bad_passwords

LIMIT = 3


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def _failures(server: ServerProcess, name: str) -> list[str]:
    """The reasons of the LoginFailed records that mention ``name``."""
    return [
        str(r["details"]["reason"]).replace("\\\\", "\\")  # type: ignore[index]
        for r in audit(server, "LoginFailed")
        if name.casefold() in json.dumps(r).casefold()
    ]


# --- membership through winbind, on the three paths ------------------------------------------


@dataclass
class Grouped:
    dc: SambaDomain
    server: ServerProcess
    svc: ServiceAccount
    group: str

    def mapped(self, prefix: str) -> str:
        """A domain user mapped to a Windows user of sessiond, in no group yet."""
        name = _unique(prefix)
        self.dc.add_user(name, PASSWORD)
        add_user(self.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
        return name

    def by_password(self, name: str) -> httpx.Response:
        return _password(self.server, f"{DOMAIN}\\{name}", PASSWORD, None, "127.0.0.1")

    def by_ticket(self, name: str) -> str:
        """An integrated sign-in with a Kerberos ticket: the session's user login."""
        ccache = self.dc.kinit(name, PASSWORD)
        with (
            self.dc.activate(ccache=ccache),
            SessionClient(
                self.server.url, service_hostname=self.svc.host, windows_protocol="kerberos"
            ) as client,
        ):
            return client.open_session_windows_auth().user_login

    def by_ntlm(self, name: str) -> httpx.Response:
        return _ntlm(self.server, f"{DOMAIN}\\{name}", PASSWORD)


def _start(root: Path, dc: SambaDomain, config: str) -> ServerProcess:
    """A ``sessiond serve`` that reaches the DC by its name (``dc1.samba.test``, the name in
    its certificate) through nss_wrapper."""
    return start_server(root, config, env=dc.server_environment)


def _directory_section(dc: SambaDomain) -> str:
    """``[sessiond.windows.directory]`` over LDAPS with a search account of its own."""
    search = dc.add_user(_unique("search-"), PASSWORD)
    return f"""
[sessiond.windows.directory]
url = "ldaps://{dc.dc_fqdn}:636"
ca_file = "{dc.ca_file}"
bind_dn = "{search.upn}"
bind_password = "{PASSWORD}"
"""


def _grouped(root: Path, dc: SambaDomain, *, directory: bool, **extra: object) -> Grouped:
    keytab = root / "sessiond.keytab"
    svc = dc.add_service_account("HTTP", f"{_unique('groups-')}.samba.test", keytab=str(keytab))
    group = _unique("sessiond-members-")
    dc.add_group(group)
    config = domain_config(
        dc,
        require_membership_of=f"{DOMAIN}\\{group}",
        service_principal=svc.principal,
        keytab=str(keytab),
        **extra,
    )
    server = _start(root / "server", dc, config + (_directory_section(dc) if directory else ""))
    return Grouped(dc, server, svc, group)


@pytest.fixture(scope="module")
def grouped(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[Grouped]:
    """Password (Kerberos), integrated Kerberos and NTLM through winbind, members only; the
    memberships read from the directory."""
    made = _grouped(tmp_path_factory.mktemp("grouped"), samba_domain, directory=True)
    yield made
    made.server.stop()


@pytest.fixture(scope="module")
def winbind_only(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[Grouped]:
    """The same with no directory: memberships read through winbind; accounts no user is
    mapped to are provisioned."""
    made = _grouped(
        tmp_path_factory.mktemp("winbind"), samba_domain, directory=False, auto_provision=True
    )
    yield made
    made.server.stop()


def test_a_non_member_is_refused_on_every_path_and_signs_in_on_all_once_added(
    grouped: Grouped,
) -> None:
    name = grouped.mapped("outsider-")
    group = f"{DOMAIN}\\{grouped.group}"

    by_password = grouped.by_password(name)
    assert by_password.status_code == 401, by_password.text
    error = by_password.json()["error"]
    assert (error["code"], error["message"]) == ("invalid_credentials", "wrong login or password")
    with pytest.raises(InvalidCredentials) as by_ticket:
        grouped.by_ticket(name)
    assert by_ticket.value.status == 401
    assert by_ticket.value.message == "wrong login or password"
    by_ntlm = grouped.by_ntlm(name)
    assert by_ntlm.status_code == 401
    assert by_ntlm.json()["error"]["code"] == "invalid_credentials"

    reasons = _failures(grouped.server, name)
    said = [r for r in reasons if f"{DOMAIN}\\{name} is not a member of {group}" in r]
    assert len(said) == 2, reasons  # the password and the ticket; NTLM's is winbind's own
    assert any(f"not a member of {group}" in r and "NT_STATUS_LOGON_FAILURE" in r for r in reasons)

    grouped.dc.add_to_group(grouped.group, name)
    assert grouped.by_password(name).status_code == 200
    assert grouped.by_ticket(name) == f"{DOMAIN}\\{name}"
    assert grouped.by_ntlm(name).status_code == 200


@pytest.mark.parametrize("source", ["directory", "winbind"])
def test_a_member_of_a_group_inside_the_group_is_a_member(
    source: str, grouped: Grouped, winbind_only: Grouped
) -> None:
    made = grouped if source == "directory" else winbind_only
    name = made.mapped("nested-")
    inner = _unique("inner-")
    made.dc.add_group(inner, [name])
    answer = made.by_password(name)
    assert answer.status_code == 401
    assert any("is not a member of" in r for r in _failures(made.server, name))
    made.dc.add_to_group(made.group, inner)  # the group holds the group that holds them
    assert made.by_password(name).status_code == 200
    assert made.by_ticket(name) == f"{DOMAIN}\\{name}"
    assert made.by_ntlm(name).status_code == 200


def test_an_unmapped_non_member_is_not_provisioned(winbind_only: Grouped) -> None:
    made = winbind_only
    name = _unique("newcomer-")
    made.dc.add_user(name, PASSWORD)
    answer = _password(made.server, name, PASSWORD, DOMAIN, "127.0.0.1")
    assert answer.status_code == 401
    assert name not in made.server.cli("users", "list").stdout  # nobody was provisioned
    made.dc.add_to_group(made.group, name)
    assert _password(made.server, name, PASSWORD, DOMAIN, "127.0.0.1").status_code == 200
    assert name in made.server.cli("users", "list").stdout


# --- user principal names, and membership through the directory -----------------------------


@dataclass
class Directory:
    dc: SambaDomain
    server: ServerProcess
    group: str

    def user(self, prefix: str, upn_suffix: str) -> tuple[str, str]:
        """A domain member whose UPN is not its name, mapped to a user; (name, UPN)."""
        name = _unique(prefix)
        upn = f"u.{name}@{upn_suffix}"
        self.dc.add_user(name, PASSWORD, userPrincipalName=upn)
        self.dc.count_bad_passwords(name)
        self.dc.add_to_group(self.group, name)
        add_user(self.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
        return name, upn


@pytest.fixture(scope="module")
def directory(
    tmp_path_factory: pytest.TempPathFactory, samba_domain: SambaDomain
) -> Iterator[Directory]:
    """Passwords checked by Kerberos; UPNs and memberships read from the directory (no
    winbind); the user's lockout at LIMIT wrong passwords."""
    dc = samba_domain
    group = _unique("directory-members-")
    dc.add_group(group)
    config = f"""
[sessiond.security]
max_failed_login_attempts_before_blocked = {LIMIT}
block_windows_and_ldap_users = true

[sessiond.windows]
realm = "{REALM}"
domains = {{ {DOMAIN} = "{REALM}" }}
krb5_config = "{dc.krb5_conf}"
verify_kdc = false
negotiate = false
domain_lockout_threshold = 0
require_membership_of = "{DOMAIN}\\\\{group}"
"""
    server = _start(tmp_path_factory.mktemp("directory"), dc, config + _directory_section(dc))
    yield Directory(dc, server, group)
    server.stop()


def test_a_upn_unlike_the_account_name_signs_in_as_the_mapped_account(
    directory: Directory,
) -> None:
    name, upn = directory.user("upnuser-", "samba.test")
    answer = _password(directory.server, upn, PASSWORD, None, "127.0.0.1")
    assert answer.status_code == 200, answer.text
    assert f'UserLogin="{DOMAIN}\\{name}"' in answer.json()["Token"]
    # A UPN suffix that is no realm of this server's (an alternative UPN suffix) too.
    other, elsewhere = directory.user("alt-", "people.example")
    answer = _password(directory.server, elsewhere, PASSWORD, None, "127.0.0.1")
    assert answer.status_code == 200, answer.text
    assert f'UserLogin="{DOMAIN}\\{other}"' in answer.json()["Token"]
    # The spellings that worked before still do.
    for login, domain in ((f"{DOMAIN}\\{name}", None), (name, DOMAIN), (f"{name}@{REALM}", None)):
        answer = _password(directory.server, login, PASSWORD, domain, "127.0.0.1")
        assert answer.status_code == 200, (login, answer.text)


def test_wrong_passwords_in_the_upn_spelling_count_against_the_users_lockout(
    directory: Directory,
) -> None:
    name, upn = directory.user("upnlock-", "samba.test")
    for i in range(LIMIT):
        answer = _password(directory.server, upn, f"Wrong-{i}-pw", None, "127.0.0.1")
        assert answer.status_code == 401
    assert bad_passwords(directory.dc, name) == LIMIT  # each reached the DC as this account
    blocked = [r for r in audit(directory.server, "UserBlocked") if r["user_name"] == name]
    assert len(blocked) == 1
    # The user is blocked: the right password, in any spelling, is refused unchecked.
    for login in (upn, f"{DOMAIN}\\{name}"):
        answer = _password(directory.server, login, PASSWORD, None, "127.0.0.1")
        assert answer.json()["error"]["code"] == "invalid_credentials"
    assert bad_passwords(directory.dc, name) == LIMIT


def test_membership_through_the_directory_counts_nested_groups(directory: Directory) -> None:
    dc = directory.dc
    name = _unique("dirmember-")
    dc.add_user(name, PASSWORD)
    add_user(directory.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    answer = _password(directory.server, f"{DOMAIN}\\{name}", PASSWORD, None, "127.0.0.1")
    assert answer.status_code == 401
    reasons = _failures(directory.server, name)
    assert any(f"is not a member of {DOMAIN}\\{directory.group}" in r for r in reasons), reasons
    inner = _unique("dirinner-")
    dc.add_group(inner, [name])
    dc.add_to_group(directory.group, inner)
    answer = _password(directory.server, f"{DOMAIN}\\{name}", PASSWORD, None, "127.0.0.1")
    assert answer.status_code == 200, answer.text


def test_an_ntlm_answer_in_a_upn_spelling_is_held_to_that_accounts_user(grouped: Grouped) -> None:
    dc = grouped.dc
    name = _unique("ntupn-")
    upn = f"u.{name}@{dc.dns_domain}"
    dc.add_user(name, PASSWORD, userPrincipalName=upn)
    dc.add_to_group(grouped.group, name)
    add_user(grouped.server, name, "--login-type", "Windows", "--account", f"{DOMAIN}\\{name}")
    answer = _ntlm(grouped.server, upn, PASSWORD)
    assert answer.status_code == 200, answer.text
    assert f'UserLogin="{DOMAIN}\\{name}"' in answer.json()["Token"]
