"""What an HTTP Negotiate token is, read from its bytes: enough DER to route it, no more.

A token arrives as one of: a raw NTLMSSP message (``Authorization: NTLM``, or a client that
puts NTLM straight into ``Negotiate``); a SPNEGO ``NegTokenInit`` (RFC 4178) naming the
mechanisms the client offers, usually with an optimistic token of the first one; a SPNEGO
``NegTokenResp`` (a later leg); or a bare Kerberos ``InitialContextToken`` (RFC 4121). The
acceptor uses :func:`inspect` to send Kerberos to GSSAPI and NTLM to winbind or the local
credential file, and the helpers here to unwrap and wrap the Kerberos leg of SPNEGO itself,
so that a GSSAPI failure keeps the Kerberos library's own error code (MIT's SPNEGO layer
replaces mechanism minor codes with numbers of its own).

Nothing here decides whether a token is genuine: that is GSSAPI's, winbind's or the NTLM
acceptor's work. A token that does not parse is routed to GSSAPI, which refuses it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

NTLMSSP_SIGNATURE = b"NTLMSSP\x00"

# DER encodings of the object identifiers (tag 0x06 content only).
SPNEGO_OID = bytes.fromhex("2b0601050502")  # 1.3.6.1.5.5.2
KRB5_OID = bytes.fromhex("2a864886f712010202")  # 1.2.840.113554.1.2.2
MS_KRB5_OID = bytes.fromhex("2a864882f712010202")  # 1.2.840.48018.1.2.2 (Windows' alias)
NTLM_OID = bytes.fromhex("2b06010401823702020a")  # 1.3.6.1.4.1.311.2.2.10
KERBEROS_OIDS = (KRB5_OID, MS_KRB5_OID)

#: NegTokenResp negState values (RFC 4178 4.2.2).
ACCEPT_COMPLETED = 0


class DerError(ValueError):
    pass


def _read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One DER element at ``pos``: (tag, content, position after it)."""
    if pos + 2 > len(data):
        raise DerError("truncated")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError("truncated")
    return tag, data[pos:end], end


