"""``refusals-domain``: the refusals of domain and directory sign-ins, against a real domain.

A real Samba AD DC (``tests.infra.samba.SambaDomain``, as the tests start it; needs root and
Samba's packages) is provisioned and started first, outside the figures. One real ``sessiond
serve`` (default Argon2 settings) then checks passwords three ways against it:

- **Windows**: ``[sessiond.windows]``, Kerberos with the KDC proven by a keytab (the default
  ``password_check``), logins typed ``SAMBA\\name``;
- **Ldap**: ``[sessiond.ldap]`` on the DC's LDAPS, a search account, then a bind as the entry;
- **NTLM**: integrated sign-in (``POST /api/v1/sessions/open-windows``) with raw NTLM answered
  by pyspnego's client, checked by the DC through winbind (``ntlm = "winbind"``, Samba's
  ``ntlm_auth``), as tests/test_windows_ntlm.py configures it. Only the second leg (the
  client's AUTHENTICATE, the one the domain checks) is timed.

For each path five cases, one request at a time over one kept-alive httpx connection:
a mapped user with a wrong password (the path's reference), an account the domain does not
know, an account no user is mapped to with a wrong and with the right password, and a mapped
user blocked by the administrator (right password). The lockout applies to domain users
(``block_windows_and_ldap_users``, with a limit no run reaches) so that a blocked user is
refused unchecked, as a blocked platform user is. No user may be provisioned, so an account
no user is mapped to, known to the domain or not, right password or wrong, is refused without
asking the domain, on every path (NTLM's last leg names the account before the domain checks
it). Every answer must be ``401 invalid_credentials`` and each refusal must leave its
``LoginFailed`` record; the figures are medians of the per-round medians and ratios to the
path's wrong password (each path's refusals are held to that path's own wrong-password time),
never assertions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.infra.samba import SambaDomain

from sessiond.models import AuditAction
from sessiond.settings import Argon2Settings

from .common import (
    BenchError,
    Config,
    Series,
    audit_records,
    call_api,
    fmt,
    heading,
    median,
    percentile,
    print_ratio_within,
    print_table,
    ratio,
    sign_in,
    start_sessiond,
)

PASSWORD = "Bench-pass-1"
WRONG_PASSWORD = "Bench-pass-2"  # the same length as the right one
OPEN = "/api/v1/sessions/open"
OPEN_WINDOWS = "/api/v1/sessions/open-windows"
SESSION_HEADER = "Tessa-Session"
GOAL_LOW, GOAL_HIGH = 0.9, 1.1
LOCKOUT_LIMIT = 100_000  # the lockout applies to domain users; no run reaches it
PATHS = ("Windows", "Ldap", "NTLM")
WRONG = "wrong"


@dataclass(frozen=True)
class Case:
    path: str
    key: str  # wrong, unknown, unmapped+wrong, unmapped+right, blocked
    label: str
    status: int
    code: str
    reason: str  # a part of details.reason of the LoginFailed record it must leave

    @property
    def name(self) -> str:
        return f"{self.path} {self.key}"


#: No user may be provisioned: an account no user is mapped to (known to the domain or not) is
#: refused without asking the domain, held to the path's wrong-password time.
UNCHECKED = "(no provisioning: password not checked)"


def _cases() -> list[Case]:
    cases = []
    for path in PATHS:
        ntlm = path == "NTLM"
        kdc = path != "Ldap"
        cases += [
            Case(path, WRONG, "mapped user, wrong password", 401, "invalid_credentials",
                 "NT_STATUS_" if ntlm else "password incorrect" if kdc else "wrong password"),
            Case(path, "unknown", "unknown account", 401, "invalid_credentials", UNCHECKED),
            Case(path, "unmapped+wrong", "unmapped account, wrong password", 401,
                 "invalid_credentials", UNCHECKED),
            Case(path, "unmapped+right", "unmapped account, right password", 401,
                 "invalid_credentials", UNCHECKED),
            Case(path, "blocked", "blocked user, right password", 401, "invalid_credentials",
                 "user blocked; password not checked"),
        ]  # fmt: skip
    return cases


CASES = _cases()


@dataclass(frozen=True)
class Accounts:
    """The domain accounts of one path: mapped, unmapped, blocked (sessiond logins)."""

    mapped: str
    unmapped: str
    blocked: str


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data or b"").decode()


def _server_config(dc: SambaDomain, root: Path, search_upn: str) -> Path:
    svc = dc.add_service_account("HTTP", "sessiond-bench.samba.test", keytab=str(root / "kt"))
    wrappers = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in dc.wrapper_env().items())
    text = f"""
[sessiond.windows]
realm = "{dc.realm}"
domains = {{ {dc.domain} = "{dc.realm}" }}
domain_lockout_threshold = 0
service_principal = "{svc.principal}"
keytab = "{svc.keytab}"
krb5_config = "{dc.krb5_conf}"
negotiate = true
ntlm = "winbind"
ntlm_auth_config = "{dc.smb_conf}"
ntlm_auth_environment = {wrappers} }}

