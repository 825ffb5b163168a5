"""A throwaway OpenLDAP server for tests.

:class:`LdapServer` builds a ``cn=config`` directory from scratch in a fresh temporary folder
(``slapadd -n0`` of a generated LDIF: ``back_mdb`` and ``memberof`` modules, the
core/cosine/nis/inetorgperson schemas from ``/etc/ldap/schema``, TLS settings and one MDB
database for ``dc=sessiond,dc=test``), seeds the tree (``ou=people``, ``ou=groups``) with
``slapadd -n1``, and starts ``/usr/sbin/slapd`` in the foreground on two free loopback
ports: plain LDAP (StartTLS available) on :attr:`LdapServer.port` and LDAPS on
:attr:`LdapServer.ldaps_port`. The system ``/etc/ldap/slapd.d`` and the Debian database are
never touched.

TLS uses a self-signed CA and a server certificate for ``localhost`` / ``127.0.0.1``
generated with ``cryptography``; clients verify with :attr:`LdapServer.ca_file`.

Example::

    with LdapServer() as srv:
        dn = srv.add_user("alice", "Secret-1", mail="alice@sessiond.test")
        conn = ldap3.Connection(ldap3.Server(srv.uri), dn, "Secret-1", auto_bind=True)

Access rules: the root DN (:attr:`LdapServer.admin_dn` / :attr:`LdapServer.admin_password`)
can do anything; everybody (also anonymous) can read entries except ``userPassword``, which
is only usable to bind (and writable by its owner).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import ldap3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ldap3.utils.dn import escape_rdn

from tests.infra._net import LOOPBACK, free_port
from tests.infra._process import Stoppable, stop_process, wait_for_ports

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = "/etc/ldap/schema"
MODULE_DIR = "/usr/lib/ldap"
DEFAULT_SUFFIX = "dc=sessiond,dc=test"
DEFAULT_ADMIN_PASSWORD = "admin-secret"


def ssha(password: str) -> str:
    """An ``{SSHA}`` userPassword value for ``password`` (what slapd's default hashing makes)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def write_tls_files(directory: str, hostnames: Sequence[str]) -> tuple[str, str, str]:
    """Create a CA and a server certificate signed by it; return (ca, cert, key) file paths."""
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sessiond test LDAP CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            san.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_file = os.path.join(directory, "ca.pem")
    cert_file = os.path.join(directory, "server.pem")
    key_file = os.path.join(directory, "server.key")
    with open(ca_file, "wb") as fh:
        fh.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(cert_file, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_file, 0o600)
    return ca_file, cert_file, key_file


def _rdn_value(value: str) -> str:
    """Escape a value for use in an RDN (RFC 4514)."""
    return str(escape_rdn(value))


class LdapServer(Stoppable):
    """A real OpenLDAP ``slapd`` on 127.0.0.1 with LDAP+StartTLS and LDAPS, in a temp folder.

    Attributes of interest: :attr:`uri` (``ldap://127.0.0.1:PORT``), :attr:`ldaps_uri`,
    :attr:`host`, :attr:`port`, :attr:`ldaps_port`, :attr:`suffix`, :attr:`people_dn`,
    :attr:`groups_dn`, :attr:`admin_dn`, :attr:`admin_password`, :attr:`ca_file`.
    The server certificate is valid for ``localhost`` and ``127.0.0.1``.
    """

    def __init__(
        self,
        suffix: str = DEFAULT_SUFFIX,
        *,
        admin_password: str = DEFAULT_ADMIN_PASSWORD,
        start_timeout: float = 15.0,
        start_attempts: int = 3,
    ) -> None:
        self.suffix = suffix
        self.host = LOOPBACK
        self.admin_dn = f"cn=admin,{suffix}"
        self.admin_password = admin_password
        self.people_dn = f"ou=people,{suffix}"
        self.groups_dn = f"ou=groups,{suffix}"
        self.tmpdir = tempfile.mkdtemp(suffix="-ldaptest")
        self.config_dir = os.path.join(self.tmpdir, "slapd.d")
        self.data_dir = os.path.join(self.tmpdir, "data")
        self.log_file = os.path.join(self.tmpdir, "slapd.log")
        self.port = 0
        self.ldaps_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self.ca_file, self.cert_file, self.key_file = write_tls_files(
                self.tmpdir, ["localhost", LOOPBACK]
            )
            os.makedirs(self.config_dir)
            os.makedirs(self.data_dir)
            self._slapadd(0, self._config_ldif())
            self._slapadd(1, self._base_ldif())
            self._start(start_timeout, start_attempts)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ set-up

    def _config_ldif(self) -> str:
        # The ldif "include:" lines are read by slapadd (Debian's postinst does the same).
        schemas = "\n".join(
            f"include: file://{SCHEMA_DIR}/{name}.ldif\n"
            for name in ("core", "cosine", "nis", "inetorgperson")
        )
        return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.tmpdir}/slapd.pid
olcArgsFile: {self.tmpdir}/slapd.args
olcLogLevel: none
olcTLSCACertificateFile: {self.ca_file}
olcTLSCertificateFile: {self.cert_file}
olcTLSCertificateKeyFile: {self.key_file}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: 500

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {self.data_dir}
olcSuffix: {self.suffix}
olcRootDN: {self.admin_dn}
olcRootPW: {ssha(self.admin_password)}
olcDbMaxSize: 67108864
olcDbIndex: objectClass eq
olcDbIndex: uid,cn,mail,member eq
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfRefInt: TRUE
olcMemberOfGroupOC: groupOfNames
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf
"""

    def _base_ldif(self) -> str:
        dc = self.suffix.split(",")[0].split("=", 1)[1]
        return f"""\
