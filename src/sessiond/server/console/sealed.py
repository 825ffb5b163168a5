"""Cookies the browser keeps and cannot read: JSON sealed with AES-256-GCM (``cryptography``)
under a key derived (HKDF-SHA256) from the server's current signature key, so every node of an
installation opens what another sealed, and a value sealed by a key retired since opens no
more. Each seal names its purpose and may be bound to more data (e.g. a session id) that must
be given again to open it: a sealed value moved to another purpose or session opens nothing.

Value: ``<key id>.<base64url(12-byte nonce + ciphertext and tag)>``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...keys import KeyRing

_LABEL = b"sessiond console sealed cookie/1 "
#: Browsers keep cookies of up to 4096 bytes (name and attributes included).
MAX_SEALED_CHARS = 3800


def _key(secret: bytes, purpose: str) -> AESGCM:
    derived = HKDF(hashes.SHA256(), 32, salt=None, info=_LABEL + purpose.encode()).derive(secret)
    return AESGCM(derived)


def _aad(purpose: str, bound_to: bytes) -> bytes:
    return purpose.encode() + b"\0" + bound_to


def seal(keys: KeyRing, purpose: str, payload: dict[str, Any], bound_to: bytes = b"") -> str:
    key_id = keys.current
    nonce = os.urandom(12)
    plain = json.dumps(payload, separators=(",", ":")).encode()
    sealed = _key(keys.keys[key_id], purpose).encrypt(nonce, plain, _aad(purpose, bound_to))
    return f"{key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def unseal(
    keys: KeyRing, purpose: str, value: str | None, bound_to: bytes = b""
) -> dict[str, Any] | None:
    """What :func:`seal` sealed, or None: no value, made up, tampered with, sealed for another
    purpose or binding, or by a key this server no longer has."""
    if not value or len(value) > MAX_SEALED_CHARS:
        return None
    key_id, _, text = value.rpartition(".")
    secret = keys.keys.get(key_id)
    if secret is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        plain = _key(secret, purpose).decrypt(raw[:12], raw[12:], _aad(purpose, bound_to))
        found = json.loads(plain)
    except (binascii.Error, ValueError, InvalidTag):
        return None
    return found if isinstance(found, dict) else None
