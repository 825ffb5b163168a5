"""A throwaway MIT Kerberos realm for tests, built on the PyPI package ``k5test``.

:class:`KerberosRealm` creates a KDC database in a fresh temporary folder, starts a real
``krb5kdc`` listening on ``127.0.0.1`` (UDP and TCP) on a free port, and offers helpers to
add user principals, create ``HTTP/<host>`` service principals exported to a keytab, and
``kinit`` users into their own credential-cache files.

Everything (config, database, keytabs, ccaches, replay cache, logs) lives under
:attr:`KerberosRealm.tmpdir`; nothing under ``/etc`` is read or written except the system
``/etc/gss/mech.d`` that libgssapi always loads.

Host names are never canonicalised: the generated ``krb5.conf`` sets ``rdns = false``,
``dns_canonicalize_hostname = false`` and ``qualify_shortname = ""`` and maps ``localhost``
to the realm, so a client asking for ``HTTP@localhost`` (what a browser or ``curl
--negotiate`` does for ``http://localhost:PORT/``) gets a ticket for
``HTTP/localhost@SESSIOND.TEST``, which is the principal in :attr:`KerberosRealm.keytab`.

Using it
--------

*For a subprocess* (e.g. a server under test started with ``subprocess.Popen``) pass
``env=realm.subprocess_env(...)``: the child's libkrb5 then reads our ``krb5.conf``
(``KRB5_CONFIG``), accepts with our keytab (``KRB5_KTNAME``) and uses the given credential
cache (``KRB5CCNAME``).

*In-process* (``gssapi`` / ``pyspnego`` used by the test itself or by an ASGI app under test
running in the same interpreter) wrap the code in ``with realm.activate(ccache=...):``. That
sets the same variables in :data:`os.environ` and restores them afterwards. MIT libkrb5 reads
``KRB5_CONFIG``/``KRB5CCNAME``/``KRB5_KTNAME`` when it creates a krb5 context, and GSSAPI
creates a new one inside every credential acquisition and every ``step()`` of a security
context, so the variables must be set *around those calls* -- for the whole token exchange,
not just when the context object is made. Importing ``gssapi``/``spnego`` earlier, with other
or no variables, is harmless (checked: a lookup fails before ``activate()``, works inside it,
and fails again after it, in one process). Because ``os.environ`` is process-wide, activate
one realm at a time and not concurrently with threads that use Kerberos.

Because the ``krb5.conf`` also sets ``default_ccache_name``, ``default_keytab_name`` and
``default_client_keytab_name`` to files in :attr:`tmpdir`, ``KRB5_CONFIG`` alone is enough to
keep a process away from the machine's own ``/tmp/krb5cc_*`` and ``/etc/krb5.keytab``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from k5test import K5Realm  # type: ignore[import-untyped]

from tests.infra._net import LOOPBACK, free_port
from tests.infra._process import Stoppable, stop_process, wait_for_ports

DEFAULT_REALM = "SESSIOND.TEST"
DEFAULT_HTTP_HOST = "localhost"

KRB5_ENV_VARS = (
    "KRB5_CONFIG",
    "KRB5_KDC_PROFILE",
    "KRB5CCNAME",
    "KRB5_KTNAME",
    "KRB5_CLIENT_KTNAME",
    "KRB5RCACHEDIR",
    "KRB5_TRACE",
)


@contextmanager
def krb5_environment(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Every Kerberos variable of :data:`os.environ` cleared, ``env`` set, for the ``with``
    block (in-process GSSAPI use); the previous values restored on exit. Not thread-safe."""
    saved = {name: os.environ.get(name) for name in KRB5_ENV_VARS}
    for name in KRB5_ENV_VARS:
        os.environ.pop(name, None)
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class KinitError(RuntimeError):
    """``kinit`` failed (wrong password, unknown principal, KDC unreachable...)."""

    def __init__(self, principal: str, returncode: int, output: str) -> None:
        super().__init__(f"kinit {principal} failed with code {returncode}: {output.strip()}")
        self.principal = principal
        self.returncode = returncode
        self.output = output


