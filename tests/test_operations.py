"""An operator's first hour, against real ``sessiond serve`` processes: metrics, liveness and
readiness, logs that keep secrets out, 503s while PostgreSQL is down and recovery after it,
a clean refusal of a port in use, and an API page that needs no other server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from sessiond._version import __version__
from sessiond.store.health import expected_revisions
from sessiond.token import AuthToken
from tests.infra.postgres import PostgresServer

from .conftest import ServerProcess, free_port, server_env
from .test_console import CHROMIUM, CHROMIUM_ARGS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, **headers: str) -> Samples:
    answer = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def open_session(url: str, login: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/sessions/open", json={"Login": login, "Password": password}, timeout=30
    )


def token_of(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["AuthToken"]
    return token


def start(root: Path, name: str, **env: str) -> ServerProcess:
    data_dir = root / name / "sessiond-data"
    data_dir.parent.mkdir(parents=True)
    process = ServerProcess(
        data_dir, free_port(), server_env(data_dir, **env), root / name / "server.log"
    )
    process.start()
    return process


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts (``servers.append(start(...))``), stopped at its end."""
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_count_sign_ins_validations_and_closes(server: ServerProcess) -> None:
    url, password = server.url, server.admin_password
    before = scrape(url)

    first = token_of(open_session(url, "admin", password))
    assert open_session(url, "admin", "not the password").status_code == 401
    assert open_session(url, "nobody-at-all", "whatever").status_code == 401
    current = f"{url}/api/v1/sessions/current"
    assert httpx.get(current, headers={"Tessa-Session": first}).status_code == 200
    assert httpx.get(current, headers={"Tessa-Session": "<garbage/>"}).status_code == 401
    closed = httpx.post(f"{url}/api/v1/sessions/close", headers={"Tessa-Session": first})
    assert closed.json() == {"Closed": True}
    gone = httpx.get(current, headers={"Tessa-Session": first})
    assert gone.json()["error"]["code"] == "session_not_found"
    second = token_of(open_session(url, "admin", password))
    third = token_of(open_session(url, "admin", password))
    second_id = AuthToken.from_xml(second).session_id
    by_admin = httpx.delete(f"{url}/api/v1/sessions/{second_id}", headers={"Tessa-Session": third})
    assert by_admin.json() == {"Closed": True}
    raised = httpx.post(
        f"{url}/api/v1/configuration/increment-version", headers={"Tessa-Session": third}
    )
    assert raised.status_code == 200, raised.text

    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    signed_in = "sessiond_sign_ins_total"
    assert moved(signed_in, via="password", outcome="opened") == 3
    # The wrong password and the unknown login: one outcome, nothing that tells them apart.
    assert moved(signed_in, via="password", outcome="invalid_credentials") == 2
    validated = "sessiond_validations_total"
    assert moved(validated, outcome="ok") == 3  # current, the admin close, the increment
    assert moved(validated, outcome="token_invalid") == 1
    assert moved(validated, outcome="session_not_found") == 1
    assert moved("sessiond_sessions_closed_total", by="user") == 1
    assert moved("sessiond_sessions_closed_total", by="admin") == 1
    assert moved("sessiond_open_sessions", license_type="ConcurrentClient") == 1
    hashed = "sessiond_password_hash_seconds_count"
    assert moved(hashed, operation="verify") == 5  # three right, one wrong, the unknown login
    pairs_seen = {pair for (_, pairs) in after for pair in pairs}
    assert ("operation", "decoy") not in pairs_seen  # a decoy is not told from a real hash
    assert not any(key == "login_type" for key, _ in pairs_seen)  # nor a user's login type
    assert value(after, "sessiond_configuration_version") == raised.json()["Version"]
    assert value(after, "sessiond_store_up") == 1
    assert value(after, "sessiond_build_info", version=__version__) == 1

    # Request durations are labelled by route template, the fast validation route included.
    timed = "sessiond_http_request_duration_seconds_count"
    assert moved(timed, method="GET", route="/api/v1/sessions/current") == 3
    assert moved(timed, method="DELETE", route="/api/v1/sessions/{session_id}") == 1
    assert moved(timed, method="POST", route="/api/v1/sessions/open") == 5
    # Never a label per login, address, session or raw path.
    labels = {v for (_, pairs) in after for (_, v) in pairs}
    for forbidden in ("nobody-at-all", "127.0.0.1", str(second_id)):
        assert not any(forbidden in label for label in labels), forbidden


