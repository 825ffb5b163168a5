"""The Windows settings checked before they are needed: at ``sessiond serve``'s start, and
step by step by ``sessiond check windows``.

At start (:func:`startup_problems`), without asking the domain anything but a TCP connect:

* krb5.conf (``windows.krb5_config``, else ``KRB5_CONFIG``, else ``/etc/krb5.conf``) can be read,
  MIT krb5 can parse it, and it lets libkrb5 find a KDC of ``windows.realm``: the realm under
  ``[realms]``, or DNS lookups of KDCs on (``dns_lookup_kdc``, MIT's default);
* the keytab (when set) can be read, is a keytab, and holds a key for
  ``windows.service_principal`` (read with the ``krb5`` package, as GSSAPI will);
* the directory (``windows.directory``, when set) accepts a TCP connection within its timeout.

``sessiond check windows`` (:func:`run_checks`) adds what needs the domain: a self-test of
the keytab against the KDC (a ticket for the service principal obtained with the keytab's own
key, as ``kinit -k`` then ``kvno`` would, opened with the keytab), a bind to the directory, and
winbind's answer (``wbinfo --ping-dc``, then a made-up NTLM answer through ``ntlm_auth``,
which the domain must refuse as a wrong password).

Every failure names a cause, the same names as the 503s of sign-in (docs/windows.md,
"Troubleshooting").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import SessiondError
from ..settings import Settings, WindowsSettings
from .environment import krb5_config_path, unreadable


@dataclass(frozen=True, slots=True)
class Step:
    """One check: its name, whether it passed, what was found, and the cause when not."""

    name: str
    ok: bool
    detail: str
    cause: str | None = None


def _ok(name: str, detail: str) -> Step:
    return Step(name, True, detail)


def _failed(name: str, cause: str, detail: str) -> Step:
    return Step(name, False, detail, cause)


# --- krb5.conf ------------------------------------------------------------------------------

_SECTION = re.compile(r"^\[\s*([^\]\s]+)\s*\]")
_RELATION = re.compile(r"^([^=\s]+)\s*=\s*(.*)$")
_TRUE = {"true", "yes", "on", "1", "y", "t"}


@dataclass
class _Profile:
    realms: set[str]
    libdefaults: dict[str, str]


def _read_profile(path: Path, profile: _Profile, depth: int = 0) -> None:
    """The parts of a krb5.conf this module needs: the realms named under ``[realms]`` and the
    top-level ``[libdefaults]`` relations, following ``include`` and ``includedir`` as MIT
    krb5 does. libkrb5 itself has already parsed the file (a malformed one never gets here)."""
    section = ""
    level = 0
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if level == 0 and depth < 8 and line.startswith(("include ", "includedir ")):
            directive, _, target = line.partition(" ")
            where = Path(target.strip())
            if directive == "include" and where.is_file():
                _read_profile(where, profile, depth + 1)
            elif directive == "includedir" and where.is_dir():
                for child in sorted(where.iterdir()):
                    if child.is_file() and re.fullmatch(r"[\w-]+(\.conf)?", child.name):
                        _read_profile(child, profile, depth + 1)
            continue
        header = _SECTION.match(line)
        if header and level == 0:
            section = header.group(1).lower()
            continue
        relation = _RELATION.match(line)
        if relation and level == 0:
            key, value = relation.group(1), relation.group(2).strip()
            if section == "realms":
                profile.realms.add(key.upper())
            elif section == "libdefaults" and value != "{":
                profile.libdefaults.setdefault(key.lower(), value.strip().strip('"'))
        level += line.count("{") - line.count("}")
        level = max(level, 0)


@contextlib.contextmanager
def _krb5_config(path: Path) -> Iterator[None]:
    """``KRB5_CONFIG`` = ``path`` while libkrb5 contexts are made (MIT reads it then)."""
    saved = os.environ.get("KRB5_CONFIG")
    os.environ["KRB5_CONFIG"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("KRB5_CONFIG", None)
        else:
            os.environ["KRB5_CONFIG"] = saved


def check_krb5_config(windows: WindowsSettings) -> Step:
    import krb5

    from .windows import KRB5_NAMES

    name = "krb5.conf"
    path = krb5_config_path(windows)
    problem = unreadable(path)
    if problem:
        return _failed(name, "krb5_config", f"{path} (windows.krb5_config) {problem}")
    with _krb5_config(path):
        try:
            krb5.init_context()
        except krb5.Krb5Error as exc:
            code = int(exc.err_code)
            said = f"{KRB5_NAMES.get(code, code)}: {_krb5_text(exc)}"
            return _failed(
                name, "krb5_config", f"{path} (windows.krb5_config) cannot be used ({said})"
            )
    profile = _Profile(set(), {})
    _read_profile(path, profile)
    realm = windows.realm
    if realm in profile.realms:
        return _ok(name, f"{path}: realm {realm} under [realms]")
    dns = profile.libdefaults.get("dns_lookup_kdc", profile.libdefaults.get("dns_fallback"))
    if dns is None or dns.lower() in _TRUE:
        default = profile.libdefaults.get("default_realm")
        return _ok(
            name,
            f"{path}: the KDCs of {realm} are looked up in DNS"
            + (f" (default_realm = {default})" if default else ""),
        )
    return _failed(
        name,
        "realm_unknown",
        f"{path} (windows.krb5_config) does not name the realm {realm} under [realms], and "
        "DNS lookups of KDCs are off (dns_lookup_kdc = false): add "
        f"'{realm} = {{ kdc = <domain controller> }}' under [realms], or set "
        "dns_lookup_kdc = true",
    )


# --- keytab ---------------------------------------------------------------------------------


def service_principal(windows: WindowsSettings) -> str | None:
    principal = windows.service_principal
    if principal and "@" not in principal:
        principal = f"{principal}@{windows.realm}"
    return principal


def check_keytab(windows: WindowsSettings) -> Step:
    """The keytab can be read and holds a key for ``service_principal`` (any key at all when
    no service principal is set: integrated sign-in accepts every principal in it)."""
    import krb5

    from .windows import KRB5_NAMES

    name = "keytab"
    assert windows.keytab is not None
    path = Path(windows.keytab)
    problem = unreadable(path)
    if problem:
        return _failed(name, "keytab_unusable", f"{path} (windows.keytab) {problem}")
    principal = service_principal(windows)
    with _krb5_config(krb5_config_path(windows)):
        try:
            context = krb5.init_context()
            keytab = krb5.kt_resolve(context, f"FILE:{path}".encode())
            entries = [(_principal(e.principal), e.kvno, e.key.enctype) for e in keytab]
        except krb5.Krb5Error as exc:
            code = int(exc.err_code)
            if code == errno.ENOENT:  # an empty file: a keytab with no entry
                entries = []
            else:
                said = f"{KRB5_NAMES.get(code, code)}: {_krb5_text(exc)}"
                return _failed(
                    name, "keytab_unusable", f"{path} (windows.keytab) is not a keytab ({said})"
                )
    if not entries:
        return _failed(name, "keytab_unusable", f"{path} (windows.keytab) holds no keys")
    if principal is None:
        names = sorted({entry[0] for entry in entries})
        return _ok(name, f"{path}: {len(entries)} keys for {', '.join(names)}")
    ours = [entry for entry in entries if entry[0].lower() == principal.lower()]
    if not ours:
        names = sorted({entry[0] for entry in entries})
        return _failed(
            name,
            "keytab_wrong_principal",
            f"{path} (windows.keytab) holds no key for {principal} "
            f"(windows.service_principal), only for {', '.join(names)}: export that "
            "principal's keys into it, or correct windows.service_principal",
        )
    kvnos = sorted({entry[1] for entry in ours})
    return _ok(
        name, f"{path}: {len(ours)} keys for {principal} (kvno {', '.join(map(str, kvnos))})"
    )


def _principal(value: Any) -> str:
    return bytes(value.name or b"").decode(errors="replace")


def _krb5_text(exc: Exception) -> str:
    """A Krb5Error's words, without the code pykrb5 appends."""
    text = str(exc.args[0] if exc.args else exc)
    return re.sub(r"\s+-?\d+$", "", text)