[sessiond.ldap]
url = "ldaps://{dc.dc_fqdn}:636"
ca_file = "{dc.ca_file}"
bind_dn = "{search_upn}"
bind_password = "{PASSWORD}"
search_base = "{dc.base_dn}"
search_filter = "(sAMAccountName={{login}})"
domain_lockout_threshold = 0

[sessiond.security]
block_windows_and_ldap_users = true
max_failed_login_attempts_before_blocked = {LOCKOUT_LIMIT}
unmapped_account_failures = 0
unmapped_address_failures = 0
"""
    path = root / "sessiond.toml"
    path.write_text(text)
    return path


def _set_up(dc: SambaDomain, url: str, admin: str) -> dict[str, Accounts]:
    """Domain accounts for each path, mapped (and blocked) over HTTP by the administrator.
    NTLM shares the Windows users: both are login type Windows."""
    tag = secrets.token_hex(3)
    names = {role: f"b{role[:2]}-{tag}" for role in ("wmapped", "wunmapped", "wblocked")}
    names |= {role: f"b{role[:2]}-{tag}" for role in ("lmapped", "lunmapped", "lblocked")}
    for name in names.values():
        dc.add_user(name, PASSWORD)
    with httpx.Client(timeout=120, headers={SESSION_HEADER: admin}) as client:
        users = f"{url}/api/v1/users"
        for role in ("wmapped", "wblocked"):
            account = f"{dc.domain}\\{names[role]}"
            body = {"Login": names[role], "LoginType": "Windows", "Account": account}
            call_api(client, "POST", users, body)
        for role in ("lmapped", "lblocked"):
            body = {"Login": names[role], "LoginType": "Ldap", "Account": names[role]}
            call_api(client, "POST", users, body)
        for role in ("wblocked", "lblocked"):
            call_api(client, "POST", f"{users}/{names[role]}/block", {})
    windows = Accounts(*(f"{dc.domain}\\{names[r]}" for r in ("wmapped", "wunmapped", "wblocked")))
    ldap = Accounts(names["lmapped"], names["lunmapped"], names["lblocked"])
    return {"Windows": windows, "Ldap": ldap, "NTLM": windows}


class Attempts:
    """One refused sign-in per call, timed; the answer must be the case's."""

    def __init__(self, client: httpx.Client, url: str, accounts: dict[str, Accounts]) -> None:
        self.client = client
        self.url = url
        self.accounts = accounts
        self.unknown = 0
        self.answers: Counter[str] = Counter()

    def credentials(self, case: Case) -> tuple[str, str]:
        accounts = self.accounts[case.path]
        if case.key == "unknown":
            self.unknown += 1
            nobody = f"nobody-{self.unknown}-{secrets.token_hex(2)}"
            return (nobody if case.path == "Ldap" else f"SAMBA\\{nobody}"), PASSWORD
        return {
            WRONG: (accounts.mapped, WRONG_PASSWORD),
            "unmapped+wrong": (accounts.unmapped, WRONG_PASSWORD),
            "unmapped+right": (accounts.unmapped, PASSWORD),
            "blocked": (accounts.blocked, PASSWORD),
        }[case.key]

    def __call__(self, case: Case) -> float:
        login, password = self.credentials(case)
        if case.path == "NTLM":
            elapsed, response = self._ntlm(login, password)
        else:
            started = time.perf_counter()
            response = self.client.post(
                self.url + OPEN, json={"Login": login, "Password": password}
            )
            elapsed = time.perf_counter() - started
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if (response.status_code, code) != (case.status, case.code):
            raise BenchError(
                f"{case.name} ({login!r}) answered {response.status_code}: {response.text[:300]}"
            )
        self.answers[case.name] += 1
        return elapsed

    def _ntlm(self, login: str, password: str) -> tuple[float, httpx.Response]:
        import spnego

        context = spnego.client(login, password, protocol="ntlm")
        url = self.url + OPEN_WINDOWS
        first = self.client.post(url, headers={"Authorization": "NTLM " + _b64(context.step())})
        scheme, _, challenge = first.headers.get("WWW-Authenticate", "").partition(" ")
        if first.status_code != 401 or scheme != "NTLM" or not challenge:
            raise BenchError(f"NTLM challenge for {login!r}: {first.status_code} {first.text}")
        answer = _b64(context.step(base64.b64decode(challenge)))
        headers = {
            "Authorization": "NTLM " + answer,
            "Tessa-Negotiate-Id": first.headers["Tessa-Negotiate-Id"],
        }
        started = time.perf_counter()
        second = self.client.post(url, headers=headers)
        return time.perf_counter() - started, second


def _login_failed(database: Path, after_id: int) -> tuple[int, list[str]]:
    last, records = audit_records(database, AuditAction.LOGIN_FAILED.value, after_id)
    return last, [str(details.get("reason")) for _, details in records]


def _order(round_no: int, sample: int) -> list[Case]:
    """All cases of all paths, rotated by one per sample and reversed every other time."""
    shift = (round_no - 1) * 7 + sample
    shift %= len(CASES)
    order = CASES[shift:] + CASES[:shift]
    return order[::-1] if (round_no + sample) % 2 else order


