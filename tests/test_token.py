"""The token's forms, its signature, and a parser that treats every token as hostile."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from sessiond.errors import TokenInvalid, TokenSignatureInvalid
from sessiond.models import AccessLevel, DeviceType, LicenseType, LoginType, ServiceType
from sessiond.token import FIELDS, AuthToken, SessionToken

KEYS = {"k1": b"k" * 32, "k2": b"z" * 32}
NOW = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)


def full_token() -> SessionToken:
    return SessionToken(
        session_id=uuid4(),
        user_id=uuid4(),
        user_name='Иванов И. "Ваня" <dev> & co',
        user_login="CORP\\ivanov",
        access_level=AccessLevel.ADMINISTRATOR,
        application_id=uuid4(),
        created=NOW,
        expires=NOW + timedelta(days=7),
        license_type=LicenseType.CONCURRENT_WEB,
        login_type=LoginType.WINDOWS,
        service_type=ServiceType.WEB_CLIENT,
        device_type=DeviceType.TABLET,
        culture="ru-RU",
        ui_culture="en-US",
        utc_offset=180,
        time_zone_utc_offset=-300,
        server_code="tessa",
        instance_name="node-1",
        host_ip="10.0.0.5",
        host_name="ws-17",
        os_name="Windows 11",
        user_agent="Mozilla/5.0",
        client_64bit=True,
        client_64bit_os=False,
    ).signed("k1", KEYS["k1"])


def test_every_field_of_the_token_is_an_attribute_in_canonical_order() -> None:
    assert sorted(attr for _xml, attr, _codec in FIELDS) == sorted(
        f.name for f in fields(SessionToken)
    )
    xml = full_token().to_xml()
    assert re.findall(r' (\w+)="', xml) == [name for name, _a, _c in FIELDS]


def test_full_form_round_trips_and_verifies() -> None:
    token = full_token()
    parsed = SessionToken.from_xml(token.to_xml())
    assert parsed == token
    parsed.verify(KEYS)


def test_absent_optional_fields_are_omitted() -> None:
    token = SessionToken(
        session_id=uuid4(), user_id=uuid4(), user_name="u", created=NOW, expires=NOW
    ).signed("k1", KEYS["k1"])
    xml = token.to_xml()
    assert "UserLogin" not in xml and "Culture" not in xml and "Client64Bit" not in xml
    assert SessionToken.from_xml(xml) == token


def test_auth_form_is_compact_and_verifies_alone() -> None:
    token = full_token()
    auth_xml = token.to_auth_xml()
    assert len(auth_xml) < len(token.to_xml()) / 2
    auth = AuthToken.from_xml(auth_xml)
    assert auth.session_id == token.session_id
    auth.verify(KEYS)
    # the full form is accepted where the auth form is expected
    assert AuthToken.from_xml(token.to_xml()) == auth


def test_a_token_signed_with_an_older_key_still_verifies_after_rotation() -> None:
    old = full_token()
    new = replace(old, key_id=None, signature=None).signed("k2", KEYS["k2"])
    old.verify(KEYS)
    new.verify(KEYS)
    with pytest.raises(TokenSignatureInvalid, match="does not have"):
        old.verify({"k2": KEYS["k2"]})


ALTERNATIVES = {
    "SessionID": str(uuid4()),
    "UserID": str(uuid4()),
    "UserName": "Petrov",
    "UserLogin": "CORP\\petrov",
    "AccessLevel": "Regular",
    "ApplicationID": str(uuid4()),
    "Created": "2026-11-24T12:00:01.123456Z",
    "Expires": "2027-11-24T12:00:00.123456Z",
    "LicenseType": "PersonalWeb",
    "LoginType": "Platform",
    "ServiceType": "DesktopClient",
    "DeviceType": "Phone",
    "Culture": "en-US",
    "UICulture": "ru-RU",
    "UtcOffset": "240",
    "TimeZoneUtcOffset": "0",
    "ServerCode": "other",
    "InstanceName": "node-2",
    "HostIP": "10.0.0.6",
    "HostName": "ws-18",
    "OSName": "Linux",
    "UserAgent": "curl/8",
    "Client64Bit": "false",
    "Client64BitOS": "true",
    "KeyID": "k2",
    "Signature": "A" * 43 + "=",
}


def _with_attribute(xml: str, name: str, value: str) -> str:
    changed, count = re.subn(rf' {name}="[^"]*"', lambda _m: f' {name}="{value}"', xml)
    assert count == 1
    return changed


@pytest.mark.parametrize("name", [name for name, _a, _c in FIELDS])
def test_changing_any_single_attribute_breaks_the_signature(name: str) -> None:
    tampered = _with_attribute(full_token().to_xml(), name, ALTERNATIVES[name])
    with pytest.raises(TokenSignatureInvalid):
        SessionToken.from_xml(tampered).verify(KEYS)
    with pytest.raises(TokenSignatureInvalid):
        AuthToken.from_xml(tampered).verify(KEYS)


@pytest.mark.parametrize("name", ["SessionID", "UserID", "Expires", "KeyID", "Digest", "Signature"])
def test_changing_any_attribute_of_the_auth_form_breaks_it(name: str) -> None:
    alternatives = {**ALTERNATIVES, "Digest": "0" * 64}
    tampered = _with_attribute(full_token().to_auth_xml(), name, alternatives[name])
    with pytest.raises(TokenSignatureInvalid):
        AuthToken.from_xml(tampered).verify(KEYS)


@pytest.mark.parametrize(
    ("name", "spelling"),
    [
        ("SessionID", "{%s}"),
        ("Client64Bit", "True"),
        ("Created", "2026-11-24T12:00:00Z"),
        ("Created", "2026-11-24T15:00:00.123456+03:00"),
        ("UtcOffset", "0180"),
        ("UtcOffset", "-0"),
        ("UtcOffset", "١٨٠"),  # Arabic-Indic digits
        ("Created", "٢٠٢٦-11-24T12:00:00.123456Z"),
        ("AccessLevel", "administrator"),
        ("AccessLevel", "1"),
    ],
)
def test_only_the_canonical_spelling_of_a_value_is_accepted(name: str, spelling: str) -> None:
    token = full_token()
    xml = token.to_xml()
    if "%s" in spelling:
        spelling = spelling % token.session_id
    with pytest.raises(TokenInvalid):
        SessionToken.from_xml(_with_attribute(xml, name, spelling))


HOSTILE = {
    "truncated": lambda xml: xml[: len(xml) // 2],
    "empty": lambda xml: "",
    "not xml": lambda xml: "hello",
    "doctype": lambda xml: '<!DOCTYPE SessionToken [<!ENTITY x "boom">]>' + xml,
    "external entity": lambda xml: (
        '<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + xml.replace('UserName="', 'UserName="&x;')
    ),
    "undeclared entity": lambda xml: xml.replace('UserName="', 'UserName="&x;'),
    "billion laughs": lambda xml: (
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>' + xml.replace('UserName="', 'UserName="&b;')
    ),
    "comment": lambda xml: xml.replace("<SessionToken ", "<!-- hi --><SessionToken "),
    "processing instruction": lambda xml: "<?evil?>" + xml,
    "child element": lambda xml: xml.replace("/>", "><x/></SessionToken>"),
    "text content": lambda xml: xml.replace("/>", ">text</SessionToken>"),
    "wrong root": lambda xml: xml.replace("<SessionToken ", "<Token "),
    "unknown attribute": lambda xml: xml.replace("/>", ' Evil="1"/>'),
    "oversized": lambda xml: xml.replace('UserName="', 'UserName="' + "x" * 20000),
    "overlong value": lambda xml: xml.replace('UserName="', 'UserName="' + "x" * 2000),
    "missing required": lambda xml: re.sub(r' UserID="[^"]*"', "", xml),
    "bad uuid": lambda xml: re.sub(r' UserID="[^"]*"', ' UserID="nope"', xml),
    "bad enum": lambda xml: xml.replace('LoginType="Windows"', 'LoginType="Root"'),
    "bad utf-8": lambda xml: xml.encode()[:-3] + b"\xff\xfe/>",
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_is_refused_as_token_invalid(case: str) -> None:
    text = HOSTILE[case](full_token().to_xml())
    with pytest.raises(TokenInvalid):
        SessionToken.from_xml(text)
    with pytest.raises(TokenInvalid):
        AuthToken.from_xml(text)


def test_an_auth_form_is_not_mistaken_for_a_full_token() -> None:
    with pytest.raises(TokenInvalid, match="auth token"):
        SessionToken.from_xml(full_token().to_auth_xml())


def test_unsigned_token_does_not_verify() -> None:
    token = replace(full_token(), key_id=None, signature=None)
    with pytest.raises(TokenSignatureInvalid):
        token.verify(KEYS)
    assert isinstance(token.session_id, UUID)


def test_whitespace_in_values_survives_the_round_trip() -> None:
    token = replace(full_token(), user_name="line one\nline\ttwo\r", key_id=None, signature=None)
    signed = token.signed("k1", KEYS["k1"])
    parsed = SessionToken.from_xml(signed.to_xml())
    assert parsed.user_name == "line one\nline\ttwo\r"
    parsed.verify(KEYS)


def test_control_characters_cannot_enter_a_token() -> None:
    with pytest.raises(ValueError, match="control characters"):
        replace(full_token(), user_name="bell\x07").to_xml()


# --- any input at all: a token or TokenInvalid, nothing else ---------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_are_a_token_or_token_invalid(data: bytes) -> None:
    for parse in (SessionToken.from_xml, AuthToken.from_xml):
        try:
            parse(data)
        except TokenInvalid:
            pass


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_tokens_never_verify_unless_unchanged(data: st.DataObject) -> None:
    original = full_token().to_xml()
    position = data.draw(st.integers(0, len(original) - 1))
    insert = data.draw(st.text(min_size=0, max_size=8))
    cut = data.draw(st.integers(0, 8))
    mutated = original[:position] + insert + original[position + cut :]
    try:
        token = AuthToken.from_xml(mutated)
    except TokenInvalid:
        return
    try:
        token.verify(KEYS)
    except TokenSignatureInvalid:
        return
    # It verified: then it must be the same token (e.g. only insignificant whitespace changed).
    assert token == AuthToken.from_xml(original)


def _either(text: str | bytes) -> AuthToken | str:
    try:
        return AuthToken.from_xml(text)
    except TokenInvalid:
        return "invalid"


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.data())
def test_the_fast_reading_of_the_auth_form_agrees_with_the_hardened_parser(
    data: st.DataObject,
) -> None:
    # Text takes the pattern for the auth form as sessiond writes it; bytes always take the
    # hardened XML parser. Whatever the text, both must read the same token, or both refuse.
    original = full_token().to_auth_xml()
    position = data.draw(st.integers(0, len(original) - 1))
    insert = data.draw(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=4))
    cut = data.draw(st.integers(0, 3))
    mutated = original[:position] + insert + original[position + cut :]
    assert _either(mutated) == _either(mutated.encode())
    assert _either(original) == _either(original.encode()) != "invalid"


def test_a_fast_uuid_is_a_uuid_like_any_other() -> None:
    from sessiond.token import fast_uuid

    for _ in range(100):
        original = uuid4()
        made = fast_uuid(original.int)
        assert made == original and hash(made) == hash(original)
        assert str(made) == str(original) and made.hex == original.hex
        assert {original: 1}[made] == 1 and made.version == original.version
