"""Connections of a real ``sessiond serve``: a body that trickles in is cut at
``request_body_timeout`` while others are served, the connection limits answer a connection
over them as it opens, and the open-files limit is checked at start."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ServerProcess, start_server

BODY_TIMEOUT = 3.0  # seconds, the slow-body server's request_body_timeout
MARGIN = 12.0  # generous: a cut must come this long after the body limit at the latest
SLOW_CONNECTIONS = 1000
SLOW_SOURCES = 10  # loopback addresses the slow connections come from (127.0.0.2 ...)
STALL_BOUND = 15.0  # generous: health and sign-in answer within it, however busy the server


def _raise_open_files(needed: int) -> None:
    """This process's soft RLIMIT_NOFILE up to ``needed`` (within the hard limit); the servers
    it starts inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, "raise the hard limit"


@pytest.fixture(scope="module")
def slow_bodies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that gives a request body three seconds to arrive."""
    _raise_open_files(2 * SLOW_CONNECTIONS + 500)
    proc = start_server(
        tmp_path_factory.mktemp("slow-bodies"), SESSIOND_REQUEST_BODY_TIMEOUT=str(BODY_TIMEOUT)
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that holds 12 connections at most, 4 per address."""
    proc = start_server(
        tmp_path_factory.mktemp("limited"),
        SESSIOND_MAX_CONNECTIONS="12",
        SESSIOND_MAX_CONNECTIONS_PER_ADDRESS="4",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def behind_a_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """2 connections per address, except from the trusted proxy 127.0.0.2."""
    proc = start_server(
        tmp_path_factory.mktemp("behind-a-proxy"),
        SESSIOND_MAX_CONNECTIONS_PER_ADDRESS="2",
        SESSIOND_TRUSTED_PROXIES='["127.0.0.2/32"]',
    )
    yield proc
    proc.stop()


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, json.loads(body) if body else None


# --- 1. slow bodies --------------------------------------------------------------------------


async def _trickle(port: int, source: str, give_up: float) -> tuple[float, bytes]:
    """POST a sign-in whose body never completes: its head and then one byte a second, until
    the server answers or closes, or ``give_up`` seconds pass. Returns when the server acted
    (seconds after the head was sent; ``inf`` if it never did) and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(
        b"POST /api/v1/sessions/open HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"
    )
    sent = time.monotonic()
    received = b""
    try:
        while time.monotonic() - sent < give_up:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=1.0)
            except TimeoutError:
                writer.write(b" ")  # one more byte of the body, a second after the last
                continue
            if not chunk:
                return time.monotonic() - sent, received  # closed
            received += chunk
            if b"\r\n\r\n" in received:
                # An answer; read it to the end (the server closes after it).
                while chunk:
                    chunk = await asyncio.wait_for(reader.read(65536), timeout=MARGIN)
                    received += chunk
                return time.monotonic() - sent, received
        return float("inf"), received
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - sent, received
    finally:
        writer.close()


async def _while_trickling(server: ServerProcess) -> tuple[list[tuple[float, bytes]], list[float]]:
    sources = [f"127.0.0.{2 + i % SLOW_SOURCES}" for i in range(SLOW_CONNECTIONS)]
    give_up = BODY_TIMEOUT + MARGIN + 5
    slow = asyncio.gather(*(_trickle(server.port, source, give_up) for source in sources))
    answered: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=STALL_BOUND + 30) as client:
        await asyncio.sleep(BODY_TIMEOUT / 2)  # the slow connections are open and waiting
        for _ in range(3):
            started = time.monotonic()
            live = await client.get("/api/v1/health/live")
            assert live.status_code == 200, live.text
            signed_in = await client.post(
                "/api/v1/sessions/open",
                json={"Login": "admin", "Password": server.admin_password},
            )
            assert signed_in.status_code == 200, signed_in.text
            answered.append(time.monotonic() - started)
            await asyncio.sleep(0.5)
    return await slow, answered


def test_slow_bodies_are_cut_while_others_are_served(slow_bodies: ServerProcess) -> None:
    results, answered = asyncio.run(_while_trickling(slow_bodies))
    # Health and an administrator's sign-in answered, each pair well within the bound.
    assert max(answered) < STALL_BOUND, answered
    # Every slow connection got its 408 within the body limit and a margin.
    late = [took for took, _ in results if took > BODY_TIMEOUT + MARGIN]
    assert not late, f"{len(late)} slow bodies were not cut in time: {sorted(late)[:5]}"
    for _, raw in results:
        status, headers, body = _answer(raw)
        assert status == 408, raw[:200]
        assert headers["connection"] == "close"
        assert body["error"]["code"] == "request_timeout"
        assert f"within {BODY_TIMEOUT:g} s" in body["error"]["message"]
    # The application behind saw each as a client that left, with no error in the log.
    log = slow_bodies.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def test_a_body_that_arrives_in_pieces_in_time_is_accepted(slow_bodies: ServerProcess) -> None:
    body = json.dumps({"Login": "admin", "Password": slow_bodies.admin_password}).encode()
    head = (
        b"POST /api/v1/sessions/open HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", slow_bodies.port), timeout=30) as sock:
        sock.sendall(head)
        for piece in (body[:10], body[10:]):
            time.sleep(BODY_TIMEOUT / 3)
            sock.sendall(piece)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, _, answer = _answer(raw)
    assert status == 200, answer
    assert "Token" in answer


def test_a_body_still_trickling_after_an_early_answer_is_cut(slow_bodies: ServerProcess) -> None:
    # Over 64 KiB by Content-Length: answered 413 at once, before the body; the connection
    # stays open for the body to be read and dropped, but not for longer than the body limit.
    with socket.create_connection(("127.0.0.1", slow_bodies.port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/sessions/open HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 70000\r\n\r\n{"
        )
        sent = time.monotonic()
        sock.settimeout(1.0)
        raw = b""
        while time.monotonic() - sent < BODY_TIMEOUT + MARGIN:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                sock.sendall(b" ")
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            raw += chunk
        took = time.monotonic() - sent
    status, _, body = _answer(raw)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert took < BODY_TIMEOUT + MARGIN, "the connection was held past the body limit"


# --- 2. connection limits --------------------------------------------------------------------


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return sock


def _get(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """GET /api/v1/health/live on ``sock`` (Connection: close) and read the answer."""
    try:
        sock.sendall(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        raw += chunk
    return _answer(raw)


def _wait_for_room(port: int, source: str) -> tuple[int, dict[str, str], Any]:
    """A new connection's answer, once the server has seen closed ones go (bounded)."""
    deadline = time.monotonic() + STALL_BOUND
    while True:
        with _connect(port, source) as sock:
            answer = _get(sock)
        if answer[0] == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_a_connection_over_the_per_address_limit_is_answered_429(limited: ServerProcess) -> None:
    held = [_connect(limited.port, "127.0.0.2") for _ in range(4)]
    try:
        with _connect(limited.port, "127.0.0.2") as sock:
            status, headers, body = _get(sock)
        assert status == 429
        assert headers["retry-after"] == "5"
        assert headers["connection"] == "close"
        assert body["error"]["code"] == "too_many_connections"
        assert "(4)" in body["error"]["message"]
        # Another address is not held back by this one.
        with _connect(limited.port, "127.0.0.3") as sock:
            assert _get(sock)[0] == 200
    finally:
        held.pop().close()
    try:
        # One closed: room for one more from that address.
        assert _wait_for_room(limited.port, "127.0.0.2")[0] == 200
    finally:
        for sock in held:
            sock.close()
    assert "refused 1 connection(s) for a connection limit" in limited.log_path.read_text()


def test_a_connection_over_the_total_is_answered_503(limited: ServerProcess) -> None:
    held = [_connect(limited.port, f"127.0.1.{1 + i % 4}") for i in range(12)]
    try:
        with _connect(limited.port, "127.0.1.9") as sock:
            status, headers, body = _get(sock)
        assert status == 503
        assert headers["retry-after"] == "5"
        assert body["error"]["code"] == "server_busy"
        assert "(12)" in body["error"]["message"]
    finally:
        for sock in held:
            sock.close()
    assert _wait_for_room(limited.port, "127.0.1.9")[0] == 200
    # Within 10 s of the line before, the refusal is counted into the next line, which comes
    # when the 10 s are over, even with no refusal after it.
    deadline = time.monotonic() + 10 + STALL_BOUND
    while "latest from 127.0.1.9: 503 server_busy" not in _last_refusal_line(limited):
        assert time.monotonic() < deadline, "no line for the refusals since the last one"
        time.sleep(0.5)


def _last_refusal_line(proc: ServerProcess) -> str:
    lines = proc.log_path.read_text().splitlines()
    return ([line for line in lines if "for a connection limit" in line] or [""])[-1]


def test_a_trusted_proxy_counts_against_the_total_only(behind_a_proxy: ServerProcess) -> None:
    held = [_connect(behind_a_proxy.port, "127.0.0.2") for _ in range(4)]
    try:
        with _connect(behind_a_proxy.port, "127.0.0.2") as sock:
            assert _get(sock)[0] == 200
        # A header naming another client does not lift an ordinary address's limit.
        others = [_connect(behind_a_proxy.port, "127.0.0.3") for _ in range(2)]
        try:
            with _connect(behind_a_proxy.port, "127.0.0.3") as sock:
                sock.sendall(
                    b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n"
                    b"X-Forwarded-For: 192.0.2.1\r\nConnection: close\r\n\r\n"
                )
                assert _get(sock)[0] == 429
        finally:
            for sock in others:
                sock.close()
    finally:
        for sock in held:
            sock.close()


# --- 3. the open-files limit -----------------------------------------------------------------


def _limits_of(proc: ServerProcess) -> tuple[int, int]:
    assert proc.process is not None
    text = Path(f"/proc/{proc.process.pid}/limits").read_text()
    found = re.search(r"Max open files\s+(\d+)\s+(\d+)", text)
    assert found, text
    return int(found.group(1)), int(found.group(2))


def test_a_low_soft_open_files_limit_is_raised_atstart_server(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 8192, "the test needs a hard open-files limit of 8192 or more"
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        proc = start_server(tmp_path, SESSIOND_MAX_CONNECTIONS="4096")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert _limits_of(proc) == (hard, hard)
        log = proc.log_path.read_text()
        assert f"raised the open files limit (RLIMIT_NOFILE) from 1024 to {hard}" in log
        assert "below the" not in log
    finally:
        proc.stop()


def test_an_open_files_limit_below_max_connections_is_a_warning(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard != resource.RLIM_INFINITY
    proc = start_server(tmp_path, SESSIOND_MAX_CONNECTIONS=str(hard))
    try:
        warnings = [
            line
            for line in proc.log_path.read_text().splitlines()
            if "the open files limit (RLIMIT_NOFILE) is" in line
        ]
        assert len(warnings) == 1, warnings
        assert f"is {hard}, below the {hard + 10 + 128} that max_connections" in warnings[0]
        assert "LimitNOFILE=" in warnings[0]
        # It still serves.
        assert httpx.get(f"{proc.url}/api/v1/health/live").status_code == 200
    finally:
        proc.stop()


def test_the_systemd_unit_gives_the_default_limits_their_open_files() -> None:
    from sessiond.server.connections import open_files_needed
    from sessiond.settings import Settings

    unit = (Path(__file__).parents[1] / "deploy" / "sessiond.service").read_text()
    found = re.search(r"^LimitNOFILE=(\d+)$", unit, re.M)
    assert found, "the unit sets no LimitNOFILE"
    assert int(found.group(1)) >= open_files_needed(Settings())
    containerfile = (Path(__file__).parents[1] / "deploy" / "Containerfile").read_text()
    found = re.search(r"--ulimit nofile=(\d+):(\d+)", containerfile)
    assert found, "the container's run line sets no open-files limit"
    assert int(found.group(1)) >= open_files_needed(Settings())
