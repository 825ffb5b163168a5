"""Shared pieces: settings of a run, statistics, server processes on loopback, the machine."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
PYTHON = sys.executable

# Argon2id cost for servers whose sign-ins are not what is measured (as in the test suite).
FAST_ARGON2_ENV = {
    "SESSIOND_ARGON2__TIME_COST": "1",
    "SESSIOND_ARGON2__MEMORY_COST": "8192",
    "SESSIOND_ARGON2__PARALLELISM": "1",
}


class BenchError(RuntimeError):
    """A benchmark could not produce figures (a server failed, a request was refused...)."""


@dataclass(frozen=True)
class Config:
    """What one run does; ``--quick`` and the other options of ``python -m bench`` set it."""

    rounds: int = 5
    duration: float = 5.0  # seconds of load per validate round and target
    warmup: float = 1.0  # seconds of load per target before the first round
    connections: int = 32  # open connections of the load generator
    load: str = "auto"  # auto | wrk | httpx
    openers: int = 4  # concurrent sign-ins in the open benchmark
    opens_per_round: int = 16
    unknown_samples: int = 6  # per round and kind in the unknown-login benchmark
    refusal_samples: int = 20  # per round and case in the refusals benchmark
    signers: int = 1  # concurrent sign-in loops in validate-under-signin
    sessions: int = 1000  # distinct sessions whose tokens validate-many cycles through
    writers: int = 1  # sign-in loops beside the load in validate-many's with-writes target
    round_timeout: float = 180.0  # no round of any benchmark runs longer than this
    compare_src: Path | None = None  # validate: a second sessiond from this source folder
    scale_rows: int = 1_000_000  # scale: live sessions in the large stores
    scale_tokens: int = 100_000  # scale: distinct tokens of the large working set
    scale_touch_interval: int | None = None  # scale: the servers' touch_interval, seconds


# --- statistics -----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


@dataclass
class Series:
    """One measured quantity over the rounds of a run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return median(self.values)


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def print_table(series: Sequence[Series], digits: int = 1) -> None:
    width = max(len(s.name) for s in series)
    print(f"  {'':<{width}}  {'median':>10}  {'min':>10}  {'max':>10}  unit")
    for s in series:
        low = min(s.values) if s.values else math.nan
        high = max(s.values) if s.values else math.nan
        print(
            f"  {s.name:<{width}}  {fmt(s.median, digits):>10}  {fmt(low, digits):>10}  "
            f"{fmt(high, digits):>10}  {s.unit}"
        )


def print_ratio(
    label: str, top: Series, bottom: Series, goal: float | None = None, judge: bool = True
) -> float:
    """Print the ratio of the medians, the range of the per-round ratios, and the goal
    (with a verdict unless ``judge`` is false: figures that cannot support one)."""
    value = ratio(top.median, bottom.median)
    per_round = [ratio(a, b) for a, b in zip(top.values, bottom.values, strict=False)]
    line = f"  {label}: {fmt(value, 2)}x"
    if per_round:
        line += f"  (per round {fmt(min(per_round), 2)}-{fmt(max(per_round), 2)})"
    if goal is not None:
        verdict = ("meets" if value >= goal else "BELOW") if judge else "not judged"
        line += f"  goal >= {goal}x: {verdict}"
    print(line)
    return value


def print_ratio_within(
    label: str, top: Series, bottom: Series, low: float, high: float, extra: str = ""
) -> float:
    """Like :func:`print_ratio`, for a goal that is a band: the ratio of the medians must lie
    within ``low``-``high`` (both bounds printed). ``extra`` is appended before the goal."""
    value = ratio(top.median, bottom.median)
    per_round = [ratio(a, b) for a, b in zip(top.values, bottom.values, strict=False)]
    line = f"  {label}: {fmt(value, 2)}x"
    if per_round:
        line += f"  (per round {fmt(min(per_round), 2)}-{fmt(max(per_round), 2)}{extra})"
    verdict = "meets" if low <= value <= high else "OUTSIDE"
    line += f"  goal {low:g}-{high:g}x: {verdict}"
    print(line)
    return value


def heading(title: str, what: str) -> None:
    print()
    print(f"== {title} ==")
    print(f"   {what}")


# --- processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to send SIGTERM to the child if this process dies without stopping it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any SESSIOND_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env.update(extra)
    return env


