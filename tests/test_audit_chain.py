"""The audit chain against someone who can write the database: records keyed with a key kept
outside it, the head written outside it (log, anchor file) and checked with
``sessiond audit verify --head``, and no secret in any form in the trail."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sessiond import SessionClient
from sessiond.store import schema
from sessiond.store.chain import GENESIS, record_hash
from sessiond.wire import SESSION_HEADER

from .conftest import ServerProcess, free_port, server_env

HEAD = re.compile(r"head (\d+:[0-9a-f]{64})")
# How sessiond before anchoring printed it: the same head, for the same test on that code.
OLD_HEAD = re.compile(r"last record (\d+), hash ([0-9a-f]{64})")


def _printed_head(stdout: str) -> str:
    found = HEAD.search(stdout)
    if found:
        return found.group(1)
    old = OLD_HEAD.search(stdout)
    assert old, stdout
    return f"{old.group(1)}:{old.group(2)}"


@pytest.fixture
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a few sign-ins and sign-outs in its trail, stopped: the database is
    edited behind its back."""
    root = tmp_path_factory.mktemp("audited")
    data_dir = root / "sessiond-data"
    proc = ServerProcess(data_dir, free_port(), server_env(data_dir), root / "server.log")
    proc.start()
    with SessionClient(proc.url) as client:
        for _ in range(4):
            client.open_session("admin", proc.admin_password)
            client.close_session()
    proc.stop()
    yield proc
    proc.stop()


def _restart(server: ServerProcess) -> None:
    server.log_path.write_text("")  # its one-time password was changed at the first start
    server.start()


def _verify(server: ServerProcess, *args: str) -> Any:
    return server.cli("audit", "verify", *args)


def _saved_head(server: ServerProcess) -> str:
    """The head the server wrote to its anchor file last (at its shutdown): what an operator
    archives."""
    lines = (server.data_dir / "audit-anchors.log").read_text().splitlines()
    return lines[-1].split()[-1]


def _engine(server: ServerProcess) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{server.data_dir / 'sessiond.db'}")


def _rechain(server: ServerProcess, edit: str, edited: int, *, unkey_all: bool = False) -> None:
    """What someone with the database and sessiond's source does: edit record ``edited``,
    then recompute its hash and every one after it (unkeyed SHA-256, the only hash they can
    compute) and move the head. ``unkey_all``: re-chain the whole trail as if it had never
    been keyed, and move the point where keyed chaining starts past its end."""
    a, h = schema.audit, schema.audit_head
    keyed = "key_id" in a.c  # the columns of the sessiond under test
    with _engine(server).begin() as conn:
        conn.execute(sa.text(edit))
        prev, last_id = GENESIS, 0
        for row in conn.execute(sa.select(a).order_by(a.c.id)).mappings().all():
            last_id = int(row["id"])
            if last_id < edited and not unkey_all:
                prev = str(row["hash"])
                continue
            update = {"prev_hash": prev, "hash": record_hash(prev, {**row, "key_id": None})}
            if keyed and unkey_all:
                update["key_id"] = None
            conn.execute(a.update().where(a.c.id == last_id).values(**update))
            prev = update["hash"]
        head: dict[str, Any] = {"last_id": last_id, "last_hash": prev}
        if unkey_all and "keyed_from" in h.c:
            head["keyed_from"] = last_id + 1
        conn.execute(h.update().where(h.c.id == 1).values(**head))


def test_the_head_is_written_outside_the_database_and_verify_checks_it(
    audited: ServerProcess,
) -> None:
    intact = _verify(audited)
    assert intact.returncode == 0, intact.stderr
    [head] = HEAD.findall(intact.stdout)
    # Written to the log and to the anchor file at shutdown: the same head.
    assert _saved_head(audited) == head
    assert f"audit trail head {head}" in audited.log_path.read_text()
    assert (audited.data_dir / "audit-anchors.log").stat().st_mode & 0o077 == 0
    reaches = _verify(audited, "--head", head)
    assert reaches.returncode == 0, reaches.stderr
    assert f"reaches the saved head {head}" in reaches.stdout
    junk = _verify(audited, "--head", "not-a-head")
    assert junk.returncode == 2 and "ID:HASH" in junk.stderr