dn: {self.suffix}
objectClass: dcObject
objectClass: organization
dc: {dc}
o: sessiond test directory

dn: {self.people_dn}
objectClass: organizationalUnit
ou: people

dn: {self.groups_dn}
objectClass: organizationalUnit
ou: groups
"""

    def _slapadd(self, db_number: int, ldif: str) -> None:
        path = os.path.join(self.tmpdir, f"slapadd-{db_number}.ldif")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(ldif)
        result = subprocess.run(
            [SLAPADD, "-n", str(db_number), "-F", self.config_dir, "-l", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"slapadd -n{db_number} failed ({result.returncode}):\n"
                + result.stdout.decode(errors="replace")
            )

    def _start(self, timeout: float, attempts: int) -> None:
        last_error: Exception | None = None
        for _ in range(max(1, attempts)):
            self.port = free_port()
            self.ldaps_port = free_port()
            if self.ldaps_port == self.port:
                continue
            urls = f"ldap://{LOOPBACK}:{self.port}/ ldaps://{LOOPBACK}:{self.ldaps_port}/"
            with open(self.log_file, "ab") as log:
                # "-d stats": stay in the foreground (we own the process); log to slapd.log.
                self._proc = subprocess.Popen(
                    [SLAPD, "-d", "stats", "-h", urls, "-F", self.config_dir],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_for_ports(
                    self._proc,
                    [self.port, self.ldaps_port],
                    timeout=timeout,
                    what="slapd",
                    log_file=self.log_file,
                )
                return
            except RuntimeError as exc:  # e.g. a port was taken in the meantime
                last_error = exc
                stop_process(self._proc)
                self._proc = None
        raise RuntimeError(f"slapd did not start: {last_error}")

    # ------------------------------------------------------------------ addresses

    @property
    def uri(self) -> str:
        """``ldap://127.0.0.1:PORT`` (plain LDAP; StartTLS is offered)."""
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        """``ldaps://127.0.0.1:PORT`` (TLS from the first byte)."""
        return f"ldaps://{self.host}:{self.ldaps_port}"

    def user_dn(self, uid: str) -> str:
        return f"uid={_rdn_value(uid)},{self.people_dn}"

    def group_dn(self, cn: str) -> str:
        return f"cn={_rdn_value(cn)},{self.groups_dn}"

    # ------------------------------------------------------------------ data

    def admin_connection(self) -> ldap3.Connection:
        """A bound ldap3 connection as the root DN over plain LDAP (caller unbinds)."""
        server = ldap3.Server(self.host, port=self.port, get_info=ldap3.NONE, connect_timeout=5)
        return ldap3.Connection(
            server,
            user=self.admin_dn,
            password=self.admin_password,
            auto_bind=ldap3.AUTO_BIND_NO_TLS,
            receive_timeout=10,
            raise_exceptions=True,
        )

    def add_entry(
        self, dn: str, object_classes: Sequence[str], attributes: dict[str, object]
    ) -> str:
        """Add any entry as the root DN; return its DN."""
        conn = self.admin_connection()
        try:
            # (ldap3's stubs leave add/delete untyped)
            cast(Callable[..., Any], conn.add)(dn, list(object_classes), attributes)
        finally:
            conn.unbind()
        return dn

    def add_user(
        self,
        uid: str,
        password: str | None,
        *,
        cn: str | None = None,
        sn: str | None = None,
        given_name: str | None = None,
        mail: str | None = None,
        display_name: str | None = None,
        hash_password: bool = True,
        extra: dict[str, object] | None = None,
    ) -> str:
        """Add an ``inetOrgPerson`` ``uid=<uid>,ou=people,<suffix>``; return its DN.

        ``password`` is stored as ``{SSHA}`` (or verbatim if ``hash_password`` is false);
        ``None`` creates a user without ``userPassword`` (cannot bind). ``extra`` adds more
        inetOrgPerson attributes (e.g. ``{"telephoneNumber": "1"}``).
        """
        attributes: dict[str, object] = {
            "uid": uid,
            "cn": cn or uid,
            "sn": sn or (cn or uid).split()[-1],
        }
        if password is not None:
            attributes["userPassword"] = ssha(password) if hash_password else password
        if given_name:
            attributes["givenName"] = given_name
        if mail:
            attributes["mail"] = mail
        if display_name:
            attributes["displayName"] = display_name
        attributes.update(extra or {})
        return self.add_entry(self.user_dn(uid), ["inetOrgPerson"], attributes)

    def add_group(
        self, cn: str, member_dns: Iterable[str], *, description: str | None = None
    ) -> str:
        """Add a ``groupOfNames`` ``cn=<cn>,ou=groups,<suffix>``; return its DN.

        Members get a ``memberOf`` attribute (memberof overlay), as in Active Directory.
        ``groupOfNames`` requires at least one member.
        """
        members = list(member_dns)
        if not members:
            raise ValueError("groupOfNames needs at least one member")
        attributes: dict[str, object] = {"cn": cn, "member": members}
        if description:
            attributes["description"] = description
        return self.add_entry(self.group_dn(cn), ["groupOfNames"], attributes)

    def delete(self, dn: str) -> None:
        """Delete an entry (as the root DN)."""
        conn = self.admin_connection()
        try:
            cast(Callable[..., Any], conn.delete)(dn)
        finally:
            conn.unbind()

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop slapd and delete :attr:`tmpdir`. Safe to call more than once."""
        stop_process(self._proc)
        self._proc = None
        shutil.rmtree(self.tmpdir, ignore_errors=True)
