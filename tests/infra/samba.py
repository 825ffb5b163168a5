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

*Parts.* :class:`SambaDomain` runs the DC process (start, readiness, freezing, stop) and is
made of three parts, a module each: :mod:`tests.infra.samba_setup` (provisioning, smb.conf
and krb5.conf, the address and ports, the environments and the tools),
:mod:`tests.infra.samba_directory` (LDAP, accounts and their states) and
:mod:`tests.infra.samba_auth` (service accounts and keytabs, ``kinit``, ``ntlm_auth``). Import
everything from this module.

Example::

    with SambaDomain() as dc:
        alice = dc.add_user("alice", "Alice-Pass-1", mail="alice@samba.test")
        ccache = dc.kinit("alice", "Alice-Pass-1")
        svc = dc.add_service_account("HTTP", "localhost")  # keytab in svc.keytab
        with dc.activate(ccache=ccache, keytab=svc.keytab):
            ...  # gssapi / pyspnego, in-process
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import ldap3
from cryptography import x509
from cryptography.x509.oid import NameOID
from ldap3.core.exceptions import LDAPException

from tests.infra._net import tcp_port_free
from tests.infra._process import (
    Stoppable,
    check_running,
    descendants,
    group_members,
    log_tail,
    stop_process,
    wait_for_ports,
)
from tests.infra.kerberos import KinitError
from tests.infra.samba_auth import AES_ENCTYPES, NtlmAuthHelper, SambaAuth, ServiceAccount
from tests.infra.samba_directory import (
    BYPASS_LAST_SET_CONTROL,
    GLOBAL_SECURITY_GROUP,
    NEVER,
    UF_ACCOUNTDISABLE,
    UF_DONT_EXPIRE_PASSWD,
    UF_NORMAL_ACCOUNT,
    AccountStates,
    DomainUser,
    ad_subcode,
    filetime,
)
from tests.infra.samba_setup import (
    DEFAULT_DOMAIN,
    DEFAULT_HOST_NAME,
    DEFAULT_REALM,
    FIXED_TCP_PORTS,
    LDBMODIFY,
    NTLM_AUTH,
    RPC_PORT_COUNT,
    SAMBA,
    SAMBA_TOOL,
    WBINFO,
    pick_address,
    random_password,
    run_tool,
)

__all__ = [
    "AES_ENCTYPES",
    "BYPASS_LAST_SET_CONTROL",
    "DEFAULT_DOMAIN",
    "DEFAULT_HOST_NAME",
    "DEFAULT_REALM",
    "FIXED_TCP_PORTS",
    "GLOBAL_SECURITY_GROUP",
    "LDBMODIFY",
    "NEVER",
    "NTLM_AUTH",
    "RPC_PORT_COUNT",
    "SAMBA",
    "SAMBA_TOOL",
    "UF_ACCOUNTDISABLE",
    "UF_DONT_EXPIRE_PASSWD",
    "UF_NORMAL_ACCOUNT",
    "WBINFO",
    "AccountStates",
    "DomainUser",
    "NtlmAuthHelper",
    "SambaDomain",
    "ServiceAccount",
    "ad_subcode",
    "filetime",
    "random_password",
]


class SambaDomain(SambaAuth, Stoppable):
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
        self.host = address or pick_address()
        busy = [port for port in FIXED_TCP_PORTS if not tcp_port_free(self.host, port)]
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
        wait_for_ports(
            self._proc, ports, timeout=timeout, what="samba", log_file=self.log_file, host=self.host
        )
        self._read_certificate()
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("LDAPS bind as Administrator", self._ready_ldap),
            ("kinit Administrator", self._ready_kerberos),
            ("wbinfo --ping-dc", self._ready_winbind),
        ]
        for what, check in checks:
            problem: str | None = "not tried"
            while problem is not None:
                check_running(self._proc, "samba", self.log_file)
                problem = check()
                if problem is None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} failed: {problem}{log_tail(self.log_file)}")
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
        code, _, output = run_tool([WBINFO, "--ping-dc"], self.subprocess_env(wrappers=True), 30)
        return None if code == 0 else output.strip()

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

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def processes(self) -> list[int]:
        """The pids of samba and of every process it started, and they started: the prefork
        workers (ldap, kdc) in its process group, and smbd and winbindd, which start sessions
        of their own (``setsid``), with their children."""
        return descendants(self._proc.pid) if self._proc is not None else []

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

    def _stop_samba(self) -> None:
        proc = self._proc
        self._proc = None
        if proc is None:
            return
        group = proc.pid  # start_new_session: samba leads its own process group
        stop_process(proc, timeout=10)
        if proc.stdin is not None:
            with suppress(OSError):
                proc.stdin.close()
        # smbd, winbindd and the prefork workers are in samba's group and leave after it; make
        # sure of it (SIGTERM, then SIGKILL), but never wait for more than a few seconds.
        deadline = time.monotonic() + 8
        sig = signal.SIGTERM
        while group_members(group) and time.monotonic() < deadline:
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