def test_administrators_read_the_head_over_the_api(audited: ServerProcess) -> None:
    _restart(audited)
    with SessionClient(audited.url) as client:
        token = client.open_session("admin", audited.admin_password)
        answer = httpx.get(
            f"{audited.url}/api/v1/audit/head", headers={SESSION_HEADER: token.to_auth_xml()}
        )
    assert answer.status_code == 200, answer.text
    head = answer.json()
    assert head["Head"] == f"{head['LastID']}:{head['LastHash']}"
    assert audited.cli("users", "add", "reader", "--password", "pw-1234").returncode == 0
    with SessionClient(audited.url) as client:
        token = client.open_session("reader", "pw-1234")
        refused = httpx.get(
            f"{audited.url}/api/v1/audit/head", headers={SESSION_HEADER: token.to_auth_xml()}
        )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
    audited.stop()
    later = _verify(audited, "--head", head["Head"])  # more records since: still reaches it
    assert later.returncode == 0, later.stderr


def test_a_tail_cut_with_the_head_moved_back_is_named_against_the_saved_head(
    audited: ServerProcess,
) -> None:
    saved = _printed_head(_verify(audited).stdout)
    last = int(saved.split(":")[0])
    db = sqlite3.connect(audited.data_dir / "sessiond.db")
    with db:
        db.execute("DELETE FROM audit WHERE id > ?", (last - 3,))
        db.execute(
            "UPDATE audit_head SET last_id = ?, last_hash = (SELECT hash FROM audit WHERE id = ?)",
            (last - 3, last - 3),
        )
    db.close()
    assert _verify(audited).returncode == 0  # the chain alone cannot tell
    cut = _verify(audited, "--head", saved)
    assert cut.returncode == 1, cut.stdout
    assert f"records {last - 2} to {last} cut from the end since the saved head" in cut.stderr
    assert f"the trail now ends at record {last - 3}" in cut.stderr


@pytest.mark.parametrize("unkey_all", [False, True])
def test_a_rechained_rewrite_is_named(audited: ServerProcess, unkey_all: bool) -> None:
    intact = _verify(audited)
    assert intact.returncode == 0, intact.stderr
    saved = _printed_head(intact.stdout)  # the head an operator kept
    _rechain(audited, "UPDATE audit SET user_name = 'mallory' WHERE id = 3", 3, unkey_all=unkey_all)
    if not unkey_all:  # the records from the edit on cannot be keyed again without the key
        alone = _verify(audited)
        assert alone.returncode == 1, alone.stdout
        assert "record 3 was edited or inserted" in alone.stderr
    rewritten = _verify(audited, "--head", saved)
    assert rewritten.returncode == 1, rewritten.stdout
    if unkey_all:  # the whole trail made to look unkeyed: the saved head tells
        assert f"the trail was rewritten since the saved head {saved}" in rewritten.stderr
    else:
        assert "record 3 was edited or inserted" in rewritten.stderr


def test_the_audit_key_ring_is_private_and_rotates(audited: ServerProcess) -> None:
    keys = audited.data_dir / "audit-keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert "audit-keys" not in (audited.data_dir / "sessiond.db").read_bytes().decode("latin-1")
    before = json.loads(keys.read_text())
    rotated = audited.cli("audit", "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.split()[-1]
    _restart(audited)
    with SessionClient(audited.url) as client:
        client.open_session("admin", audited.admin_password)
    audited.stop()
    with _engine(audited).connect() as conn:
        used = [k for (k,) in conn.execute(sa.text("SELECT key_id FROM audit ORDER BY id"))]
    assert set(used) == {before["current"], new_key} and used[-1] == new_key
    assert _verify(audited, "--head", _saved_head(audited)).returncode == 0
    # A node without the old key cannot vouch for the records it chained, and says so.
    ring = json.loads(keys.read_text())
    del ring["keys"][before["current"]]
    keys.write_text(json.dumps(ring))
    missing = _verify(audited)
    assert missing.returncode == 1
    assert f"chained with audit key {before['current']}, which" in missing.stderr


def test_an_unkeyed_trail_keeps_verifying_up_to_the_switch(audited: ServerProcess) -> None:
    """A store from before keyed chaining: taken back to revision 0006 and chained the way
    that revision chained; the upgrade marks where keyed chaining starts."""
    from alembic import command
    from alembic.config import Config

    engine = _engine(audited)
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(schema.__file__).parent / "migrations"))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
        old = sa.table(
            "audit", *(sa.column(c.name, c.type) for c in schema.audit.c if c.name != "key_id")
        )
        prev = GENESIS
        for row in conn.execute(sa.select(old).order_by(old.c.id)).mappings().all():
            digest = record_hash(prev, row)
            update = old.update().where(old.c.id == row["id"])
            conn.execute(update.values(prev_hash=prev, hash=digest))
            prev, last = digest, int(row["id"])
        conn.execute(sa.text("UPDATE audit_head SET last_hash = :h"), {"h": prev})
        conn.execute(sa.text("UPDATE audit_head SET last_id = :i"), {"i": last})
    _restart(audited)  # upgrades to keyed chaining
    with SessionClient(audited.url) as client:
        client.open_session("admin", audited.admin_password)
    audited.stop()
    intact = _verify(audited, "--head", _saved_head(audited))
    assert intact.returncode == 0, intact.stderr
    assert f"records 1 to {last} unkeyed, from before keyed chaining" in intact.stdout


