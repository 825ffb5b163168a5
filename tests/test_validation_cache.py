"""The validation cache: an answer remembered per session, never used for a session that has
ended — closed, expired, blocked, deleted by another process, or closed on another node."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond.auth import PasswordCredentials
from sessiond.cache import Packer
from sessiond.errors import (
    SessionExpired,
    SessionNotFound,
    TokenInvalid,
    TokenSignatureInvalid,
)
from sessiond.keys import KeyRing
from sessiond.models import AuditAction, ClientInfo
from sessiond.service import Actor, SessionService
from sessiond.settings import load_settings
from sessiond.store import SessionRecord, create_store
from sessiond.token import AuthToken
from tests.infra.postgres import PostgresServer

from .conftest import FAST_ARGON2, Clock, ServerProcess

SYSTEM = Actor.system()


def _render(record: SessionRecord) -> bytes:
    return json.dumps({"SessionID": str(record.id)}).encode()


async def _opened(service: SessionService, login: str = "cached") -> str:
    if await service.store.find_user_by_login(login) is None:
        await service.users.add_user(SYSTEM, login, password="pw-1234")
    opened = await service.signin.open_session(PasswordCredentials(login, "pw-1234"), ClientInfo())
    return opened.token.to_auth_xml()


async def _warm(service: SessionService, auth: str) -> None:
    for _ in range(3):
        assert await service.sessions.validate_view(auth, None, _render)
    assert len(service.sessions._known) >= 1


async def test_an_ended_session_is_refused_at_once_though_cached(
    make_service: Any, clock: Clock, tmp_path: Path
) -> None:
    service = await make_service(
        session_expiration_time_span="8h", security={"session_inactivity_time": "1h"}
    )
    closed = await _opened(service)
    await _warm(service, closed)
    assert await service.sessions.close_session(closed) is True
    with pytest.raises(SessionNotFound):
        await service.sessions.validate_view(closed, None, _render)

    blocked = await _opened(service, "blocked")
    await _warm(service, blocked)
    await service.users.set_blocked(SYSTEM, "blocked", True)
    with pytest.raises(SessionNotFound):
        await service.sessions.validate_view(blocked, None, _render)

    # Deleted by another process (the command line, a second server on the same file).
    elsewhere = await _opened(service)
    await _warm(service, elsewhere)
    db = sqlite3.connect(tmp_path / "data" / "sessiond.db")
    with db:
        db.execute(
            "DELETE FROM sessions WHERE id = ?", (AuthToken.from_xml(elsewhere).session_id.hex,)
        )
    db.close()
    # The next request: a request's handling starts in a later turn of the event loop than
    # anything that happened before it was sent (the store shares one data-version read among
    # the validations of one turn; see the test below).
    await asyncio.sleep(0)
    with pytest.raises(SessionNotFound):
        await service.sessions.validate_view(elsewhere, None, _render)

    idle = await _opened(service)
    await _warm(service, idle)
    clock.advance(minutes=61)
    with pytest.raises(SessionExpired):
        await service.sessions.validate_view(idle, None, _render)

    old = await _opened(service)
    await _warm(service, old)
    for _ in range(9):  # busy, but past its absolute lifetime
        clock.advance(minutes=55)
        try:
            await service.sessions.validate_view(old, None, _render)
        except SessionExpired:
            break
    else:
        pytest.fail("a cached session outlived its lifetime")


async def test_only_the_token_text_that_was_checked_uses_the_cache(make_service: Any) -> None:
    service = await make_service()
    auth = await _opened(service)
    await _warm(service, auth)
    token = AuthToken.from_xml(auth)
    forged = auth.replace(token.signature, "A" * 43 + "=")
    with pytest.raises(TokenSignatureInvalid):
        await service.sessions.validate_view(forged, None, _render)
    spaced = auth.replace(" UserID", "  UserID")  # the same values, spelled differently
    assert await service.sessions.validate_view(spaced, None, _render) == _render(
        await service.sessions.validate(auth)
    )
    with pytest.raises(TokenInvalid):
        await service.sessions.validate_view(auth[:-3], None, _render)


async def test_the_cache_is_bounded_and_evicts_one_entry_at_a_time(make_service: Any) -> None:
    service = await make_service(validation_cache_entries=10)
    tokens = [await _opened(service) for _ in range(30)]
    for auth in tokens:
        await service.sessions.validate_view(auth, None, _render)
    assert len(service.sessions._known) == 10
    for auth in tokens[-10:]:  # the most recent ten are the ones kept
        assert AuthToken.from_xml(auth).session_id.int in service.sessions._known
    for auth in tokens:  # and the rest still validate, read afresh
        assert await service.sessions.validate_view(auth, None, _render)


def test_a_session_closed_by_another_process_is_refused_at_the_next_request(
    server: ServerProcess,
) -> None:
    answer = httpx.post(
        f"{server.url}/api/v1/sessions/open",
        json={"Login": "admin", "Password": server.admin_password},
    ).json()
    headers = {"Tessa-Session": answer["AuthToken"]}
    for _ in range(3):
        assert (
            httpx.get(f"{server.url}/api/v1/sessions/current", headers=headers).status_code == 200
        )
    session_id = str(AuthToken.from_xml(answer["AuthToken"]).session_id)
    closed = server.cli("sessions", "close", session_id)
    assert closed.returncode == 0, closed.stderr
    refused = httpx.get(f"{server.url}/api/v1/sessions/current", headers=headers)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "session_not_found"


async def test_a_session_closed_on_another_node_is_refused_at_its_next_request(
    postgres_server: PostgresServer, tmp_path: Path, clock: Clock
) -> None:
    url = postgres_server.new_database()
    KeyRing.generate().save(tmp_path / "keys.json")
    nodes: list[SessionService] = []
    make: Callable[[], SessionService] = lambda: SessionService(  # noqa: E731
        load_settings(
            None,
            database_url=url,
            data_dir=tmp_path,
            signature_keys_file=tmp_path / "keys.json",
            argon2=FAST_ARGON2,
        ),
        create_store(url),
        KeyRing.load(tmp_path / "keys.json"),
        clock=clock,
    )
    try:
        for _ in range(2):
            node = make()
            await node.start()
            nodes.append(node)
        a, b = nodes
        for close in ("close", "block", "expire"):
            auth = await _opened(a, f"pg-{close}")
            await _warm(b, auth)
            if close == "close":
                assert await a.sessions.close_session(auth) is True
                expected: type[Exception] = SessionNotFound
            elif close == "block":
                await a.users.set_blocked(SYSTEM, f"pg-{close}", True)
                expected = SessionNotFound
            else:
                clock.advance(days=8)
                expected = SessionExpired
            with pytest.raises(expected):
                await b.sessions.validate_view(auth, None, _render)
    finally:
        for node in nodes:
            await node.close()


async def test_a_cached_answer_is_given_back_byte_for_byte(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers of a large cache are kept compressed (here: from the third entry on); a hit
    gives back exactly what was rendered on the miss, compressed or not."""
    monkeypatch.setattr("sessiond.service.sessions.PACK_FROM", 2)
    service = await make_service()
    tokens = [await _opened(service) for _ in range(5)]
    first = [await service.sessions.validate_view(auth, None, _render) for auth in tokens]  # misses
    kept = [service.sessions._known.get(AuthToken.from_xml(a).session_id.int) for a in tokens]
    assert [k.packed for k in kept if k is not None] == [False, False, True, True, True]
    again = [await service.sessions.validate_view(auth, None, _render) for auth in tokens]  # hits
    assert again == first
    for view, auth in zip(again, tokens, strict=True):
        assert json.loads(view)["SessionID"] == str(AuthToken.from_xml(auth).session_id)


