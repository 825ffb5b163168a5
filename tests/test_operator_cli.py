"""An operator's first hour: the real ``sessiond`` command, run in temporary folders.

Every bad setting ends with one line naming the setting and a documented exit status, never a
traceback; administrative commands never create a store; ``init``, ``--version``,
``--data-dir`` and ``--json``; secrets never printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sessiond.settings import load_settings
from tests.conftest import FAST_ARGON2_ENV, free_port
from tests.infra.postgres import PostgresServer

# Exit statuses, as docs/operator.md documents them.
REFUSED, BAD_SETTING, UNREACHABLE, NO_STORE = 1, 2, 3, 4
SECRET = "Sup3r-secret-pw"
# A log record of sessiond's own (text format: "time LEVEL: logger: message").
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* +\w+:? +sessiond\.")

Run = Callable[..., subprocess.CompletedProcess[str]]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SESSIOND_")}
    env.update(FAST_ARGON2_ENV)
    env.update(extra)
    return env


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """``run(*args, cwd=..., **env)``: the real command, in ``tmp_path/work`` by default."""
    work = tmp_path / "work"
    work.mkdir()

    def sessiond(*args: str, cwd: Path = work, **env: str) -> subprocess.CompletedProcess[str]:
        if args and args[0] == "serve":
            # A free port unless the test sets one: a serve that starts would hold it.
            env.setdefault("SESSIOND_PORT", str(free_port()))
        return subprocess.run(
            [sys.executable, "-m", "sessiond", *args],
            cwd=cwd,
            env=_env(**env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return sessiond


def _one_line(result: subprocess.CompletedProcess[str], status: int, *names: str) -> str:
    """The command ended with ``status`` and one line on stderr naming each of ``names``."""
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both
    assert result.returncode == status, both
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, both
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def _init(run: Run, data: Path) -> subprocess.CompletedProcess[str]:
    made = run("init", "--data-dir", str(data))
    assert made.returncode == 0, made.stdout + made.stderr
    return made


# --- 1. every bad setting: one line, the setting named, a documented status ------------------

ADMIN = ("users", "list")


@pytest.mark.parametrize("command", [("serve",), ADMIN], ids=["serve", "users-list"])
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("SESSIOND_PORT", "abc", "SESSIOND_PORT"),
        ("SESSIOND_SECURITY__SESSION_INACTIVITY_TIME", "soon", "security.session_inactivity_time"),
        ("SESSIOND_TRUSTED_PROXIES", "not-json", "SESSIOND_TRUSTED_PROXIES"),
        ("SESSIOND_DATABASE_URL", "mysql://u:x@h/db", "database_url"),
    ],
)
def test_a_bad_environment_value_is_one_line_and_status_2(
    run: Run, command: tuple[str, ...], variable: str, value: str, named: str
) -> None:
    line = _one_line(run(*command, **{variable: value}), BAD_SETTING, named, "invalid_settings")
    assert variable in line  # where it was set


@pytest.mark.parametrize("command", [("serve",), ADMIN], ids=["serve", "users-list"])
def test_the_settings_file_unknown_key_unreadable_or_invalid(
    run: Run, tmp_path: Path, command: tuple[str, ...]
) -> None:
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[sessiond]\nprot = 8500\n")
    line = _one_line(run(*command, "--config", str(unknown)), BAD_SETTING, "prot", str(unknown))
    assert "did you mean port?" in line
    invalid = tmp_path / "invalid.toml"
    invalid.write_text("[sessiond]\nport = \n")
    _one_line(run(*command, "--config", str(invalid)), BAD_SETTING, "not valid TOML", "--config")
    missing = tmp_path / "missing.toml"
    _one_line(run(*command, SESSIOND_CONFIG=str(missing)), BAD_SETTING, str(missing), "--config")
    folder = tmp_path / "a-folder.toml"
    folder.mkdir()
    _one_line(run(*command, "-c", str(folder)), BAD_SETTING, str(folder), "Is a directory")


def _unusable_data_folders(tmp_path: Path) -> list[Path]:
    """Places no account can make a data folder in, root included: a regular file where the
    folder should be, a path under a regular file, and a path on /proc (which refuses to
    create anything, whatever the permissions)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return [blocker, blocker / "data", Path(f"/proc/sessiond-test-{os.getpid()}/data")]


def test_serve_and_init_on_an_unusable_data_folder(run: Run, tmp_path: Path) -> None:
    for folder in _unusable_data_folders(tmp_path):
        for command in ("serve", "init"):
            line = _one_line(run(command, "--data-dir", str(folder)), BAD_SETTING, str(folder))
            assert "data_dir" in line and "--data-dir" in line
            _one_line(run(command, SESSIOND_DATA_DIR=str(folder)), BAD_SETTING, str(folder))
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