def _digests(secret: str) -> list[str]:
    """Every usual digest of ``secret``, in hex and base64, whose 8-character prefixes must
    not appear anywhere."""
    import base64

    found = []
    for name in ("sha256", "sha1", "md5", "sha512", "blake2b"):
        raw = hashlib.new(name, secret.encode()).digest()
        found += [raw.hex(), base64.b64encode(raw).decode()]
    return found


def test_secrets_never_enter_the_trail_and_settings_show_as_values(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "sessiond-data"
    admin_password = "Admin-Sesame-8842!"
    bind_password = "Bind-Reader-Secret-5519"
    env = server_env(
        data_dir,
        SESSIOND_ADMIN_PASSWORD=admin_password,
        SESSIOND_SECURITY__MIN_PASSWORD_LENGTH="12",
        SESSIOND_LDAP__URL="ldaps://127.0.0.1:1",
        SESSIOND_LDAP__BIND_DN="cn=reader,dc=example,dc=com",
        SESSIOND_LDAP__BIND_PASSWORD=bind_password,
    )
    server = ServerProcess(data_dir, free_port(), env, tmp_path / "server.log")
    server.start()
    server.stop()
    new_bind_password = "Bind-Reader-Secret-7730"
    server.env["SESSIOND_LDAP__BIND_PASSWORD"] = new_bind_password
    server.start()
    server.stop()
    export = server.cli("audit", "export")
    assert export.returncode == 0, export.stderr
    text = export.stdout
    for secret in (admin_password, bind_password, new_bind_password):
        assert secret not in text
        for digest in _digests(secret):
            prefixes = {digest[i : i + 8] for i in range(len(digest) - 7)}
            assert not [p for p in prefixes if p in text], secret
    assert "sha256:" not in text
    records = [json.loads(line) for line in text.splitlines()]
    first, second = [r["details"] for r in records if r["action"] == "SettingsChanged"]
    settings = first["settings"]
    assert settings["security.min_password_length"] == 12
    assert settings["ldap.bind_dn"] == "cn=reader,dc=example,dc=com"
    assert settings["admin_password"] == "set" and settings["ldap.bind_password"] == "set"
    assert first["changed"]["admin_password"] == "changed"
    assert second["changed"] == {"ldap.bind_password": "changed"}
    # Nor in the database at all, outside the trail.
    raw = (data_dir / "sessiond.db").read_bytes().decode("latin-1")
    for secret in (admin_password, bind_password, new_bind_password):
        assert secret not in raw
        assert hashlib.sha256(secret.encode()).hexdigest()[:12] not in raw


def test_a_server_that_would_make_a_second_audit_key_ring_refuses_to_start(
    audited: ServerProcess,
) -> None:
    """A node started without the ring the others chain with (not copied to it): its records
    could be verified nowhere else."""
    keys = audited.data_dir / "audit-keys.json"
    kept = keys.read_bytes()
    keys.unlink()
    with pytest.raises(RuntimeError, match="exited early") as refused:
        _restart(audited)
    message = str(refused.value)
    assert "this server had no audit key ring at" in message and str(keys) in message
    assert not keys.exists()  # not left behind for the next start to take
    assert "Traceback" not in message
    keys.write_bytes(kept)  # the right ring back: it starts, and the trail checks out
    _restart(audited)
    audited.stop()
    assert _verify(audited).returncode == 0
