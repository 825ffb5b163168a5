"""HTTP load generators, each in a process of its own: ``wrk`` if installed, else httpx.

``python -m bench.load URL --seconds S --connections C [-H 'Name: value']`` is the httpx
fallback: keep-alive GETs from C concurrent tasks for S seconds (and at most ``--max-requests``),
then one JSON line with the counts and latencies. It is much slower than wrk, so against a
fast server it measures itself more than the server: the run says so.

A :class:`HeaderCycle` makes the requests carry one header whose value goes round a list,
request by request (round-robin): wrk does it with a Lua script written beside the list, the
fallback with ``--cycle-header NAME --cycle-file FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from .common import PYTHON, BenchError, Config, bench_pythonpath, clean_env, percentile, wrk_path

MAX_REQUESTS = 5_000_000  # a bound on any one load run, far above what S seconds can reach


@dataclass(frozen=True)
class LoadResult:
    requests: int  # 2xx/3xx answers
    seconds: float
    failures: int  # non-2xx/3xx answers plus socket errors and timeouts
    p50_ms: float
    p99_ms: float
    max_ms: float
    rejected: int = 0  # of the failures, the non-2xx/3xx answers

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class HeaderCycle:
    """Requests carry ``name`` with the values in ``values_file`` (one a line), in turn."""

    name: str
    values_file: Path
    count: int

    @classmethod
    def write(cls, folder: Path, name: str, values: Sequence[str]) -> HeaderCycle:
        if not values:
            raise BenchError(f"no values to cycle through for {name}")
        for value in values:
            if not value or not value.isprintable() or not value.isascii():
                raise BenchError(f"a {name} value is empty or not printable ASCII: {value!r}")
        path = folder / f"cycle-{name.lower()}.txt"
        path.write_text("\n".join(values) + "\n", encoding="ascii")
        return cls(name, path, len(values))


class LoadGenerator:
    name = "none"

    def run(
        self,
        url: str,
        headers: Mapping[str, str],
        seconds: float,
        connections: int,
        cycle: HeaderCycle | None = None,
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
    failures = rejected = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        rejected = int(non_2xx.group(1))
        failures += rejected
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        failures += sum(int(n) for n in sockets.groups())
    return LoadResult(
        # wrk counts every answer; only the 2xx/3xx ones count here, as in the httpx fallback.
        requests=int(total.group(1)) - rejected,
        seconds=_ms(total.group(2)) / 1e3,
        failures=failures,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        max_ms=_ms(latency.group(3)) if latency else float("nan"),
        rejected=rejected,
    )


def _lua_string(text: str) -> str:
    """A Lua string literal of ``text``: every byte as a decimal escape, so nothing in it
    (quotes, backslashes, brackets) can end it early."""
    return '"' + "".join(f"\\{byte:03d}" for byte in text.encode()) + '"'


# One wrk thread (the bench always runs one) keeps one counter, so the values go round in
# turn across all its connections. wrk ignores a script that fails to load, so done() reports
# what the threads prepared and sent, and the bench checks that line.
_CYCLE_LUA = """\
-- sessiond bench: each request carries the next value of one header, round-robin.
local name = {name}
local path = {path}
local expected = {count}
local threads = {{}}
prepared = 0
sent = 0
local requests = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local values = {{}}
  for line in io.lines(path) do
    if line ~= "" then
      values[#values + 1] = line
    end
  end
  if #values ~= expected then
    error(string.format("read %d values from %s, expected %d", #values, path, expected))
  end
  for i, value in ipairs(values) do
    local headers = {{}}
    for key, header in pairs(wrk.headers) do
      headers[key] = header
    end
    headers[name] = value
    requests[i] = wrk.format(nil, nil, headers)
  end
  prepared = #requests
end

function request()
  sent = sent + 1
  return requests[(sent - 1) % prepared + 1]
end

function done(summary, latency, counts)
  local total_prepared, total_sent = 0, 0
  for _, thread in ipairs(threads) do
    total_prepared = total_prepared + (thread:get("prepared") or 0)
    total_sent = total_sent + (thread:get("sent") or 0)
  end
  io.write(string.format("header cycle: %d threads, %d values prepared, %d requests sent\\n",
    #threads, total_prepared, total_sent))
end
"""
_CYCLE_DONE = re.compile(
    r"^header cycle: (\d+) threads, (\d+) values prepared, (\d+) requests sent$", re.MULTILINE
)


def _check_cycle(output: str, cycle: HeaderCycle, result: LoadResult) -> None:
    done = _CYCLE_DONE.search(output)
    if done is None:
        raise BenchError(f"wrk did not run the {cycle.name} cycle script:\n{output}")
    threads, prepared, sent = (int(n) for n in done.groups())
    if prepared != threads * cycle.count or sent < result.requests:
        raise BenchError(
            f"wrk's {cycle.name} cycle prepared {prepared} requests in {threads} thread(s) for "
            f"{cycle.count} values and sent {sent} for {result.requests} answers"
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

    def _script(self, cycle: HeaderCycle) -> Path:
        script = cycle.values_file.with_suffix(".lua")
        if not script.exists():
            script.write_text(
                _CYCLE_LUA.format(
                    name=_lua_string(cycle.name),
                    path=_lua_string(str(cycle.values_file)),
                    count=cycle.count,
                ),
                encoding="ascii",
            )
        return script

    def run(
        self,
        url: str,
        headers: Mapping[str, str],
        seconds: float,
        connections: int,
        cycle: HeaderCycle | None = None,
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
        argv += _header_args(headers)
        if cycle is not None:
            argv += ["-s", str(self._script(cycle))]
        argv.append(url)
        done = _run_load("wrk", argv, seconds + 30)
        result = parse_wrk(done.stdout)
        if cycle is not None:
            _check_cycle(done.stdout + done.stderr, cycle, result)
        return result


# --- httpx, in a child process --------------------------------------------------------------


class HttpxLoad(LoadGenerator):
    name = "httpx"

    def describe(self) -> str:
        return (
            f"httpx {httpx.__version__} asyncio in a separate process (wrk not found; "
            "figures are bounded by the client: install the Debian package wrk)"
        )

    def run(
        self,
        url: str,
        headers: Mapping[str, str],
        seconds: float,
        connections: int,
        cycle: HeaderCycle | None = None,
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
        argv += _header_args(headers)
        if cycle is not None:
            argv += ["--cycle-header", cycle.name, "--cycle-file", str(cycle.values_file)]
        env = clean_env(PYTHONPATH=bench_pythonpath())
        done = _run_load("the httpx load", argv, seconds + 60, env)
        return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def _header_args(headers: Mapping[str, str]) -> list[str]:
    """``-H "Name: value"`` for each header (both generators take them so)."""
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]


def _run_load(
    what: str, argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a load generator to its end; one that fails or outlives ``timeout`` stops the
    benchmark."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done


def load_generator(config: Config) -> LoadGenerator:
    path = wrk_path()
    if config.load == "wrk" and path is None:
        raise BenchError("--load wrk: wrk is not installed (Debian package wrk)")
    if path is not None and config.load in ("auto", "wrk"):
        return Wrk(path)
    return HttpxLoad()


async def _drive(
    url: str,
    headers: dict[str, str],
    seconds: float,
    connections: int,
    max_requests: int,
    cycle: tuple[str, list[str]] | None = None,
) -> LoadResult:
    """``connections`` tasks, each with a client of its own: one shared client's pool slows
    down sharply with many concurrent requests, and would measure itself even more.
    ``cycle`` (a header name and its values): each request carries the next value."""
    latencies: list[float] = []
    failures = rejected = 0
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal failures, rejected, sent
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(5.0)) as client:
            while sent < max_requests:
                now = time.perf_counter()
                if now >= deadline:
                    return
                extra = {cycle[0]: cycle[1][sent % len(cycle[1])]} if cycle else None
                sent += 1
                try:
                    response = await client.get(url, headers=extra)
                    ok = 200 <= response.status_code < 400
                    if not ok:
                        rejected += 1
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
        rejected=rejected,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--cycle-header", help="a header whose value goes round --cycle-file")
    parser.add_argument("--cycle-file", type=Path, help="the values, one a line")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost")):
        parser.error("load goes to loopback only")
    if (args.cycle_header is None) != (args.cycle_file is None):
        parser.error("--cycle-header and --cycle-file go together")
    cycle = None
    if args.cycle_header:
        values = [v for v in args.cycle_file.read_text(encoding="ascii").splitlines() if v]
        if not values:
            parser.error("--cycle-file holds no values")
        cycle = (args.cycle_header, values)
    headers = dict(h.split(": ", 1) for h in args.header)
    seconds = min(max(args.seconds, 0.1), 600.0)
    drive = _drive(args.url, headers, seconds, args.connections, args.max_requests, cycle)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(drive)
    else:
        result = uvloop.run(drive)
    sys.stdout.write(json.dumps(asdict(result)) + "\n")


if __name__ == "__main__":
    main()
