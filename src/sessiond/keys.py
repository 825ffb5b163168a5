"""The server's key rings. The signature key ring: which key signs new tokens, and which still
verify old ones. The audit key ring (:class:`AuditKeyRing`): which key chains new audit records,
and which still verify older ones.

Stored as JSON ``{"current": "<id>", "keys": {"<id>": "<base64 32 bytes>"}}`` with 0600
permissions. Rotation adds a key and makes it current; older keys keep verifying the tokens
they signed until they are retired, so rotating logs nobody out.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from .errors import Conflict, NotFound, SettingsError


class KeyRing:
    #: What messages call the ring and the setting that names its file.
    WHAT = "signature key ring"
    SETTING = "signature_keys_file"
    #: How every message about the key ring says where to point sessiond instead.
    POINT = "point signature_keys_file (or data_dir) at the server's key ring"

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise SettingsError(
                f"{self.WHAT} names current key {current!r}, which it lacks: restore the "
                f"key ring ({self.SETTING}) from a backup"
            )
        self.keys: dict[str, bytes] = dict(keys)
        self.current = current

    @property
    def current_key(self) -> bytes:
        return self.keys[self.current]

    @staticmethod
    def new_key_id() -> str:
        return datetime.now(UTC).strftime("k%Y%m%d%H%M%S") + secrets.token_hex(2)

    @classmethod
    def generate(cls) -> Self:
        key_id = cls.new_key_id()
        return cls({key_id: secrets.token_bytes(32)}, key_id)

    @classmethod
    def load(cls, path: Path) -> Self:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise SettingsError(
                f"cannot read the {cls.WHAT} {path} ({cls.SETTING}): {reason}; "
                f"run sessiond as the owner of the data folder, or {cls.POINT}"
            ) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SettingsError(
                f"the {cls.WHAT} {path} ({cls.SETTING}) is not valid JSON "
                f"({exc}): restore it from a backup, or {cls.POINT}"
            ) from None
        try:
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
            current = str(data["current"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise SettingsError(
                f"the {cls.WHAT} {path} ({cls.SETTING}) is malformed: expected "
                '{"current": "<id>", "keys": {"<id>": "<base64>"}}; restore it from a backup'
            ) from None
        short = [k for k, v in keys.items() if len(v) < 32]
        if short:
            raise SettingsError(
                f"keys {short} of the {cls.WHAT} {path} ({cls.SETTING}) are shorter than 32 "
                "bytes: restore the key ring from a backup"
            )
        return cls(keys, current)

    @classmethod
    def load_or_create(cls, path: Path, *, create: bool = True) -> Self:
        """The ring at ``path``; when there is none, a new one, saved there if ``create``.

        ``create=False`` is for commands that sign no token (the administrative commands): they
        get a ring that is never saved, so they create nothing on disk."""
        if path.exists():
            return cls.load(path)
        ring = cls.generate()
        if create:
            ring.save(path)
        return ring

    def save(self, path: Path, *, exclusive: bool = False) -> bool:
        """Write atomically, readable by the owner only. ``exclusive``: only if there is no
        file there yet (False, nothing written, otherwise), so that two processes creating
        the ring at once end up with one ring, not one each."""
        data = {
            "current": self.current,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            if not exclusive:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True
        except OSError as exc:
            raise SettingsError(
                f"cannot write the {self.WHAT} {path} ({self.SETTING}): "
                f"{exc.strerror}; point {self.SETTING} (or data_dir) at a folder this "
                "account can write"
            ) from None

    def rotate(self) -> str:
        key_id = self.new_key_id()
        self.keys[key_id] = secrets.token_bytes(32)
        self.current = key_id
        return key_id

    def retire(self, key_id: str) -> None:
        if key_id == self.current:
            raise Conflict("the current signature key cannot be retired; rotate first")
        if key_id not in self.keys:
            raise NotFound(f"no signature key {key_id!r}: 'sessiond keys list' shows the ids")
        del self.keys[key_id]


class AuditKeyRing(KeyRing):
    """The keys the audit trail is chained with (HMAC-SHA256), kept outside the database.

    Rotated like the signature keys; old keys are never retired, since the records they
    chained are verified with them for as long as the trail is kept."""

    WHAT = "audit key ring"
    SETTING = "audit_keys_file"
    POINT = "point audit_keys_file at the server's audit key ring"

    @classmethod
    def open(cls, path: Path, *, create: bool) -> AuditKeyRing | None:
        """The ring at ``path``; when there is none, a new one saved there if ``create``
        (a ring another process saved first wins), else None."""
        if path.exists() or not create:
            return cls.load(path) if path.exists() else None
        ring = cls.generate()
        return ring if ring.save(path, exclusive=True) else cls.load(path)
