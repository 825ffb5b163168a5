"""Session-scoped pytest fixtures for the real directory services in :mod:`tests.infra`.

Use them from a conftest or a test module in either way::

    pytest_plugins = ["tests.infra.conftest_fixtures"]   # top-level conftest or test module

    from tests.infra.conftest_fixtures import kerberos_realm, ldap_server  # noqa: F401

Each fixture starts its server once per test session (on free loopback ports, in a temp
folder) and stops it at the end. Tests share the server, so give the principals / entries they
create unique names (e.g. ``f"alice-{uuid.uuid4().hex[:8]}"``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.kerberos import KerberosRealm
from tests.infra.ldap import LdapServer
from tests.infra.ntlm import NtlmUsers
from tests.infra.oidc import OidcProvider
from tests.infra.postgres import PostgresServer
from tests.infra.samba import SambaDomain

__all__ = [
    "kerberos_realm",
    "ldap_server",
    "ntlm_users",
    "oidc_provider",
    "postgres_server",
    "samba_domain",
]


@pytest.fixture(scope="session")
def kerberos_realm() -> Iterator[KerberosRealm]:
    """A running MIT KDC for realm ``SESSIOND.TEST`` with ``HTTP/localhost`` in ``realm.keytab``.

    In-process GSSAPI/pyspnego code must run inside ``with kerberos_realm.activate(...)``;
    a server subprocess gets ``env=kerberos_realm.subprocess_env()``.
    """
    realm = KerberosRealm()
    try:
        yield realm
    finally:
        realm.stop()


@pytest.fixture(scope="session")
def ldap_server() -> Iterator[LdapServer]:
    """A running OpenLDAP for ``dc=sessiond,dc=test``: LDAP+StartTLS, LDAPS, CA in ``ca_file``."""
    server = LdapServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ntlm_users() -> Iterator[NtlmUsers]:
    """An ``NTLM_USER_FILE`` for pyspnego's NTLM acceptor (activate it around server code)."""
    users = NtlmUsers()
    try:
        yield users
    finally:
        users.stop()


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    """A running OpenID Provider (oidc-provider on Node.js), issuer ``http://127.0.0.1:PORT``,
    with the clients ``sessiond-console`` and ``sessiond-desktop`` and the users ``alice`` and
    ``bob``; see :mod:`tests.infra.oidc` (browser pages: :mod:`tests.infra.oidc_pages`). Tests
    share it: a test that changes a client or stops, freezes or rotates it puts back what other
    tests rely on, or registers a client of its own."""
    provider = OidcProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL cluster on loopback; ``new_database()`` gives each test its own."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def samba_domain() -> Iterator[SambaDomain]:
    """A running Samba AD DC for realm ``SAMBA.TEST`` / domain ``SAMBA`` on a loopback address
    of its own (``samba_domain.host``; needs root). 5-10 s to provision and start; see
    :mod:`tests.infra.samba`."""
    domain = SambaDomain()
    try:
        yield domain
    finally:
        domain.stop()