@pytest.mark.parametrize(
    "strings",
    [
        [b'{"a":1}', b'{"a":2}'],
        [b"", b"x", b""],  # empty first: an empty dictionary
        [bytes(range(256)) * 40, b"\x00" * 5000, b"short"],  # larger than the window
        [bytes([i % 7]) * i for i in range(0, 3000, 97)],
    ],
)
def test_packed_strings_unpack_to_what_they_were(strings: list[bytes]) -> None:
    packer = Packer()
    packed = [packer.pack(s) for s in strings]
    assert [packer.unpack(p) for p in packed] == strings


def test_similar_answers_pack_small() -> None:
    packer = Packer()
    answers = [
        json.dumps(
            {"SessionID": f"{i:032x}", "UserName": f"user {i}", "LicenseType": "Concurrent"}
        ).encode()
        for i in range(100)
    ]
    packed = [packer.pack(a) for a in answers]
    assert sum(map(len, packed)) < sum(map(len, answers)) / 2


async def test_one_epoch_read_serves_one_turn_of_the_event_loop(
    make_service: Any, tmp_path: Path
) -> None:
    """What the shared read means: a removal by another process shows to a validation in a
    later turn, never to one that was already being handled when it happened."""
    service = await make_service()
    auth = await _opened(service)
    await _warm(service, auth)
    key = AuthToken.from_xml(auth).session_id.int
    first = service.store.session_epoch(key)
    assert first is not None
    db = sqlite3.connect(tmp_path / "data" / "sessiond.db")
    with db:
        db.execute("DELETE FROM sessions WHERE id = ?", (AuthToken.from_xml(auth).session_id.hex,))
    db.close()
    assert service.store.session_epoch(key) == first  # the same turn: the read is shared
    await asyncio.sleep(0)
    assert service.store.session_epoch(key) == first + 1  # the next turn reads again
    with pytest.raises(SessionNotFound):
        await service.sessions.validate_view(auth, None, _render)


