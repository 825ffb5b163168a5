"""The server's signature key ring: which key signs new tokens, and which still verify old ones.

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

from .errors import Conflict, NotFound, SettingsError

#: How every message about the key ring says where to point sessiond instead.
_POINT = "point signature_keys_file (or data_dir) at the server's key ring"


class KeyRing:
    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise SettingsError(
                f"signature key ring names current key {current!r}, which it lacks: restore the "
                "key ring (signature_keys_file) from a backup"
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
    def generate(cls) -> KeyRing:
        key_id = cls.new_key_id()
        return cls({key_id: secrets.token_bytes(32)}, key_id)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise SettingsError(
                f"cannot read the signature key ring {path} (signature_keys_file): {reason}; "
                f"run sessiond as the owner of the data folder, or {_POINT}"
            ) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SettingsError(
                f"the signature key ring {path} (signature_keys_file) is not valid JSON "
                f"({exc}): restore it from a backup, or {_POINT}"
            ) from None
        try:
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
            current = str(data["current"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise SettingsError(
                f"the signature key ring {path} (signature_keys_file) is malformed: expected "
                '{"current": "<id>", "keys": {"<id>": "<base64>"}}; restore it from a backup'
            ) from None
        short = [k for k, v in keys.items() if len(v) < 32]
        if short:
            raise SettingsError(
                f"signature keys {short} in {path} (signature_keys_file) are shorter than 32 "
                "bytes: restore the key ring from a backup"
            )
        return cls(keys, current)

    @classmethod
    def load_or_create(cls, path: Path, *, create: bool = True) -> KeyRing:
        """The ring at ``path``; when there is none, a new one, saved there if ``create``.

        ``create=False`` is for commands that sign no token (the administrative commands): they
        get a ring that is never saved, so they create nothing on disk."""
        if path.exists():
            return cls.load(path)
        ring = cls.generate()
        if create:
            ring.save(path)
        return ring

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only."""
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
            os.replace(tmp, path)
        except OSError as exc:
            raise SettingsError(
                f"cannot write the signature key ring {path} (signature_keys_file): "
                f"{exc.strerror}; point signature_keys_file (or data_dir) at a folder this "
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
