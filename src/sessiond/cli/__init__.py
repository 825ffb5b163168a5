"""Operator commands: serve, init, users, sessions, config, audit, keys, licences, check — one
module per group of commands.

Administrative commands work on the store directly, as the server itself ("System"), so they
need the same settings (``--config``, ``--data-dir`` or ``SESSIOND_*``) as the server they
administer. Only ``serve`` and ``init`` create a store; the others refuse where there is none.
Exit statuses are listed in :mod:`.common`.
"""

from __future__ import annotations

from . import audit, check, configuration, keys, licences, server, sessions, users
from .common import app, main

app.add_typer(users.users_app, name="users")
app.add_typer(sessions.sessions_app, name="sessions")
app.add_typer(configuration.config_app, name="config")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(licences.licences_app, name="licences")
app.add_typer(check.check_app, name="check")

__all__ = ["app", "main", "server"]
