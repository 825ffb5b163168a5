"""Licence files for tests: written, and signed with a key made on the spot."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sessiond import licence as licences


def body(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ID": "L-2026-1",
        "Licensee": "Example Corp",
        "ValidFrom": "2026-01-01",
        "ValidTo": "2027-12-31",
        "ConcurrentClient": 10,
        "PersonalClient": 0,
        "ConcurrentWeb": 0,
        "PersonalWeb": 0,
    }
    doc.update(overrides)
    return doc


def write(path: Path, document: Any) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=2))
    return path


def write_unsigned(path: Path, **overrides: Any) -> Path:
    return write(path, {"Licence": body(**overrides)})


class Issuer:
    """Someone who issues signed licences."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = base64.b64encode(raw).decode()

    def write(self, path: Path, **overrides: Any) -> Path:
        return write(path, licences.sign(body(**overrides), self.key))