# --- the directory --------------------------------------------------------------------------


def check_directory_connect(windows: WindowsSettings) -> Step:
    """A TCP connection to ``windows.directory.url``, within its timeout."""
    assert windows.directory is not None
    url = windows.directory.url
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (636 if parts.scheme.lower() == "ldaps" else 389)
    timeout = windows.directory.timeout.total_seconds()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        said = exc.strerror or str(exc) or type(exc).__name__
        return _failed(
            "directory",
            "directory_unreachable",
            f"{url} (windows.directory.url) does not accept a connection within "
            f"{timeout:g} s ({said})",
        )
    return _ok("directory", f"{url} accepts connections")


# --- at start -------------------------------------------------------------------------------


def startup_steps(windows: WindowsSettings) -> list[Step]:
    """The checks that need nothing of the domain but a TCP connect."""
    steps: list[Step] = []
    if windows.password_check == "kerberos" or windows.keytab is not None:
        steps.append(check_krb5_config(windows))
    if windows.keytab is not None:
        steps.append(check_keytab(windows))
    if windows.directory is not None:
        steps.append(check_directory_connect(windows))
    return steps


def startup_problems(settings: Settings) -> list[Step]:
    """The failed start-up checks (none without ``[windows]``)."""
    if settings.windows is None:
        return []
    return [step for step in startup_steps(settings.windows) if not step.ok]