def _children(content: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(content):
        tag, value, pos = _read(content, pos)
        out.append((tag, value))
    return out


def _encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


@dataclass(frozen=True, slots=True)
class TokenKind:
    """What a client's token carries."""

    kind: str  # "ntlm" | "spnego-init" | "spnego-resp" | "kerberos" | "unknown"
    mechs: tuple[bytes, ...] = ()  # SPNEGO: the offered mechanisms (DER OID contents), in order
    mech_token: bytes | None = None  # SPNEGO init: the optimistic token

    @property
    def carries_ntlm(self) -> bool:
        """A raw NTLMSSP message, or SPNEGO whose token (or first choice) is NTLM."""
        if self.kind == "ntlm":
            return True
        if self.kind != "spnego-init":
            return False
        if self.mech_token is not None:
            return self.mech_token.startswith(NTLMSSP_SIGNATURE)
        return bool(self.mechs) and self.mechs[0] == NTLM_OID

    @property
    def kerberos_token(self) -> bytes | None:
        """SPNEGO init whose first mechanism is Kerberos and which carries its token."""
        first_is_kerberos = bool(self.mechs) and self.mechs[0] in KERBEROS_OIDS
        token = self.mech_token
        if self.kind == "spnego-init" and first_is_kerberos and token is not None:
            return None if token.startswith(NTLMSSP_SIGNATURE) else token
        return None


def inspect(token: bytes) -> TokenKind:
    if token.startswith(NTLMSSP_SIGNATURE):
        return TokenKind("ntlm")
    try:
        tag, content, _ = _read(token, 0)
        if tag == 0x60:  # [APPLICATION 0] InitialContextToken: thisMech, then the mech's token
            oid_tag, oid, rest = _read(content, 0)
            if oid_tag != 0x06:
                return TokenKind("unknown")
            if oid in KERBEROS_OIDS:
                return TokenKind("kerberos")
            if oid != SPNEGO_OID:
                return TokenKind("unknown")
            init_tag, init, _ = _read(content, rest)
            if init_tag != 0xA0:  # [0] NegTokenInit
                return TokenKind("unknown")
            seq_tag, seq, _ = _read(init, 0)
            if seq_tag != 0x30:
                return TokenKind("unknown")
            mechs: tuple[bytes, ...] = ()
            mech_token = None
            for field, value in _children(seq):
                if field == 0xA0:  # mechTypes
                    _, types, _ = _read(value, 0)
                    mechs = tuple(oid for t, oid in _children(types) if t == 0x06)
                elif field == 0xA2:  # mechToken
                    _, mech_token, _ = _read(value, 0)
            return TokenKind("spnego-init", mechs, mech_token)
        if tag == 0xA1:  # [1] NegTokenResp
            return TokenKind("spnego-resp")
    except DerError:
        pass
    return TokenKind("unknown")


def neg_token_resp(mech: bytes, response: bytes | None, state: int = ACCEPT_COMPLETED) -> bytes:
    """A SPNEGO NegTokenResp: ``negState``, ``supportedMech`` and the mechanism's token."""
    fields = _encode(0xA0, _encode(0x0A, bytes((state,))))
    fields += _encode(0xA1, _encode(0x06, mech))
    if response:
        fields += _encode(0xA2, _encode(0x04, response))
    return _encode(0xA1, _encode(0x30, fields))


def ticket_server(krb5_token: bytes) -> str | None:
    """The service principal (``service/host@REALM``) a Kerberos AP-REQ's ticket is for, read
    from the ticket's clear-text part; None if the token is not an AP-REQ."""
    try:
        _, content, _ = _read(krb5_token, 0)  # [APPLICATION 0]
        _, _oid, pos = _read(content, 0)
        if content[pos : pos + 2] != b"\x01\x00":  # TOK_ID of KRB_AP_REQ
            return None
        tag, ap_req, _ = _read(content, pos + 2)
        if tag != 0x6E:  # [APPLICATION 14] AP-REQ
            return None
        _, fields, _ = _read(ap_req, 0)
        for field, value in _children(fields):
            if field != 0xA3:  # ticket
                continue
            _, ticket, _ = _read(value, 0)  # [APPLICATION 1]
            _, parts, _ = _read(ticket, 0)
            realm = names = None
            for part, part_value in _children(parts):
                if part == 0xA1:
                    _, realm_bytes, _ = _read(part_value, 0)
                    realm = realm_bytes.decode(errors="replace")
                elif part == 0xA2:
                    _, principal, _ = _read(part_value, 0)
                    for name_field, name_value in _children(principal):
                        if name_field == 0xA1:
                            _, strings, _ = _read(name_value, 0)
                            names = [s.decode(errors="replace") for _, s in _children(strings)]
            if realm and names:
                return "/".join(names) + "@" + realm
    except (DerError, IndexError):
        return None
    return None


def ntlm_message_type(token: bytes) -> int | None:
    """1, 2 or 3 for an NTLMSSP message found in ``token`` (raw or inside SPNEGO)."""
    at = token.find(NTLMSSP_SIGNATURE)
    if at < 0 or at + 12 > len(token):
        return None
    return int(struct.unpack_from("<I", token, at + 8)[0])


@dataclass(frozen=True, slots=True)
class NtlmAuthenticate:
    """What an NTLM AUTHENTICATE (type 3) message says of itself."""

    nt_response_length: int
    lm_response_length: int
    domain: str
    user: str

    @property
    def anonymous(self) -> bool:
        return self.nt_response_length == 0 and not self.user

    @property
    def version(self) -> str:
        """``v2`` (NTProofStr + client blob: longer than 24 bytes), ``v1`` (24 bytes: NTLMv1
        or its NTLM2 session response variant), or ``anonymous``/``lm`` for the rest."""
        if self.nt_response_length > 24:
            return "v2"
        if self.nt_response_length == 24:
            return "v1"
        return "anonymous" if self.anonymous else "lm"

    @property
    def who(self) -> str:
        return f"{self.domain}\\{self.user}" if self.domain else self.user


def ntlm_authenticate(token: bytes) -> NtlmAuthenticate | None:
    """The AUTHENTICATE message in ``token`` (raw, or inside a SPNEGO NegTokenResp: the
    message is one OCTET STRING there, and its offsets count from its own start)."""
    at = token.find(NTLMSSP_SIGNATURE + b"\x03\x00\x00\x00")
    if at < 0:
        return None
    msg = token[at:]
    if len(msg) < 64:
        return None
    lm_len, _, _lm_off, nt_len, _, _nt_off = struct.unpack_from("<HHIHHI", msg, 12)
    dom_len, _, dom_off, user_len, _, user_off = struct.unpack_from("<HHIHHI", msg, 28)
    flags = struct.unpack_from("<I", msg, 60)[0]
    encoding = "utf-16-le" if flags & 0x1 else "latin-1"  # NTLMSSP_NEGOTIATE_UNICODE

    def text(offset: int, length: int) -> str:
        return msg[offset : offset + length].decode(encoding, errors="replace")

    return NtlmAuthenticate(nt_len, lm_len, text(dom_off, dom_len), text(user_off, user_len))
