"""An operator's first hour, against real ``sessiond serve`` processes: metrics, liveness and
readiness, logs that keep secrets out, 503s while PostgreSQL is down and recovery after it,
a clean refusal of a port in use, and an API page that needs no other server."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
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
    assert moved(signed_in, login_type="Platform", outcome="opened") == 3
    assert moved(signed_in, login_type="Platform", outcome="invalid_credentials") == 1
    assert moved(signed_in, login_type="unknown", outcome="invalid_credentials") == 1
    validated = "sessiond_validations_total"
    assert moved(validated, outcome="ok") == 3  # current, the admin close, the increment
    assert moved(validated, outcome="token_invalid") == 1
    assert moved(validated, outcome="session_not_found") == 1
    assert moved("sessiond_sessions_closed_total", by="user") == 1
    assert moved("sessiond_sessions_closed_total", by="admin") == 1
    assert moved("sessiond_open_sessions", license_type="ConcurrentClient") == 1
    hashed = "sessiond_password_hash_seconds_count"
    assert moved(hashed, operation="verify") == 4  # three right passwords, one wrong
    assert moved(hashed, operation="decoy") == 1  # the unknown login
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