def refusal(step: Step) -> str:
    """One line for a failed step, as ``sessiond serve`` refuses with it."""
    return f"invalid settings: Windows sign-in cannot work: {step.detail} [{step.cause}]"


# --- sessiond check windows -----------------------------------------------------------------


def check_self_test(windows: WindowsSettings) -> Step:
    """``kinit -k`` then ``kvno``: an initial ticket for the service principal from the
    keytab's own key, a service ticket for it, and that ticket opened with the keytab."""
    import gssapi
    import krb5

    from .accounts import WindowsAccount
    from .windows import WindowsAuthenticator, _gss_errors

    name = "self-test"
    principal = service_principal(windows)
    assert principal is not None and windows.keytab is not None
    try:
        checker = WindowsAuthenticator(windows)
    except SessiondError as exc:
        return _failed(name, "invalid_settings", exc.message)
    cache = f"MEMORY:sessiond-check-{secrets.token_hex(8)}"
    with _krb5_config(krb5_config_path(windows)):
        context = krb5.init_context()
        try:
            client = krb5.parse_name_flags(context, principal.encode())
            keytab = krb5.kt_resolve(context, f"FILE:{windows.keytab}".encode())
            options = krb5.get_init_creds_opt_alloc(context)
            creds = krb5.get_init_creds_keytab(context, client, options, keytab=keytab)
            ccache = krb5.cc_resolve(context, cache.encode())
            krb5.cc_initialize(context, ccache, client)
            krb5.cc_store_cred(context, ccache, creds)
        except krb5.Krb5Error as exc:
            return _self_test_failure(windows, principal, int(exc.err_code), exc)
        try:
            service = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
            initiator = gssapi.Credentials(name=service, usage="initiate", store={"ccache": cache})
            name_part, _, realm = principal.rpartition("@")
            checker._prove_kdc(initiator, WindowsAccount(name_part, "", realm))
        except SessiondError as exc:
            return _failed(name, str(exc.details.get("cause", "kdc_proof")), exc.message)
        except _gss_errors() as exc:
            error = checker._proof_failure(exc)
            return _failed(name, str(error.details.get("cause")), error.message)
        finally:
            with contextlib.suppress(krb5.Krb5Error):
                krb5.cc_destroy(context, ccache)
    return _ok(
        name,
        f"a ticket for {principal} obtained with the keytab's key and opened with the keytab",
    )


def _self_test_failure(windows: WindowsSettings, principal: str, code: int, exc: Any) -> Step:
    from . import windows as w

    said = f"{w.KRB5_NAMES.get(code, code)}: {_krb5_text(exc)}"
    keytab = windows.keytab
    causes: dict[int, tuple[str, str]] = {
        w.KRB5_KDC_UNREACH: ("kdc_unreachable", f"no KDC of {windows.realm} answers"),
        w.KRB5_REALM_UNKNOWN: ("realm_unknown", f"no KDC is known for {windows.realm}"),
        w.KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN: (
            "service_principal_not_upn",
            f"the domain gives no initial ticket to {principal}: it is not the service "
            "account's userPrincipalName (ktpass -princ sets that; setspn and samba-tool spn "
            "add do not), or no account has it at all. Sign-ins do not need it: check the "
            f"keytab with a user's ticket instead (kinit alice; kvno -k {keytab} {principal})",
        ),
        w.KRB5KDC_ERR_PREAUTH_FAILED: (
            "keytab_keys_wrong",
            f"the domain refuses the keytab's key for {principal}: the keytab {keytab} was "
            "made from another password than the account has, or the password was reset since",
        ),
        w.KRB5_KT_KVNONOTFOUND: ("keytab_stale", f"the keytab {keytab} holds no current key"),
        w.KRB5_KT_NOTFOUND: (
            "keytab_wrong_principal",
            f"the keytab {keytab} holds no key for {principal}",
        ),
        w.KRB5KDC_ERR_CLIENT_REVOKED: (
            "service_account_disabled",
            f"the domain account of {principal} is disabled, locked out or expired",
        ),
    }
    for skew in w._SKEW:
        causes[skew] = ("clock_skew", w._SKEW_MESSAGE.format(said=said))
    cause, what = causes.get(code, ("kdc_proof", f"kinit -k for {principal} failed"))
    return _failed("self-test", cause, f"{what} ({said})")


