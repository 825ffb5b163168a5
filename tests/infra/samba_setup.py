"""The Samba AD DC's layout: provisioning, smb.conf and krb5.conf, its address and ports, the
environments its tools and clients run with, and running those tools.

:class:`SambaSetup` is the first part of :class:`tests.infra.samba.SambaDomain`; see
:mod:`tests.infra.samba` for why it is done this way.
"""

from __future__ import annotations

import glob
import os
import random
import secrets
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from tests.infra._net import free_port, tcp_port_free
from tests.infra.kerberos import KRB5_ENV_VARS, krb5_environment
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

#: Ports for samba's RPC endpoints other than the mapper (4.17 uses three): see
#: :mod:`tests.infra.samba`.
RPC_PORT_COUNT = 8


def random_password(prefix: str = "Pw") -> str:
    """A password that meets AD's default complexity rules."""
    return f"{prefix}-{secrets.token_urlsafe(12)}-9a"


def run_tool(
    command: Sequence[str], env: Mapping[str, str], timeout: float
) -> tuple[int, str, str]:
    """Run ``command`` with no standard input; return its exit code, its standard output and
    all of its output (standard output, then standard error)."""
    result = subprocess.run(
        list(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.returncode, result.stdout.decode(errors="replace"), output


class SambaSetup:
    """Names, paths, ports and configuration files of one DC, and the tools run against it."""

    realm: str
    domain: str
    host_name: str
    dns_domain: str
    dc_fqdn: str
    base_dn: str
    users_dn: str
    admin_name: str
    admin_password: str
    host: str
    kdc_port: int
    kpasswd_port: int
    dns_port: int
    smb_port: int
    rpc_ports: tuple[int, int]
    tmpdir: str
    smb_conf: str
    krb5_conf: str
    hosts_file: str
    private_dir: str
    run_dir: str
    winbindd_socket_dir: str
    log_file: str
    ccache: str
    keytab: str
    ca_file: str
    cert_file: str
    key_file: str
    _own_tls: bool

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
                port = free_port(udp_too=udp_too, host=self.host)
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
# Written by tests/infra/samba_setup.py (the provisioned one pointed at system paths).
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

    def server_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment of a server under test that reaches this DC by its name:
        :meth:`subprocess_env` of ``base`` with nss_wrapper, and no credential cache (a server
        works from its settings, never from a client's tickets)."""
        env = self.subprocess_env(base=base, wrappers=True)
        env.pop("KRB5CCNAME", None)
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
        command = [SAMBA_TOOL, *args, f"--configfile={self.smb_conf}"]
        code, stdout, output = run_tool(command, self._tool_env(), timeout)
        if code != 0:
            raise RuntimeError(f"samba-tool {' '.join(args[:3])} failed ({code}): {output[-3000:]}")
        return stdout

    def _ldbmodify(self, ldif: str, *, controls: Sequence[str] = ()) -> None:
        path = os.path.join(self.tmpdir, f"modify-{secrets.token_hex(4)}.ldif")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(ldif)
        try:
            command = [LDBMODIFY, "-H", os.path.join(self.private_dir, "sam.ldb")]
            command += [f"--controls={control}" for control in controls]
            code, _, output = run_tool([*command, path], self._tool_env(), 60)
        finally:
            os.remove(path)
        if code != 0:
            raise RuntimeError("ldbmodify failed: " + output)

    def ntlm_auth_command(self, *args: str) -> list[str]:
        """``ntlm_auth --configfile=<our smb.conf> ARGS``; run it with
        ``env=subprocess_env(wrappers=True)``, as root."""
        return [NTLM_AUTH, f"--configfile={self.smb_conf}", *args]


def _nss_wrapper_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/libnss_wrapper.so")) + sorted(
        glob.glob("/usr/lib/libnss_wrapper.so")
    )
    if not found:
        raise RuntimeError("libnss_wrapper.so is missing (Debian package libnss-wrapper)")
    return found[0]


def pick_address() -> str:
    """A random loopback address for one DC, away from 127.0.0.x (127.0.0.1, Debian's 127.0.1.1,
    systemd-resolved's 127.0.0.53) and with the fixed ports free."""
    for _ in range(50):
        address = f"127.{random.randint(64, 127)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if all(tcp_port_free(address, port) for port in FIXED_TCP_PORTS):
            return address
    raise RuntimeError(
        f"ports {FIXED_TCP_PORTS} are taken on every loopback address tried: is something "
        "listening on them on 0.0.0.0?"
    )


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
        if all(tcp_port_free(address, port) for port in range(first, first + count)):
            return first, first + count - 1
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{high}")
