"""The client's session manager keeps one session alive and replaces it when the server ends it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from sessiond import AsyncSessionClient, AsyncSessionManager, SessionClient, SessionManager
from sessiond.errors import SessionExpired, SessionNotFound
from sessiond.server.app import create_asgi
from sessiond.service import Actor, SessionService

from .conftest import Clock, ServerProcess

SYSTEM = Actor.system()


@pytest.fixture
async def app_client(make_service: Any) -> Any:
    """The real ASGI app and service (SQLite, controlled clock), reached in-process."""
    service: SessionService = await make_service(
        security={"session_inactivity_time": "30m"}, session_expiration_time_span="8h"
    )
    await service.users.add_user(SYSTEM, "uma", password="Uma-pw-1")
    app = create_asgi(service.settings, service)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    yield service, AsyncSessionClient("http://sessiond.test", http=http)
    await http.aclose()


async def test_the_manager_survives_inactivity_expiry_by_reopening(
    app_client: Any, clock: Clock
) -> None:
    _service, client = app_client
    events: list[tuple[str, Any]] = []
    manager = AsyncSessionManager(client, "uma", "Uma-pw-1")
    for event in ("opened", "expired", "closed"):
        manager.on(event, lambda *args, e=event: events.append((e, args)))
    first = await manager.start()
    assert manager.keepalive_interval(client.session_inactivity_time) == 600  # a third of 30 min
    clock.advance(minutes=20)
    await manager.keep_alive()  # in time: the same session
    assert client.session_token == first and manager.reopened == 0
    clock.advance(minutes=31)  # the server closes it for inactivity
    await manager.keep_alive()
    second = client.session_token
    assert second is not None and second.session_id != first.session_id
    assert manager.reopened == 1
    assert [e for e, _ in events] == ["opened", "expired", "opened"]
    expired_token, error = events[1][1]
    assert expired_token == first and isinstance(error, SessionExpired)
    assert (await client.current_session())["SessionID"] == str(second.session_id)
    await manager.stop()
    assert events[-1] == ("closed", (second,))
    assert await client.close_session() is False


async def test_the_manager_reopens_after_absolute_expiry_and_reports_version_changes(
    app_client: Any, clock: Clock
) -> None:
    service, client = app_client
    changes: list[tuple[int, int]] = []
    async with AsyncSessionManager(client, "uma", "Uma-pw-1") as manager:
        manager.on("configuration_version_changed", lambda old, new: changes.append((old, new)))
        for _ in range(20):  # a working day and more, touching every 25 minutes
            clock.advance(minutes=25)
            result = await manager.call(lambda c: c.current_session())
            assert result["UserLogin"] == "uma"
        assert manager.reopened == 1  # the 8-hour lifetime ran out once
        before = client.configuration_version
        await service.configuration.increment(SYSTEM)
        await manager.keep_alive()
        await manager.keep_alive()
        assert changes == [(before, before + 1)]


def test_the_sync_manager_reopens_when_an_administrator_closes_the_session(
    server: ServerProcess,
) -> None:
    result = server.cli("users", "add", "vera", "--password", "Vera-pw-1")
    assert result.returncode == 0, result.stderr
    expired: list[Exception] = []
    with (
        SessionClient(server.url) as client,
        SessionManager(client, "vera", "Vera-pw-1") as manager,
    ):
        manager.on("expired", lambda token, error: expired.append(error))
        first = client.session_token
        assert first is not None
        with SessionClient(server.url) as admin:
            admin.open_session("admin", server.admin_password)
            assert admin.close_session_as_admin(first.session_id) is True
        info = manager.call(lambda c: c.current_session())
        assert info["SessionID"] != str(first.session_id)
        assert manager.reopened == 1 and isinstance(expired[0], SessionNotFound)


CONCURRENT = 8


def _add_user(server: ServerProcess, login: str, password: str) -> None:
    result = server.cli("users", "add", login, "--password", password)
    assert result.returncode == 0, result.stderr


def test_concurrent_sync_calls_replace_a_closed_session_once(server: ServerProcess) -> None:
    _add_user(server, "wren", "Wren-pw-1")
    events: list[str] = []
    # Every call waits here until all of them are inside call(): the manager must not
    # serialise requests, only the replacement of the session.
    barrier = threading.Barrier(CONCURRENT, timeout=20)

    def operation(client: SessionClient) -> dict[str, Any]:
        barrier.wait()
        return client.current_session()

    with SessionClient(server.url) as client:
        manager = SessionManager(client, "wren", "Wren-pw-1")
        for event in ("opened", "expired"):
            manager.on(event, lambda *args, e=event: events.append(e))
        first = manager.start()
        assert events == ["opened"]
        with SessionClient(server.url) as admin:
            admin.open_session("admin", server.admin_password)
            assert admin.close_session_as_admin(first.session_id) is True
        results: list[dict[str, Any]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(manager.call(operation))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [] and len(results) == CONCURRENT
        second = client.session_token
        assert second is not None and second.session_id != first.session_id
        assert {info["SessionID"] for info in results} == {str(second.session_id)}
        assert events == ["opened", "expired", "opened"] and manager.reopened == 1
        manager.stop()


async def test_concurrent_async_calls_replace_a_closed_session_once(
    server: ServerProcess,
) -> None:
    _add_user(server, "yara", "Yara-pw-1")
    events: list[str] = []
    barrier = asyncio.Barrier(CONCURRENT)

    async def operation(client: AsyncSessionClient) -> dict[str, Any]:
        await asyncio.wait_for(barrier.wait(), 20)
        return await client.current_session()

    async def on_event(event: str) -> None:
        await asyncio.sleep(0)  # a coroutine callback, awaited in place
        events.append(event)

    async with AsyncSessionClient(server.url) as client:
        manager = AsyncSessionManager(client, "yara", "Yara-pw-1")
        for event in ("opened", "expired"):
            manager.on(event, lambda *args, e=event: on_event(e))
        first = await manager.start()
        assert events == ["opened"]
        async with AsyncSessionClient(server.url) as admin:
            await admin.open_session("admin", server.admin_password)
            assert await admin.close_session_as_admin(first.session_id) is True
        results = await asyncio.gather(*(manager.call(operation) for _ in range(CONCURRENT)))
        second = client.session_token
        assert second is not None and second.session_id != first.session_id
        assert {info["SessionID"] for info in results} == {str(second.session_id)}
        assert events == ["opened", "expired", "opened"] and manager.reopened == 1
        await manager.stop()


async def test_a_client_subscribes_to_configuration_changes(app_client: Any) -> None:
    service, client = app_client
    await client.open_session("uma", "Uma-pw-1")
    before = client.configuration_version
    waiter = asyncio.create_task(client.wait_for_configuration_change(wait=20))
    await asyncio.sleep(0.1)  # let the long poll reach the server
    assert not waiter.done()
    await service.configuration.increment(SYSTEM)
    assert await asyncio.wait_for(waiter, 10) == before + 1
    assert client.configuration_version == before + 1
    # with nothing changing, the wait ends after `wait` seconds with the same version
    assert await client.wait_for_configuration_change(wait=0.2) == before + 1


def test_a_change_made_by_another_process_ends_the_wait(server: ServerProcess) -> None:
    with SessionClient(server.url) as client:
        client.open_session("admin", server.admin_password)
        before = client.get_configuration().version
        got: list[int] = []
        thread = threading.Thread(
            target=lambda: got.append(client.wait_for_configuration_change(before, wait=30))
        )
        thread.start()
        result = server.cli("config", "increment-version")  # the CLI writes the store itself
        assert result.returncode == 0, result.stderr
        thread.join(timeout=40)
        assert got == [before + 1]
