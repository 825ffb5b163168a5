"""A throwaway Active Directory domain for tests: a real Samba AD DC on a loopback address.

:class:`SambaDomain` provisions a fresh domain (realm ``SAMBA.TEST``, NetBIOS domain ``SAMBA``,
domain controller ``dc1.samba.test``) with ``samba-tool domain provision`` in a temporary
folder, starts the ``samba`` AD DC daemon on a loopback address of its own, waits until LDAP,
Kerberos and winbind answer, and offers helpers to create users, groups and service accounts,
to put accounts into the states Active Directory reports (disabled, must change password,
password expired, account expired, locked out), to export keytabs, ``kinit`` users and run
Samba's ``ntlm_auth`` against the DC. :meth:`SambaDomain.stop` stops every process it started
and deletes the folder (also when start-up fails half-way).

Samba 4.17 as packaged by Debian 12 (bookworm): packages ``samba``, ``samba-ad-dc``,
``samba-ad-provision`` (the schema files ``samba-tool domain provision`` reads; only a
*Recommends* of ``samba``, so it must be named when installing with
``--no-install-recommends``), ``samba-dsdb-modules``, ``winbind`` (``ntlm_auth``, ``wbinfo``),
``ldb-tools`` (``ldbmodify``), ``libnss-wrapper`` and ``krb5-user`` (MIT ``kinit``). They are
listed in ``scripts/system-packages.txt``. Installing them starts no daemon in this container
(``policy-rc.d`` forbids it).

What it took, and why
---------------------

*Root, fixed ports, and an address of its own.* Samba's LDAP server binds 389 (LDAP), 636
(LDAPS), 3268 and 3269 (global catalog) and the RPC endpoint mapper binds 135; the port
numbers are compiled in (``source4/ldap_server/ldap_server.c``) and no smb.conf option moves
them. So the DC runs as root (ports below 1024), and it gets a loopback address of its own,
picked at random in 127.64.0.0-127.127.255.255 (:attr:`SambaDomain.host`). Linux routes all
of 127.0.0.0/8 to ``lo`` with no configuration, and samba binds to an address given with a
netmask (``interfaces = 127.a.b.c/8``, ``bind interfaces only = yes``) although no interface
carries it; a bare address without ``/8`` must be an interface's own address, else samba logs
"no network interfaces found" and stops. So nothing on 127.0.0.1 is in the way (the MIT KDC
and slapd of :mod:`tests.infra.kerberos` / :mod:`tests.infra.ldap`, a developer's own slapd
on 127.0.0.1:389), and two test sessions on one machine each get a DC of their own (tried).
Only a service listening on the fixed ports of 0.0.0.0 (every address) stops it: then
:class:`SambaDomain` refuses to start, naming the ports. CLDAP stays on UDP 389. What *can*
move is put on free ports of that address: ``krb5 port`` and ``kpasswd port`` (UDP and TCP),
``dns port`` and ``smb ports``. The other RPC endpoints (one for NETLOGON, two shared by the
other interfaces) take ports from ``rpc server dynamic port range``, set to 8 free ports just
below the kernel's ephemeral range (``rpc server port`` is documented to pin them, but in
4.17 it did not move the shared endpoints, which took 49152). NetBIOS (``nbt``, ``wrepl``),
``ntp_signd``, ``kcc`` and ``dnsupdate`` are not started (``server services = -...``):
``samba_dnsupdate`` would otherwise send DNS updates to the resolver in ``/etc/resolv.conf``.

*Provisioning.* ``samba-tool domain provision --targetdir=DIR --server-role=dc
--use-rfc2307 --dns-backend=SAMBA_INTERNAL --host-ip=ADDRESS`` with
``--option=interfaces=ADDRESS/8`` and ``--option=bind interfaces only=yes``: without the
interface options provision would register the machine's own network address as the DC's
DNS address. (``--host-ip=127.0.0.1`` would not work: provision drops exactly that address on
purpose, "No IPv4 address will be assigned"; any other 127.x address becomes the A record of
``dc1.samba.test``.) Provision also copies the first ``nameserver`` of ``/etc/resolv.conf``
into ``dns forwarder``; the smb.conf written afterwards has no forwarder, so Samba's DNS
server answers only for its own zones (NXDOMAIN for anything else) and never sends a query off
the machine. The generated smb.conf is then replaced by our own (:attr:`SambaDomain.smb_conf`):
the provisioned one still points ``pid directory``, ``ncalrpc dir``, ``winbindd socket
directory``, ``ntp signd socket directory`` and ``log file`` at system paths (``/run/samba``,
``/var/lib/samba``, ``/var/log/samba``), and its ``cache directory`` does not exist (samba
complains); ours points all of them into the temporary folder, so the system's
``/etc/samba``, ``/var/lib/samba`` and ``/run/samba`` are never read or written.
``--backend-store=mdb`` was not faster than the default tdb; ``--dns-backend=NONE`` would save
about 1.5 s of provisioning but leave no DNS.

*The daemon.* ``samba -i -M prefork -s smb.conf`` (interactive: foreground, logs to stdout,
here :attr:`SambaDomain.log_file`). It forks ``smbd`` and ``winbindd`` itself, with the same
smb.conf. In interactive mode samba exits when its standard input reaches end of file, so it
gets a pipe that only this object holds: if the test process dies, the DC goes with it
(checked: no samba, smbd or winbindd is left after ``os._exit`` in the test process). It
is started in a new session (its own process group), and :meth:`SambaDomain.stop` sends
SIGTERM to samba, then to the group, and SIGKILL to what is left after 4 s.

*Readiness.* The TCP ports answer, then an LDAPS bind as Administrator, a ``kinit`` of
Administrator and ``wbinfo --ping-dc`` must succeed.

*TLS.* On first start samba generates a self-signed CA and a server certificate (RSA 4096,
``private/tls/{ca,cert,key}.pem``; the key takes a moment), with subject ``CN=DC1.samba.test``
(NetBIOS name in upper case + DNS domain), *no subjectAltName* and a negative serial number
(``cryptography`` warns about it). A client connecting to the address must therefore verify
against :attr:`SambaDomain.ca_file` and accept the name :attr:`SambaDomain.certificate_name`
(ldap3: ``Tls(valid_names=[...])``, see :meth:`SambaDomain.ldap_tls`), or connect to
``dc1.samba.test`` (see *Names*). With ``own_certificate=True`` samba uses a certificate made
here instead (:func:`tests.infra.ldap.write_tls_files`, ``tls keyfile``/``tls certfile``/``tls
cafile``), valid for ``dc1.samba.test`` and the address itself, which a client such as
sessiond's ``Directory`` (no ``valid_names``) accepts for ``ldap://ADDRESS``.

*Names.* ``dc1.samba.test`` resolves to the address without touching ``/etc/hosts`` in two
ways: Samba's own DNS server on :attr:`SambaDomain.dns_port` has the A record (its SRV records
still name the standard ports 88/389/464: use the krb5.conf here, not DNS, to find the KDC),
and :meth:`SambaDomain.wrapper_env` preloads ``libnss_wrapper.so`` with
``NSS_WRAPPER_HOSTS`` = :attr:`SambaDomain.hosts_file` (a copy of ``/etc/hosts`` plus the DC)
for child processes (``getent``, ``curl``, Python's ``getaddrinfo``). The test process itself
cannot resolve the name: use the address, and the certificate name.

*Kerberos clients* use :attr:`SambaDomain.krb5_conf` (``KRB5_CONFIG``; :meth:`env`,
:meth:`subprocess_env`, :meth:`activate` work as in :class:`tests.infra.kerberos.KerberosRealm`):
KDC and kpasswd at the address on their ports, no DNS lookups, no host name
canonicalisation, ``localhost`` and ``.samba.test`` mapped to the realm (so ``HTTP@localhost``
means ``HTTP/localhost@SAMBA.TEST``).

*ntlm_auth and winbind.* On an AD DC winbindd is started by samba; its socket is
``winbindd socket directory``/pipe, here ``run/winbindd/pipe`` in the folder. ``ntlm_auth``
and ``wbinfo`` (libwbclient) ignore that option: they connect to the compiled-in
``/run/samba/winbindd``. libwbclient reads ``SELFTEST_WINBINDD_SOCKET_DIR`` only when
``dlsym(RTLD_DEFAULT, "nss_wrapper_enabled")`` finds a function that returns true, i.e. under
nss_wrapper (read from the disassembly of Debian's ``libwbclient.so.0``; a plain
``WINBINDD_SOCKET_DIR`` variable does nothing). So ntlm_auth runs with
``LD_PRELOAD=libnss_wrapper.so`` and ``NSS_WRAPPER_PASSWD=/etc/passwd``,
``NSS_WRAPPER_GROUP=/etc/group`` (which enables it, without changing whom the system knows)
and ``SELFTEST_WINBINDD_SOCKET_DIR`` (:meth:`SambaDomain.wrapper_env`), and with
``--configfile`` = our smb.conf. Checking an NTLM response needs winbindd's *privileged* pipe,
which winbindd names on request: ``state directory``/winbindd_privileged/pipe, a directory of
mode 0750 owned by root, so ntlm_auth must run as root (or in the owning group). The
alternative -- ``winbindd socket directory = /run/samba/winbindd`` -- works without
nss_wrapper but uses a system path and collides with a system winbindd.

*Account states* are set over LDAPS as Administrator, except an expired password: AD lets no
one write ``pwdLastSet`` other than 0 or -1 ("setup_last_set_field: pwdLastSet must be 0 or -1
only!"), so :meth:`SambaDomain.expire_password` writes it with ``ldbmodify`` straight into
``sam.ldb`` with Samba's private control ``DSDB_CONTROL_PASSWORD_BYPASS_LAST_SET_OID``
(1.3.6.1.4.1.7165.4.3.20, meant for password imports). A password policy cannot stand in for
it: Samba treats a maximum password age of one day or less as "never expires".
:meth:`SambaDomain.lock_out` applies a fine-grained password policy (PSO) with a lockout
threshold to the one account and makes wrong-password binds until the DC reports the lockout,
so other tests' accounts keep the domain policy (no lockout). The domain policy is the
provisioned one except ``minPwdAge = 0`` and ``pwdHistoryLength = 0`` (tests change passwords
back and forth): complexity on, minimum length 7, maximum age 42 days.

Timings on the 2-core test machine (Samba 4.17.12-Debian): provision 4.2-4.9 s once the
files it reads are in the page cache (9.7 s the first time on a fresh machine, 12 s while
other test suites ran); samba start until all readiness checks pass 0.8-1.5 s (about 4 s the
first time), of which 0.3-0.6 s is the RSA key (``own_certificate=True`` skips it); the
password policy 0.1 s; stop 0.2-0.7 s. LDAP helpers take 1-40 ms (they share one
Administrator connection; a new LDAPS connection costs about 0.1 s); ``samba-tool`` calls
(keytab export, the domain lockout policy) and ``ldbmodify`` 0.15-0.3 s; ``ntlm_auth`` and
``kinit`` 0.02-0.05 s; :meth:`SambaDomain.lock_out` about 0.5 s. tests/test_samba_infra.py
runs in 15-18 s, 6-8 s of it for the DC.

Example::

    with SambaDomain() as dc:
        alice = dc.add_user("alice", "Alice-Pass-1", mail="alice@samba.test")
        ccache = dc.kinit("alice", "Alice-Pass-1")
        svc = dc.add_service_account("HTTP", "localhost")  # keytab in svc.keytab
        with dc.activate(ccache=ccache, keytab=svc.keytab):
            ...  # gssapi / pyspnego, in-process
"""