def run_kinit(
    kinit: str,
    principal: str,
    password: str,
    ccache_file: str,
    env: Mapping[str, str],
    timeout: float,
) -> None:
    """Run the ``kinit`` binary for ``principal`` with ``password`` on standard input, into
    the credential cache file ``ccache_file``; raise :class:`KinitError` if it fails."""
    result = subprocess.run(
        [kinit, "-c", f"FILE:{ccache_file}", principal],
        input=(password + "\n").encode(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise KinitError(principal, result.returncode, result.stdout.decode(errors="replace"))


@dataclass(frozen=True)
class ServicePrincipal:
    """A service principal whose keys were exported to ``keytab``."""

    principal: str  # e.g. "HTTP/localhost@SESSIOND.TEST"
    service: str  # e.g. "HTTP"
    host: str  # e.g. "localhost"
    keytab: str  # absolute path of the keytab file

    @property
    def gss_name(self) -> str:
        """The GSSAPI host-based service name, e.g. ``HTTP@localhost``."""
        return f"{self.service}@{self.host}"


class KerberosRealm(Stoppable):
    """A real MIT Kerberos realm (``krb5kdc`` on 127.0.0.1) in a temporary folder.

    Example::

        with KerberosRealm() as realm:
            alice = realm.add_user("alice", "Secret-1")
            ccache = realm.kinit(alice, "Secret-1")
            with realm.activate(ccache=ccache):
                ...  # gssapi / spnego client and server code, in-process
            server = subprocess.Popen([...], env=realm.subprocess_env())

    The constructor starts the KDC and, unless ``http_host`` is ``None``, creates the service
    principal ``HTTP/<http_host>`` in :attr:`keytab` (available as :attr:`http_service`).
    """

    def __init__(
        self,
        realm: str = DEFAULT_REALM,
        *,
        http_host: str | None = DEFAULT_HTTP_HOST,
        trace: bool = False,
        start_timeout: float = 15.0,
    ) -> None:
        self.realm = realm
        self.kdc_port = free_port(udp_too=True)
        self._kdc_proc: subprocess.Popen[bytes] | None = None
        self._trace = trace
        # k5test writes krb5.conf/kdc.conf (merging our overrides into its defaults), creates
        # the database and stash, and gives us kadmin.local helpers. We start krb5kdc ourselves
        # so that the wait for it is bounded and only loopback addresses are used.
        self._k5: Any = K5Realm(
            realm=realm,
            portbase=self.kdc_port,
            krb5_conf=self._krb5_conf_overrides(),
            kdc_conf=self._kdc_conf_overrides(),
            create_user=False,
            create_host=False,
            get_creds=False,
            start_kdc=False,
        )
        self.tmpdir: str = self._k5.tmpdir
        self.krb5_conf: str = os.path.join(self.tmpdir, "krb5.conf")
        self.kdc_conf: str = os.path.join(self.tmpdir, "kdc.conf")
        self.keytab: str = os.path.join(self.tmpdir, "keytab")
        self.client_keytab: str = os.path.join(self.tmpdir, "client_keytab")
        self.ccache: str = os.path.join(self.tmpdir, "ccache")
        self.kdc_log: str = os.path.join(self.tmpdir, "kdc.log")
        self.http_service: ServicePrincipal | None = None
        try:
            self._start_kdc(start_timeout)
            if http_host is not None:
                self.http_service = self.add_service("HTTP", http_host)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def _krb5_conf_overrides() -> dict[str, Any]:
        return {
            "libdefaults": {
                "default_realm": "$realm",
                "dns_lookup_kdc": "false",
                "dns_lookup_realm": "false",
                "rdns": "false",
                "dns_canonicalize_hostname": "false",
                # With canonicalisation off, krb5 >= 1.18 would otherwise append the resolver's
                # search domain to short names such as "localhost".
                "qualify_shortname": '""',
                "udp_preference_limit": "1",  # always TCP: one less thing to go wrong
                "default_ccache_name": "FILE:$tmpdir/ccache",
                "default_keytab_name": "FILE:$tmpdir/keytab",
                "default_client_keytab_name": "FILE:$tmpdir/client_keytab",
                "forwardable": "true",
            },
            "realms": {
                "$realm": {
                    "kdc": f"{LOOPBACK}:$port0",
                    "admin_server": f"{LOOPBACK}:$port1",
                    "kpasswd_server": f"{LOOPBACK}:$port2",
                }
            },
            "domain_realm": {"localhost": "$realm", ".localhost": "$realm"},
        }

    @staticmethod
    def _kdc_conf_overrides() -> dict[str, Any]:
        return {
            "realms": {
                "$realm": {
                    "kdc_ports": None,
                    "kdc_tcp_ports": None,
                    "kdc_listen": f"{LOOPBACK}:$port0",
                    "kdc_tcp_listen": f"{LOOPBACK}:$port0",
                    # Users must pre-authenticate, as in Active Directory.
                    "default_principal_flags": "+preauth",
                }
            },
        }

    def _start_kdc(self, timeout: float) -> None:
        with open(self.kdc_log + ".stdout", "wb") as out:
            self._kdc_proc = subprocess.Popen(
                [self._k5.krb5kdc, "-n"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **self._base_env(),
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                },
            )
        wait_for_ports(
            self._kdc_proc,
            [self.kdc_port],
            timeout=timeout,
            what="krb5kdc",
            log_file=self.kdc_log,
        )

    # ------------------------------------------------------------------ principals

    def principal(self, name: str) -> str:
        """``name`` qualified with ``@REALM`` unless it already has a realm."""
        return name if "@" in name else f"{name}@{self.realm}"

    def add_user(self, name: str, password: str) -> str:
        """Create user principal ``name@REALM`` with ``password``; return the principal."""
        principal = self.principal(name)
        self._kadmin_local(["addprinc", "-pw", password, principal])
        return principal

    def change_password(self, name: str, password: str) -> None:
        """Set a new password for an existing principal."""
        self._kadmin_local(["cpw", "-pw", password, self.principal(name)])

    def delete_principal(self, name: str) -> None:
        """Delete a principal from the KDC database."""
        self._kadmin_local(["delprinc", "-force", self.principal(name)])

    def add_service(
        self,
        service: str = "HTTP",
        host: str = DEFAULT_HTTP_HOST,
        keytab: str | None = None,
    ) -> ServicePrincipal:
        """Create ``service/host@REALM`` with random keys and export them to ``keytab``.

        ``keytab`` defaults to :attr:`keytab`, the realm's default acceptor keytab
        (``KRB5_KTNAME`` in :meth:`env`). Several services can share one keytab file.
        """
        principal = f"{service}/{host}@{self.realm}"
        keytab_path = os.path.abspath(keytab or self.keytab)
        self._kadmin_local(["addprinc", "-randkey", principal])
        self._kadmin_local(["ktadd", "-k", keytab_path, "-norandkey", principal])
        return ServicePrincipal(principal=principal, service=service, host=host, keytab=keytab_path)

    def ccache_path(self, name: str) -> str:
        """A file path in :attr:`tmpdir` suitable as a credential cache for ``name``."""
        safe = "".join(c if c.isalnum() else "_" for c in name)
        return os.path.join(self.tmpdir, f"ccache_{safe}")

    def kinit(
        self,
        name: str,
        password: str,
        ccache: str | None = None,
        *,
        timeout: float = 15.0,
    ) -> str:
        """Get a TGT for ``name`` with ``password`` (the real ``kinit`` CLI) into its own ccache.

        Returns the ccache path (default :meth:`ccache_path` of the principal); raises
        :class:`KinitError` if ``kinit`` fails, e.g. for a wrong password.
        """
        principal = self.principal(name)
        ccache_file = ccache or self.ccache_path(principal)
        run_kinit(self._k5._kinit, principal, password, ccache_file, self._base_env(), timeout)
        return ccache_file

    def klist(self, ccache: str | None = None, *, timeout: float = 15.0) -> str:
        """Output of ``klist`` for ``ccache`` (default: the realm's default ccache)."""
        result = subprocess.run(
            [self._k5._klist, ccache or self.ccache],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._base_env(),
            timeout=timeout,
            check=True,
        )
        return result.stdout.decode(errors="replace")

    def _kadmin_local(self, args: list[str]) -> None:
        self._k5.run_kadminl(args)

    # ------------------------------------------------------------------ environments

    def _base_env(self) -> dict[str, str]:
        env = {
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5_KDC_PROFILE": self.kdc_conf,
            "KRB5CCNAME": f"FILE:{self.ccache}",
            "KRB5_KTNAME": f"FILE:{self.keytab}",
            "KRB5_CLIENT_KTNAME": f"FILE:{self.client_keytab}",
            "KRB5RCACHEDIR": self.tmpdir,
        }
        if self._trace:
            env["KRB5_TRACE"] = os.path.join(self.tmpdir, "trace.log")
        return env

    def env(self, *, ccache: str | None = None, keytab: str | None = None) -> dict[str, str]:
        """The Kerberos environment variables (only those) for this realm.

        ``ccache`` becomes ``KRB5CCNAME`` (default: the realm's default ccache, usually empty)
        and ``keytab`` becomes ``KRB5_KTNAME`` (default: :attr:`keytab`, which holds
        ``HTTP/localhost``). Merge it into a full environment for a child process, or use
        :meth:`subprocess_env` / :meth:`activate`.
        """
        env = self._base_env()
        if ccache is not None:
            env["KRB5CCNAME"] = ccache if ":" in ccache else f"FILE:{ccache}"
        if keytab is not None:
            env["KRB5_KTNAME"] = keytab if ":" in keytab else f"FILE:{keytab}"
        return env

    def subprocess_env(
        self,
        *,
        ccache: str | None = None,
        keytab: str | None = None,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """A complete environment for a child process: ``base`` (default :data:`os.environ`)
        plus :meth:`env`. Pass it as ``subprocess.Popen(..., env=...)``."""
        return {
            **(os.environ if base is None else base),
            **self.env(ccache=ccache, keytab=keytab),
        }

    @contextmanager
    def activate(
        self, *, ccache: str | None = None, keytab: str | None = None
    ) -> Iterator[dict[str, str]]:
        """Set :meth:`env` in :data:`os.environ` for in-process GSSAPI use; restore on exit.

        Acquire credentials / build security contexts inside the ``with`` block. Not
        thread-safe (it changes the process environment).
        """
        with krb5_environment(self.env(ccache=ccache, keytab=keytab)) as env:
            yield env

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._kdc_proc is not None and self._kdc_proc.poll() is None

    def stop(self) -> None:
        """Stop the KDC and delete :attr:`tmpdir`. Safe to call more than once."""
        stop_process(self._kdc_proc)
        self._kdc_proc = None
        shutil.rmtree(self._k5.tmpdir, ignore_errors=True)