def test_an_administrative_command_on_an_unusable_data_folder_finds_no_store(
    run: Run, tmp_path: Path
) -> None:
    for folder in _unusable_data_folders(tmp_path):
        _one_line(run(*ADMIN, "--data-dir", str(folder)), NO_STORE, str(folder), "no_store")


def test_an_unwritable_key_ring_place_is_one_line(run: Run, tmp_path: Path) -> None:
    keys = tmp_path / "a-file" / "signature-keys.json"
    (tmp_path / "a-file").write_text("")
    result = run(
        "init", "--data-dir", str(tmp_path / "data"), SESSIOND_SIGNATURE_KEYS_FILE=str(keys)
    )
    _one_line(result, BAD_SETTING, str(keys), "signature_keys_file")


def test_an_unreachable_postgresql_is_status_3_without_the_password(run: Run) -> None:
    url = f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:{free_port()}/x"
    for command in (ADMIN, ("init",), ("config", "show")):
        line = _one_line(run(*command, SESSIOND_DATABASE_URL=url), UNREACHABLE, "database_url")
        assert "u:***@127.0.0.1" in line and SECRET not in line
    served = run("serve", SESSIOND_DATABASE_URL=url)
    both = served.stdout + served.stderr
    assert served.returncode == UNREACHABLE and "Traceback" not in both and SECRET not in both
    *before, last = served.stderr.strip().splitlines()
    assert "database_url" in last and last.startswith("error [service_unavailable]"), both
    # Anything before the one error line is the server's own log, not a traceback.
    assert all(LOG_RECORD.match(line) for line in before), both


