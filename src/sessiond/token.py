"""The session token: its fields, its full and auth XML forms, and its canonical signed bytes.

A token is one XML element, ``<SessionToken .../>``, with the fields as attributes (absent optional
fields are omitted). The server signs it with HMAC-SHA256 under a key named by ``KeyID``::

    head      = "sessiond-token/1" LF SessionID LF UserID LF Expires LF KeyID LF Digest
    Digest    = hex SHA-256 over, for every other present field in the fixed order of FIELDS,
                name "=" byte-length ":" UTF-8 value LF
    Signature = base64 HMAC-SHA256(key[KeyID], head)

so the compact *auth* form (SessionID, UserID, Expires, KeyID, Digest, Signature) can be verified
on its own, and the full form verifies by recomputing the digest from its fields. Parsing treats
the text as hostile: size-limited, no DTD, entities, comments or processing instructions, only
known attributes, and every value must be in its one canonical spelling, so that no two different
texts verify as the same token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from uuid import UUID, SafeUUID
from xml.sax.saxutils import escape

from lxml import etree

from .errors import TokenInvalid, TokenSignatureInvalid
from .models import AccessLevel, DeviceType, LicenseType, LoginType, ServiceType, WireEnum
from .wire import format_time

MAX_TOKEN_BYTES: Final = 16 * 1024
MAX_VALUE_CHARS: Final = 1024
ELEMENT: Final = "SessionToken"
_HEAD_PREFIX: Final = b"sessiond-token/1\n"

_DATETIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z", re.ASCII
)
_INT_RE = re.compile(r"(0|-?[1-9][0-9]{0,8})\Z", re.ASCII)
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z", re.ASCII)
_DIGEST_RE = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
_SIGNATURE_RE = re.compile(r"[A-Za-z0-9+/]{43}=\Z", re.ASCII)
_ATTR_ESCAPES: Final = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
_ENTITY_RE = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});)")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_UUID_TEXT = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: The auth form exactly as sessiond writes it (``AuthToken.to_xml``). Every value is held to
#: characters that need no XML escaping, so a text this matches means what the hardened parser
#: would read from it; anything else (another attribute order, spacing, a full token) takes
#: the hardened parser.
CANONICAL_AUTH = re.compile(
    rf'<{ELEMENT} SessionID="({_UUID_TEXT})" UserID="({_UUID_TEXT})" '
    r'Expires="([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)" '
    r'KeyID="([A-Za-z0-9._-]{1,64})" Digest="([0-9a-f]{64})" Signature="([A-Za-z0-9+/]{43}=)"/>\Z',
    re.ASCII,
)


#: The one spelling of a time in a token (and in the API).
format_datetime = format_time


# --- codecs: value -> canonical text, and canonical text -> value (strict) -------------------


def _enc_str(value: Any) -> str:
    text = str(value)
    if CONTROL_CHARACTERS.search(text):
        raise ValueError("token text must not contain control characters")
    return text


def _dec_str(text: str) -> str:
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"longer than {MAX_VALUE_CHARS} characters")
    if CONTROL_CHARACTERS.search(text):
        raise ValueError("contains control characters")
    return text


def _dec_signature(text: str) -> str:
    if not _SIGNATURE_RE.match(text):
        raise ValueError("not a base64 HMAC-SHA256")
    return text


def fast_uuid(value: int) -> UUID:
    """``UUID(int=value)`` without its argument checks, for values known to be 128-bit (read
    from the store, or from text the canonical pattern accepted): validation decodes a few
    per request, and the checks cost more than the rest of the decoding."""
    uuid = object.__new__(UUID)
    object.__setattr__(uuid, "int", value)
    object.__setattr__(uuid, "is_safe", SafeUUID.unknown)
    return uuid


def _canonical_uuid(text: str) -> UUID:
    return fast_uuid(int(text.replace("-", ""), 16))


def _dec_uuid(text: str) -> UUID:
    value = UUID(text)
    if str(value) != text:
        raise ValueError("not a lower-case hyphenated GUID")
    return value


def _dec_datetime(text: str) -> datetime:
    if not _DATETIME_RE.match(text):
        raise ValueError("not a UTC time like 2026-01-31T12:00:00.000000Z")
    # The pattern fixed the spelling; fromisoformat checks the ranges (and is ~30x strptime).
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def _dec_int(text: str) -> int:
    if not _INT_RE.match(text):
        raise ValueError("not an integer")
    return int(text)


def _enc_bool(value: Any) -> str:
    return "true" if value else "false"


def _dec_bool(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError("not true or false")


def _enum_codec(cls: type[WireEnum]) -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    by_name = {member.wire: member for member in cls}

    def dec(text: str) -> WireEnum:
        try:
            return by_name[text]
        except KeyError:
            raise ValueError(f"not one of {', '.join(by_name)}") from None

    def enc(value: Any) -> str:
        return cls(value).wire

    return enc, dec


def _key_id(text: str) -> str:
    if not _KEY_ID_RE.match(text):
        raise ValueError("not a key id")
    return text


_UUID = (_enc_str, _dec_uuid)
_STR = (_enc_str, _dec_str)
_TIME = (format_datetime, _dec_datetime)
_INT = (_enc_str, _dec_int)
_BOOL = (_enc_bool, _dec_bool)

# (XML attribute, dataclass field, (encode, decode)) in canonical order.
FIELDS: Final[tuple[tuple[str, str, tuple[Callable[[Any], str], Callable[[str], Any]]], ...]] = (
    ("SessionID", "session_id", _UUID),
    ("UserID", "user_id", _UUID),
    ("UserName", "user_name", _STR),
    ("UserLogin", "user_login", _STR),
    ("AccessLevel", "access_level", _enum_codec(AccessLevel)),
    ("ApplicationID", "application_id", _UUID),
    ("Created", "created", _TIME),
    ("Expires", "expires", _TIME),
    ("LicenseType", "license_type", _enum_codec(LicenseType)),
    ("LoginType", "login_type", _enum_codec(LoginType)),
    ("ServiceType", "service_type", _enum_codec(ServiceType)),
    ("DeviceType", "device_type", _enum_codec(DeviceType)),
    ("Culture", "culture", _STR),
    ("UICulture", "ui_culture", _STR),
    ("UtcOffset", "utc_offset", _INT),
    ("TimeZoneUtcOffset", "time_zone_utc_offset", _INT),
    ("ServerCode", "server_code", _STR),
    ("InstanceName", "instance_name", _STR),
    ("HostIP", "host_ip", _STR),
    ("HostName", "host_name", _STR),
    ("OSName", "os_name", _STR),
    ("UserAgent", "user_agent", _STR),
    ("Client64Bit", "client_64bit", _BOOL),
    ("Client64BitOS", "client_64bit_os", _BOOL),
    ("KeyID", "key_id", (_enc_str, _key_id)),
    ("Signature", "signature", (_enc_str, _dec_signature)),
)
_HEAD_FIELDS: Final = frozenset({"SessionID", "UserID", "Expires", "KeyID", "Signature"})
_CODECS: Final = {xml: (attr, codec) for xml, attr, codec in FIELDS}


@dataclass(frozen=True, slots=True)
class SessionToken:
    """A signed session token (the platform's ``SessionToken``).

    ``utc_offset`` and ``time_zone_utc_offset`` are in minutes east of UTC.
    """

    session_id: UUID
    user_id: UUID
    user_name: str
    created: datetime
    expires: datetime
    user_login: str | None = None
    access_level: AccessLevel = AccessLevel.REGULAR
    application_id: UUID | None = None
    license_type: LicenseType = LicenseType.UNSPECIFIED
    login_type: LoginType = LoginType.PLATFORM
    service_type: ServiceType = ServiceType.UNKNOWN
    device_type: DeviceType = DeviceType.DESKTOP
    culture: str | None = None
    ui_culture: str | None = None
    utc_offset: int | None = None
    time_zone_utc_offset: int | None = None
    server_code: str | None = None
    instance_name: str | None = None
    host_ip: str | None = None
    host_name: str | None = None
    os_name: str | None = None
    user_agent: str | None = None
    client_64bit: bool | None = None
    client_64bit_os: bool | None = None
    key_id: str | None = None
    signature: str | None = None

    REQUIRED: ClassVar[frozenset[str]] = frozenset(
        {"SessionID", "UserID", "UserName", "Created", "Expires"}
    )

    @property
    def is_administrator(self) -> bool:
        return self.access_level == AccessLevel.ADMINISTRATOR

    def attributes(self) -> dict[str, str]:
        """The present fields as canonical attribute text, in canonical order."""
        out: dict[str, str] = {}
        for xml, attr, (enc, _dec) in FIELDS:
            value = getattr(self, attr)
            if value is not None:
                out[xml] = enc(value)
        return out

    def digest(self) -> str:
        return _digest(self.attributes())

    def to_xml(self) -> str:
        """The full form, as ``open_session`` returns it."""
        return _element(self.attributes())

    def auth(self) -> AuthToken:
        """The compact form that travels in the ``Tessa-Session`` header."""
        if self.key_id is None or self.signature is None:
            raise ValueError("an unsigned token has no auth form")
        return AuthToken(
            session_id=self.session_id,
            user_id=self.user_id,
            expires=self.expires,
            key_id=self.key_id,
            digest=self.digest(),
            signature=self.signature,
        )

    def to_auth_xml(self) -> str:
        return self.auth().to_xml()

    def signed(self, key_id: str, key: bytes) -> SessionToken:
        """This token with ``KeyID`` and ``Signature`` set (server side)."""
        unsigned = replace(self, key_id=key_id, signature=None)
        head = _Head(self.session_id, self.user_id, self.expires, key_id, unsigned.digest())
        return replace(unsigned, signature=head.signature_with(key))

    def verify(self, keys: Mapping[str, bytes]) -> None:
        """Check the signature of the full form; raises :class:`TokenSignatureInvalid`."""
        if self.key_id is None or self.signature is None:
            raise TokenSignatureInvalid("session token is not signed")
        self.auth().verify(keys)

    @classmethod
    def from_xml(cls, text: str | bytes) -> SessionToken:
        """Parse the full form strictly; raises :class:`TokenInvalid` (never anything else)."""
        attrs = _parse(text)
        if "Digest" in attrs:
            raise TokenInvalid("this is an auth token; the full session token was expected")
        missing = cls.REQUIRED - attrs.keys()
        if missing:
            raise TokenInvalid(f"session token lacks {', '.join(sorted(missing))}")
        return cls(**_decode(attrs))


@dataclass(frozen=True, slots=True)
class _Head:
    session_id: UUID
    user_id: UUID
    expires: datetime
    key_id: str
    digest: str

    def canonical(self) -> bytes:
        return b"".join(
            (
                _HEAD_PREFIX,
                str(self.session_id).encode(),
                b"\n",
                str(self.user_id).encode(),
                b"\n",
                format_datetime(self.expires).encode(),
                b"\n",
                self.key_id.encode(),
                b"\n",
                self.digest.encode(),
            )
        )

    def signature_with(self, key: bytes) -> str:
        mac = hmac.new(key, self.canonical(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode()


@dataclass(frozen=True, slots=True)
class AuthToken:
    """The compact auth form: enough to verify the signature and find the session."""

    session_id: UUID
    user_id: UUID
    expires: datetime
    key_id: str
    digest: str
    signature: str

    def to_xml(self) -> str:
        return _element(
            {
                "SessionID": str(self.session_id),
                "UserID": str(self.user_id),
                "Expires": format_datetime(self.expires),
                "KeyID": self.key_id,
                "Digest": self.digest,
                "Signature": self.signature,
            }
        )

    def verify(self, keys: Mapping[str, bytes]) -> None:
        """Check the signature under the named key; raises :class:`TokenSignatureInvalid`."""
        key = keys.get(self.key_id)
        if key is None:
            raise TokenSignatureInvalid(
                f"session token is signed with key {self.key_id!r}, which this server does not "
                "have; sign in again"
            )
        head = _Head(self.session_id, self.user_id, self.expires, self.key_id, self.digest)
        if not hmac.compare_digest(head.signature_with(key).encode(), self.signature.encode()):
            raise TokenSignatureInvalid("session token signature does not match; sign in again")

    @classmethod
    def from_xml(cls, text: str | bytes) -> AuthToken:
        """Parse the auth form, or a full form (whose digest is then computed)."""
        canonical = CANONICAL_AUTH.match(text) if isinstance(text, str) else None
        if canonical is not None:  # as sessiond writes it: no XML parser needed
            session_id, user_id, expires, key_id, digest, signature = canonical.groups()
            try:
                return cls(
                    _canonical_uuid(session_id),
                    _canonical_uuid(user_id),
                    _dec_datetime(expires),
                    key_id,
                    digest,
                    signature,
                )
            except ValueError as exc:
                raise TokenInvalid(f"auth token is malformed: {exc}") from None
        attrs = _parse(text)
        if "Digest" not in attrs:
            token = SessionToken.from_xml(text)
            if token.key_id is None or token.signature is None:
                raise TokenInvalid("session token is not signed")
            return token.auth()
        extra = attrs.keys() - {"SessionID", "UserID", "Expires", "KeyID", "Digest", "Signature"}
        if extra:
            raise TokenInvalid(f"auth token has unexpected attributes: {', '.join(sorted(extra))}")
        try:
            return cls(
                session_id=_dec_uuid(attrs["SessionID"]),
                user_id=_dec_uuid(attrs["UserID"]),
                expires=_dec_datetime(attrs["Expires"]),
                key_id=_key_id(attrs["KeyID"]),
                digest=_checked(_DIGEST_RE, attrs["Digest"]),
                signature=_checked(_SIGNATURE_RE, attrs["Signature"]),
            )
        except KeyError as missing:
            raise TokenInvalid(f"auth token lacks {missing.args[0]}") from None
        except ValueError as exc:
            raise TokenInvalid(f"auth token is malformed: {exc}") from None


def _checked(pattern: re.Pattern[str], text: str) -> str:
    if not pattern.match(text):
        raise ValueError(f"{text[:20]!r} is not in the expected form")
    return text


def _digest(attrs: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name, value in attrs.items():
        if name in _HEAD_FIELDS:
            continue
        raw = value.encode()
        h.update(b"%s=%d:%s\n" % (name.encode(), len(raw), raw))
    return h.hexdigest()


def _element(attrs: Mapping[str, str]) -> str:
    body = " ".join(f'{name}="{escape(value, _ATTR_ESCAPES)}"' for name, value in attrs.items())
    return f"<{ELEMENT} {body}/>"


_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers must not be shared between threads.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_blank_text=True,
        )
        _local.parser = parser
    return parser


def _parse(text: str | bytes) -> dict[str, str]:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenInvalid(f"session token is larger than {MAX_TOKEN_BYTES} bytes")
    raw = raw.strip()
    if raw.startswith(b"<?xml"):
        end = raw.find(b"?>")
        if end < 0:
            raise TokenInvalid("session token is not well-formed XML")
        raw = raw[end + 2 :].lstrip()
    # No DTDs, comments, CDATA, processing instructions or entity references beyond XML's
    # predefined five and character references: a token never needs them.
    if b"<!" in raw or b"<?" in raw:
        raise TokenInvalid("session token must not contain a DTD, comment or instruction")
    if _ENTITY_RE.search(raw):
        raise TokenInvalid("session token must not contain entity references")
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError:
        raise TokenInvalid("session token is not well-formed XML") from None
    if root.tag != ELEMENT or len(root) or (root.text and root.text.strip()):
        raise TokenInvalid(f"session token must be a single empty <{ELEMENT}/> element")
    attrs = {str(k): str(v) for k, v in root.attrib.items()}
    unknown = [name for name in attrs if name not in _CODECS and name != "Digest"]
    if unknown:
        raise TokenInvalid(f"session token has unknown attributes: {', '.join(sorted(unknown))}")
    return attrs


def _decode(attrs: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, text in attrs.items():
        if name == "Digest":
            continue
        attr, (_enc, dec) = _CODECS[name]
        try:
            values[attr] = dec(text)
        except ValueError as exc:
            raise TokenInvalid(f"session token attribute {name} is invalid: {exc}") from None
    return values
