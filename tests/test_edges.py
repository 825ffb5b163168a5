"""The HTTP edges of a real ``sessiond serve``: client addresses, limits on the request head,
headers sent twice, trailing slashes, base64 sign-in, and the CSV audit export."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond import exports
from sessiond.token import SessionToken

from .conftest import ServerProcess, start_server

SOCKET_TIMEOUT = 15.0  # generous: an answer must come long before it


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that believes X-Forwarded-For from loopback."""
    proc = start_server(
        tmp_path_factory.mktemp("proxied"), SESSIOND_TRUSTED_PROXIES='["127.0.0.1/32"]'
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Like ``proxied``, with sessions that expire one second after they open."""
    proc = start_server(
        tmp_path_factory.mktemp("short"),
        SESSIOND_TRUSTED_PROXIES='["127.0.0.1/32"]',
        SESSIOND_SESSION_EXPIRATION_TIME_SPAN="1s",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that gives a request head one second to arrive."""
    proc = start_server(tmp_path_factory.mktemp("impatient"), SESSIOND_REQUEST_HEAD_TIMEOUT="1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def small_heads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the smallest limit on the request head there is: 1024 bytes."""
    proc = start_server(tmp_path_factory.mktemp("small"), SESSIOND_MAX_REQUEST_HEAD_BYTES="1024")
    yield proc
    proc.stop()


def _sign_in(server: ServerProcess, headers: Any = None, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/sessions/open",
        json={"Login": "admin", "Password": server.admin_password, **body},
        headers=headers,
        timeout=30,
    )


def _audit(server: ServerProcess) -> list[dict[str, Any]]:
    result = server.cli("audit", "export")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _login_address(server: ServerProcess, token: SessionToken) -> str:
    (record,) = [
        r
        for r in _audit(server)
        if r["action"] == "Login" and r["session_id"] == str(token.session_id)
    ]
    return str(record["client_address"])


def _signed_in_from(server: ServerProcess, headers: Any) -> tuple[str | None, str]:
    """HostIP of the token and client_address of its Login record."""
    response = _sign_in(server, headers)
    assert response.status_code == 200, response.text
    token = SessionToken.from_xml(response.json()["Token"])
    return token.host_ip, _login_address(server, token)


# --- 1. client addresses ---------------------------------------------------------------------


def test_a_loopback_caller_cannot_name_its_own_address(server: ServerProcess) -> None:
    # By default no proxy is trusted: neither uvicorn nor sessiond believes the header.
    assert _signed_in_from(server, {"X-Forwarded-For": "203.0.113.9"}) == (
        "127.0.0.1",
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("lines", "client"),
    [
        (["203.0.113.9"], "203.0.113.9"),
        # the right-most address that is not a trusted proxy
        (["198.51.100.7, 203.0.113.9"], "203.0.113.9"),
        (["203.0.113.9, 127.0.0.1"], "203.0.113.9"),
        # several header lines are one list, in order
        (["203.0.113.9", "198.51.100.7"], "198.51.100.7"),
        (["198.51.100.7", "203.0.113.9, 127.0.0.1"], "203.0.113.9"),
        (["203.0.113.9 ,  2001:db8:0::1"], "2001:db8::1"),
        # anything that is not an IP address makes the whole header unbelievable
        (["evil, 1.2.3.4"], "127.0.0.1"),
        (["not-an-ip"], "127.0.0.1"),
        (["1.2.3.4:80"], "127.0.0.1"),
        (["1.2.3.4", "<script>"], "127.0.0.1"),
    ],
)
def test_a_trusted_proxy_names_the_client_with_ip_addresses_only(
    proxied: ServerProcess, lines: list[str], client: str
) -> None:
    headers = [("X-Forwarded-For", line) for line in lines]
    assert _signed_in_from(proxied, headers) == (client, client)


def test_every_route_reads_the_same_settled_address(proxied: ServerProcess) -> None:
    response = _sign_in(proxied)
    assert response.status_code == 200, response.text
    token = SessionToken.from_xml(response.json()["Token"])
    closed = httpx.post(
        f"{proxied.url}/api/v1/sessions/close",
        headers={"Tessa-Session": response.json()["AuthToken"], "X-Forwarded-For": "192.0.2.44"},
    )
    assert closed.status_code == 200 and closed.json() == {"Closed": True}
    (logout,) = [
        r
        for r in _audit(proxied)
        if r["action"] == "Logout" and r["session_id"] == str(token.session_id)
    ]
    assert logout["client_address"] == "192.0.2.44"


def test_the_validation_handler_reads_the_same_settled_address(short_lived: ServerProcess) -> None:
    # GET /sessions/current is served in front of FastAPI; the address it hands the service
    # shows in the SessionExpired record it writes for a session past its lifetime.
    response = _sign_in(short_lived)
    assert response.status_code == 200, response.text
    token = SessionToken.from_xml(response.json()["Token"])
    time.sleep(2)  # the lifetime is 1 s
    expired = httpx.get(
        f"{short_lived.url}/api/v1/sessions/current",
        headers={"Tessa-Session": response.json()["AuthToken"], "X-Forwarded-For": "192.0.2.45"},
    )
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "session_expired"
    (record,) = [
        r
        for r in _audit(short_lived)
        if r["action"] == "SessionExpired" and r["session_id"] == str(token.session_id)
    ]
    assert record["client_address"] == "192.0.2.45"


# --- 2. limits on the request head -----------------------------------------------------------


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading once it has refused
        return _read_to_end(sock)


def _read_to_end(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, json.loads(body) if body else None


def _memory_kb(server: ServerProcess) -> dict[str, int]:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def _get_with_header(name: str, value: bytes) -> bytes:
    return (
        b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + name.encode()
        + b": "
        + value
        + b"\r\n\r\n"
    )


def test_a_huge_header_is_refused_431_without_being_buffered(server: ServerProcess) -> None:
    before = _memory_kb(server)
    for _ in range(5):
        status, headers, body = _answer(
            _exchange(server.port, _get_with_header("X-Big", b"a" * 1024 * 1024))
        )
        assert status == 431
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert body["error"]["code"] == "request_head_too_large"
        assert "65536 bytes" in body["error"]["message"]
    # Far more than any limit: the server reads on past it, but holds none of it.
    _exchange(server.port, _get_with_header("X-Bigger", b"b" * 48 * 1024 * 1024))
    after = _memory_kb(server)
    assert after["VmRSS"] - before["VmRSS"] < 20 * 1024
    assert after["VmHWM"] - before["VmHWM"] < 20 * 1024  # not even for a moment
    assert httpx.get(f"{server.url}/api/v1/health").status_code == 200


def _head_of(size: int, close: bool = True) -> bytes:
    """A GET /api/v1/health head of exactly ``size`` bytes."""
    start = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if close:
        start += b"Connection: close\r\n"
    head = start + b"X-Pad: " + b"p" * (size - len(start) - len(b"X-Pad: \r\n\r\n")) + b"\r\n\r\n"
    assert len(head) == size
    return head


def test_the_head_limit_is_exact_and_counts_each_request_alone(small_heads: ServerProcess) -> None:
    status, _, _ = _answer(_exchange(small_heads.port, _head_of(1024)))
    assert status == 200
    status, _, body = _answer(_exchange(small_heads.port, _head_of(1025)))
    assert status == 431 and "1024 bytes" in body["error"]["message"]
    # Two heads of 700 bytes sent at once (pipelined): each is under the limit.
    both = _exchange(small_heads.port, _head_of(700, close=False) + _head_of(700))
    assert both.count(b"HTTP/1.1 200 OK\r\n") == 2


def test_a_kerberos_sized_authorization_header_is_accepted(server: ServerProcess) -> None:
    ticket = base64.b64encode(bytes(30_000)).decode()  # 40 000 characters
    response = httpx.get(
        f"{server.url}/api/v1/health", headers={"Authorization": f"Negotiate {ticket}"}
    )
    assert response.status_code == 200, response.text
    windows = httpx.post(
        f"{server.url}/api/v1/sessions/open-windows",
        headers={"Authorization": f"Negotiate {ticket}"},
    )
    assert windows.status_code != 431
    assert windows.json()["error"]["code"] == "not_configured"


def test_a_head_that_stalls_is_answered_408(impatient: ServerProcess) -> None:
    for partial in (b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b""):
        status, headers, body = _answer(_exchange(impatient.port, partial))
        assert status == 408
        assert headers["connection"] == "close"
        assert body["error"]["code"] == "request_timeout"
    assert httpx.get(f"{impatient.url}/api/v1/health").status_code == 200


def test_a_slow_answer_is_not_a_slow_head(impatient: ServerProcess) -> None:
    # A long poll keeps the connection quiet for longer than the head timeout, after its head.
    response = _sign_in(impatient)
    assert response.status_code == 200, response.text
    with httpx.Client(headers={"Tessa-Session": response.json()["AuthToken"]}) as client:
        version = client.get(f"{impatient.url}/api/v1/configuration").json()["Version"]
        waited = client.get(
            f"{impatient.url}/api/v1/configuration/changes",
            params={"after": version, "wait": 2},
        )
        assert waited.status_code == 200 and waited.json() == {"Version": version, "Changed": False}
        # and the same connection serves the next request
        assert client.get(f"{impatient.url}/api/v1/health").status_code == 200


# --- 3. Tessa-Session once -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/sessions/current"),
        ("POST", "/api/v1/sessions/close"),
        ("GET", "/api/v1/configuration"),
    ],
)
def test_a_repeated_session_header_is_refused_on_every_route(
    server: ServerProcess, method: str, path: str
) -> None:
    signed_in = _sign_in(server)
    assert signed_in.status_code == 200, signed_in.text
    auth = signed_in.json()["AuthToken"]
    twice = httpx.request(
        method, server.url + path, headers=[("Tessa-Session", auth), ("Tessa-Session", auth)]
    )
    assert twice.status_code == 400, twice.text
    assert twice.json()["error"]["code"] == "header_repeated"
    assert "Tessa-Session" in twice.json()["error"]["message"]
    assert "Tessa-Configuration-Version" in twice.headers
    once = httpx.request(method, server.url + path, headers=[("Tessa-Session", auth)])
    assert once.status_code == 200, once.text


def test_a_repeated_authorization_header_is_refused(server: ServerProcess) -> None:
    twice = httpx.post(
        f"{server.url}/api/v1/sessions/open-windows",
        headers=[("Authorization", "Negotiate YQ=="), ("Authorization", "Negotiate Yg==")],
    )
    assert twice.status_code == 400
    assert twice.json()["error"]["code"] == "header_repeated"
    assert "Authorization" in twice.json()["error"]["message"]


def test_the_validation_route_stays_in_the_openapi_document(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    operation = doc["paths"]["/api/v1/sessions/current"]["get"]
    assert operation["security"] == [{"TessaSession": []}]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/SessionInfo"}
    assert "HostIP" in doc["components"]["schemas"]["SessionInfo"]["properties"]
    refused = operation["responses"]["401"]["content"]["application/json"]["schema"]
    assert refused == {"$ref": "#/components/schemas/ErrorBody"}
    assert "ErrorDetail" in doc["components"]["schemas"]


# --- 4. no redirect built from the Host header -----------------------------------------------


def test_a_trailing_slash_is_an_unknown_route_not_a_redirect(server: ServerProcess) -> None:
    for method, path in (("GET", "/api/v1/health/"), ("POST", "/api/v1/sessions/open/")):
        response = httpx.request(method, server.url + path, headers={"Host": "evil.example"})
        assert response.status_code == 404, response.text
        assert "location" not in response.headers
        assert response.json()["error"]["code"] == "no_such_route"


def test_no_console_page_redirects_to_the_host_header(server: ServerProcess) -> None:
    """A trailing slash was answered by a redirect to the Host header's server (a sign-in form
    re-sent there with its password): it is no page, and no answer names another server."""
    for method, path in (
        ("GET", "/console/sessions/"),
        ("GET", "/console/sign-in/"),
        ("POST", "/console/sign-in/"),
        ("GET", "/console/static/console.css/"),
    ):
        response = httpx.request(
            method, server.url + path, headers={"Host": "evil.example"}, data={"password": "x"}
        )
        assert response.status_code == 404, (path, response.status_code, response.headers)
        assert "location" not in response.headers
    for path in ("/console", "/console/", "/console/sessions"):
        response = httpx.get(server.url + path, headers={"Host": "evil.example"})
        location = response.headers.get("location", "/")
        assert location.startswith("/") and not location.startswith("//"), (path, location)


def test_a_json_body_that_repeats_a_key_is_refused(server: ServerProcess) -> None:
    """Python's JSON keeps the last of two equal keys; a proxy that keeps the first would see
    another request than sessiond acts on."""
    password = json.dumps(server.admin_password)
    for body in (
        '{"Login": "admin", "Password": "wrong", "Password": ' + password + "}",
        '{"Login": "nobody", "Login": "admin", "Password": ' + password + "}",
    ):
        for content_type in ("application/json", "application/json; charset=utf-8", None):
            headers = {"Content-Type": content_type} if content_type else {}
            refused = httpx.post(
                f"{server.url}/api/v1/sessions/open", content=body, headers=headers
            )
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "duplicate_key", error
            assert error["details"]["key"] in ("Login", "Password")
            assert "more than once" in error["message"]
    auth = _sign_in(server).json()["AuthToken"]
    nested = httpx.post(
        f"{server.url}/api/v1/users",
        content=b'{"Login": "twice", "Extra": {"a": 1, "a": 2}}',
        headers={"Tessa-Session": auth, "Content-Type": "application/json"},
    )
    assert nested.status_code == 400 and nested.json()["error"]["code"] == "duplicate_key"
    assert nested.json()["error"]["details"] == {"key": "a"}
    malformed = httpx.post(f"{server.url}/api/v1/sessions/open", content=b'{"Login": ')
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_request"


def _console_sign_in(
    server: ServerProcess, nonce: str, token: str, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/console/sign-in",
        data={"csrf": token, "login": "admin", "password": server.admin_password},
        headers={"Cookie": f"sessiond-console-signin={nonce}", **headers},
    )


def test_a_planted_sign_in_cookie_does_not_sign_a_browser_in(server: ServerProcess) -> None:
    """Login CSRF over plain HTTP: whoever can set a cookie for the host plants the sign-in
    cookie, and another site posts the console's sign-in form with the attacker's account and
    the planted value. The form's token must be the server's HMAC of the cookie: a value made
    up on both sides is refused, and nothing signs in."""
    planted = "A" * 43
    for token in (planted, "", f"k0.{planted}"):
        refused = _console_sign_in(server, planted, token)
        assert refused.status_code == 403, refused.text
        assert "CSRF" in refused.text
        assert "sessiond-console=" not in refused.headers.get("set-cookie", "")
    # A pair the server issued works — but not posted from another site (the browser says so).
    page = httpx.get(f"{server.url}/console/sign-in")
    nonce = page.cookies["sessiond-console-signin"]
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token and token.group(1) != nonce
    for site in ("cross-site", "same-site"):
        refused = _console_sign_in(server, nonce, token.group(1), **{"Sec-Fetch-Site": site})
        assert refused.status_code == 403, refused.text
    assert _console_sign_in(server, "B" * 43, token.group(1)).status_code == 403  # other cookie
    accepted = _console_sign_in(server, nonce, token.group(1), **{"Sec-Fetch-Site": "same-origin"})
    assert accepted.status_code == 303, accepted.text
    assert accepted.headers["set-cookie"].startswith("sessiond-console=")


def test_a_block_whose_end_is_past_is_refused_not_stored(server: ServerProcess) -> None:
    auth = _sign_in(server).json()["AuthToken"]
    with httpx.Client(base_url=server.url, headers={"Tessa-Session": auth}) as http:
        added = http.post("/api/v1/users", json={"Login": "past-block", "Password": "pw-1234"})
        assert added.status_code == 201, added.text
        for until in (0, "1970-01-01T00:00:00Z", "2001-01-01T00:00:00"):
            refused = http.post("/api/v1/users/past-block/block", json={"Until": until})
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert (
                error["code"] == "invalid_request" and error["details"]["rule"] == "block_end_past"
            )
            assert "not in the future" in error["message"]
        [user] = [u for u in http.get("/api/v1/users").json() if u["Login"] == "past-block"]
        assert user["Blocked"] is False and user["BlockedDueDate"] is None
        assert http.post("/api/v1/users/past-block/block", json={}).status_code == 200


# --- 5. base64 sign-in -----------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_base64_login_and_password_are_checked_after_decoding(server: ServerProcess) -> None:
    password = server.admin_password
    for login, secret in (("admin\x00", password), ("admin", password + "\x1b"), ("\x7f", "x")):
        refused = _sign_in(
            server, Login=_b64(login), Password=_b64(secret), LoginAndPasswordAreBase64=True
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_request"
        assert "control characters" in refused.json()["error"]["message"]
    accepted = _sign_in(
        server, Login=_b64("admin"), Password=_b64(password), LoginAndPasswordAreBase64=True
    )
    assert accepted.status_code == 200, accepted.text


# --- 6. the CSV audit export -----------------------------------------------------------------


def test_csv_export_neutralises_formulas_and_json_lines_stay_exact(server: ServerProcess) -> None:
    names = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tTab"]
    # What a spreadsheet trims or folds before it parses a cell (OWASP, "CSV injection").
    names += [" =1+1", "\u00a0=1+1", "\u200b@SUM(A1)", "\uff1d1+1", "\ufe622", "\u22123"]
    for name in names:
        failed = httpx.post(
            f"{server.url}/api/v1/sessions/open", json={"Login": name, "Password": "wrong"}
        )
        assert failed.status_code == 401, failed.text

    exact = {r["user_name"] for r in _audit(server) if r["action"] == "LoginFailed"}
    assert set(names) <= exact

    as_csv = server.cli("audit", "export", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    cells = {row["user_name"] for row in rows if row["action"] == "LoginFailed"}
    assert {"'" + name for name in names} <= cells
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)
    # everything else is untouched
    assert {row["action"] for row in rows} >= {"Login", "LoginFailed"}
    assert all(row["at"][:1].isdigit() for row in rows)


def test_csv_cells_that_start_like_a_formula_after_trimming_are_neutralised() -> None:
    for formula in (
        "=1+1", "+1", "-1", "@A1", "\t=1", "\r=1", "\n=1",
        " =1+1", "   +1", "\u00a0=1+1", "\u3000@A1", "\u200b=1", "\ufeff-1", "\u2007=1",
        "\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20A1", "\ufe661", "\ufe631", "\u22121",
        " \uff1d1", "\t",
    ):  # fmt: skip
        assert exports.csv_cell(formula) == "'" + formula, repr(formula)
    for text in ("plain", "a =1", "a-b", "", " ", "\u00a0", "ivanov@corp", "CORP\\ivanov", "1-2"):
        assert exports.csv_cell(text) == text, repr(text)
    assert exports.csv_cell(12) == 12