from __future__ import annotations

import base64
import datetime
import glob
import os
import random
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import ldap3
from cryptography import x509
from cryptography.x509.oid import NameOID
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from tests.infra._net import port_answers
from tests.infra.kerberos import KRB5_ENV_VARS, KinitError, krb5_environment
from tests.infra.ldap import write_tls_files

SAMBA = "/usr/sbin/samba"
SAMBA_TOOL = "/usr/bin/samba-tool"
NTLM_AUTH = "/usr/bin/ntlm_auth"
WBINFO = "/usr/bin/wbinfo"
LDBMODIFY = "/usr/bin/ldbmodify"

DEFAULT_REALM = "SAMBA.TEST"
DEFAULT_DOMAIN = "SAMBA"
DEFAULT_HOST_NAME = "dc1"

#: TCP ports Samba's AD DC binds whatever smb.conf says (LDAP, LDAPS, GC, GC over TLS, EPM).
FIXED_TCP_PORTS = (389, 636, 3268, 3269, 135)

#: Ports for samba's RPC endpoints other than the mapper (4.17 uses three): see the docstring.
RPC_PORT_COUNT = 8

#: userAccountControl bits.
UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
UF_DONT_EXPIRE_PASSWD = 0x10000
#: msDS-SupportedEncryptionTypes: AES128 + AES256.
AES_ENCTYPES = 0x18
#: groupType of a global security group.
GLOBAL_SECURITY_GROUP = -2147483646
#: accountExpires value meaning "never".
NEVER = 0x7FFFFFFFFFFFFFFF
#: Samba's control that lets pwdLastSet be written with any value (local ldb access only).
BYPASS_LAST_SET_CONTROL = "local_oid:1.3.6.1.4.1.7165.4.3.20:0"

_T = TypeVar("_T")
_SUBCODE = re.compile(r"\bdata ([0-9a-fA-F]+)\b")
_EPOCH_AS_FILETIME = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns units


def filetime(when: datetime.datetime) -> int:
    """``when`` as an AD timestamp (100 ns intervals since 1601-01-01 UTC)."""
    if when.tzinfo is None:
        raise ValueError("give an aware datetime")
    return _EPOCH_AS_FILETIME + int(when.timestamp() * 10_000_000)


def ad_subcode(result: Mapping[str, Any] | str) -> str | None:
    """The Active Directory sub-code of a failed bind (``"52e"``, ``"775"``...), or None.

    Takes an ldap3 ``Connection.result`` or its diagnostic message, e.g. ``80090308: LdapErr:
    DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1``.
    """
    message = result if isinstance(result, str) else str(result.get("message") or "")
    match = _SUBCODE.search(message)
    return match.group(1).lower() if match else None


def _nss_wrapper_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/libnss_wrapper.so")) + sorted(
        glob.glob("/usr/lib/libnss_wrapper.so")
    )
    if not found:
        raise RuntimeError("libnss_wrapper.so is missing (Debian package libnss-wrapper)")
    return found[0]