def _moves(before: Samples, after: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What moved between two scrapes among sessiond's own counts (a histogram's buckets and
    sums are times, which the caller sees anyway; its count is compared)."""
    moved = {}
    for key, now in after.items():
        name, was = key[0], before.get(key, 0.0)
        if name.startswith("sessiond_") and not name.endswith(("_bucket", "_sum")) and now != was:
            moved[key] = now - was
    return moved


def test_refusals_before_the_right_password_move_the_metrics_alike(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """An unknown login, a user of another login type: each refusal leaves every metric exactly
    as a wrong password of an existing user does; a blocked user's too, but for the hash it does
    not run (scraped before and after)."""
    node = start(
        tmp_path,
        "alike",
        SESSIOND_SECURITY__MAX_FAILED_LOGIN_ATTEMPTS_IN_SERIES="5",
        SESSIOND_SWEEP_INTERVAL="1h",
    )
    servers.append(node)
    url = node.url
    admin = {"Tessa-Session": token_of(open_session(url, "admin", node.admin_password))}
    users = f"{url}/api/v1/users"
    for body in (
        {"Login": "known", "Password": "Known-Password-1"},
        {"Login": "blocked", "Password": "Blocked-Password-1"},
        {"Login": "domain", "LoginType": "Windows", "Account": "CORP\\domain"},
        {"Login": "nologin", "LoginType": "None"},
    ):
        added = httpx.post(users, json=body, headers=admin, timeout=30)
        assert added.status_code == 201, added.text
    blocked = httpx.post(f"{users}/blocked/block", json={}, headers=admin, timeout=30)
    assert blocked.status_code == 200, blocked.text

    def refusal(login: str, password: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        before = scrape(url)
        answer = open_session(url, login, password)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "invalid_credentials"
        return _moves(before, scrape(url))

    wrong_password = refusal("known", "not-the-password")
    signed = [key for key in wrong_password if key[0] == "sessiond_sign_ins_total"]
    assert len(signed) == 1 and ("outcome", "invalid_credentials") in signed[0][1]
    assert wrong_password[signed[0]] == 1
    cases = [
        ("nobody-at-all", "whatever"),  # no such login
        ("domain", "whatever"),  # a Windows user on a server without Windows sign-in
        ("nologin", "whatever"),  # login type None: may not sign in
        ("known", "not-the-password"),
    ]
    for login, password in cases:
        assert refusal(login, password) == wrong_password, login
    # A blocked account is saturated: its refusals run no hash at all (a flood at it costs
    # nothing; docs/security.md), held to the same time by the clock. Every other metric moves
    # as for a wrong password; the hash count, kept to loopback with the rest, does not move.
    hashed = ("sessiond_password_hash_seconds_count", (("operation", "verify"),))
    assert wrong_password.get(hashed) == 1
    unhashed = {key: moved for key, moved in wrong_password.items() if key != hashed}
    for password in ("not-the-password", "Blocked-Password-1"):  # nor the right one
        assert refusal("blocked", password) == unhashed, password


def test_metrics_are_kept_to_this_machine_unless_allowed_elsewhere(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """By default only loopback may read /metrics: not a client a trusted proxy names from
    elsewhere, not a request a proxy forwarded while no proxy is trusted, and not a monitoring
    network the example settings file (which the systemd steps install) would open."""
    proxied = start(tmp_path, "proxied", SESSIOND_TRUSTED_PROXIES='["127.0.0.1"]')
    servers.append(proxied)
    assert value(scrape(proxied.url), "sessiond_store_up") == 1  # loopback itself
    assert value(scrape(proxied.url, **{"X-Forwarded-For": "127.0.0.1"}), "sessiond_store_up") == 1
    outside = httpx.get(f"{proxied.url}/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
    assert outside.status_code == 403
    assert outside.json()["error"]["code"] == "address_not_allowed"
    assert "10.1.2.3" in outside.json()["error"]["message"]
    assert "metrics_allow" in outside.json()["error"]["message"]

    direct = start(tmp_path, "direct")
    servers.append(direct)
    assert value(scrape(direct.url), "sessiond_store_up") == 1
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        forwarded = httpx.get(f"{direct.url}/metrics", headers={header: "for=203.0.113.9"})
        assert forwarded.status_code == 403, header
        assert forwarded.json()["error"]["code"] == "address_not_allowed"
        assert "trusted_proxies" in forwarded.json()["error"]["message"]

    example = Path(__file__).parents[1] / "docs" / "sessiond.example.toml"
    installed = start(tmp_path, "example", SESSIOND_CONFIG=str(example))
    servers.append(installed)
    assert value(scrape(installed.url), "sessiond_store_up") == 1
    for address in ("10.1.2.3", "192.0.2.7"):
        asked = httpx.get(f"{installed.url}/metrics", headers={"X-Forwarded-For": address})
        assert asked.status_code == 403, address


def test_route_labels_name_the_consoles_routes_by_template(server: ServerProcess) -> None:
    url = server.url
    before = scrape(url)
    assert httpx.get(f"{url}/console/sign-in").status_code == 200
    assert httpx.get(f"{url}/console/static/console.css").status_code == 200
    assert httpx.get(f"{url}/console/no-such-page").status_code == 404
    after = scrape(url)
    timed = "sessiond_http_request_duration_seconds_count"
    moved = {
        dict(pairs)["route"]: count
        for (name, pairs), count in _moves(before, after).items()
        if name == timed and dict(pairs)["method"] == "GET"
    }
    assert moved == {"/console/sign-in": 1, "/console/static/{name}": 1, "unmatched": 1,
                     "/metrics": 1}  # fmt: skip


def test_metrics_can_be_switched_off_or_kept_to_some_networks(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    off = start(tmp_path, "off", SESSIOND_METRICS="false")
    servers.append(off)
    answer = httpx.get(f"{off.url}/metrics")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "no_such_route"

    kept = start(
        tmp_path,
        "kept",
        SESSIOND_METRICS_ALLOW='["10.0.0.0/8"]',
        SESSIOND_TRUSTED_PROXIES='["127.0.0.1"]',
    )
    servers.append(kept)
    refused = httpx.get(f"{kept.url}/metrics")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "address_not_allowed"
    assert refused.headers["Tessa-Configuration-Version"]
    # The address checked is the settled one: a trusted proxy names a client inside 10/8.
    assert value(scrape(kept.url, **{"X-Forwarded-For": "10.1.2.3"}), "sessiond_store_up") == 1


# --- health ----------------------------------------------------------------------------------


def test_liveness_readiness_and_the_combined_health(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    node = start(tmp_path, "node")
    servers.append(node)
    live = httpx.get(f"{node.url}/api/v1/health/live")
    assert (live.status_code, live.json()) == (200, {"Status": "ok"})
    assert live.headers["Tessa-Configuration-Version"] == "1"
    assert live.headers["Tessa-Server-Version"] == __version__
    ready = httpx.get(f"{node.url}/api/v1/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"Status": "ready", "SchemaRevision": ", ".join(expected_revisions())}
    combined = httpx.get(f"{node.url}/api/v1/health")
    assert combined.json() == {"Status": "ok", "ConfigurationVersion": 1}

    # A database whose schema is not the one this sessiond needs is not ready.
    database = sqlite3.connect(node.data_dir / "sessiond.db")
    with database:
        database.execute("UPDATE alembic_version SET version_num = '0001'")
    behind = httpx.get(f"{node.url}/api/v1/health/ready")
    assert behind.status_code == 503
    error = behind.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["details"] == {
        "reason": "schema_not_current",
        "SchemaRevision": "0001",
        "ExpectedRevision": ", ".join(expected_revisions()),
    }
    assert httpx.get(f"{node.url}/api/v1/health/live").status_code == 200
    with database:
        database.execute("UPDATE alembic_version SET version_num = ?", expected_revisions())
    database.close()
    assert httpx.get(f"{node.url}/api/v1/health/ready").status_code == 200


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_never_hold_passwords_or_tokens(
    tmp_path: Path, servers: list[ServerProcess], log_format: str
) -> None:
    password, wrong, new_password = "Adm1n-Secret-7f3a", "Wr0ng-Secret-91c2", "N3w-Secret-44d8"
    node = start(
        tmp_path,
        log_format,
        SESSIOND_ADMIN_PASSWORD=password,
        SESSIOND_ACCESS_LOG="true",
        SESSIOND_LOG_FORMAT=log_format,
        SESSIOND_LOG_LEVEL="debug",
    )
    servers.append(node)
    url = node.url
    assert open_session(url, "admin", wrong).status_code == 401
    token = token_of(open_session(url, "admin", password))
    auth = AuthToken.from_xml(token)
    headers = {"Tessa-Session": token}
    assert httpx.get(f"{url}/api/v1/sessions/current", headers=headers).status_code == 200
    assert httpx.get(f"{url}/api/v1/users", headers=headers).status_code == 200
    in_query = httpx.get(f"{url}/api/v1/sessions/current?token=Query-Secret-0b7e", headers=headers)
    assert in_query.status_code == 200
    changed = httpx.post(
        f"{url}/api/v1/sessions/change-password",
        json={"Login": "admin", "OldPassword": password, "NewPassword": new_password},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    node.stop()

    log = node.log_path.read_text()
    secrets = [password, wrong, new_password, "Query-Secret-0b7e", token, auth.signature]
    secrets.append(auth.digest)
    for secret in secrets:
        assert secret not in log
    if log_format == "text":
        assert re.search(
            r"sessiond\.access: GET /api/v1/sessions/current 200 \d+\.\dms 127\.0\.0\.1", log
        )
        assert "POST /api/v1/sessions/open 401 " in log
        return
    access = []
    for line in log.splitlines():
        if line.startswith(("First administrator created", "sessiond listening on")):
            continue  # standard output, not the log
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        if entry["logger"] == "sessiond.access":
            access.append(entry)
    paths = [(e["method"], e["path"], e["status"], e["client"]) for e in access]
    assert ("POST", "/api/v1/sessions/open", 401, "127.0.0.1") in paths
    assert ("GET", "/api/v1/sessions/current", 200, "127.0.0.1") in paths
    assert ("GET", "/api/v1/users", 200, "127.0.0.1") in paths
    assert all(isinstance(e["duration_ms"], float | int) for e in access)


# --- the store goes away and comes back --------------------------------------------------------


def test_while_postgresql_is_down_every_route_answers_503_and_then_recovers(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    with PostgresServer() as postgres:  # its own cluster: the shared one stays up
        node = start(
            tmp_path,
            "pg",
            SESSIOND_DATABASE_URL=postgres.new_database(),
            SESSIOND_ADMIN_PASSWORD="Adm1n-pass",
            # Every request reads the version: no cached answer hides the outage.
            SESSIOND_CONFIGURATION_POLL_INTERVAL="0",
        )
        servers.append(node)
        url = node.url
        token = token_of(open_session(url, "admin", "Adm1n-pass"))
        headers = {"Tessa-Session": token}

        def requests() -> dict[str, httpx.Response]:
            return {
                "health": httpx.get(f"{url}/api/v1/health"),
                "open": open_session(url, "admin", "Adm1n-pass"),
                "current": httpx.get(f"{url}/api/v1/sessions/current", headers=headers),
                "users": httpx.get(f"{url}/api/v1/users", headers=headers),
                "configuration": httpx.get(f"{url}/api/v1/configuration", headers=headers),
                "ready": httpx.get(f"{url}/api/v1/health/ready"),
            }

        postgres.halt()
        for name, answer in requests().items():
            assert answer.status_code == 503, (name, answer.text)
            assert answer.headers["content-type"] == "application/json", name
            assert answer.json()["error"]["code"] == "service_unavailable", name
            assert answer.headers["Tessa-Configuration-Version"] == "1", name
            assert answer.headers["Tessa-Server-Version"] == __version__, name
        live = httpx.get(f"{url}/api/v1/health/live")
        assert (live.status_code, live.headers["Tessa-Configuration-Version"]) == (200, "1")
        assert value(scrape(url), "sessiond_store_up") == 0
        assert "Traceback" not in node.log_path.read_text()

        postgres.start()
        assert node.process is not None and node.process.poll() is None  # never restarted
        for name, answer in requests().items():
            assert answer.status_code == 200, (name, answer.text)
        assert value(scrape(url), "sessiond_store_up") == 1
        node.stop()


STALL_BOUND = 15.0  # generous: the health check waits 2 s for the store, however busy the machine


def _cluster_processes(postgres: PostgresServer) -> list[int]:
    """The postmaster of ``postgres`` and every process it started."""
    postmaster = int(Path(postgres.data, "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [*children, postmaster]


def test_health_asks_the_store_at_every_call(tmp_path: Path, servers: list[ServerProcess]) -> None:
    """GET /api/v1/health answers 503 as soon as PostgreSQL is down or frozen, whatever the
    configuration poll interval; before, it answered 200 "ok" from the remembered version for
    up to that interval (here 30 s), and at once while the database was frozen."""
    with PostgresServer() as postgres:  # its own cluster: the shared one stays up
        node = start(
            tmp_path,
            "pg",
            SESSIOND_DATABASE_URL=postgres.new_database(),
            SESSIOND_CONFIGURATION_POLL_INTERVAL="30",
        )
        servers.append(node)
        health = f"{node.url}/api/v1/health"
        assert httpx.get(health, timeout=30).json() == {"Status": "ok", "ConfigurationVersion": 1}

        postgres.halt()
        down = httpx.get(health, timeout=30)
        assert down.status_code == 503, down.text
        error = down.json()["error"]
        assert (error["code"], error["details"]) == (
            "service_unavailable",
            {"reason": "store_unreachable"},
        )
        assert httpx.get(f"{node.url}/api/v1/health/live").status_code == 200
        postgres.start()
        assert httpx.get(health, timeout=30).status_code == 200

        frozen = _cluster_processes(postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            stalled = httpx.get(health, timeout=30)
            took = time.monotonic() - started
        finally:
            for pid in reversed(frozen):
                os.kill(pid, signal.SIGCONT)
        assert stalled.status_code == 503, stalled.text
        assert stalled.json()["error"]["details"] == {"reason": "store_unreachable"}
        assert took < STALL_BOUND  # answered, not stuck with the database
        assert httpx.get(health, timeout=30).status_code == 200
        node.stop()


# --- start-up --------------------------------------------------------------------------------


def _serve(cwd: Path, port: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", "serve", "--port", str(port)],
        cwd=cwd,
        env=server_env(cwd / "sessiond-data", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_port_in_use_ends_the_start_with_one_line_and_status_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(tmp_path, port)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} is in use" in lines[0]
    assert "port setting (--port" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "listening" not in result.stdout
    assert not (tmp_path / "sessiond-data").exists()  # the store was never touched


def test_listening_is_said_only_once_connections_are_accepted(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sessiond", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=server_env(tmp_path / "sessiond-data"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("sessiond listening on"):
                assert line.split()[3] == f"http://127.0.0.1:{port}"
                # At the moment it says so, a connection is accepted and answered.
                with socket.create_connection(("127.0.0.1", port), timeout=10):
                    pass
                live = httpx.get(f"http://127.0.0.1:{port}/api/v1/health/live")
                assert live.status_code == 200
                break
        else:
            pytest.fail("sessiond ended without saying it listens")
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(10)


def test_the_database_password_is_never_shown(
    tmp_path: Path, servers: list[ServerProcess], postgres_server: PostgresServer
) -> None:
    secret = "Pg-Secret-5e1d"
    plain = postgres_server.new_database()  # trust authentication: any password will do
    with_password = plain.replace("://sessiond@", f"://sessiond:{secret}@", 1)
    assert secret in with_password
    node = start(tmp_path, "pg", SESSIOND_DATABASE_URL=with_password, SESSIOND_ACCESS_LOG="true")
    servers.append(node)
    assert httpx.get(f"{node.url}/api/v1/health").status_code == 200
    node.stop()
    output = node.log_path.read_text()
    assert "sessiond listening on" in output
    assert "sessiond:***@" in output
    assert secret not in output

    # A store that cannot be reached at start: one error line, no traceback, no password.
    unreachable = f"postgresql+asyncpg://sessiond:{secret}@127.0.0.1:{free_port()}/nothing"
    result = _serve(tmp_path / "pg", free_port(), SESSIOND_DATABASE_URL=unreachable)
    assert result.returncode != 0
    assert "error [service_unavailable]" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr


# --- the API page ----------------------------------------------------------------------------


def test_the_api_page_loads_nothing_from_other_servers(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/api/v1/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    for found in re.findall(r"https?://[^\s\"'<>)]+", html):
        assert urlsplit(found).netloc == urlsplit(server.url).netloc, found
    named = re.findall(r"(?:src|href)=\"([^\"]+)\"", html) + re.findall(r"url: '([^']+)'", html)
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png", "json": "json"}
    assert {name.rsplit(".", 1)[-1] for name in named} == set(kinds)
    for name in named:
        answer = httpx.get(urljoin(f"{server.url}/api/v1/docs", name))
        assert answer.status_code == 200, name
        assert kinds[name.rsplit(".", 1)[-1]] in answer.headers["content-type"], name
    [script] = [name for name in named if name.endswith(".js")]
    assert "SwaggerUIBundle" in httpx.get(urljoin(server.url, script)).text
    missing = httpx.get(f"{server.url}/api/v1/docs/static/index.html")
    assert missing.status_code == 404


def test_the_api_page_works_under_its_policy_and_cannot_be_framed(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/api/v1/docs")
    policy = {
        part.strip().split(" ", 1)[0]: part.strip()
        for part in page.headers["content-security-policy"].split(";")
    }
    assert policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert policy["default-src"] == "default-src 'none'"
    assert "'unsafe-eval'" not in policy["script-src"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = chromium.new_page()
            refused: list[str] = []
            tab.on("console", lambda m: refused.append(m.text) if "Refused" in m.text else None)
            tab.add_init_script(
                "window.__violations = [];"
                "document.addEventListener('securitypolicyviolation',"
                " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            tab.goto(f"{server.url}/api/v1/docs")
            expect(tab.locator(".swagger-ui .info .title")).to_contain_text("sessiond")
            expect(tab.locator(".opblock").first).to_be_visible()
            tab.locator(".opblock-summary").first.click()  # an operation opens
            expect(tab.locator(".opblock-body").first).to_be_visible()
            assert tab.evaluate("window.__violations") == []
            assert refused == []
        finally:
            chromium.close()