def test_a_key_ring_that_is_not_json(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _init(run, data)
    (data / "signature-keys.json").write_text('{"current": ')
    for command in (("serve",), ADMIN, ("keys", "list"), ("keys", "rotate")):
        line = _one_line(run(*command, "--data-dir", str(data)), BAD_SETTING, "signature_keys_file")
        assert "not valid JSON" in line and str(data / "signature-keys.json") in line


def test_an_unknown_variable_is_named_in_a_warning(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _init(run, data)
    listed = run(*ADMIN, SESSIOND_DATA_DIR=str(data), SESSIOND_PROT="8500")
    assert listed.returncode == 0, listed.stderr
    (warning,) = listed.stderr.strip().splitlines()
    assert warning.startswith("warning") and "SESSIOND_PROT" in warning
    assert "did you mean SESSIOND_PORT?" in warning and "admin" in listed.stdout
    refused = run("serve", SESSIOND_PROT="8500", SESSIOND_PORT="abc")
    assert refused.returncode == BAD_SETTING and "Traceback" not in refused.stderr
    warning, error = refused.stderr.strip().splitlines()
    assert "SESSIOND_PROT" in warning and "SESSIOND_PORT" in error


# --- 2. administrative commands never create a store -----------------------------------------

NO_STORE_COMMANDS = [
    ("users", "list"),
    ("users", "add", "ivanov", "--password", "Ivanov-pw-1"),
    ("users", "add", "ivanov"),  # refused before it asks for a password
    ("users", "set-password", "admin", "--password", "Admin-pw-12"),
    ("users", "set-password", "admin"),
    ("users", "block", "admin"),
    ("sessions", "list"),
    ("sessions", "close", "--user", "admin"),
    ("config", "show"),
    ("config", "increment-version"),
    ("audit", "export"),
    ("keys", "list"),
    ("keys", "rotate"),
    ("keys", "retire", "k1"),
    ("licences", "show"),
    ("licences", "reload"),
]


@pytest.mark.parametrize("command", NO_STORE_COMMANDS, ids=" ".join)
def test_an_administrative_command_creates_nothing_where_there_is_no_store(
    run: Run, tmp_path: Path, command: tuple[str, ...]
) -> None:
    work = tmp_path / "work"
    line = _one_line(run(*command), NO_STORE, str(work / "sessiond-data"), "no_store")
    for how in ("--config", "--data-dir", "SESSIOND_DATA_DIR", "sessiond init"):
        assert how in line, (how, line)
    elsewhere = tmp_path / "elsewhere"
    _one_line(run(*command, SESSIOND_DATA_DIR=str(elsewhere)), NO_STORE, str(elsewhere))
    assert _files(tmp_path) == {Path("work")}  # no folder, no database, no key ring


def test_a_database_without_sessiond_schema_is_refused_untouched(
    run: Run, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database().replace("@", f":{SECRET}@", 1)
    line = _one_line(run(*ADMIN, SESSIOND_DATABASE_URL=url), NO_STORE, "database_url", "init")
    assert SECRET not in line
    made = run("init", SESSIOND_DATABASE_URL=url, SESSIOND_DATA_DIR=str(tmp_path / "keys"))
    assert made.returncode == 0 and "created the store" in made.stdout, made.stderr
    listed = run(*ADMIN, "--json", SESSIOND_DATABASE_URL=url)
    assert [u["Login"] for u in json.loads(listed.stdout)] == ["admin"], listed.stderr
    assert _files(tmp_path) == {
        Path("work"),
        Path("keys"),
        Path("keys/signature-keys.json"),
        Path("keys/audit-keys.json"),
    }


def test_init_creates_the_store_once_and_the_commands_find_it(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = _init(run, data)
    assert "one-time password" in made.stdout and "created the store" in made.stdout
    assert (data.stat().st_mode & 0o777) == 0o700
    for name in ("sessiond.db", "signature-keys.json", "audit-keys.json"):
        assert ((data / name).stat().st_mode & 0o777) == 0o600
    again = _init(run, data)
    assert "already there" in again.stdout and "one-time password" not in again.stdout
    # From another folder, by --data-dir, SESSIOND_DATA_DIR or a settings file.
    config = tmp_path / "sessiond.toml"
    config.write_text(f'[sessiond]\ndata_dir = "{data}"\n')
    for way in (["--data-dir", str(data)], ["--config", str(config)]):
        assert "admin" in run(*ADMIN, *way, cwd=tmp_path).stdout
    assert "admin" in run(*ADMIN, cwd=tmp_path, SESSIOND_DATA_DIR=str(data)).stdout


def test_a_store_at_another_schema_revision_is_not_migrated_by_commands(
    run: Run, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _init(run, data)

    def set_revision(revision: str) -> None:
        with sqlite3.connect(data / "sessiond.db") as db:
            db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        db.close()

    set_revision("0001")  # older: the commands say how to upgrade, and leave it as it is
    line = _one_line(run(*ADMIN, "--data-dir", str(data)), NO_STORE, "0001", "store_outdated")
    assert "sessiond serve" in line and "sessiond init" in line
    with sqlite3.connect(data / "sessiond.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
    db.close()
    set_revision("9999")  # newer: this sessiond does not know it, init and serve included
    for command in (ADMIN, ("init",), ("serve",)):
        _one_line(run(*command, "--data-dir", str(data)), NO_STORE, "9999", "newer sessiond")


# --- 3. --version, --data-dir, --json --------------------------------------------------------


def test_version(run: Run) -> None:
    from sessiond import __version__

    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sessiond {__version__}"


SETTINGS_COMMANDS = [
    ("serve",),
    ("init",),
    *[("users", c) for c in ("add", "update", "list", "set-password", "block", "unblock")],
    *[("sessions", c) for c in ("list", "close")],
    *[("config", c) for c in ("show", "increment-version")],
    ("audit", "export"),
    *[("keys", c) for c in ("list", "rotate", "retire")],
    *[("licences", c) for c in ("show", "install", "reload")],
]


def test_every_command_that_reads_settings_takes_data_dir(run: Run) -> None:
    for command in SETTINGS_COMMANDS:
        shown = run(*command, "--help")
        assert "--data-dir" in shown.stdout and "--config" in shown.stdout, command


def test_lists_print_json(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _init(run, data)
    where = ("--data-dir", str(data))

    def as_json(*command: str) -> object:
        result = run(*command, "--json", *where)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    (admin,) = as_json("users", "list")  # type: ignore[misc]
    assert admin["Login"] == "admin" and admin["AccessLevel"] == "Administrator"
    assert {"ID", "Name", "LoginType", "Blocked", "Created"} <= set(admin)
    assert as_json("sessions", "list") == []
    keys = as_json("keys", "list")
    assert isinstance(keys, dict) and keys["Current"] in keys["Keys"]
    usage = as_json("licences", "show")
    assert isinstance(usage, dict) and {"Licence", "Seats", "Warnings"} <= set(usage)
    configuration = as_json("config", "show")
    assert isinstance(configuration, dict) and configuration["Version"] == 1


# --- 4. secrets are never printed ------------------------------------------------------------


def test_settings_never_show_their_secrets(tmp_path: Path) -> None:
    directory = {"url": "ldap://127.0.0.1", "bind_dn": "cn=sessiond", "bind_password": SECRET}
    settings = load_settings(
        None,
        data_dir=tmp_path,
        admin_password=SECRET,
        database_url=f"postgresql+asyncpg://sessiond:{SECRET}@db.example.com/sessiond",
        ldap=directory,
        windows={
            "realm": "CORP.EXAMPLE.COM",
            "password_check": "ldap",
            "verify_kdc": False,
            "negotiate": False,
            "directory": directory,
        },
    )
    for shown in (repr(settings), str(settings), str(settings.model_dump())):
        assert SECRET not in shown
    assert "sessiond:***@db.example.com" in repr(settings)
    assert settings.admin_password_value == SECRET
    assert settings.ldap is not None and settings.ldap.bind_password_value == SECRET
    assert SECRET in settings.effective_database_url and SECRET not in settings.shown_database_url


def test_errors_never_show_the_secrets(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "sessiond.toml"
    config.write_text(
        f'[sessiond]\ndatabase_url = "postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/x"\n'
        f'admin_password = "{SECRET}"\ntouch_interval = "soon"\n'
        f'[sessiond.ldap]\nurl = "http://not-ldap"\nbind_password = "{SECRET}"\n'
    )
    for command in (("serve",), ADMIN):
        result = run(*command, "--config", str(config))
        line = _one_line(result, BAD_SETTING, "touch_interval", "ldap.url")
        assert SECRET not in result.stdout + result.stderr, line
    bad_url = run(*ADMIN, SESSIOND_DATABASE_URL=f"mysql://u:{SECRET}@h/x")
    assert SECRET not in _one_line(bad_url, BAD_SETTING, "database_url")


# --- refusals keep status 1 -------------------------------------------------------------------


def test_a_refusal_is_status_1(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _init(run, data)
    _one_line(run("users", "block", "nobody", "--data-dir", str(data)), REFUSED, "not_found")
    current = json.loads(run("keys", "list", "--json", "--data-dir", str(data)).stdout)["Current"]
    _one_line(run("keys", "retire", current, "--data-dir", str(data)), REFUSED, "rotate first")


# --- 5. what an operator meets at the terminal -----------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("audit", "export"), ("users", "list"), ("users", "list", "--json")],
    ids=["audit-export", "table", "json"],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``sessiond audit export | head -1``: the reader closes the pipe; the command ends with
    141 (a Unix tool that SIGPIPE ended, as a shell reports it), says nothing, and never
    blames the database."""
    data = tmp_path / "data"
    made = subprocess.run(
        [sys.executable, "-m", "sessiond", "init", "--data-dir", str(data)],
        env=_env(),
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "sessiond", *command, "--data-dir", str(data)],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line is written
    status = process.wait(60)
    said = process.stderr.read().decode()
    process.stderr.close()
    assert status == 141, said
    assert said == ""


def _on_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """Run ``sessiond`` with its output on a terminal ``columns`` wide."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = _env(COLUMNS=str(columns), TERM="dumb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sessiond", *args], env=env, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command has ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(60), b"".join(chunks).decode()


def test_the_tables_never_cut_an_id_on_an_80_column_terminal(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _init(run, data)
    where = ("--data-dir", str(data))
    long_name = "Administrator of the document platform for every department"
    added = run("users", "add", "reviewer", "--name", long_name, "--password", SECRET, *where)
    assert added.returncode == 0, added.stderr
    ids = [user["ID"] for user in json.loads(run("users", "list", "--json", *where).stdout)]
    assert len(ids) == 2
    status, shown = _on_terminal(["users", "list", *where], 80)
    assert status == 0, shown
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    for user_id in ids:
        assert user_id in shown, shown  # whole, on one line: it can be copied


def test_a_wrong_value_in_the_settings_file_is_reported_when_overridden(
    run: Run, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _init(run, data)
    settings = tmp_path / "sessiond.toml"
    settings.write_text('[sessiond]\nport = "eighty"\n')
    # The environment and the command line override the wrong value; the file still has it.
    for command in (("users", "list", "--data-dir", str(data)), ("serve", "--port", "0")):
        result = run(*command, "--config", str(settings), SESSIOND_PORT="8400")
        _one_line(result, BAD_SETTING, "port", str(settings), "invalid_settings")


def test_sigterm_ends_the_server_with_status_0(tmp_path: Path) -> None:
    """systemd stops a service with SIGTERM and counts anything but 0 as a failure."""
    from tests.conftest import ServerProcess, server_env

    data = tmp_path / "sessiond-data"
    server = ServerProcess(data, free_port(), server_env(data), tmp_path / "server.log")
    server.start()
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0, server.log_path.read_text()


def test_licences_install_prints_its_warning_once(run: Run, tmp_path: Path) -> None:
    from tests import licences

    data = tmp_path / "data"
    _init(run, data)
    where = ("--data-dir", str(data))
    first = licences.write_unsigned(tmp_path / "one.json", PersonalClient=1)
    assert run("licences", "install", str(first), *where).returncode == 0
    given = run("users", "update", "admin", "--personal-client", *where)
    assert given.returncode == 0, given.stderr
    smaller = licences.write_unsigned(tmp_path / "none.json", ID="L-2026-2", PersonalClient=0)
    installed = run("licences", "install", str(smaller), *where)
    assert installed.returncode == 0, installed.stderr
    assert "installed licence L-2026-2" in installed.stdout
    lines = installed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), installed.stderr
    assert "1 personal client licences are given out" in lines[0]