def _rounds(config: Config, attempt: Callable[[Case], float], samples: int) -> dict[str, Series]:
    per_round = {case.name: Series(f"{case.path}: {case.label}", "ms") for case in CASES}
    every: dict[str, list[float]] = {case.name: [] for case in CASES}
    for case in CASES:  # warm-up: the connection, helpers, the first hashes and binds
        attempt(case)
    for round_no in range(1, config.rounds + 1):
        deadline = time.monotonic() + config.round_timeout * 3
        this_round: dict[str, list[float]] = {case.name: [] for case in CASES}
        for sample in range(samples):
            if time.monotonic() > deadline:
                raise BenchError(f"round {round_no} took over {config.round_timeout * 3:.0f}s")
            for case in _order(round_no, sample):
                this_round[case.name].append(attempt(case) * 1e3)
        for case in CASES:
            per_round[case.name].add(median(this_round[case.name]))
            every[case.name] += this_round[case.name]
        for path in PATHS:
            line = "  ".join(
                f"{c.key} {fmt(per_round[c.name].values[-1])}" for c in CASES if c.path == path
            )
            print(f"  round {round_no}/{config.rounds} {path} (ms): {line}", flush=True)
    for path in PATHS:
        print(f"  -- {path} --")
        path_cases = [case for case in CASES if case.path == path]
        print_table([per_round[case.name] for case in path_cases])
        reference = next(case for case in path_cases if case.key == WRONG)
        for case in path_cases:
            ms = every[case.name]
            note = f"all {len(ms)} samples: median {fmt(median(ms))} ms, p10 "
            note += f"{fmt(percentile(ms, 10))}, p90 {fmt(percentile(ms, 90))}"
            if case is reference:
                print(f"  {case.label} (reference): {note}")
                continue
            overall = ratio(median(ms), median(every[reference.name]))
            print_ratio_within(
                f"{case.label} / wrong password",
                per_round[case.name],
                per_round[reference.name],
                GOAL_LOW,
                GOAL_HIGH,
                extra=f"; all samples {fmt(overall, 2)}x; {note}",
            )
    return per_round


def run_refusals_domain(config: Config) -> None:
    samples = max(3, config.refusal_samples // 2)
    argon2 = Argon2Settings()
    heading(
        "refusals-domain",
        "time of a refused domain or directory sign-in over HTTP, one at a time, by path "
        f"(Windows/Kerberos, Ldap, NTLM through winbind) and case, Argon2id time_cost "
        f"{argon2.time_cost}, memory {argon2.memory_cost // 1024} MiB, {samples} samples per "
        "case and round",
    )
    if os.geteuid() != 0:
        raise BenchError("the Samba AD DC needs root (its LDAP ports are below 1024)")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        started = time.monotonic()
        dc = SambaDomain()
        stack.callback(dc.stop)
        search = dc.add_user(f"bsearch-{secrets.token_hex(3)}", PASSWORD)
        settings = _server_config(dc, root, search.upn)
        env = dc.subprocess_env(base={}, wrappers=True)
        env.pop("KRB5CCNAME", None)  # the server works from its settings
        server = start_sessiond(
            stack,
            root,
            "refusals-domain",
            fast_argon2=False,
            extra_env={**env, "SESSIOND_CONFIG": str(settings)},
        )
        admin = sign_in(server.url, "admin", server.admin_password, timeout=120)
        accounts = _set_up(dc, server.url, admin)
        print(
            f"  Samba AD DC {dc.realm} provisioned and started, accounts made and mapped, "
            f"sessiond started: {time.monotonic() - started:.1f} s (not in the figures)",
            flush=True,
        )
        database = root / "refusals-domain-data" / "sessiond.db"
        audit_start, _ = _login_failed(database, 0)
        with httpx.Client(timeout=config.round_timeout) as client:
            attempts = Attempts(client, server.url, accounts)
            _rounds(config, attempts, samples)
        _, reasons = _login_failed(database, audit_start)
        _check_audit(attempts.answers, reasons)
        server.server.check_alive()
    print(
        "  (each path's reference is a mapped user's wrong password, checked by the domain; "
        f"the goal is every other refusal of the path within {GOAL_LOW:g}-{GOAL_HIGH:g}x of it)"
    )


def _check_audit(answers: Counter[str], reasons: list[str]) -> None:
    """Every refusal left a LoginFailed record: as many records as refusals, and per case at
    least as many records carrying its reason as it had refusals."""
    total = sum(answers.values())
    if len(reasons) != total:
        raise BenchError(f"{len(reasons)} LoginFailed records for {total} refusals")
    by_reason: Counter[str] = Counter()
    for case in CASES:
        by_reason[case.reason] += answers[case.name]
    short = {
        part: f"{sum(part in r for r in reasons)} < {count}"
        for part, count in by_reason.items()
        if sum(part in r for r in reasons) < count
    }
    if short:
        raise BenchError(f"LoginFailed records missing, by reason: {short}")
    print(f"  audit: {len(reasons)} LoginFailed records for {total} refusals, each case's reason")
