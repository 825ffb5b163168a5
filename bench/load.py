"""HTTP load generators, each in a process of its own: ``wrk`` if installed, else httpx.

``python -m bench.load URL --seconds S --connections C [-H 'Name: value']`` is the httpx
fallback: keep-alive GETs from C concurrent tasks for S seconds (and at most ``--max-requests``),
then one JSON line with the counts and latencies. It is much slower than wrk, so against a
fast server it measures itself more than the server: the run says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import httpx

from .common import PYTHON, BenchError, Config, bench_pythonpath, clean_env, percentile, wrk_path

MAX_REQUESTS = 5_000_000  # a bound on any one load run, far above what S seconds can reach


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    failures: int  # non-2xx/3xx answers plus socket errors and timeouts
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class LoadGenerator:
    name = "none"

    def run(
        self, url: str, headers: Mapping[str, str], seconds: float, connections: int
    ) -> LoadResult:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


# --- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = re.compile(r"([\d.]+)(us|ms|s|m|h)\b")


def _ms(text: str) -> float:
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise BenchError(f"cannot read wrk time {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    total = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m|h)),", output)
    if not total:
        raise BenchError(f"cannot read wrk output:\n{output}")
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", output)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    failures = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        failures += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        failures += sum(int(n) for n in sockets.groups())
    return LoadResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2)) / 1e3,
        failures=failures,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        max_ms=_ms(latency.group(3)) if latency else float("nan"),
    )


class Wrk(LoadGenerator):
    """wrk with one thread: the other core is the server's (the machine has two)."""

    name = "wrk"

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        try:
            out = subprocess.run(
                [self.path, "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return "wrk"
        first = (out.stdout or out.stderr).splitlines()
        return (first[0].split("Copyright")[0].strip() if first else "wrk") + ", 1 thread"

    def run(
        self, url: str, headers: Mapping[str, str], seconds: float, connections: int
    ) -> LoadResult:
        argv = [
            self.path,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
        ]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds + 30, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"wrk did not finish within {seconds + 30:.0f}s") from exc
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        return parse_wrk(done.stdout)


# --- httpx, in a child process --------------------------------------------------------------


class HttpxLoad(LoadGenerator):
    name = "httpx"

    def describe(self) -> str:
        return (
            f"httpx {httpx.__version__} asyncio in a separate process (wrk not found; "
            "figures are bounded by the client: install the Debian package wrk)"
        )

    def run(
        self, url: str, headers: Mapping[str, str], seconds: float, connections: int
    ) -> LoadResult:
        argv = [
            PYTHON,
            "-m",
            "bench.load",
            url,
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
        ]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
                env=clean_env(PYTHONPATH=bench_pythonpath()),
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"the httpx load did not finish within {seconds + 60:.0f}s") from exc
        if done.returncode != 0:
            raise BenchError(f"the httpx load failed ({done.returncode}): {done.stderr}")
        return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def load_generator(config: Config) -> LoadGenerator:
    path = wrk_path()
    if config.load == "wrk" and path is None:
        raise BenchError("--load wrk: wrk is not installed (Debian package wrk)")
    if path is not None and config.load in ("auto", "wrk"):
        return Wrk(path)
    return HttpxLoad()


async def _drive(
    url: str, headers: dict[str, str], seconds: float, connections: int, max_requests: int
) -> LoadResult:
    """``connections`` tasks, each with a client of its own: one shared client's pool slows
    down sharply with many concurrent requests, and would measure itself even more."""
    latencies: list[float] = []
    failures = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal failures, sent
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(5.0)) as client:
            while sent < max_requests:
                now = time.perf_counter()
                if now >= deadline:
                    return
                sent += 1
                try:
                    response = await client.get(url)
                    ok = 200 <= response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - now) * 1e3)
                if not ok:
                    failures += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return LoadResult(
        requests=len(latencies) - failures,
        seconds=elapsed,
        failures=failures,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=float("nan")),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost")):
        parser.error("load goes to loopback only")
    headers = dict(h.split(": ", 1) for h in args.header)
    seconds = min(max(args.seconds, 0.1), 600.0)
    drive = _drive(args.url, headers, seconds, args.connections, args.max_requests)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(drive)
    else:
        result = uvloop.run(drive)
    sys.stdout.write(json.dumps(asdict(result)) + "\n")


if __name__ == "__main__":
    main()
