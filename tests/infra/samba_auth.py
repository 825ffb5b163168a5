"""Signing in to the Samba AD DC as a client or a service does: service accounts and their
keytabs, ``kinit``, and Samba's ``ntlm_auth`` through the DC's winbindd (one call, or a
long-running helper).

:class:`SambaAuth` is a part of :class:`tests.infra.samba.SambaDomain`.
"""

from __future__ import annotations

import base64
import os
import secrets
import selectors
import shutil
import subprocess
from contextlib import suppress
from dataclasses import dataclass

from tests.infra._process import Stoppable, reap
from tests.infra.kerberos import run_kinit
from tests.infra.samba_directory import (
    UF_DONT_EXPIRE_PASSWD,
    UF_NORMAL_ACCOUNT,
    SambaDirectory,
)
from tests.infra.samba_setup import random_password, run_tool

#: msDS-SupportedEncryptionTypes: AES128 + AES256.
AES_ENCTYPES = 0x18


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


class NtlmAuthHelper(Stoppable):
    """``ntlm_auth --helper-protocol=...`` as a long-running child, one line in, one line out.

    ``squid-2.5-ntlmssp``: ``YR <type1>`` -> ``TT <type2>``, ``KK <type3>`` -> ``AF DOMAIN\\user``
    or ``NA NT_STATUS_...``. ``gss-spnego``: the same codes with SPNEGO tokens, and ``AF``/``NA``
    carry an output token (or ``*``) before the user or status.
    """

    def __init__(self, domain: SambaAuth, protocol: str, *, timeout: float = 15.0) -> None:
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

    def stop(self) -> None:
        """End the helper: close its standard input, and kill it if it has not left after
        5 s."""
        if self._proc.stdin is not None:
            with suppress(OSError):
                self._proc.stdin.close()
        reap(self._proc, timeout=5)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    close = stop


class SambaAuth(SambaDirectory):
    """Kerberos and NTLM against the DC."""

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
        dn = self._add_person(
            account,
            password,
            f"{service}/{host}@{self.realm}",
            UF_NORMAL_ACCOUNT | UF_DONT_EXPIRE_PASSWD,
            servicePrincipalName=[f"{service}/{host}"],
            **{"msDS-SupportedEncryptionTypes": AES_ENCTYPES},
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
        run_kinit(_kinit(), principal, password, ccache_file, self.subprocess_env(), timeout)
        return ccache_file

    def ntlm_auth(
        self, username: str, password: str, *, domain: str | None = None
    ) -> tuple[bool, str]:
        """``ntlm_auth --username=... --password=...``: an NTLM check of the password by the
        DC through winbindd. Returns (accepted, output); a refusal's output starts with the
        NT status, e.g. ``NT_STATUS_WRONG_PASSWORD: ...``."""
        command = self.ntlm_auth_command(
            f"--username={username}", f"--password={password}", f"--domain={domain or self.domain}"
        )
        code, _, output = run_tool(command, self.subprocess_env(wrappers=True), 30)
        return code == 0, output.strip()

    def ntlm_helper(self, protocol: str = "squid-2.5-ntlmssp") -> NtlmAuthHelper:
        """A running ``ntlm_auth --helper-protocol=PROTOCOL`` (close it, or use ``with``)."""
        return NtlmAuthHelper(self, protocol)


def _kinit() -> str:
    return shutil.which("kinit", path="/usr/bin:/bin") or "/usr/bin/kinit"
