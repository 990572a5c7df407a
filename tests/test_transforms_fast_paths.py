"""The mapping's shortcuts give exactly what the full library calls give."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import transforms
from connector.field_map import Mapped, load_field_map

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
LOCAL_PART = st.text(alphabet=ATEXT + ".\"\\ @é", min_size=0, max_size=70)
DOMAIN = st.one_of(
    st.sampled_from(["example.com", "EXAMPLE.org", "x", "localhost", "a.test", "xn--bcher-kva.de", "bücher.de", "[1.2.3.4]", "-a.com", "a..com"]),
    st.text(alphabet="abcXYZ09-.", min_size=1, max_size=70),
)


def reference_email(address: str) -> tuple[tuple[str, ...], str | None]:
    """Return what to_email gave before the shortcut: email-validator on the whole address."""
    text = unicodedata.normalize("NFC", address).strip()
    if not text:
        return (), None
    try:
        return (validate_email(text, check_deliverability=False).normalized,), None
    except EmailNotValidError:
        return (), "invalid"


@settings(max_examples=600, deadline=None)
@given(local_part=LOCAL_PART, domain=DOMAIN)
def test_email_shortcut_matches_library(local_part: str, domain: str) -> None:
    address = f"{local_part}@{domain}"
    converted = transforms.to_email(address)
    values, problem = reference_email(address)

    assert converted.values == values
    assert (converted.problem is None) == (problem is None)


@pytest.mark.parametrize(
    "address",
    ["Postmaster@Example.com", "ABUSE@example.com", "a@EXAMPLE.COM", "a@xn--bcher-kva.de", "x" * 64 + "@example.com",
     "x" * 65 + "@example.com", "a@" + "b" * 245 + ".com", "a..b@example.com", ".a@example.com"],
)
def test_email_shortcut_edge_cases(address: str) -> None:
    converted = transforms.to_email(address)
    values, problem = reference_email(address)

    assert converted.values == values
    assert (converted.problem is None) == (problem is None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_scalar_text_shortcut_matches_normalisation(text: str) -> None:
    converted = transforms.scalar_text(text)
    cleaned = unicodedata.normalize("NFC", text).strip()

    if cleaned and not any(0xD800 <= ord(char) <= 0xDFFF for char in cleaned):
        assert converted.values == (cleaned,)
    else:
        assert converted.values == ()


PHONES = st.one_of(
    st.sampled_from(["(415) 234-0001", "+1 212 234 0001 ext. 204", "030 1234567", "+49 30 1234567", "12", "abc", "", "  "]),
    st.text(alphabet="0123456789 +()-.xt", max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(mobile=PHONES, phone=PHONES, country=st.sampled_from([None, "United States", "Germany", "Atlantis"]))
def test_record_phone_cache_matches_transforms(mobile: str, phone: str, country: str | None) -> None:
    field_map = load_field_map(default_region="US")
    record: dict[str, Any] = {"Id": "0035g00003H1mFLAAZ", "LastName": "Lovelace", "MobilePhone": mobile, "Phone": phone, "MailingCountry": country}
    outcome = field_map.apply(record)

    region = transforms.country_to_region(country) if country else None
    region = region if region in transforms.phonenumbers.SUPPORTED_REGIONS else "US"
    expected_identity = next(
        (converted.values[0] for converted in (transforms.to_phone(mobile, region), transforms.to_phone(phone, region)) if converted.values),
        None,
    )
    if expected_identity is None:
        assert not isinstance(outcome, Mapped)
        return
    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == expected_identity
    extension = next(
        (converted.values[0] for converted in (transforms.to_phone_extension(phone, region), transforms.to_phone_extension(mobile, region)) if converted.values),
        None,
    )
    assert outcome.payload.get("custom_properties", {}).get("phone_extension") == extension


def reference_parse(text: str, region: str) -> transforms.phonenumbers.PhoneNumber | None:
    try:
        return transforms.phonenumbers.parse(text, region)
    except transforms.phonenumbers.NumberParseException:
        return None


NANP_TEXTS = st.builds(
    lambda area, exchange, line, extension, spaces: f"{spaces}({area}) {exchange}-{line}{extension}",
    area=st.text(alphabet="0123456789", min_size=3, max_size=3),
    exchange=st.text(alphabet="0123456789", min_size=3, max_size=3),
    line=st.text(alphabet="0123456789", min_size=4, max_size=4),
    extension=st.one_of(st.just(""), st.text(alphabet="0123456789", min_size=1, max_size=8).map(lambda digits: f" ext. {digits}")),
    spaces=st.sampled_from(["", " "]),
)


@settings(max_examples=600, deadline=None)
@given(text=NANP_TEXTS, region=st.sampled_from(sorted(transforms.NANP_FAST_REGIONS)))
def test_nanp_parse_shortcut_matches_library(text: str, region: str) -> None:
    parsed = transforms.parse_phone(text, region)
    expected = reference_parse(text.strip(), region)

    assert expected is not None
    assert parsed == expected
    assert isinstance(parsed, transforms.phonenumbers.PhoneNumber)
    assert parsed.__dict__ == expected.__dict__


NUMBERS = st.one_of(
    NANP_TEXTS.map(lambda text: ("+1 " + text.strip(), None)),
    st.tuples(
        st.text(alphabet="0123456789", min_size=4, max_size=12),
        st.sampled_from(["US", "CA", "GB", "JE", "IM", "RU", "KZ", "IT", "FR", "GP", "NO", "SJ", "AU", "CX", "DE", "MA", "EH", "FI", "AX"]),
    ),
)


@settings(max_examples=1000, deadline=None)
@given(number=NUMBERS)
def test_is_valid_number_matches_library(number: tuple[str, str | None]) -> None:
    text, region = number
    parsed = reference_parse(text, region or "US")
    if parsed is None:
        return

    assert transforms.is_valid_number(parsed) == transforms.phonenumbers.is_valid_number(parsed)


@pytest.mark.parametrize("text", ["(415) 234-0001", "(613) 555-0100", "(268) 464-1234", "(800) 234-0001", "(555) 010-0000", "(212) 200-0000 ext. 100"])
@pytest.mark.parametrize("region", ["US", "CA", "AG", "DE"])
def test_phone_shortcuts_known_numbers(text: str, region: str) -> None:
    expected = reference_parse(text, region)
    parsed = transforms.parse_phone(text, region)

    assert parsed == expected
    assert transforms.is_valid_number(parsed) == transforms.phonenumbers.is_valid_number(parsed)