def check_directory_bind(windows: WindowsSettings) -> Step:
    """Connect (with StartTLS when set) and bind as the search account, if one is set, else
    anonymously: TLS, the certificate and the account are tried as sign-ins will."""
    from .directory import Directory

    assert windows.directory is not None
    directory = Directory(windows.directory, section="windows.directory")
    s = windows.directory
    try:
        refused = directory.probe()
    except SessiondError as exc:
        return _failed("directory", str(exc.details.get("cause")), exc.reason or exc.message)
    if refused is not None:
        return _failed(
            "directory",
            "search_account_refused",
            f"{s.url}: the bind as {s.bind_dn} (windows.directory.bind_dn) was refused: {refused}",
        )
    who = f"as {s.bind_dn}" if s.bind_dn else "connected (no search account to bind as)"
    return _ok("directory", f"{s.url}: {who}")


async def check_winbind(windows: WindowsSettings) -> list[Step]:
    """``wbinfo --ping-dc``, then ntlm_auth with a made-up account and password, which only a
    domain that checked it answers ``NA`` to: winbindd, its domain controller and the
    privileged pipe all take part."""
    import spnego

    from .winbind import PING_CAUSES, SQUID, HelperPool, parse_reply, ping_dc

    ping = await ping_dc(windows)
    if ping.cause is not None:
        first = _failed("winbind", ping.cause, f"{PING_CAUSES[ping.cause]} ({ping.said})")
    elif not ping.ok:
        first = _failed("winbind", "wbinfo_failed", ping.said)
    else:
        first = _ok("winbind", ping.said)
    steps = [first]
    domain = next(iter(windows.domains), windows.realm.split(".")[0])
    client = spnego.client(
        f"{domain}\\sessiond-check-{secrets.token_hex(4)}",
        secrets.token_urlsafe(12),
        protocol="ntlm",
    )
    pool = HelperPool(windows)
    name = "ntlm_auth"
    try:
        helper = await pool.acquire(SQUID)
        answers = []
        token = client.step()
        for code in ("YR", "KK"):
            async with asyncio.timeout(pool.timeout):
                line = await helper.ask(code, token or b"")
            answers.append(line)
            reply = parse_reply(SQUID, line) if line else None
            if reply is None or reply.code != "TT":
                break
            token = client.step(reply.token)
        stderr = await pool.discard(helper)
    except SessiondError as exc:
        steps.append(_failed(name, str(exc.details.get("cause")), exc.message))
        return steps
    except TimeoutError:
        await pool.close()
        steps.append(_failed(name, "ntlm_auth_timeout", "ntlm_auth did not answer in time"))
        return steps
    last = answers[-1] if answers else ""
    if last.startswith("NA "):
        steps.append(_ok(name, f"a made-up account was refused by the domain ({last[3:]})"))
        return steps
    tail = " | ".join(line for line in stderr.splitlines()[-3:] if line.strip())
    if last.startswith("BH") and first.ok:
        steps.append(
            _failed(
                name,
                "winbind_privileged_pipe",
                f"ntlm_auth answered {last!r} although winbindd and its domain controller "
                f"answer: the account sessiond runs as (uid {os.geteuid()}) needs winbindd's "
                f"privileged pipe (add it to the winbindd_priv group) {tail}".strip(),
            )
        )
    else:
        cause = first.cause if not first.ok and first.cause else "ntlm_auth_failed"
        steps.append(_failed(name, cause, f"ntlm_auth answered {last!r} {tail}".strip()))
    return steps


def run_checks(settings: Settings) -> list[Step]:
    """Every check that applies to these settings, in order (``sessiond check windows``).
    The log lines sign-in would write for the same faults are left out: each step says it."""
    windows = settings.windows
    assert windows is not None
    logging.disable(logging.CRITICAL)
    try:
        return _run_checks(windows)
    finally:
        logging.disable(logging.NOTSET)


def _run_checks(windows: WindowsSettings) -> list[Step]:
    steps: list[Step] = []
    kerberos = windows.password_check == "kerberos" or windows.keytab is not None
    if kerberos:
        steps.append(check_krb5_config(windows))
    if windows.keytab is not None:
        steps.append(check_keytab(windows))
        if windows.service_principal and all(step.ok for step in steps):
            steps.append(check_self_test(windows))
    if windows.directory is not None:
        connect = check_directory_connect(windows)
        steps.append(check_directory_bind(windows) if connect.ok else connect)
    if windows.negotiate and windows.ntlm_mode == "winbind":
        steps.extend(asyncio.run(check_winbind(windows)))
    return steps
