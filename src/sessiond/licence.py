"""Licence files: how many seats of each kind the installation may hold, and for how long.

A licence file is JSON (documented in docs/licences.md)::

    {"Licence": {"ID": "...", "Licensee": "...", "ValidFrom": "...", "ValidTo": "...",
                 "ConcurrentClient": 10, "PersonalClient": 5, "ConcurrentWeb": 20,
                 "PersonalWeb": 5},
     "Signature": "<base64 Ed25519 over the canonical JSON of Licence>"}

The canonical JSON is the ``Licence`` object with sorted keys, no spaces, UTF-8. When a public
key is configured, only files it signed are accepted. Parsing treats the file as hostile input:
size-limited, strict types, every problem named.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import LicenceInvalid
from .models import LicenseType

MAX_LICENCE_BYTES = 64 * 1024
MAX_SEATS = 1_000_000
SEAT_FIELDS = {
    "ConcurrentClient": LicenseType.CONCURRENT_CLIENT,
    "PersonalClient": LicenseType.PERSONAL_CLIENT,
    "ConcurrentWeb": LicenseType.CONCURRENT_WEB,
    "PersonalWeb": LicenseType.PERSONAL_WEB,
}
_TEXT_FIELDS = ("ID", "Licensee")
_KNOWN = {*SEAT_FIELDS, *_TEXT_FIELDS, "ValidFrom", "ValidTo"}


@dataclass(frozen=True, slots=True)
class Licence:
    id: str
    licensee: str
    valid_from: datetime
    valid_to: datetime
    seats: dict[LicenseType, int]
    signed: bool
    text: str  # the file as installed, kept in the store so every node reads the same

    def seats_of(self, license_type: LicenseType) -> int:
        return self.seats.get(license_type, 0)

    def is_valid_at(self, now: datetime) -> bool:
        return self.valid_from <= now < self.valid_to

    def to_dict(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Licensee": self.licensee,
            "ValidFrom": self.valid_from.isoformat().replace("+00:00", "Z"),
            "ValidTo": self.valid_to.isoformat().replace("+00:00", "Z"),
            "Signed": self.signed,
            **{name: self.seats.get(kind, 0) for name, kind in SEAT_FIELDS.items()},
        }


def canonical_bytes(licence: dict[str, Any]) -> bytes:
    return json.dumps(licence, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_public_key(text: str) -> Any:
    """An Ed25519 public key from PEM, or from base64 of its 32 raw bytes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        if "BEGIN PUBLIC KEY" in text:
            key = load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise LicenceInvalid(f"the licence public key is not an Ed25519 key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LicenceInvalid("the licence public key is not an Ed25519 key")
    return key


def sign(licence: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """A signed licence document (the vendor's side; used by ``sessiond licences sign``)."""
    signature = private_key.sign(canonical_bytes(licence))
    return {"Licence": licence, "Signature": base64.b64encode(signature).decode()}


def parse(
    data: bytes | str, *, public_key: Any | None, now: datetime, source: str = "licence file"
) -> Licence:
    """Parse and check a licence; :class:`LicenceInvalid` names the first problem found."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_LICENCE_BYTES:
        raise LicenceInvalid(f"{source} is larger than {MAX_LICENCE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        document = json.loads(text)
    except UnicodeDecodeError:
        raise LicenceInvalid(f"{source} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise LicenceInvalid(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("Licence"), dict):
        raise LicenceInvalid(f'{source} must be an object with a "Licence" object')
    extra = document.keys() - {"Licence", "Signature"}
    if extra:
        raise LicenceInvalid(f"{source} has unknown fields: {', '.join(sorted(extra))}")
    body: dict[str, Any] = document["Licence"]
    unknown = body.keys() - _KNOWN
    if unknown:
        raise LicenceInvalid(f"{source}: unknown licence fields: {', '.join(sorted(unknown))}")
    signed = _check_signature(body, document.get("Signature"), public_key, source)

    for name in _TEXT_FIELDS:
        if not isinstance(body.get(name), str) or not body[name].strip() or len(body[name]) > 256:
            raise LicenceInvalid(f"{source}: {name} must be a non-empty text of 256 characters")
    seats: dict[LicenseType, int] = {}
    for name, kind in SEAT_FIELDS.items():
        value = body.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEATS:
            raise LicenceInvalid(f"{source}: {name} must be a whole number from 0 to {MAX_SEATS}")
        seats[kind] = value
    valid_from = _time(body, "ValidFrom", source)
    valid_to = _time(body, "ValidTo", source)
    if valid_to <= valid_from:
        raise LicenceInvalid(f"{source}: ValidTo must be after ValidFrom")
    licence = Licence(
        id=body["ID"].strip(),
        licensee=body["Licensee"].strip(),
        valid_from=valid_from,
        valid_to=valid_to,
        seats=seats,
        signed=signed,
        text=text,
    )
    if now >= valid_to:
        raise LicenceInvalid(
            f"licence {licence.id} expired on {valid_to:%Y-%m-%d %H:%M} UTC; install a current one"
        )
    if now < valid_from:
        raise LicenceInvalid(
            f"licence {licence.id} is not valid before {valid_from:%Y-%m-%d %H:%M} UTC"
        )
    return licence


def _check_signature(
    body: dict[str, Any], signature: Any, public_key: Any | None, source: str
) -> bool:
    if signature is None:
        if public_key is not None:
            raise LicenceInvalid(f"{source} is not signed, and this server requires signed ones")
        return False
    if not isinstance(signature, str):
        raise LicenceInvalid(f"{source}: Signature must be base64 text")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise LicenceInvalid(f"{source}: Signature is not base64") from None
    if public_key is None:
        return False  # nothing to check it against: treated as unsigned
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(raw, canonical_bytes(body))
    except InvalidSignature:
        raise LicenceInvalid(
            f"{source}: the signature does not match (altered, or signed by another key)"
        ) from None
    return True


def _time(body: dict[str, Any], name: str, source: str) -> datetime:
    value = body.get(name)
    if not isinstance(value, str):
        raise LicenceInvalid(f"{source}: {name} must be a date like 2026-01-31 or a UTC time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise LicenceInvalid(f"{source}: {name} {value!r} is not a date or time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