async def test_a_removal_moves_only_its_buckets_epoch(make_service: Any, tmp_path: Path) -> None:
    """A logout sends only the cached sessions of its bucket (first byte of the id) to the
    database; the others stay confirmed without a read."""
    service = await make_service()
    tokens = [await _opened(service) for _ in range(40)]
    ids = [AuthToken.from_xml(t).session_id for t in tokens]
    gone = ids[0]
    same = [i for i in ids[1:] if i.hex[:2] == gone.hex[:2]]
    other = [i for i in ids[1:] if i.hex[:2] != gone.hex[:2]]
    before = {i: service.store.session_epoch(i.int) for i in ids}
    db = sqlite3.connect(tmp_path / "data" / "sessiond.db")
    with db:
        db.execute("DELETE FROM sessions WHERE id = ?", (gone.hex,))
    db.close()
    await asyncio.sleep(0)
    assert service.store.session_epoch(gone.int) == before[gone] + 1  # type: ignore[operator]
    assert all(service.store.session_epoch(i.int) == before[i] + 1 for i in same)  # type: ignore[operator]
    assert all(service.store.session_epoch(i.int) == before[i] for i in other)
    assert other  # 40 random ids: some in other buckets


async def test_touches_and_new_sessions_leave_the_cache_valid(
    make_service: Any, tmp_path: Path, clock: Clock
) -> None:
    """The epoch counts removed sessions only; a session the cache holds as idle but that
    another process touched since is decided on its row, and stays open."""
    service = await make_service(security={"session_inactivity_time": "1h"})
    auth = await _opened(service)
    await _warm(service, auth)
    key = AuthToken.from_xml(auth).session_id.int
    epoch = service.store.session_epoch(key)
    await _opened(service, "other")  # a sign-in: a commit, no removal
    clock.advance(minutes=50)
    db = sqlite3.connect(tmp_path / "data" / "sessiond.db")
    with db:  # another server on the same file saw the session in use 50 minutes on
        stored = clock.now.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        db.execute(
            "UPDATE sessions SET last_activity = ? WHERE id = ?",
            (stored, AuthToken.from_xml(auth).session_id.hex),
        )
    db.close()
    await asyncio.sleep(0)
    assert service.store.session_epoch(key) == epoch
    clock.advance(minutes=20)  # 70 minutes after this node last saw it, 20 after the other
    view = await service.sessions.validate_view(auth, None, _render)
    assert json.loads(view)["SessionID"] == str(AuthToken.from_xml(auth).session_id)
    assert not await service.audit.records(action=AuditAction.SESSION_EXPIRED)


async def test_a_store_without_the_removal_count_validates_without_the_cache_epoch(
    make_service: Any, tmp_path: Path
) -> None:
    database = tmp_path / "data" / "sessiond.db"
    service = await make_service()
    auth = await _opened(service)
    db = sqlite3.connect(database)
    with db:
        db.execute("DROP TRIGGER sessions_removed")
    db.close()
    service = await make_service()  # a second server on the file, started after the change
    assert service.store.session_epoch(AuthToken.from_xml(auth).session_id.int) is None
    await _warm(service, auth)
    db = sqlite3.connect(database)
    with db:
        db.execute("DELETE FROM sessions WHERE id = ?", (AuthToken.from_xml(auth).session_id.hex,))
    db.close()
    with pytest.raises(SessionNotFound):  # read every time: still refused at once
        await service.sessions.validate_view(auth, None, _render)


async def test_sweeping_sessions_past_their_lifetime_leaves_the_cache_valid(
    make_service: Any, tmp_path: Path
) -> None:
    """The sweeper's usual work (sessions past their lifetime) moves no epoch; any removal of
    a session still within its lifetime does, whoever makes it (and so does the change of a
    row that put this one past its lifetime)."""
    service = await make_service()
    ended = AuthToken.from_xml(await _opened(service)).session_id
    still_open = AuthToken.from_xml(await _opened(service)).session_id
    db = sqlite3.connect(tmp_path / "data" / "sessiond.db")
    with db:
        db.execute(
            "UPDATE sessions SET expires = '2000-01-01 00:00:00.000000' WHERE id = ?",
            (ended.hex,),
        )
    await asyncio.sleep(0)
    epochs = {i: service.store.session_epoch(i.int) for i in (ended, still_open)}
    assert await service.sessions.sweep() == 1
    await asyncio.sleep(0)
    assert service.store.session_epoch(ended.int) == epochs[ended]
    with db:
        db.execute("DELETE FROM sessions WHERE id = ?", (still_open.hex,))
    db.close()
    await asyncio.sleep(0)
    assert service.store.session_epoch(still_open.int) == epochs[still_open] + 1  # type: ignore[operator]
