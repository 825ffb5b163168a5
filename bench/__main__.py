"""``python -m bench``: run the benchmarks and print their figures and ratios.

Every load goes to 127.0.0.1, every loop is bounded in count and time, and every server
process started is stopped before the run ends, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .common import BenchError, Config, machine_lines, sessiond_source
from .load import LoadGenerator, load_generator

BENCHMARKS = (
    "validate",
    "validate-many",
    "validate-pg",
    "open",
    "unknown-login",
    "validate-under-signin",
    "refusals",
    "refusals-domain",
    "flood",
    "scale",
    "argon2-presets",
    "pg-connections",
    "oidc",
)
# Run only when named with --only: a Samba AD DC (root); the test OpenID Provider (Node.js)
OPT_IN = ("refusals-domain", "oidc")
MAX_SESSIONS = 50_000
MAX_SCALE_ROWS = 5_000_000


def _parse(argv: list[str] | None) -> tuple[Config, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="sessiond benchmarks: medians of alternating rounds and ratios against "
        "baselines measured in the same run. Benchmarks: " + ", ".join(BENCHMARKS) + ".",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer and shorter rounds (a smoke run)"
    )
    parser.add_argument("--rounds", type=int, help="rounds per benchmark (default 5, quick 3)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help="run only this benchmark (repeatable): "
        + ", ".join(BENCHMARKS)
        + "; "
        + ", ".join(OPT_IN)
        + " only when named here",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of HTTP load per round and target (default 5)"
    )
    parser.add_argument("--connections", type=int, help="load generator connections (32)")
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="load generator: wrk if installed (auto), or the httpx fallback",
    )
    parser.add_argument("--openers", type=int, help="concurrent sign-ins in 'open' (4)")
    parser.add_argument("--signers", type=int, help="sign-in loops in validate-under-signin (1)")
    parser.add_argument(
        "--sessions",
        type=int,
        help="distinct sessions in validate-many and validate-pg "
        f"(1000, quick 200; at most {MAX_SESSIONS:,})",
    )
    parser.add_argument(
        "--writers", type=int, help="sign-in loops in validate-many's with-writes target (1)"
    )
    parser.add_argument(
        "--scale-rows",
        type=int,
        help=f"scale: sessions in the large stores (1,000,000, quick 100,000; at most "
        f"{MAX_SCALE_ROWS:,})",
    )
    parser.add_argument(
        "--scale-tokens",
        type=int,
        help="scale: distinct tokens of the large working set (100,000, quick 10,000)",
    )
    parser.add_argument(
        "--scale-touch-interval",
        type=int,
        metavar="SECONDS",
        help="scale: the sessiond servers' touch_interval (default: theirs, 60 s)",
    )
    parser.add_argument(
        "--compare-src",
        type=Path,
        metavar="PATH",
        help="validate: also run the sessiond of this source tree (a copy of the repository, "
        "or a folder holding the sessiond package) in the same rounds, e.g. an earlier commit",
    )
    args = parser.parse_args(argv)

    config = Config()
    if args.quick:
        config = dataclasses.replace(
            config,
            rounds=3,
            duration=2.0,
            warmup=0.5,
            opens_per_round=8,
            unknown_samples=3,
            refusal_samples=3,
            sessions=200,
            scale_rows=100_000,
            scale_tokens=10_000,
        )
    overrides: dict[str, object] = {"load": args.load}
    for name in (
        "rounds",
        "duration",
        "connections",
        "openers",
        "signers",
        "sessions",
        "writers",
        "scale_rows",
        "scale_tokens",
        "scale_touch_interval",
    ):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            overrides[name] = value
    if "duration" in overrides and float(args.duration) > 300:
        parser.error("--duration is at most 300 seconds")
    if "rounds" in overrides and int(args.rounds) > 100:
        parser.error("--rounds is at most 100")
    if "sessions" in overrides and int(args.sessions) > MAX_SESSIONS:
        parser.error(f"--sessions is at most {MAX_SESSIONS:,}")
    if "writers" in overrides and int(args.writers) > 16:
        parser.error("--writers is at most 16")
    if "scale_rows" in overrides and not 2000 <= int(args.scale_rows) <= MAX_SCALE_ROWS:
        parser.error(f"--scale-rows is at least 2,000 and at most {MAX_SCALE_ROWS:,}")
    if args.compare_src is not None:
        try:
            overrides["compare_src"] = sessiond_source(args.compare_src)
        except BenchError as exc:
            parser.error(f"--compare-src: {exc}")
    config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
    selected = [
        name for name in BENCHMARKS if (name in args.only if args.only else name not in OPT_IN)
    ]
    return config, selected


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    config, selected = _parse(argv)
    # Stop cleanly (servers included) on Ctrl-C, SIGTERM or a closed terminal, even where
    # the shell started this process with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    needs_http_load = {
        "validate",
        "validate-many",
        "validate-pg",
        "validate-under-signin",
        "scale",
    } & set(selected)
    try:
        load: LoadGenerator | None = load_generator(config) if needs_http_load else None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from . import flood, many, pg, refusals, scale, signin, sizing, validate

    runners: dict[str, Callable[[], None]] = {
        "validate": lambda: validate.run_validate(config, _need(load)),
        "validate-many": lambda: many.run_validate_many(config, _need(load)),
        "validate-pg": lambda: pg.run_validate_pg(config, _need(load)),
        "open": lambda: signin.run_open(config),
        "unknown-login": lambda: signin.run_unknown_login(config),
        "validate-under-signin": lambda: validate.run_validate_under_signin(config, _need(load)),
        "refusals": lambda: refusals.run_refusals(config),
        "refusals-domain": lambda: _refusals_domain(config),
        "flood": lambda: flood.run_flood(config),
        "scale": lambda: scale.run_scale(config, _need(load)),
        "argon2-presets": lambda: sizing.run_argon2_presets(config),
        "pg-connections": lambda: sizing.run_pg_connections(config),
        "oidc": lambda: _oidc(config),
    }
    print("sessiond benchmarks")
    for line in machine_lines(load.describe() if load else "not needed"):
        print(f"  {line}")
    print(
        f"  rounds {config.rounds}, {config.duration:g} s of load per round and target, "
        f"{config.connections} connections"
    )
    started = time.monotonic()
    failed: list[str] = []
    try:
        for name in selected:
            try:
                runners[name]()
            except BenchError as exc:
                failed.append(name)
                print(f"  FAILED: {exc}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    print()
    print(f"done in {time.monotonic() - started:.0f} s" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def _refusals_domain(config: Config) -> None:
    from .domain_refusals import run_refusals_domain  # imports the tests' Samba fixture

    run_refusals_domain(config)


def _oidc(config: Config) -> None:
    from .oidc import run_oidc  # imports the tests' OpenID Provider fixture

    run_oidc(config)


def _need(load: LoadGenerator | None) -> LoadGenerator:
    if load is None:  # pragma: no cover - main() makes one whenever an HTTP benchmark runs
        raise BenchError("no load generator")
    return load


if __name__ == "__main__":
    sys.exit(main())
