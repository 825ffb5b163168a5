"""Every metric sessiond exports, in a registry of its own, for ``GET /metrics``.

The rest of the server only calls the helpers here (:func:`sign_in`, :func:`validating`,
:func:`hashing`, ...): which metrics exist, their names, labels and buckets are decided in this
module alone. Labels take values from small fixed sets (error codes, licence types, route
templates): never a login, an address, a session id or a raw path.

Nothing here tells more about a sign-in than its answer did: a sign-in is counted by the way its
credentials came (a password, or HTTP Negotiate), never by the user's row, and a refusal before
the right password is ``invalid_credentials`` whoever the login names. The decoy hash of such a
refusal is timed as the verification it stands for. So an unknown login, a wrong password and a
blocked user move the same series by the same amounts (docs/operator.md, "Metrics").

Counters count what this process did since it started; the gauges about sessions, seats and
the configuration version are read from the store each time ``/metrics`` is scraped
(:func:`refresh`), so every node of a multi-node installation reports the same values for
them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ._version import __version__
from .errors import NegotiateRequired, ServiceUnavailable, SessiondError
from .licence import SEAT_FIELDS

if TYPE_CHECKING:
    from .service import SessionService

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

#: How a sign-in's credentials came: a login and password, or an HTTP Negotiate token.
VIA = ("password", "negotiate", "openid")
#: The ``route`` of a request that matched no route (never its raw path).
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

BUILD = Info("sessiond_build", "The sessiond version of this process.", registry=REGISTRY)
BUILD.info({"version": __version__})

SIGN_INS = Counter(
    "sessiond_sign_ins",
    "Sign-ins that ended, by how the credentials came (via: password, negotiate, openid) and "
    "outcome: "
    "opened, or the error code answered (invalid_credentials for every refusal before the "
    "right password; user_blocked, password_expired, ... only after it).",
    ["via", "outcome"],
    registry=REGISTRY,
)
VALIDATIONS = Counter(
    "sessiond_validations",
    "Session token validations, by outcome: ok, or the refusal's error code "
    "(session_expired, session_not_found, token_invalid, ...).",
    ["outcome"],
    registry=REGISTRY,
)
SESSIONS_CLOSED = Counter(
    "sessiond_sessions_closed",
    "Open sessions closed through this server: by their holder (user) or an administrator (admin).",
    ["by"],
    registry=REGISTRY,
)
SWEEPS = Counter(
    "sessiond_sweeps",
    "Runs of the sweeper that removes ended sessions, by outcome (ok, failed).",
    ["outcome"],
    registry=REGISTRY,
)
SESSIONS_SWEPT = Counter(
    "sessiond_sessions_swept",
    "Sessions past their lifetime or inactivity limit removed by the sweeper.",
    registry=REGISTRY,
)
PASSWORD_HASHING = Histogram(
    "sessiond_password_hash_seconds",
    "Time of one Argon2id operation, waiting for a worker thread included: verify (a "
    "password against its hash, or against the decoy hash of a refusal where no real one is "
    "checked: the two are not told apart), hash (a new password, or a rehash).",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "sessiond_http_request_duration_seconds",
    "Time from a request's arrival at the application to the end of its answer, by method "
    "and route template (unmatched: no route).",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0),
    registry=REGISTRY,
)
CONFIGURATION_VERSION = Gauge(
    "sessiond_configuration_version",
    "The configuration version, as this server last read it.",
    registry=REGISTRY,
)
OPEN_SESSIONS = Gauge(
    "sessiond_open_sessions",
    "Sessions open now (neither past their lifetime nor idle past the inactivity limit), by "
    "the licence type they hold; read from the store at each scrape.",
    ["license_type"],
    registry=REGISTRY,
)
SEATS_IN_USE = Gauge(
    "sessiond_seats_in_use",
    "Seats in use by licence type, as 'sessiond licences show' counts them: open sessions for "
    "concurrent seats, users holding the licence for personal ones.",
    ["license_type"],
    registry=REGISTRY,
)
SEATS_FREE = Gauge(
    "sessiond_seats_free",
    "Seats of the installed licence still free, by licence type (never below 0); absent when "
    "no licence is installed (seats are not limited).",
    ["license_type"],
    registry=REGISTRY,
)
STORE_UP = Gauge(
    "sessiond_store_up",
    "1 when the store could be read at this scrape, 0 when it could not (the session and seat "
    "gauges then keep the values of the last scrape that could).",
    registry=REGISTRY,
)

STORE_LISTENING = Gauge(
    "sessiond_store_listening",
    "1 while this server listens for changes committed on other nodes (PostgreSQL "
    "notifications); 0 while that connection is down (changes then show by polling, within "
    "configuration_poll_interval), and on SQLite, which has no other nodes.",
    registry=REGISTRY,
)
OPENID_FETCHES = Counter(
    "sessiond_openid_fetches",
    "Documents fetched from an OpenID Provider, by provider (its settings name) and document: "
    "discovery, keys (a token signed by an unknown key fetches the keys again, rate-bounded).",
    ["provider", "document"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "sessiond_store_notifications",
    "Notifications of committed changes this server received (its own included), by kind: "
    "version, revoked (sessions closed, displaced or swept), licence; resumed: the listening "
    "connection came back after a loss.",
    ["kind"],
    registry=REGISTRY,
)

# Series that exist from the start, so that a rate over them is defined before the first event.
for _via in VIA:
    SIGN_INS.labels(_via, "opened")
    SIGN_INS.labels(_via, "invalid_credentials")
VALIDATIONS.labels("ok")
for _by in ("user", "admin"):
    SESSIONS_CLOSED.labels(_by)
for _outcome in ("ok", "failed"):
    SWEEPS.labels(_outcome)
for _operation in ("verify", "hash"):
    PASSWORD_HASHING.labels(_operation)
for _notice in ("version", "revoked", "licence", "resumed"):
    NOTIFICATIONS.labels(_notice)


# --- sign-ins and validations ----------------------------------------------------------------


@contextmanager
def sign_in(via: str) -> Iterator[None]:
    """Count one sign-in when the block ends, under ``via`` (``password`` or ``negotiate``: how
    the credentials came, known before anything is looked up): ``opened`` if it returns, the
    error's code if it raises a refusal. A Negotiate challenge is a step of a sign-in, not its
    end; a sign-in whose request went away (cancelled) is not counted."""
    try:
        yield
    except NegotiateRequired:
        raise
    except SessiondError as exc:
        SIGN_INS.labels(via, exc.code).inc()
        raise
    except Exception:
        SIGN_INS.labels(via, "error").inc()
        raise
    SIGN_INS.labels(via, "opened").inc()


class _Validating:
    """``with validating():`` counts one token validation when the block ends: ``ok`` or the
    refusal's code. A class, not a generator: it runs on every request."""

    __slots__ = ()
    _ok = VALIDATIONS.labels("ok")

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if exc is None:
            self._ok.inc()
        elif isinstance(exc, SessiondError):
            VALIDATIONS.labels(exc.code).inc()
        elif isinstance(exc, Exception):
            VALIDATIONS.labels("error").inc()


