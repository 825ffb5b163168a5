"""Fixtures: real SQLite stores in temporary folders, and real sessiond server processes."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessiond.auth.environment import apply_process_environment
from sessiond.keys import KeyRing
from sessiond.service import SessionService
from sessiond.settings import Settings, load_settings
from sessiond.store import create_store
from tests.infra.conftest_fixtures import (
    kerberos_realm,
    ldap_server,
    ntlm_users,
    oidc_provider,
    postgres_server,
    samba_domain,
)

__all__ = [
    "kerberos_realm",
    "ldap_server",
    "ntlm_users",
    "oidc_provider",
    "postgres_server",
    "samba_domain",
]  # fixtures for every test module

# Argon2 parameters small enough for a test suite, still Argon2id.
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8192, "parallelism": 1}
FAST_ARGON2_ENV = {
    "SESSIOND_ARGON2__TIME_COST": "1",
    "SESSIOND_ARGON2__MEMORY_COST": "8192",
    "SESSIOND_ARGON2__PARALLELISM": "1",
}


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("argon2", FAST_ARGON2)
        return load_settings(None, **overrides)

    return make


@pytest.fixture
async def make_service(
    make_settings: Callable[..., Settings], clock: Clock
) -> AsyncIterator[Callable[..., Any]]:
    started: list[SessionService] = []

    async def make(**overrides: Any) -> SessionService:
        settings = make_settings(**overrides)
        # What `sessiond serve` does once at its start (KRB5_CONFIG for [windows]).
        apply_process_environment(settings)
        service = SessionService(
            settings,
            create_store(settings.effective_database_url),
            KeyRing.load_or_create(settings.effective_keys_file),
            clock=clock,
        )
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.close()


@pytest.fixture
async def service(make_service: Callable[..., Any]) -> SessionService:
    svc: SessionService = await make_service()
    return svc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A real ``sessiond serve`` on loopback."""

    data_dir: Path
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    admin_password: str = ""
    one_time_password: str = ""
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sessiond", "serve", "--port", str(self.port)],
            cwd=self.data_dir.parent,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sessiond exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(
                f"sessiond did not answer in {timeout}s:\n{self.log_path.read_text()}"
            )
        found = re.search(r"one-time password (\S+)", self.log_path.read_text())
        if found:
            # A generated password must be changed before it signs anyone in.
            self.one_time_password = found.group(1)
            self.admin_password = "Admin-" + secrets.token_urlsafe(12)
            changed = httpx.post(
                f"{self.url}/api/v1/sessions/change-password",
                json={
                    "Login": "admin",
                    "OldPassword": self.one_time_password,
                    "NewPassword": self.admin_password,
                },
                timeout=30,
            )
            assert changed.status_code == 200, changed.text

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a ``sessiond`` command against this server's settings."""
        return subprocess.run(
            [sys.executable, "-m", "sessiond", *args],
            cwd=self.data_dir.parent,
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env.update(FAST_ARGON2_ENV)
    env["SESSIOND_DATA_DIR"] = str(data_dir)
    env["SESSIOND_CONFIGURATION_POLL_INTERVAL"] = "0.2"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("server")
    data_dir = root / "sessiond-data"
    proc = ServerProcess(data_dir, free_port(), server_env(data_dir), root / "server.log")
    proc.start()
    yield proc
    proc.stop()