def _unicode_pwd(password: str) -> bytes:
    return f'"{password}"'.encode("utf-16-le")


def random_password(prefix: str = "Pw") -> str:
    """A password that meets AD's default complexity rules."""
    return f"{prefix}-{secrets.token_urlsafe(12)}-9a"


@dataclass(frozen=True)
class DomainUser:
    """A user account created by :meth:`SambaDomain.add_user`."""

    name: str  # sAMAccountName, e.g. "alice"
    dn: str
    password: str  # as created (not updated by set_password)
    realm: str
    domain: str

    @property
    def principal(self) -> str:
        """``name@REALM``, the Kerberos principal (also accepted as a bind name)."""
        return f"{self.name}@{self.realm}"

    @property
    def upn(self) -> str:
        """``name@dns.domain``, the userPrincipalName set at creation."""
        return f"{self.name}@{self.realm.lower()}"

    @property
    def down_level(self) -> str:
        """``DOMAIN\\name``."""
        return f"{self.domain}\\{self.name}"


@dataclass(frozen=True)
class ServiceAccount:
    """A user account holding ``service/host``, its keys exported to ``keytab``."""

    name: str  # sAMAccountName, e.g. "svc-1a2b3c4d"
    dn: str
    service: str  # "HTTP"
    host: str  # "localhost"
    realm: str
    keytab: str  # absolute path
    password: str  # the password the keys in ``keytab`` were made from

    @property
    def principal(self) -> str:
        """``HTTP/localhost@SAMBA.TEST``."""
        return f"{self.service}/{self.host}@{self.realm}"

    @property
    def gss_name(self) -> str:
        """The GSSAPI host-based service name, e.g. ``HTTP@localhost``."""
        return f"{self.service}@{self.host}"