_VALIDATING = _Validating()


def validating() -> _Validating:
    return _VALIDATING


def sessions_closed(by: str, count: int | bool = 1) -> None:
    """``count`` open sessions were closed, ``by`` ``user`` or ``admin``."""
    if count:
        SESSIONS_CLOSED.labels(by).inc(int(count))


# --- the rest of the server ------------------------------------------------------------------


def hashing(operation: str) -> Histogram:
    """``with hashing("verify").time(): ...``; ``verify`` (a decoy hash too) or ``hash``."""
    return PASSWORD_HASHING.labels(operation)


def swept(count: int | None) -> None:
    """One sweeper run ended: ``count`` sessions removed, or ``None`` when it failed."""
    if count is None:
        SWEEPS.labels("failed").inc()
        return
    SWEEPS.labels("ok").inc()
    SESSIONS_SWEPT.inc(count)


_durations: dict[tuple[str, str | None], Histogram] = {}


def request_done(method: str, route: str | None, seconds: float) -> None:
    """One HTTP request answered, ``route`` its template (``None``: it matched no route)."""
    timer = _durations.get((method, route))
    if timer is None:  # a few dozen at most: methods times route templates
        label = method if method in METHODS else "other"
        timer = REQUEST_DURATION.labels(label, route or UNMATCHED)
        if label == method:
            _durations[(method, route)] = timer
    timer.observe(seconds)


def notified(kind: str) -> None:
    NOTIFICATIONS.labels(kind).inc()


def openid_fetch(provider: str, document: str) -> None:
    OPENID_FETCHES.labels(provider, document).inc()


async def refresh(service: SessionService) -> None:
    """Read the gauges that describe the installation from the store (at each scrape)."""
    from .store.health import open_sessions, unreachable

    STORE_LISTENING.set(1 if service.store.listening else 0)
    CONFIGURATION_VERSION.set(service.configuration.last_known)
    try:
        CONFIGURATION_VERSION.set(await service.configuration.version())
        seats = await service.licensing.seats()
        engine = getattr(service.store, "engine", None)
        counts = {}
        if engine is not None:
            now = service.clock()
            counts = await open_sessions(engine, now, service.sessions.state.active_since(now))
    except Exception as exc:
        if not (isinstance(exc, ServiceUnavailable) or unreachable(exc)):
            raise
        STORE_UP.set(0)
        return
    STORE_UP.set(1)
    for kind, count in counts.items():
        OPEN_SESSIONS.labels(kind.wire).set(count)
    SEATS_FREE.clear()
    for name in SEAT_FIELDS:
        seat = seats[name]
        SEATS_IN_USE.labels(name).set(seat["InUse"])
        if seat["Seats"] is not None:
            SEATS_FREE.labels(name).set(max(0, seat["Seats"] - seat["InUse"]))


def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
