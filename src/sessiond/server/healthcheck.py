"""The container's health check: ``python3 -m sessiond.server.healthcheck``.

It asks the liveness route (``/api/v1/health/live``, which never waits for the store: a
database that is down is the readiness route's business, and no reason to restart the
container) at the address and port the settings give (``SESSIOND_PORT``, ``SESSIOND_CONFIG``
...), so that a port changed by the settings does not leave the check asking the old one.
Exit status 0: healthy; 1: not.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from ..errors import SettingsError
from ..settings import load_settings

#: operations.LIVE_PATH, without importing the application for it.
LIVE_PATH = "/api/v1/health/live"
#: A server listening on every address is asked on loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def url() -> str:
    settings = load_settings()
    host = _LOOPBACK.get(settings.host, settings.host)
    where = f"[{host}]" if ":" in host else host
    return f"http://{where}:{settings.port}{LIVE_PATH}"


def main() -> int:
    try:
        target = url()
    except SettingsError as exc:
        print(f"health check: {exc.message}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(target, timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"health check: {target}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
