"""What a SettingsChanged record holds: every setting as its value, except secrets, which never
enter the audit trail in any form (no value, no digest): a secret shows as ``"set"`` (or null),
and a change of one as ``"changed"``.

To tell whether a secret changed between starts, a node keeps an Argon2id hash of each of its
secrets in a file of its own data folder (``settings-secrets.json``, 0600), the way user
passwords are kept: never in the database, never in the trail.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr
from pydantic_core import to_jsonable_python

from ..settings import Settings

#: The file, in the data folder, of the Argon2id hashes of this node's secret settings.
SECRETS_FILE = "settings-secrets.json"
#: What a SettingsChanged record says of a secret setting.
SET, CHANGED = "set", "changed"
#: Settings that hold a secret whatever their type: the last part of the name says so.
_SECRET_NAME = re.compile(r"(^|_)(password|secret|passphrase|token)$", re.IGNORECASE)


class Hasher(Protocol):
    async def hash(self, password: str) -> str: ...
    async def matches(self, password_hash: str, password: str) -> bool: ...


def split_settings(settings: Settings) -> tuple[dict[str, Any], dict[str, str], set[str]]:
    """Every setting, flattened to dotted keys, as JSON values, with each secret shown as
    ``"set"`` (or None when unset); the secrets themselves (for the node's own file); and the
    names of every secret setting, set or not."""
    flat: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    names: set[str] = {"database_url.password"}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
            return
        name = prefix[:-1]
        if isinstance(value, SecretStr) or _SECRET_NAME.search(name.rsplit(".", 1)[-1]):
            names.add(name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                secrets[name] = str(value)
            flat[name] = None if value is None else SET
            return
        flat[name] = to_jsonable_python(value)

    data = settings.model_dump()
    url = settings.effective_database_url
    data["database_url"] = _hidden_password(url)
    data.pop("data_dir", None)  # where the node keeps its files, not how it behaves
    walk("", data)
    password = _url_password(url)
    if password:
        secrets["database_url.password"] = password
    return flat, secrets, names


async def changed_secrets(
    settings: Settings, node: str, secrets: dict[str, str], hasher: Hasher
) -> set[str]:
    """The names of the secrets that changed (or came or went) since this node last recorded
    them, and the file brought up to date. With no file (the first start, or a new data
    folder) only secrets that are set count as changed."""
    path = settings.data_dir / SECRETS_FILE
    try:
        every: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
        kept = dict(every.get(node, {}))
    except (OSError, ValueError, AttributeError, TypeError):
        every, kept = {}, {}
    changed: set[str] = set()
    hashes: dict[str, str] = {}
    for name in sorted(kept.keys() | secrets.keys()):
        value, old = secrets.get(name), kept.get(name)
        if value is None:
            changed.add(name)  # it went
            continue
        if old is not None and await hasher.matches(old, value):
            hashes[name] = old
            continue
        changed.add(name)
        hashes[name] = await hasher.hash(value)
    if changed:
        _save(path, {**every, node: hashes})
    return changed


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def _hidden_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    from ..settings_sections import hide_password

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # a host list make_url cannot read: hidden all the same
        shown = url
    return hide_password(shown)  # password= in the query too


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    from ..store.pgurl import parse

    try:
        if url.startswith("postgres"):
            return parse(url).password  # every form, password= in the query included
        password = make_url(url).password
    except Exception:
        return None
    return None if password is None else str(password)