class NtlmAuthHelper:
    """``ntlm_auth --helper-protocol=...`` as a long-running child, one line in, one line out.

    ``squid-2.5-ntlmssp``: ``YR <type1>`` -> ``TT <type2>``, ``KK <type3>`` -> ``AF DOMAIN\\user``
    or ``NA NT_STATUS_...``. ``gss-spnego``: the same codes with SPNEGO tokens, and ``AF``/``NA``
    carry an output token (or ``*``) before the user or status.
    """

    def __init__(self, domain: SambaDomain, protocol: str, *, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._proc = subprocess.Popen(
            domain.ntlm_auth_command(f"--helper-protocol={protocol}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=domain.subprocess_env(wrappers=True),
        )

    def ask(self, code: str, token: bytes | None = None) -> tuple[str, str]:
        """Send ``code`` (and ``token``, base64) and return the answer's code and the rest."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        line = code if token is None else f"{code} {base64.b64encode(token).decode()}"
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()
        answer = self._readline().decode(errors="replace").rstrip("\n")
        head, _, rest = answer.partition(" ")
        return head, rest

    def _readline(self) -> bytes:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            if not sel.select(self.timeout):
                raise TimeoutError(f"ntlm_auth did not answer within {self.timeout}s")
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            raise RuntimeError(f"ntlm_auth exited ({self._proc.poll()}): {err.strip()}")
        return line

    def close(self) -> None:
        if self._proc.stdin is not None:
            with suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SambaDomain:
    """A real Samba AD domain controller on a loopback address of its own (:attr:`host`, e.g.
    ``127.93.4.17``), provisioned in a temporary folder.

    Attributes of interest: :attr:`host`, :attr:`realm`, :attr:`domain` (NetBIOS),
    :attr:`dns_domain`,
    :attr:`dc_fqdn`, :attr:`base_dn`, :attr:`admin_password`, :attr:`smb_conf`,
    :attr:`krb5_conf`, :attr:`ca_file`, :attr:`certificate_name`, :attr:`ldap_url`,
    :attr:`ldaps_url`, :attr:`kdc_port`, :attr:`kpasswd_port`, :attr:`dns_port`,
    :attr:`samba_version`, :attr:`timings` (seconds per start-up step).
    """

    def __init__(
        self,
        realm: str = DEFAULT_REALM,
        domain: str = DEFAULT_DOMAIN,
        host_name: str = DEFAULT_HOST_NAME,
        *,
        admin_password: str | None = None,
        address: str | None = None,
        own_certificate: bool = False,
        start_timeout: float = 60.0,
        start_attempts: int = 2,
    ) -> None:
        self.realm = realm.upper()
        self.domain = domain.upper()
        self.host_name = host_name.lower()
        self.dns_domain = self.realm.lower()
        self.dc_fqdn = f"{self.host_name}.{self.dns_domain}"
        self.base_dn = ",".join(f"DC={part}" for part in self.dns_domain.split("."))
        self.users_dn = f"CN=Users,{self.base_dn}"
        self.admin_name = "Administrator"
        self.admin_password = admin_password or random_password("Adm")
        self.timings: dict[str, float] = {}
        self.kdc_port = self.kpasswd_port = self.dns_port = 0
        self.smb_port = 0
        self.rpc_ports = (0, 0)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lockout_pso: str | None = None
        self._admin_conn: ldap3.Connection | None = None
        self._admin_lock = threading.RLock()
        self._check_can_run()
        #: The DC's own loopback address: every socket of the DC is bound to it.
        self.host = address or _pick_address()
        busy = [port for port in FIXED_TCP_PORTS if not _tcp_port_free(self.host, port)]
        if busy:
            raise RuntimeError(
                f"TCP port(s) {busy} on {self.host} are taken (a listener on 0.0.0.0 takes "
                "them on every loopback address); Samba's AD DC cannot move them"
            )
        self.tmpdir = tempfile.mkdtemp(prefix="sessiond-samba-")
        self.smb_conf = os.path.join(self.tmpdir, "etc", "smb.conf")
        self.krb5_conf = os.path.join(self.tmpdir, "krb5.conf")
        self.hosts_file = os.path.join(self.tmpdir, "hosts")
        self.private_dir = os.path.join(self.tmpdir, "private")
        self.run_dir = os.path.join(self.tmpdir, "run")
        self.winbindd_socket_dir = os.path.join(self.run_dir, "winbindd")
        self.log_file = os.path.join(self.tmpdir, "samba.log")
        self.ccache = os.path.join(self.tmpdir, "ccache")
        self.keytab = os.path.join(self.tmpdir, "keytab")
        self._own_tls = own_certificate
        tls_dir = os.path.join(self.private_dir, "tls")
        self.ca_file = os.path.join(tls_dir, "ca.pem")
        self.cert_file = os.path.join(tls_dir, "cert.pem")
        self.key_file = os.path.join(tls_dir, "key.pem")
        self.certificate_name = ""
        self.samba_version = ""
        try:
            self._timed("provision", self._provision)
            if self._own_tls:
                self._write_own_tls()
            self._write_hosts()
            self._timed("start", lambda: self._start(start_timeout, start_attempts))
            self._timed("configure", self._configure)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ set-up

    def _timed(self, step: str, func: Callable[[], None]) -> None:
        started = time.monotonic()
        func()
        self.timings[step] = round(time.monotonic() - started, 2)

    @staticmethod
    def _check_can_run() -> None:
        for binary in (SAMBA, SAMBA_TOOL, NTLM_AUTH, WBINFO, LDBMODIFY):
            if not os.access(binary, os.X_OK):
                raise RuntimeError(f"{binary} is missing: install scripts/system-packages.txt")
        if not os.path.isdir("/usr/share/samba/setup"):
            raise RuntimeError("Samba's provision files are missing (samba-ad-provision)")
        _nss_wrapper_library()
        if os.geteuid() != 0:
            raise RuntimeError(
                "a Samba AD DC must run as root: its LDAP ports 389/636/3268/3269 and the "
                "RPC endpoint mapper 135 are fixed"
            )

    def _tool_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in KRB5_ENV_VARS}
        env.pop("LD_PRELOAD", None)
        env["KRB5_CONFIG"] = self.krb5_conf
        env["KRB5CCNAME"] = f"FILE:{self.ccache}"
        return env

    def _provision(self) -> None:
        command = [
            SAMBA_TOOL, "domain", "provision",
            f"--targetdir={self.tmpdir}",
            f"--realm={self.realm}",
            f"--domain={self.domain}",
            f"--host-name={self.host_name}",
            "--server-role=dc",
            "--dns-backend=SAMBA_INTERNAL",
            "--use-rfc2307",
            f"--adminpass={self.admin_password}",
            f"--option=interfaces={self.host}/8",
            "--option=bind interfaces only=yes",
            f"--host-ip={self.host}",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._tool_env(),
            timeout=180,
            check=False,
        )
        output = result.stdout.decode(errors="replace")
        with open(os.path.join(self.tmpdir, "provision.log"), "w", encoding="utf-8") as fh:
            fh.write(output)
        if result.returncode != 0:
            raise RuntimeError(f"samba-tool domain provision failed:\n{output[-4000:]}")
        for sub in ("cache", "run", "log", "keytabs"):
            os.makedirs(os.path.join(self.tmpdir, sub), exist_ok=True)

    def _write_own_tls(self) -> None:
        tls_dir = os.path.join(self.private_dir, "tls-own")
        os.makedirs(tls_dir, mode=0o700)
        self.ca_file, self.cert_file, self.key_file = write_tls_files(
            tls_dir, [self.dc_fqdn, self.host]
        )

    def _write_hosts(self) -> None:
        try:
            with open("/etc/hosts", encoding="utf-8") as fh:
                system = fh.read()
        except OSError:
            system = "127.0.0.1 localhost\n::1 localhost\n"
        with open(self.hosts_file, "w", encoding="utf-8") as fh:
            fh.write(system.rstrip("\n") + f"\n{self.host} {self.dc_fqdn} {self.host_name}\n")

    def _pick_ports(self) -> None:
        taken: set[int] = set()

        def pick(udp_too: bool = False) -> int:
            while True:
                port = _free_port(self.host, udp_too=udp_too)
                if port not in taken:
                    taken.add(port)
                    return port

        self.kdc_port = pick(udp_too=True)
        self.kpasswd_port = pick(udp_too=True)
        self.dns_port = pick(udp_too=True)
        self.smb_port = pick()
        self.rpc_ports = _free_port_range(self.host, RPC_PORT_COUNT)

    def _write_configs(self) -> None:
        t = self.tmpdir
        tls = ""
        if self._own_tls:
            tls = (
                f"\ttls keyfile = {self.key_file}\n"
                f"\ttls certfile = {self.cert_file}\n"
                f"\ttls cafile = {self.ca_file}\n"
            )
        smb_conf = f"""\
# Written by tests/infra/samba.py (the provisioned one pointed at system paths).
[global]
\tnetbios name = {self.host_name.upper()}
\tworkgroup = {self.domain}
\trealm = {self.realm}
\tserver role = active directory domain controller
\tidmap_ldb:use rfc2307 = yes
\tinterfaces = {self.host}/8
\tbind interfaces only = yes
\tdisable netbios = yes
\tserver services = -nbt -wrepl -ntp_signd -kcc -dnsupdate
\tkrb5 port = {self.kdc_port}
\tkpasswd port = {self.kpasswd_port}
\tdns port = {self.dns_port}
\tsmb ports = {self.smb_port}
\trpc server dynamic port range = {self.rpc_ports[0]}-{self.rpc_ports[1]}
\tprivate dir = {t}/private
\tbinddns dir = {t}/bind-dns
\tlock directory = {t}
\tstate directory = {t}/state
\tcache directory = {t}/cache
\tpid directory = {t}/run
\tncalrpc dir = {t}/run/ncalrpc
\twinbindd socket directory = {self.winbindd_socket_dir}
\tntp signd socket directory = {t}/run/ntp_signd
\tsmb passwd file = {t}/private/smbpasswd
\tusershare path = {t}/usershares
\tlog file = {t}/log/log.%m
\tlog level = 1
\tpanic action =
{tls}
[sysvol]
\tpath = {t}/state/sysvol
\tread only = No

[netlogon]
\tpath = {t}/state/sysvol/{self.dns_domain}/scripts
\tread only = No
"""
        with open(self.smb_conf, "w", encoding="utf-8") as fh:
            fh.write(smb_conf)
        krb5_conf = f"""\
[libdefaults]
\tdefault_realm = {self.realm}
\tdns_lookup_realm = false
\tdns_lookup_kdc = false
\trdns = false
\tdns_canonicalize_hostname = false
\tqualify_shortname = ""
\tudp_preference_limit = 1
\tforwardable = true
\tdefault_ccache_name = FILE:{self.ccache}
\tdefault_keytab_name = FILE:{self.keytab}
\tdefault_client_keytab_name = FILE:{t}/client_keytab

[realms]
\t{self.realm} = {{
\t\tkdc = {self.host}:{self.kdc_port}
\t\tadmin_server = {self.host}:{self.kpasswd_port}
\t\tkpasswd_server = {self.host}:{self.kpasswd_port}
\t\tdefault_domain = {self.dns_domain}
\t}}

[domain_realm]
\tlocalhost = {self.realm}
\t.localhost = {self.realm}
\t{self.dns_domain} = {self.realm}
\t.{self.dns_domain} = {self.realm}
"""
        with open(self.krb5_conf, "w", encoding="utf-8") as fh:
            fh.write(krb5_conf)

    def _start(self, timeout: float, attempts: int) -> None:
        last_error: Exception | None = None
        for _ in range(max(1, attempts)):
            self._pick_ports()
            self._write_configs()
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    [SAMBA, "-i", "-M", "prefork", "-s", self.smb_conf],
                    # samba -i exits when stdin reaches EOF: only we hold this pipe.
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._tool_env(),
                    start_new_session=True,
                )
            try:
                self._wait_ready(timeout)
                return
            except RuntimeError as exc:
                last_error = exc
                self._stop_samba()
        raise RuntimeError(f"samba did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        ports = [389, 636, self.kdc_port, self.kpasswd_port, self.dns_port]
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"samba exited with code {self._proc.returncode}{self._log_tail()}"
                )
            pending = [port for port in ports if not port_answers(port, self.host)]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"samba did not listen on {pending}{self._log_tail()}")
            time.sleep(0.05)
        self._read_certificate()
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("LDAPS bind as Administrator", self._ready_ldap),
            ("kinit Administrator", self._ready_kerberos),
            ("wbinfo --ping-dc", self._ready_winbind),
        ]
        for what, check in checks:
            problem: str | None = "not tried"
            while problem is not None:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"samba exited with code {self._proc.returncode}{self._log_tail()}"
                    )
                problem = check()
                if problem is None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} failed: {problem}{self._log_tail()}")
                time.sleep(0.2)

    def _ready_ldap(self) -> str | None:
        try:
            with self.admin_connection():
                return None
        except (LDAPException, OSError, RuntimeError) as exc:
            return str(exc)

    def _ready_kerberos(self) -> str | None:
        try:
            self.kinit(self.admin_name, self.admin_password, self.ccache)
        except KinitError as exc:
            return str(exc)
        return None

    def _ready_winbind(self) -> str | None:
        result = subprocess.run(
            [WBINFO, "--ping-dc"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.subprocess_env(wrappers=True),
            timeout=30,
            check=False,
        )
        if result.returncode == 0:
            return None
        return (result.stdout + result.stderr).decode(errors="replace").strip()

    def _read_certificate(self) -> None:
        # Samba names its certificate <NETBIOS NAME>.<dns domain>. Its generated certificates
        # have a negative serial number, which cryptography warns about (and may one day
        # refuse): fall back to the name Samba uses.
        self.certificate_name = f"{self.host_name.upper()}.{self.dns_domain}"
        try:
            with open(self.cert_file, "rb") as fh, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = x509.load_pem_x509_certificate(fh.read())
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if names:
                self.certificate_name = str(names[0].value)
        except ValueError:
            pass
        version = subprocess.run(
            [SAMBA, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        self.samba_version = version.stdout.strip().removeprefix("Version ").strip()

    def _configure(self) -> None:
        """The domain password policy for tests (see the module docstring)."""
        self._modify(
            self.base_dn,
            {
                "minPwdAge": [(ldap3.MODIFY_REPLACE, ["0"])],
                "pwdHistoryLength": [(ldap3.MODIFY_REPLACE, ["0"])],
            },
        )

    # ------------------------------------------------------------------ addresses

    @property
    def admin_principal(self) -> str:
        return f"{self.admin_name}@{self.realm}"

    @property
    def ldap_url(self) -> str:
        """``ldap://ADDRESS:389``: plain LDAP, StartTLS offered."""
        return f"ldap://{self.host}:389"

    @property
    def ldaps_url(self) -> str:
        """``ldaps://ADDRESS:636``."""
        return f"ldaps://{self.host}:636"

    @property
    def ldap_host_url(self) -> str:
        """``ldap://dc1.samba.test:389``, for child processes run with :meth:`wrapper_env`."""
        return f"ldap://{self.dc_fqdn}:389"

    def ldap_tls(self) -> ldap3.Tls:
        """ldap3 TLS settings that verify the DC's certificate with :attr:`ca_file` and accept
        :attr:`certificate_name` (the certificate names no IP address)."""
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=self.ca_file,
            valid_names=[self.certificate_name],
            version=ssl.PROTOCOL_TLS_CLIENT,
        )

    def _connection(
        self, user: str | None, password: str | None, *, start_tls: bool = False
    ) -> ldap3.Connection:
        url = self.ldap_url if start_tls else self.ldaps_url
        server = ldap3.Server(url, tls=self.ldap_tls(), get_info=ldap3.NONE, connect_timeout=5)
        conn = ldap3.Connection(
            server,
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            receive_timeout=15,
            raise_exceptions=False,
        )
        conn.open()
        if start_tls and not conn.start_tls():
            raise RuntimeError(f"StartTLS failed: {conn.result}")
        return conn

    def bind(self, user: str, password: str, *, start_tls: bool = True) -> dict[str, Any]:
        """Simple-bind as ``user`` (UPN, ``DOMAIN\\name`` or DN) with certificate checks, over
        StartTLS (default) or LDAPS; return ldap3's result (``result`` 0 on success, 49 and an
        AD sub-code in ``message`` on refusal, see :func:`ad_subcode`)."""
        conn = self._connection(user, password, start_tls=start_tls)
        try:
            conn.bind()
            return dict(conn.result)
        finally:
            conn.unbind()

    @contextmanager
    def admin_connection(self) -> Iterator[ldap3.Connection]:
        """A new ldap3 connection bound as Administrator over LDAPS (unbound on exit)."""
        conn = self._connection(self.admin_principal, self.admin_password)
        try:
            if not conn.bind():
                raise RuntimeError(f"Administrator bind failed: {conn.result}")
            yield conn
        finally:
            conn.unbind()

    # ------------------------------------------------------------------ directory data

    def _as_admin(self, operation: Callable[[ldap3.Connection], _T]) -> _T:
        """Run ``operation`` on the helpers' own Administrator connection, kept open between
        calls (a new LDAPS connection costs about 0.1 s); reconnect once if the DC dropped it
        (samba closes connections idle for 15 minutes)."""
        with self._admin_lock:
            for attempt in (1, 2):
                if self._admin_conn is None:
                    self._admin_conn = self._connection(self.admin_principal, self.admin_password)
                    if not self._admin_conn.bind():
                        result = self._admin_conn.result
                        self._drop_admin_connection()
                        raise RuntimeError(f"Administrator bind failed: {result}")
                try:
                    return operation(self._admin_conn)
                except LDAPCommunicationError:
                    self._drop_admin_connection()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def _drop_admin_connection(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            _close(conn)

    def _modify(self, dn: str, changes: dict[str, list[tuple[str, list[Any]]]]) -> None:
        def modify(conn: ldap3.Connection) -> None:
            if not conn.modify(dn, changes):
                raise RuntimeError(f"modify {dn} failed: {conn.result}")

        self._as_admin(modify)

    def _add(self, dn: str, object_classes: Sequence[str], attributes: dict[str, Any]) -> None:
        def add(conn: ldap3.Connection) -> None:
            # (ldap3's stubs leave add untyped)
            if not cast(Callable[..., bool], conn.add)(dn, list(object_classes), attributes):
                raise RuntimeError(f"add {dn} failed: {conn.result}")

        self._as_admin(add)

    def _read(self, name: str, attributes: Sequence[str]) -> tuple[str, dict[str, Any]]:
        def search(conn: ldap3.Connection) -> list[dict[str, Any]]:
            conn.search(
                self.base_dn,
                f"(sAMAccountName={escape_filter_chars(name)})",
                attributes=list(attributes),
            )
            return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]

        found = self._as_admin(search)
        if len(found) != 1:
            raise KeyError(f"no account {name!r} in {self.realm}")
        return str(found[0]["dn"]), dict(found[0]["attributes"])

    def dn_of(self, name: str) -> str:
        """The DN of the account (user, group, computer) with sAMAccountName ``name``."""
        return self._read(name, [])[0]

    def attributes(self, name: str, *attributes: str) -> dict[str, Any]:
        """Selected attributes of an account (e.g. ``lockoutTime``), each a list of values as
        ldap3 decodes them without the schema (strings, or bytes for binary values)."""
        return self._read(name, attributes)[1]

    def add_user(
        self,
        name: str,
        password: str,
        *,
        container: str | None = None,
        must_change_password: bool = False,
        **attrs: Any,
    ) -> DomainUser:
        """Create an enabled user ``name`` with ``password`` and return it.

        ``attrs`` are more LDAP attributes (``mail="..."``, ``displayName="..."``,
        ``givenName=..., sn=...``). ``container`` defaults to ``CN=Users``. The
        userPrincipalName is ``name@samba.test``.
        """
        dn = f"CN={escape_rdn(name)},{container or self.users_dn}"
        attributes: dict[str, Any] = {
            "sAMAccountName": name,
            "userPrincipalName": f"{name}@{self.dns_domain}",
            "unicodePwd": _unicode_pwd(password),
            "userAccountControl": UF_NORMAL_ACCOUNT,
        }
        if must_change_password:
            attributes["pwdLastSet"] = "0"
        attributes.update(attrs)
        self._add(dn, ["top", "person", "organizationalPerson", "user"], attributes)
        return DomainUser(name, dn, password, self.realm, self.domain)

    def delete(self, name: str) -> None:
        """Delete the account ``name``."""
        dn = self.dn_of(name)

        def delete(conn: ldap3.Connection) -> None:
            if not cast(Callable[..., bool], conn.delete)(dn):
                raise RuntimeError(f"delete {dn} failed: {conn.result}")

        self._as_admin(delete)

    def set_password(self, name: str, password: str, *, must_change: bool = False) -> None:
        """Reset ``name``'s password as Administrator (keys and kvno change too)."""
        changes: dict[str, list[tuple[str, list[Any]]]] = {
            "unicodePwd": [(ldap3.MODIFY_REPLACE, [_unicode_pwd(password)])]
        }
        if must_change:
            changes["pwdLastSet"] = [(ldap3.MODIFY_REPLACE, ["0"])]
        self._modify(self.dn_of(name), changes)

    def _set_uac_bits(self, name: str, set_bits: int = 0, clear_bits: int = 0) -> None:
        dn, attrs = self._read(name, ["userAccountControl"])
        uac = (int(attrs["userAccountControl"][0]) | set_bits) & ~clear_bits
        self._modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(uac)])]})

    def disable_user(self, name: str) -> None:
        """Set ACCOUNTDISABLE (bind sub-code 533)."""
        self._set_uac_bits(name, set_bits=UF_ACCOUNTDISABLE)

    def enable_user(self, name: str) -> None:
        self._set_uac_bits(name, clear_bits=UF_ACCOUNTDISABLE)

    def require_password_change(self, name: str) -> None:
        """Set "user must change password at next logon": ``pwdLastSet = 0`` (sub-code 773)."""
        self._modify(self.dn_of(name), {"pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])]})

    def expire_password(self, name: str, *, days_ago: int = 365) -> None:
        """Make the password ``days_ago`` days old, past the domain's 42-day maximum age
        (sub-code 532). Written into sam.ldb with ldbmodify: see the module docstring."""
        dn = self.dn_of(name)
        when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago)
        ldif = f"dn: {dn}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: {filetime(when)}\n"
        self._ldbmodify(ldif, controls=[BYPASS_LAST_SET_CONTROL])

    def set_account_expiry(self, name: str, when: datetime.datetime | None) -> None:
        """Set ``accountExpires`` (``None``: never). A past time gives sub-code 701."""
        value = NEVER if when is None else filetime(when)
        self._modify(self.dn_of(name), {"accountExpires": [(ldap3.MODIFY_REPLACE, [str(value)])]})

    def expire_account(self, name: str) -> None:
        """The account expired yesterday (sub-code 701)."""
        self.set_account_expiry(
            name, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        )

    ACCOUNT_STATES = ("ok", "disabled", "must", "pwexp", "acctexp", "locked")

    def add_users_in_each_state(self, prefix: str, password: str) -> dict[str, DomainUser]:
        """One new account per state of :data:`ACCOUNT_STATES` (named ``prefix``, the state's
        first letters and a random part), put in that state: usable, disabled, must change its
        password, password expired, account expired, locked out."""
        made = {
            state: self.add_user(f"{prefix}{state[:5]}-{secrets.token_hex(4)}", password)
            for state in self.ACCOUNT_STATES
        }
        self.disable_user(made["disabled"].name)
        self.require_password_change(made["must"].name)
        self.expire_password(made["pwexp"].name)
        self.expire_account(made["acctexp"].name)
        self.lock_out(made["locked"].name)
        return made

    def lock_out(self, name: str, *, threshold: int = 3) -> int:
        """Lock the account out the way users do: wrong-password binds past a lockout
        threshold. The threshold comes from a fine-grained password policy that applies to
        this account only (the domain policy stays at "no lockout"). Returns the number of
        wrong binds made: ``threshold + 1``, as the bind that reaches the threshold still
        answers 52e and only the next one 775. The account then answers 775 for any
        password."""
        dn = self.dn_of(name)
        pso = self._ensure_lockout_pso(threshold)
        try:
            self._modify(pso, {"msDS-PSOAppliesTo": [(ldap3.MODIFY_ADD, [dn])]})
        except RuntimeError as exc:  # already applied by an earlier call
            if "attributeOrValueExists" not in str(exc):
                raise
        wrong = random_password("Wrong")
        for attempt in range(1, threshold + 3):
            result = self.bind(f"{name}@{self.dns_domain}", wrong, start_tls=False)
            if ad_subcode(result) == "775":
                return attempt
        attrs = self.attributes(name, "lockoutTime", "badPwdCount")
        raise RuntimeError(f"{name} was not locked out after {threshold + 2} tries: {attrs}")

    def count_bad_passwords(self, name: str, *, threshold: int = 1000) -> None:
        """Make the DC keep the account's ``badPwdCount``: Samba counts wrong passwords only
        for accounts under a lockout threshold, so apply a policy (PSO) whose threshold no test
        reaches to this account alone."""
        pso = self._ensure_lockout_pso(threshold)
        try:
            self._modify(pso, {"msDS-PSOAppliesTo": [(ldap3.MODIFY_ADD, [self.dn_of(name)])]})
        except RuntimeError as exc:  # already applied by an earlier call
            if "attributeOrValueExists" not in str(exc):
                raise

    def _ensure_lockout_pso(self, threshold: int) -> str:
        container = f"CN=Password Settings Container,CN=System,{self.base_dn}"
        dn = f"CN=sessiond-lockout-{threshold},{container}"
        if self._lockout_pso == dn:
            return dn
        thirty_minutes = str(-30 * 60 * 10_000_000)
        try:
            self._add(
                dn,
                ["msDS-PasswordSettings"],
                {
                    "msDS-PasswordSettingsPrecedence": 10,
                    "msDS-PasswordReversibleEncryptionEnabled": "FALSE",
                    "msDS-PasswordHistoryLength": 0,
                    "msDS-PasswordComplexityEnabled": "TRUE",
                    "msDS-MinimumPasswordLength": 7,
                    "msDS-MinimumPasswordAge": "0",
                    "msDS-MaximumPasswordAge": str(-42 * 86400 * 10_000_000),
                    "msDS-LockoutThreshold": threshold,
                    "msDS-LockoutObservationWindow": thirty_minutes,
                    "msDS-LockoutDuration": thirty_minutes,
                },
            )
        except RuntimeError as exc:
            if "entryAlreadyExists" not in str(exc):
                raise
        self._lockout_pso = dn
        return dn

    def unlock(self, name: str) -> None:
        """Clear a lockout (``lockoutTime = 0``, as "Unlock account" does)."""
        self._modify(self.dn_of(name), {"lockoutTime": [(ldap3.MODIFY_REPLACE, ["0"])]})

    def set_lockout_policy(
        self, threshold: int, *, duration_minutes: int = 30, reset_after_minutes: int = 30
    ) -> None:
        """The *domain-wide* lockout policy (``samba-tool domain passwordsettings set``);
        ``threshold=0`` turns lockout off again. Affects every account without a PSO: prefer
        :meth:`lock_out` in a shared domain, and restore 0 afterwards."""
        self.samba_tool(
            "domain", "passwordsettings", "set",
            f"--account-lockout-threshold={threshold}",
            f"--account-lockout-duration={duration_minutes}",
            f"--reset-account-lockout-after={reset_after_minutes}",
        )  # fmt: skip

    def add_group(
        self, name: str, members: Iterable[str] = (), *, description: str | None = None
    ) -> str:
        """Create a global security group ``CN=name,CN=Users`` with the given member accounts
        (sAMAccountNames); return its DN. Members get ``memberOf``."""
        dn = f"CN={escape_rdn(name)},{self.users_dn}"
        attributes: dict[str, Any] = {"sAMAccountName": name, "groupType": GLOBAL_SECURITY_GROUP}
        if description:
            attributes["description"] = description
        self._add(dn, ["top", "group"], attributes)
        member_list = list(members)
        if member_list:
            self.add_to_group(name, *member_list)
        return dn

    def add_to_group(self, group: str, *members: str) -> None:
        """Add accounts (sAMAccountNames) to ``group``."""
        dns = [self.dn_of(member) for member in members]
        self._modify(self.dn_of(group), {"member": [(ldap3.MODIFY_ADD, dns)]})

    # ------------------------------------------------------------------ Kerberos

    def principal(self, name: str) -> str:
        """``name`` qualified with ``@REALM`` unless it already has a realm."""
        return name if "@" in name else f"{name}@{self.realm}"

    def add_service_account(
        self,
        service: str = "HTTP",
        host: str = "localhost",
        *,
        name: str | None = None,
        keytab: str | None = None,
    ) -> ServiceAccount:
        """A user account holding the SPN ``service/host``, with its keys exported to
        ``keytab`` (default: a new file in the folder). Its tickets are AES-encrypted
        (``msDS-SupportedEncryptionTypes`` = 0x18); the keytab also holds its RC4 key.

        Its userPrincipalName is ``service/host@REALM`` too (what ``ktpass -mapuser`` does),
        so ``kinit -k -t KEYTAB service/host@REALM`` works. SPNs are unique in AD: one
        account per ``service/host``.
        """
        account = name or f"svc-{secrets.token_hex(4)}"
        password = random_password("Svc")
        dn = f"CN={escape_rdn(account)},{self.users_dn}"
        self._add(
            dn,
            ["top", "person", "organizationalPerson", "user"],
            {
                "sAMAccountName": account,
                "userPrincipalName": f"{service}/{host}@{self.realm}",
                "servicePrincipalName": [f"{service}/{host}"],
                "unicodePwd": _unicode_pwd(password),
                "userAccountControl": UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD,
                "msDS-SupportedEncryptionTypes": AES_ENCTYPES,
            },
        )
        path = os.path.abspath(keytab or os.path.join(self.tmpdir, "keytabs", f"{account}.keytab"))
        svc = ServiceAccount(account, dn, service, host, self.realm, path, password)
        self.export_keytab(svc.principal, path)
        return svc

    def export_keytab(self, principal: str, keytab: str) -> str:
        """``samba-tool domain exportkeytab KEYTAB --principal=...``: the principal's current
        keys (every enctype it has) added to ``keytab`` (appended if the file exists).
        Returns ``keytab``."""
        self.samba_tool("domain", "exportkeytab", keytab, f"--principal={principal}")
        os.chmod(keytab, 0o600)
        return keytab

    def reset_service_password(
        self, svc: ServiceAccount, *, keytab: str | None = None
    ) -> ServiceAccount:
        """Give the service account a new random password: new keys, kvno + 1, so every
        keytab exported before is stale. With ``keytab``, export the new keys there; the
        returned :class:`ServiceAccount` names that keytab (else still the stale one)."""
        password = random_password("Svc")
        self.set_password(svc.name, password)
        path = svc.keytab
        if keytab is not None:
            path = self.export_keytab(svc.principal, os.path.abspath(keytab))
        return ServiceAccount(svc.name, svc.dn, svc.service, svc.host, svc.realm, path, password)

    def ccache_path(self, name: str) -> str:
        """A fresh file path in the folder for ``name``'s credential cache."""
        safe = "".join(c if c.isalnum() else "_" for c in name)
        return os.path.join(self.tmpdir, f"ccache_{safe}_{secrets.token_hex(3)}")

    def kinit(
        self, name: str, password: str, ccache: str | None = None, *, timeout: float = 15.0
    ) -> str:
        """Get a TGT for ``name`` with ``password`` (MIT ``kinit``) into its own ccache and
        return the path; raise :class:`tests.infra.kerberos.KinitError` on refusal."""
        principal = self.principal(name)
        ccache_file = ccache or self.ccache_path(principal)
        result = subprocess.run(
            [_kinit(), "-c", f"FILE:{ccache_file}", principal],
            input=(password + "\n").encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.subprocess_env(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise KinitError(principal, result.returncode, result.stdout.decode(errors="replace"))
        return ccache_file

    # ------------------------------------------------------------------ environments

    def env(self, *, ccache: str | None = None, keytab: str | None = None) -> dict[str, str]:
        """The Kerberos variables (only those) for this domain's krb5.conf."""
        env = {
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5CCNAME": f"FILE:{self.ccache}",
            "KRB5_KTNAME": f"FILE:{self.keytab}",
            "KRB5RCACHEDIR": self.tmpdir,
        }
        if ccache is not None:
            env["KRB5CCNAME"] = ccache if ":" in ccache else f"FILE:{ccache}"
        if keytab is not None:
            env["KRB5_KTNAME"] = keytab if ":" in keytab else f"FILE:{keytab}"
        return env

    def wrapper_env(self) -> dict[str, str]:
        """nss_wrapper for a child process: ``dc1.samba.test`` resolves (from
        :attr:`hosts_file`) and libwbclient (``ntlm_auth``, ``wbinfo``) finds this DC's
        winbindd. Users and groups still come from ``/etc/passwd`` and ``/etc/group``."""
        preload = _nss_wrapper_library()
        existing = os.environ.get("LD_PRELOAD")
        return {
            "LD_PRELOAD": f"{preload}:{existing}" if existing else preload,
            "NSS_WRAPPER_PASSWD": "/etc/passwd",
            "NSS_WRAPPER_GROUP": "/etc/group",
            "NSS_WRAPPER_HOSTS": self.hosts_file,
            "SELFTEST_WINBINDD_SOCKET_DIR": self.winbindd_socket_dir,
        }

    def subprocess_env(
        self,
        *,
        ccache: str | None = None,
        keytab: str | None = None,
        base: Mapping[str, str] | None = None,
        wrappers: bool = False,
    ) -> dict[str, str]:
        """A complete environment for a child process: ``base`` (default :data:`os.environ`,
        less any other Kerberos variables) plus :meth:`env` and, with ``wrappers``,
        :meth:`wrapper_env`."""
        source = os.environ if base is None else base
        env = {k: v for k, v in source.items() if k not in KRB5_ENV_VARS}
        env.update(self.env(ccache=ccache, keytab=keytab))
        if wrappers:
            env.update(self.wrapper_env())
        return env

    @contextmanager
    def activate(
        self, *, ccache: str | None = None, keytab: str | None = None
    ) -> Iterator[dict[str, str]]:
        """Set :meth:`env` in :data:`os.environ` for in-process GSSAPI use; restore on exit
        (same rules as :meth:`tests.infra.kerberos.KerberosRealm.activate`)."""
        with krb5_environment(self.env(ccache=ccache, keytab=keytab)) as env:
            yield env

    # ------------------------------------------------------------------ tools

    def samba_tool(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``samba-tool ARGS -s smb.conf`` (local sam.ldb access as root); return stdout."""
        result = subprocess.run(
            [SAMBA_TOOL, *args, f"--configfile={self.smb_conf}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._tool_env(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"samba-tool {' '.join(args[:3])} failed ({result.returncode}): "
                + (result.stdout + result.stderr).decode(errors="replace")[-3000:]
            )
        return result.stdout.decode(errors="replace")

    def _ldbmodify(self, ldif: str, *, controls: Sequence[str] = ()) -> None:
        path = os.path.join(self.tmpdir, f"modify-{secrets.token_hex(4)}.ldif")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(ldif)
        try:
            command = [LDBMODIFY, "-H", os.path.join(self.private_dir, "sam.ldb")]
            command += [f"--controls={control}" for control in controls]
            result = subprocess.run(
                [*command, path],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._tool_env(),
                timeout=60,
                check=False,
            )
        finally:
            os.remove(path)
        if result.returncode != 0:
            raise RuntimeError(
                "ldbmodify failed: " + (result.stdout + result.stderr).decode(errors="replace")
            )

    def ntlm_auth_command(self, *args: str) -> list[str]:
        """``ntlm_auth --configfile=<our smb.conf> ARGS``; run it with
        ``env=subprocess_env(wrappers=True)``, as root."""
        return [NTLM_AUTH, f"--configfile={self.smb_conf}", *args]

    def ntlm_auth(
        self, username: str, password: str, *, domain: str | None = None
    ) -> tuple[bool, str]:
        """``ntlm_auth --username=... --password=...``: an NTLM check of the password by the
        DC through winbindd. Returns (accepted, output); a refusal's output starts with the
        NT status, e.g. ``NT_STATUS_WRONG_PASSWORD: ...``."""
        result = subprocess.run(
            self.ntlm_auth_command(
                f"--username={username}",
                f"--password={password}",
                f"--domain={domain or self.domain}",
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.subprocess_env(wrappers=True),
            timeout=30,
            check=False,
        )
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        return result.returncode == 0, output

    def ntlm_helper(self, protocol: str = "squid-2.5-ntlmssp") -> NtlmAuthHelper:
        """A running ``ntlm_auth --helper-protocol=PROTOCOL`` (close it, or use ``with``)."""
        return NtlmAuthHelper(self, protocol)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def processes(self) -> list[int]:
        """The pids of samba and of every process it started, and they started: the prefork
        workers (ldap, kdc) in its process group, and smbd and winbindd, which start sessions
        of their own (``setsid``), with their children."""
        return _descendants(self._proc.pid) if self._proc is not None else []

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the DC answers again as at its start: its ports, an LDAPS bind, a
        ``kinit`` and ``wbinfo --ping-dc``."""
        self._wait_ready(timeout)

    @contextmanager
    def frozen(self, *, ready_timeout: float = 60.0) -> Iterator[list[int]]:
        """Stop every process of the DC (SIGSTOP to its process group: the kernel still
        accepts connections on its ports, nothing answers), as a hung domain controller;
        yields their pids. On leaving, whatever happened: SIGCONT, then :meth:`wait_ready`,
        so the tests that share this DC find it working."""
        assert self._proc is not None, "samba is not running"
        pids = self.processes()
        try:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            yield pids
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self.wait_ready(ready_timeout)

    def _log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as fh:
                tail = fh.readlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- {self.log_file} ---\n" + "".join(tail)

    def _stop_samba(self) -> None:
        proc = self._proc
        self._proc = None
        if proc is None:
            return
        group = proc.pid  # start_new_session: samba leads its own process group
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdin is not None:
            with suppress(OSError):
                proc.stdin.close()
        # smbd, winbindd and the prefork workers are in samba's group and leave after it; make
        # sure of it (SIGTERM, then SIGKILL), but never wait for more than a few seconds.
        deadline = time.monotonic() + 8
        sig = signal.SIGTERM
        while _group_members(group) and time.monotonic() < deadline:
            with suppress(ProcessLookupError):
                os.killpg(group, sig)
            if time.monotonic() > deadline - 4:
                sig = signal.SIGKILL
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop samba (and its smbd/winbindd) and delete :attr:`tmpdir`. Safe to repeat."""
        started = time.monotonic()
        if getattr(self, "_admin_lock", None) is not None:
            with self._admin_lock:
                self._drop_admin_connection()
        self._stop_samba()
        if getattr(self, "tmpdir", None):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.timings["stop"] = round(time.monotonic() - started, 2)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _close(conn: ldap3.Connection) -> None:
    """Unbind, and close the socket even when ldap3 cannot (a connection the peer dropped)."""
    with suppress(LDAPException, OSError):
        conn.unbind()
    sock = conn.socket
    if sock is not None:
        with suppress(OSError):
            sock.close()


def _kinit() -> str:
    return shutil.which("kinit", path="/usr/bin:/bin") or "/usr/bin/kinit"


def _pick_address() -> str:
    """A random loopback address for one DC, away from 127.0.0.x (127.0.0.1, Debian's 127.0.1.1,
    systemd-resolved's 127.0.0.53) and with the fixed ports free."""
    for _ in range(50):
        address = f"127.{random.randint(64, 127)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if all(_tcp_port_free(address, port) for port in FIXED_TCP_PORTS):
            return address
    raise RuntimeError(
        f"ports {FIXED_TCP_PORTS} are taken on every loopback address tried: is something "
        "listening on them on 0.0.0.0?"
    )


def _free_port(address: str, *, udp_too: bool = False) -> int:
    """A TCP port (and the same UDP port) on ``address`` that is free right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"could not find a free port on {address}")


def _tcp_port_free(address: str, port: int) -> bool:
    """True if ``address:port`` can be bound for listening (as samba does: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _free_port_range(address: str, count: int) -> tuple[int, int]:
    """``count`` consecutive free TCP ports on ``address`` below the kernel's ephemeral range
    (from which the other test servers get their ports)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            ephemeral_low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = max(1024, ephemeral_low - 8000), ephemeral_low - count
    for _ in range(200):
        first = random.randrange(low, high)
        if all(_tcp_port_free(address, port) for port in range(first, first + count)):
            return first, first + count - 1
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high}")


def _descendants(root: int) -> list[int]:
    """``root`` and every live process below it (by parent pid), root first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, pending = [], [root]
    while pending:
        pid = pending.pop(0)
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def _group_members(group: int) -> list[int]:
    """Live (not zombie) processes of process group ``group``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry))
    return members
