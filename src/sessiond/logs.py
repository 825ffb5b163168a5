"""The server's logging: one handler on standard error, in text or JSON lines.

``sessiond serve`` calls :func:`configure` before anything logs, and uvicorn is told to leave
logging alone. ``log_level`` applies to sessiond's loggers (``sessiond.*``) and uvicorn's; every
other library logs its warnings and errors only, whatever the level, so that no debug output of
a database driver (statements and their parameters: password hashes, token signatures) ever
reaches the log.

Text lines are ``time LEVEL: logger: message``. JSON lines are one object each, with ``time``
(UTC, ISO 8601), ``level``, ``logger``, ``message``, the record's extra fields (the access log's
``method``, ``path``, ``status``, ``duration_ms``, ``client``) and ``exception`` when there is a
traceback.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from .settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` document for these settings."""
    level = settings.log_level
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if settings.log_format == "json"
        else {"()": "uvicorn.logging.DefaultFormatter", "fmt": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"sessiond": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "sessiond",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "sessiond": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # sessiond writes its own access log (sessiond.access): uvicorn's stays silent.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "sqlalchemy": {"level": "WARNING"},
            "asyncpg": {"level": "WARNING"},
            # While the database is down its read pool logs a traceback every second; the
            # store's own warning (sessiond.store, at most every 10 s) says the same.
            "asyncpg.pool": {"level": "ERROR"},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def configure(settings: Settings) -> None:
    """Set up the process's logging as the settings say."""
    logging.config.dictConfig(log_config(settings))