@dataclass
class Server:
    """A server process on loopback, answering ``ready_path`` once it is up."""

    name: str
    argv: list[str]
    port: int
    cwd: Path
    env: dict[str, str]
    ready_path: str = "/"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 60.0, poll: float = 0.1) -> float:
        """Start the process and wait until ``ready_path`` answers 200, asking every ``poll``
        seconds; returns the seconds from just before the process started until then."""
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(poll)
        raise BenchError(f"{self.name} did not answer in {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"{self.name} is not running:\n{self.log_tail()}")


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/PID/stat`` (the command name, which may hold spaces, cut
    off), or None where there is no such file."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid``, its children
    that have exited and been waited for, and its live children; NaN without Linux's /proc.
    Differences of two readings give the CPU a server (for PostgreSQL: the postmaster and its
    backends) used in between."""
    own = _stat(pid) if pid is not None else None
    if own is None:
        return math.nan
    ticks = os.sysconf("SC_CLK_TCK")
    # Indexes of fields 4 (ppid), 14-15 (utime, stime), 16-17 (cutime, cstime) in _stat's list.
    total = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = _stat(int(entry.name))
            if child is not None and child[1] == str(pid):
                total += int(child[11]) + int(child[12])
    return total / ticks


def start_server(stack: contextlib.ExitStack, server: Server) -> Server:
    """Start ``server`` and make sure it is stopped when ``stack`` closes, whatever happens."""
    stack.callback(server.stop)
    server.start()
    return server


def start_app(stack: contextlib.ExitStack, root: Path, kind: str) -> Server:
    """One of the baseline apps of :mod:`bench.apps` (``bare`` or ``fastapi``), one worker."""
    port = free_port()
    argv = [PYTHON, "-m", "bench.apps", kind, "--port", str(port)]
    env = clean_env(PYTHONPATH=bench_pythonpath())
    return start_server(stack, Server(kind, argv, port, root, env))


@dataclass(frozen=True)
class Sessiond:
    server: Server
    admin_password: str

    @property
    def url(self) -> str:
        return self.server.url


def start_sessiond(
    stack: contextlib.ExitStack,
    root: Path,
    name: str,
    *,
    fast_argon2: bool,
    database_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Sessiond:
    """A real ``sessiond serve`` with its data (SQLite file, key ring) in ``root/name-data``,
    as the tests start it; on the database at ``database_url`` instead of SQLite if given.

    ``extra_env`` adds settings (``SESSIOND_*``) to the server's environment. ``source`` is a
    folder holding a ``sessiond`` package (see :func:`sessiond_source`) that the server runs
    instead of the installed one: it goes first on the server's ``PYTHONPATH``."""
    port = free_port()
    password = "bench-" + secrets.token_urlsafe(12)
    env = clean_env(
        SESSIOND_DATA_DIR=str(root / f"{name}-data"),
        SESSIOND_HOST=HOST,
        SESSIOND_ADMIN_PASSWORD=password,
    )
    if fast_argon2:
        env.update(FAST_ARGON2_ENV)
    if database_url is not None:
        env["SESSIOND_DATABASE_URL"] = database_url
    if extra_env:
        env.update(extra_env)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
        imported = sessiond_imported_from(env, root)
        if Path(imported).resolve() != (source / "sessiond").resolve():
            raise BenchError(
                f"{name}: with PYTHONPATH={env['PYTHONPATH']} sessiond is imported from "
                f"{imported}, not from {source / 'sessiond'}"
            )
    argv = [PYTHON, "-m", "sessiond", "serve", "--port", str(port)]
    server = Server(name, argv, port, root, env, ready_path="/api/v1/health")
    start_server(stack, server)
    return Sessiond(server, password)


def sessiond_source(path: Path) -> Path:
    """The folder to put on ``PYTHONPATH`` to run the ``sessiond`` of a source tree: ``path``
    itself if it holds the package, else ``path/src`` (a copy of the repository)."""
    for candidate in (path, path / "src"):
        if (candidate / "sessiond" / "__init__.py").is_file():
            return candidate.resolve()
    raise BenchError(f"no sessiond package in {path} or {path / 'src'}")


def sessiond_imported_from(env: Mapping[str, str], cwd: Path) -> str:
    """The folder of the ``sessiond`` package a server started with ``env`` in ``cwd`` would
    import (asked of the same interpreter)."""
    result = subprocess.run(
        [PYTHON, "-c", "import os, sessiond; print(os.path.dirname(sessiond.__file__))"],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"importing sessiond failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def sign_in(url: str, login: str, password: str, timeout: float = 60.0) -> str:
    """Open a session over HTTP; the auth form of its token (the Tessa-Session value)."""
    response = httpx.post(
        f"{url}/api/v1/sessions/open",
        json={"Login": login, "Password": password},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise BenchError(f"sign-in at {url} answered {response.status_code}: {response.text}")
    token = response.json()["AuthToken"]
    if not isinstance(token, str):
        raise BenchError(f"sign-in at {url} gave no AuthToken")
    return token


def call_api(client: httpx.Client, method: str, url: str, body: object = None) -> Any:
    """An administrator's call to the API (set-up, never measured): its JSON answer; any
    status but 200 or 201 stops the benchmark."""
    response = client.request(method, url, json=body)
    if response.status_code not in (200, 201):
        raise BenchError(f"{method} {url} answered {response.status_code}: {response.text}")
    return response.json()


def audit_records(
    database: Path, action: str, after_id: int
) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """The last audit id, and the records of ``action`` (its stored value) after ``after_id``
    as (user name, details), read from a server's SQLite file (read-only)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        last = conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0]
        rows = conn.execute(
            "SELECT user_name, details FROM audit WHERE action = ? AND id > ?",
            (action, after_id),
        ).fetchall()
    finally:
        conn.close()
    return int(last), [(str(user_name), json.loads(details)) for user_name, details in rows]


def bench_pythonpath() -> str:
    """The folder holding the ``bench`` package, so a child process can import it."""
    root = str(Path(__file__).resolve().parent.parent)
    current = os.environ.get("PYTHONPATH")
    return root if not current else f"{root}{os.pathsep}{current}"


# --- the machine ----------------------------------------------------------------------------


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def wrk_path() -> str | None:
    return shutil.which("wrk")


def machine_lines(load_generator: str) -> Iterator[str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    one, five, _ = os.getloadavg()
    yield f"machine: {platform.machine()}, {usable} usable cores (nproc), load {one:.2f}/{five:.2f}"
    yield f"python: {platform.python_version()} ({platform.python_implementation()}) {PYTHON}"
    names = ("sessiond", "uvicorn", "starlette", "fastapi", "uvloop", "httptools", "argon2-cffi")
    yield "packages: " + ", ".join(f"{n} {_version(n)}" for n in names)
    spec = importlib.util.find_spec("sessiond")
    origin = Path(spec.origin).parent if spec and spec.origin else "not found"
    yield f"sessiond imported from: {origin}"
    yield f"load generator: {load_generator}"
