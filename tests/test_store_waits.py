"""A frozen PostgreSQL holds no request past the store's timeouts (docs/multi-node.md, "Timeouts").

The cluster is this module's own (the session's shared one stays untouched): its postmaster and
every backend are stopped with SIGSTOP, so that its port still accepts connections and nothing
answers, as when the database's machine freezes or the network drops packets. A real ``sessiond
serve`` on it, with short timeouts, answers validation, sign-in, an administrator's route and
readiness ``503 service_unavailable`` within its bounds (and ``/metrics`` says the store is
down), and, once the cluster runs again, answers them ``200`` without a restart. The cluster is
always resumed, and answering, before a test ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.infra.postgres import PostgresServer

from .conftest import ServerProcess, free_port, server_env

PASSWORD = "Adm1n-pass"
POOL, CONNECT, STATEMENT = 2.0, 1.0, 2.0
#: The most a request that needs the database may take (pool + connect + statement timeouts),
#: with room for a loaded machine; the old code waited for as long as the freeze lasted.
BOUND = POOL + CONNECT + STATEMENT + 5.0
#: Readiness is documented to answer within 5 s.
READY_BOUND = 5.0 + 3.0
#: Long enough that a request that waits for the database to come back cannot pass.
CLIENT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def node(
    cluster: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("waits")
    data_dir = root / "sessiond-data"
    env = server_env(
        data_dir,
        SESSIOND_DATABASE_URL=cluster.new_database(),
        SESSIOND_ADMIN_PASSWORD=PASSWORD,
        SESSIOND_DATABASE_CONNECTIONS="5",
        SESSIOND_DATABASE_POOL_TIMEOUT=str(POOL),
        SESSIOND_DATABASE_CONNECT_TIMEOUT=str(CONNECT),
        SESSIOND_DATABASE_STATEMENT_TIMEOUT=str(STATEMENT),
    )
    process = ServerProcess(data_dir, free_port(), env, Path(root / "server.log"))
    process.start()
    yield process
    process.stop()


def _sign_in(url: str) -> str:
    answer = httpx.post(
        f"{url}/api/v1/sessions/open", json={"Login": "admin", "Password": PASSWORD}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["AuthToken"]
    return token


async def _timed(
    http: httpx.AsyncClient, name: str, method: str, path: str, **kwargs: object
) -> tuple[str, float, httpx.Response | Exception]:
    started = time.monotonic()
    try:
        answer: httpx.Response | Exception = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:  # it waited for the database: the old behaviour
        answer = exc
    return name, time.monotonic() - started, answer


async def _all_routes(url: str, token: str, copies: int) -> list[tuple[str, float, object]]:
    """Validations, sign-ins, the user list and readiness, ``copies`` of each at once."""
    headers = {"Tessa-Session": token}
    sign_in = {"Login": "admin", "Password": PASSWORD}
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as http:
        requests = []
        for _ in range(copies):
            requests += [
                _timed(http, "validation", "GET", "/api/v1/sessions/current", headers=headers),
                _timed(http, "sign-in", "POST", "/api/v1/sessions/open", json=sign_in),
                _timed(http, "users", "GET", "/api/v1/users", headers=headers),
                _timed(http, "ready", "GET", "/api/v1/health/ready"),
            ]
        return list(await asyncio.gather(*requests))


def _assert_refused_in_time(answers: list[tuple[str, float, object]]) -> None:
    import sys

    for n, t, a in answers:
        print(n, round(t, 2), getattr(a, "text", a), file=sys.stderr)
    for name, took, answer in answers:
        assert isinstance(answer, httpx.Response), f"{name}: no answer in {took:.1f} s: {answer!r}"
        assert answer.status_code == 503, (name, answer.text)
        assert answer.json()["error"]["code"] == "service_unavailable", (name, answer.text)
        bound = READY_BOUND if name == "ready" else BOUND
        assert took < bound, f"{name} took {took:.1f} s (bound {bound} s)"


def test_a_frozen_database_is_answered_503_within_the_timeouts_then_200_again(
    cluster: PostgresServer, node: ServerProcess
) -> None:
    token = _sign_in(node.url)
    assert _answers_200(node.url, token)

    with cluster.frozen():
        # Several at once: they take every connection the pools have, and more wait for one.
        _assert_refused_in_time(asyncio.run(_all_routes(node.url, token, copies=4)))
        # Again, on the connections opened since (or waiting to be): still bounded.
        _assert_refused_in_time(asyncio.run(_all_routes(node.url, token, copies=1)))
        started = time.monotonic()
        scraped = httpx.get(f"{node.url}/metrics", timeout=CLIENT_TIMEOUT)
        assert time.monotonic() - started < BOUND
        assert scraped.status_code == 200
        assert "\nsessiond_store_up 0.0\n" in scraped.text

    assert node.process is not None and node.process.poll() is None  # never restarted
    assert _answers_200(node.url, token)
    assert "Traceback" not in node.log_path.read_text()


def _answers_200(url: str, token: str) -> bool:
    answers = asyncio.run(_all_routes(url, token, copies=1))
    for name, _took, answer in answers:
        assert isinstance(answer, httpx.Response), (name, answer)
        assert answer.status_code == 200, (name, answer.text)
    return True
