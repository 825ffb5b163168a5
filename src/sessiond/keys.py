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

from .errors import SettingsError


class KeyRing:
    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise SettingsError(f"signature key ring names current key {current!r}, which it lacks")
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
            data = json.loads(path.read_text())
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
            current = str(data["current"])
        except OSError as exc:
            raise SettingsError(f"cannot read signature key ring {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise SettingsError(
                f"signature key ring {path} is malformed: expected "
                '{"current": "<id>", "keys": {"<id>": "<base64>"}}'
            ) from None
        short = [k for k, v in keys.items() if len(v) < 32]
        if short:
            raise SettingsError(f"signature keys {short} in {path} are shorter than 32 bytes")
        return cls(keys, current)

    @classmethod
    def load_or_create(cls, path: Path) -> KeyRing:
        if path.exists():
            return cls.load(path)
        ring = cls.generate()
        ring.save(path)
        return ring

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "current": self.current,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def rotate(self) -> str:
        key_id = self.new_key_id()
        self.keys[key_id] = secrets.token_bytes(32)
        self.current = key_id
        return key_id

    def retire(self, key_id: str) -> None:
        if key_id == self.current:
            raise SettingsError("the current signature key cannot be retired; rotate first")
        if key_id not in self.keys:
            raise SettingsError(f"no signature key {key_id!r}")
        del self.keys[key_id]
