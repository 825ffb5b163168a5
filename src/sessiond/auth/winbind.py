"""NTLM for domain accounts: the domain checks the answer, through Samba's winbind.

sessiond does not know the users' password hashes; a domain member does not either. Like Squid
and FreeRADIUS, it runs Samba's ``ntlm_auth`` as a helper on the member's winbindd, which
passes the client's NTLM answer to a domain controller (NETLOGON) and says yes or no:

* ``--helper-protocol=squid-2.5-ntlmssp`` for raw NTLMSSP (``Authorization: NTLM``, or NTLM
  sent straight inside ``Negotiate``): ``YR <negotiate>`` → ``TT <challenge>``, then
  ``KK <authenticate>`` → ``AF DOMAIN\\user`` or ``NA NT_STATUS_...``;
* ``--helper-protocol=gss-spnego`` for NTLM wrapped in SPNEGO: the same codes with SPNEGO
  tokens, and ``AF``/``NA`` carry an output token (or ``*``) before the user or status.

``BH <reason>`` (broken helper) means the helper could not do its work: winbindd cannot be
reached, or its privileged pipe cannot be opened. NTLM keeps its state between the two legs,
so one helper process serves one handshake from its first leg to its last. The processes are
kept in a :class:`HelperPool`: bounded in number (``ntlm_helpers``), each bound to one pending
handshake until it completes or expires (then it is killed), and idle ones reused for the next
handshake (``YR`` starts a new one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidCredentials, LoginForbidden, ServiceUnavailable, SessiondError
from ..settings import WindowsSettings

log = logging.getLogger("sessiond.negotiate")

SQUID = "squid-2.5-ntlmssp"
GSS_SPNEGO = "gss-spnego"
#: Idle helpers kept per protocol for the next handshake; more are stopped.
IDLE_KEEP = 4
#: The longest line a helper may answer (a base64 token and a name).
LINE_LIMIT = 1 << 20
STDERR_LINES = 50

#: NT statuses that say the domain cannot be asked (503), not that the user is wrong.
DOMAIN_UNREACHABLE = frozenset(
    {
        "NT_STATUS_NO_LOGON_SERVERS",
        "NT_STATUS_DOMAIN_CONTROLLER_NOT_FOUND",
        "NT_STATUS_IO_TIMEOUT",
        "NT_STATUS_NETLOGON_NOT_STARTED",
        "NT_STATUS_CANT_ACCESS_DOMAIN_INFO",
        "NT_STATUS_INVALID_SERVER_STATE",
        "NT_STATUS_CONNECTION_REFUSED",
        "NT_STATUS_CONNECTION_RESET",
        "NT_STATUS_CONNECTION_DISCONNECTED",
        "NT_STATUS_HOST_UNREACHABLE",
        "NT_STATUS_NETWORK_UNREACHABLE",
        "NT_STATUS_PIPE_BROKEN",
        "NT_STATUS_RPC_CALL_FAILED",
    }
)
#: NT statuses that say this machine's trust with the domain is broken (re-join it).
DOMAIN_TRUST = frozenset(
    {
        "NT_STATUS_TRUSTED_RELATIONSHIP_FAILURE",
        "NT_STATUS_TRUSTED_DOMAIN_FAILURE",
        "NT_STATUS_NO_TRUST_SAM_ACCOUNT",
        "NT_STATUS_NO_TRUST_LSA_SECRET",
        "NT_STATUS_NOLOGON_WORKSTATION_TRUST_ACCOUNT",
    }
)
#: What the caller is told for statuses only the right password reveals.
ACCOUNT_STATES = {
    "NT_STATUS_ACCOUNT_DISABLED": "the domain account is disabled",
    "NT_STATUS_ACCOUNT_LOCKED_OUT": "the domain account is locked out",
    "NT_STATUS_ACCOUNT_EXPIRED": "the domain account has expired",
    "NT_STATUS_PASSWORD_EXPIRED": "the domain password has expired; change it, then sign in",
    "NT_STATUS_PASSWORD_MUST_CHANGE": "the domain password must be changed before sign-in",
    "NT_STATUS_INVALID_LOGON_HOURS": "the domain account may not sign in at this time",
    "NT_STATUS_INVALID_WORKSTATION": "the domain account may not sign in from here",
}
#: Statuses that say the password is right but must be changed first.
MUST_CHANGE = frozenset({"NT_STATUS_PASSWORD_EXPIRED", "NT_STATUS_PASSWORD_MUST_CHANGE"})
#: libwbclient's code (wbclient.h) for "winbindd does not answer on its socket".
WBC_WINBIND_NOT_AVAILABLE = "WBC_ERR_WINBIND_NOT_AVAILABLE"
_CODES = re.compile(r"\b(?:WBC_ERR_[A-Z_]+|NT_STATUS_[A-Z0-9_]+)\b")
#: What each cause found by ``wbinfo --ping-dc`` means, for messages.
PING_CAUSES = {
    "winbindd_unreachable": "ntlm_auth and wbinfo cannot reach winbindd: start winbindd (this "
    "machine must be joined to the domain), or point windows.ntlm_auth_environment at its socket",
    "domain_unreachable": "winbindd answers but cannot reach a domain controller of its domain: "
    "check that the domain controllers are up and reachable from this machine",
    "domain_trust": "this machine's trust with the domain is broken: re-join it (`net ads join`)",
    "winbind_no_answer": "wbinfo --ping-dc did not answer in time: winbindd or the domain "
    "controller is hung or very slow",
}


@dataclass(frozen=True, slots=True)
class Ping:
    """What ``wbinfo --ping-dc`` said: ``ok``, or the ``cause`` its codes name (None when it
    could not be asked), and its words (``said``)."""

    ok: bool
    cause: str | None
    said: str


def wbinfo_path(settings: WindowsSettings) -> Path:
    """Samba's ``wbinfo``: beside ``windows.ntlm_auth`` (both come with winbind), else on
    PATH."""
    beside = Path(settings.ntlm_auth).with_name("wbinfo")
    if beside.exists():
        return beside
    return Path(shutil.which("wbinfo") or "/usr/bin/wbinfo")


async def ping_dc(settings: WindowsSettings) -> Ping:
    """``wbinfo --ping-dc`` in ntlm_auth's environment: is winbindd there, and does it reach a
    domain controller? Classified by libwbclient's and the domain's codes (``WBC_ERR_*``,
    ``NT_STATUS_*``), never by the words around them."""
    wbinfo = wbinfo_path(settings)
    timeout = settings.ntlm_auth_timeout.total_seconds()
    try:
        process = await asyncio.create_subprocess_exec(
            str(wbinfo),
            "--ping-dc",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **settings.ntlm_auth_environment},
        )
    except OSError as exc:
        return Ping(False, None, f"cannot run {wbinfo}: {exc}")
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return Ping(False, "winbind_no_answer", f"no answer within {timeout:g} s")
    said = _tail((out + err).decode(errors="replace"))
    if process.returncode == 0:
        return Ping(True, None, said)
    codes = set(_CODES.findall(said))
    if WBC_WINBIND_NOT_AVAILABLE in codes:
        return Ping(False, "winbindd_unreachable", said)
    if codes & DOMAIN_TRUST:
        return Ping(False, "domain_trust", said)
    if codes:  # winbindd answered: its NETLOGON check of the domain controller failed
        return Ping(False, "domain_unreachable", said)
    return Ping(False, None, said)


@dataclass(frozen=True, slots=True)
class Reply:
    """One helper answer: ``TT``, ``AF``, ``NA`` or ``BH``, with its token and its text (the
    user for ``AF``, the NT status for ``NA``, the reason for ``BH``)."""

    code: str
    token: bytes | None
    text: str


def parse_reply(protocol: str, line: str) -> Reply:
    code, _, rest = line.strip().partition(" ")
    token: bytes | None = None
    if code == "TT":
        return Reply(code, base64.b64decode(rest.strip()), "")
    if protocol == GSS_SPNEGO and code in ("AF", "NA", "BH"):
        first, _, text = rest.partition(" ")
        if (code == "BH" and first.startswith("NT_STATUS_")) or not text:
            return Reply(code, None, rest.strip())  # "BH <status> * <status>" or "BH <reason>"
        if first != "*":
            token = base64.b64decode(first)
        return Reply(code, token, text.strip())
    return Reply(code, None, rest.strip())


class Helper:
    """One running ``ntlm_auth --helper-protocol=...``."""

    def __init__(self, protocol: str, process: asyncio.subprocess.Process) -> None:
        self.protocol = protocol
        self.process = process
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while True:
            line = await self.process.stderr.readline()
            if not line:
                return
            self.stderr.append(line.decode(errors="replace").rstrip())

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def ask(self, code: str, token: bytes) -> str:
        """Send ``code token``; return the answer line ('' when the helper ended). The
        caller bounds the wait (``asyncio.timeout``)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{code} {base64.b64encode(token).decode()}\n".encode())
        try:
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        except (ConnectionError, BrokenPipeError):
            return ""
        return line.decode(errors="replace").rstrip("\n")

    async def stop(self) -> str:
        """End the process (it exits at the end of its input; killed if it does not) and
        return what it wrote on its standard error."""
        if self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stderr_task, 2)
        return "\n".join(self.stderr)

    def abort(self) -> str:
        """Kill at once and return what it wrote on its standard error so far, waiting for
        nothing: a helper that did not answer in time must not make its caller wait longer
        (the event loop reaps the process)."""
        self.kill()
        return "\n".join(self.stderr)

    def kill(self) -> None:
        """Kill at once, from synchronous code (expiry, shutdown)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        if self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()


class HelperPool:
    """At most ``ntlm_helpers`` helper processes: idle ones, and ones bound to a handshake."""

    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self.limit = settings.ntlm_helpers
        self.timeout = settings.ntlm_auth_timeout.total_seconds()
        self._live: set[Helper] = set()
        self._idle: dict[str, list[Helper]] = {SQUID: [], GSS_SPNEGO: []}

    def command(self, protocol: str) -> list[str]:
        s = self.settings
        command = [str(s.ntlm_auth), f"--helper-protocol={protocol}"]
        if s.ntlm_auth_config:
            command.append(f"--configfile={s.ntlm_auth_config}")
        if s.require_membership_of:
            command.append(f"--require-membership-of={s.require_membership_of}")
        return command

    @property
    def live(self) -> int:
        return len(self._live)

    async def acquire(self, protocol: str) -> Helper:
        idle = self._idle[protocol]
        while idle:
            helper = idle.pop()
            if helper.alive:
                return helper
            self._live.discard(helper)
        if len(self._live) >= self.limit:
            for other in self._idle.values():  # idle helpers of the other protocol make room
                while other and len(self._live) >= self.limit:
                    await self.discard(other.pop())
        if len(self._live) >= self.limit:
            log.warning(
                "NTLM sign-in refused: all %d ntlm_auth helpers are bound to handshakes in "
                "progress [ntlm_helpers_busy]; raise windows.ntlm_helpers if this recurs",
                self.limit,
            )
            raise ServiceUnavailable(
                f"all {self.limit} NTLM helper processes are busy with sign-ins in progress; "
                "try again shortly",
                details={"cause": "ntlm_helpers_busy"},
                sign_in="Windows",
            )
        env = {**os.environ, **self.settings.ntlm_auth_environment}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(protocol),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            log.error(
                "NTLM sign-in: cannot run %s (%s); install Samba's winbind package or set "
                "windows.ntlm_auth",
                self.settings.ntlm_auth, exc,
            )  # fmt: skip
            raise ServiceUnavailable(
                "NTLM sign-in is unavailable: the ntlm_auth helper cannot be run",
                details={"cause": "ntlm_auth_missing"},
                reason=f"cannot run {self.settings.ntlm_auth}: {exc}",
                sign_in="Windows",
            ) from None
        helper = Helper(protocol, process)
        self._live.add(helper)
        return helper

    def release(self, helper: Helper) -> None:
        """A handshake is over and the helper answered it properly: keep it for the next."""
        idle = self._idle[helper.protocol]
        if helper.alive and len(idle) < IDLE_KEEP:
            idle.append(helper)
        else:
            self.kill(helper)

    async def discard(self, helper: Helper) -> str:
        self._live.discard(helper)
        return await helper.stop()

    def abort(self, helper: Helper) -> str:
        """Kill a helper that did not answer in time, without waiting for it."""
        self._live.discard(helper)
        return helper.abort()

    def kill(self, helper: Helper) -> None:
        self._live.discard(helper)
        helper.kill()

    async def close(self) -> None:
        for helper in list(self._live):
            await self.discard(helper)
        for idle in self._idle.values():
            idle.clear()


@dataclass(frozen=True, slots=True)
class NtlmStep:
    complete: bool
    output: bytes | None
    principal: str | None = None
    helper: Helper | None = None  # bound to the handshake until its next leg


class WinbindNtlm:
    """NTLM (raw or in SPNEGO) checked by the domain through ``ntlm_auth``."""

    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self.pool = HelperPool(settings)

    async def start(self, token: bytes, spnego: bool) -> NtlmStep:
        helper = await self.pool.acquire(GSS_SPNEGO if spnego else SQUID)
        return await self._ask(helper, "YR", token, first=True)

    async def resume(self, helper: Helper, token: bytes) -> NtlmStep:
        return await self._ask(helper, "KK", token, first=False)

    async def _ask(self, helper: Helper, code: str, token: bytes, *, first: bool) -> NtlmStep:
        try:
            async with asyncio.timeout(self.pool.timeout):
                line = await helper.ask(code, token)
        except TimeoutError:
            stderr = self.pool.abort(helper)  # stop() would wait seconds more for it
            raise self._unavailable(
                "ntlm_auth_timeout",
                f"ntlm_auth did not answer within {self.pool.timeout:g} s (winbindd or the "
                "domain controller is slow or unreachable)",
                stderr,
            ) from None
        if not line:
            stderr = await self.pool.discard(helper)
            raise self._unavailable(
                "ntlm_auth_failed", "the ntlm_auth helper ended without answering", stderr
            )
        try:
            reply = parse_reply(helper.protocol, line)
        except ValueError:
            stderr = await self.pool.discard(helper)
            raise self._unavailable(
                "ntlm_auth_failed", f"the ntlm_auth helper answered {line[:40]!r}", stderr
            ) from None
        if reply.code == "TT":
            return NtlmStep(False, reply.token, helper=helper)
        if reply.code == "AF":
            self.pool.release(helper)
            return NtlmStep(True, reply.token, reply.text)
        if reply.code == "NA":
            self.pool.release(helper)
            raise self._refusal(reply.text, list(helper.stderr))
        stderr = await self.pool.discard(helper)  # BH, or a code this does not know
        if first:
            raise InvalidCredentials(
                "integrated Windows sign-in failed: the NTLM message was refused",
                reason=f"ntlm_auth: {reply.code} {reply.text} {_tail(stderr)}".strip(),
            )
        raise await self._broken(reply.text, stderr)

    def _refusal(self, status: str, stderr: list[str]) -> SessiondError:
        status = status.split()[0] if status else "NT_STATUS_UNSUCCESSFUL"
        if status in DOMAIN_UNREACHABLE:
            return self._unavailable(
                "domain_unreachable",
                f"winbindd cannot reach a domain controller ({status})",
                "\n".join(stderr),
            )
        if status in DOMAIN_TRUST:
            return self._unavailable(
                "domain_trust",
                f"this machine's trust with the domain is broken ({status}); re-join it "
                "(`net ads join`)",
                "\n".join(stderr),
            )
        group = self.settings.require_membership_of
        if status == "NT_STATUS_INVALID_PARAMETER" and group:
            return self._unavailable(
                "group_unknown",
                f"winbind cannot resolve require_membership_of = {group!r}",
                "\n".join(stderr),
            )
        if status in MUST_CHANGE:  # as the password path answers it
            from .directory import must_change  # (loads the directory library only here)

            return must_change(f"the domain answered {status}")
        if status in ACCOUNT_STATES:  # said only to the right password: tell it
            return LoginForbidden(
                f"the domain refused the sign-in: {ACCOUNT_STATES[status]}",
                reason=f"the domain answered {status}",
            )
        reason = f"the domain answered {status}"
        if status == "NT_STATUS_LOGON_FAILURE" and group:
            # winbind answers the same for a wrong password and for a user outside the group.
            reason += f" (wrong password, unknown account, or not a member of {group})"
        return InvalidCredentials("wrong login or password", reason=reason)

    async def _broken(self, text: str, stderr: str) -> ServiceUnavailable:
        """ntlm_auth answered ``BH``: it could not have the answer checked. Its status
        (``NT_STATUS_UNSUCCESSFUL`` for any failed request to winbindd) does not say why, so
        winbindd is asked directly (``wbinfo --ping-dc``, over its public pipe): winbindd
        down, the domain controller unreachable and a broken trust each have their code.
        Only when winbindd and the domain controller both answer is the privileged pipe,
        which only the NTLM check uses, the one that failed."""
        status = text.split()[0] if text.split() else "BH"
        ping = await ping_dc(self.settings)
        detail = f"{stderr}\nwbinfo --ping-dc: {ping.said}".strip()
        if ping.cause is not None:
            return self._unavailable(
                ping.cause, f"{PING_CAUSES[ping.cause]} (ntlm_auth: {status}; wbinfo --ping-dc: "
                f"{ping.said})", detail,
            )  # fmt: skip
        if ping.ok and status == "NT_STATUS_UNSUCCESSFUL":
            return self._unavailable(
                "winbind_privileged_pipe",
                "ntlm_auth reached winbindd, and winbindd its domain controller, but the NTLM "
                f"answer could not be checked: the account sessiond runs as (uid {os.geteuid()}) "
                "needs winbindd's privileged pipe (add it to the winbindd_priv group)",
                detail,
            )
        return self._unavailable(
            "ntlm_auth_failed",
            f"ntlm_auth could not have the NTLM answer checked ({status}; wbinfo --ping-dc: "
            f"{ping.said})",
            detail,
        )

    def _unavailable(self, cause: str, what: str, stderr: str) -> ServiceUnavailable:
        log.error("NTLM sign-in through winbind refused: %s [%s] %s", what, cause, _tail(stderr))
        return ServiceUnavailable(
            f"NTLM sign-in is unavailable: {what}",
            details={"cause": cause},
            reason=f"{what} {_tail(stderr)}".strip(),
            sign_in="Windows",
        )

    async def close(self) -> None:
        await self.pool.close()


def _tail(stderr: str | list[str], lines: int = 5) -> str:
    items = stderr.splitlines() if isinstance(stderr, str) else stderr
    return " | ".join(line.strip() for line in items[-lines:] if line.strip())
