"""Value transforms of field maps: one Salesforce value in, strings for Charles out.

Each transform takes one raw record value, as Salesforce's JSON gives it (a string, a
number, a boolean, null, or a nested object for relationships), and returns a
``Converted``. It never raises on the value: a value it cannot use comes back with a
``problem`` that names the reason but never repeats the value, because values are
personal data and problems end up in logs.

``FIELD_TYPES`` lists which Salesforce field types (as ``describe`` names them) each
transform accepts, so a map is checked against the org before any record moves.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from connector.cursor import parse_salesforce_datetime

Transform = Literal["text", "phone", "phone_extension", "email", "multipicklist", "boolean", "number", "date", "datetime"]
PhoneProblem = Literal["phone_invalid", "phone_region_unknown"]

# Salesforce field types (describe ``type``) that each transform accepts. ``text`` takes
# every type except the compound and binary ones, whose values are objects or base64 data.
_TEXT_LIKE = frozenset({"string", "textarea", "combobox", "encryptedstring"})
FIELD_TYPES: dict[str, frozenset[str] | None] = {
    "text": None,
    "phone": frozenset({"phone"}) | _TEXT_LIKE,
    "phone_extension": frozenset({"phone"}) | _TEXT_LIKE,
    "email": frozenset({"email"}) | _TEXT_LIKE,
    "multipicklist": frozenset({"multipicklist", "picklist"}) | _TEXT_LIKE,
    "boolean": frozenset({"boolean"}) | _TEXT_LIKE,
    "number": frozenset({"int", "long", "double", "currency", "percent"}) | _TEXT_LIKE,
    "date": frozenset({"date", "datetime"}) | _TEXT_LIKE,
    "datetime": frozenset({"datetime"}) | _TEXT_LIKE,
}
UNREADABLE_TYPES = frozenset({"address", "location", "base64"})
# Fields that hold a country as a name or code; the region of phone numbers is read from them.
COUNTRY_FIELD_TYPES = frozenset({"picklist"}) | _TEXT_LIKE

# Numbers beyond 10**100 (or below 10**-100) are dropped rather than written out digit by digit.
MAX_NUMBER_EXPONENT = 100
_OUT_OF_RANGE = f"a number beyond 1E{MAX_NUMBER_EXPONENT} or below 1E-{MAX_NUMBER_EXPONENT}"

# strftime directives that map formats may use (C89 plus %f, %G, %u, %V).
_STRFTIME_CODES = frozenset("aAbBcdHIjmMpSUwWxXyYZzfGuV")

# Country names that ISO 3166 (and so pycountry) does not list but Salesforce users type.
_COUNTRY_ALIASES = {
    "usa": "US", "u.s.": "US", "u.s.a.": "US", "america": "US", "united states of america": "US",
    "uk": "GB", "u.k.": "GB", "great britain": "GB", "england": "GB", "scotland": "GB", "wales": "GB",
    "deutschland": "DE", "österreich": "AT", "schweiz": "CH", "suisse": "CH", "españa": "ES",
    "italia": "IT", "nederland": "NL", "holland": "NL", "россия": "RU", "south korea": "KR", "korea": "KR",
    "russia": "RU", "turkey": "TR", "the netherlands": "NL", "macedonia": "MK", "ivory coast": "CI",
    "cape verde": "CV", "swaziland": "SZ", "brunei": "BN", "palestine": "PS", "vatican": "VA",
    "micronesia": "FM", "macau": "MO", "kosovo": "XK", "uae": "AE", "bosnia": "BA",
    "republic of ireland": "IE", "polska": "PL", "frankreich": "FR", "italien": "IT", "spanien": "ES",
    "belgique": "BE", "belgië": "BE", "belgien": "BE", "sverige": "SE", "norge": "NO", "danmark": "DK",
    "suomi": "FI", "brasil": "BR", "méxico": "MX",
}
# An international calling code as a country: "+49" or "0049".
_CALLING_CODE = re.compile(r"(?:\+|00)(\d{1,3})")

_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "invalid country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


@dataclass(frozen=True)
class Converted:
    """The strings a transform made of one value; ``problem`` is the reason a value was dropped.

    Both can be set: a multi-select value keeps its usable items when one item is dropped.
    No values and no problem means the field was empty.
    """

    values: tuple[str, ...] = ()
    problem: str | None = None
    phone_problem: PhoneProblem | None = None


EMPTY = Converted()


def _one(value: str) -> Converted:
    return Converted(values=(value,))


def _dropped(problem: str, phone_problem: PhoneProblem | None = None) -> Converted:
    return Converted(problem=problem, phone_problem=phone_problem)


# --------------------------------------------------------------------------- plain text


def clean_text(text: str) -> str | None:
    """Return ``text`` NFC-normalised and trimmed, or None when nothing is left."""
    cleaned = unicodedata.normalize("NFC", text).strip()
    return cleaned or None


def format_number(number: Decimal) -> str:
    """Write a finite Decimal in plain notation without trailing zeros: ``5.0`` as ``5``, ``1E-7`` as ``0.0000001``."""
    text = f"{number:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _decimal(raw: int | float | str) -> Decimal | str:
    """Return a record value as a finite Decimal of sensible size, or the reason it is not one."""
    try:
        # repr() gives the shortest text that reads back as the same float.
        number = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
    except InvalidOperation:
        return "not a number"
    except ValueError:  # an int beyond Python's int-to-str digit limit
        return _OUT_OF_RANGE
    if not number.is_finite():
        return "not a finite number"
    if abs(number.adjusted()) > MAX_NUMBER_EXPONENT:
        return _OUT_OF_RANGE
    return number


def scalar_text(raw: Any) -> Converted:
    """Turn one record value into trimmed NFC text.

    Booleans become ``"true"``/``"false"`` and numbers plain decimal text. Null, empty and
    blank strings are empty, not dropped. Objects and lists are dropped, because a single
    text value cannot hold them.
    """
    if raw is None:
        return EMPTY
    if isinstance(raw, str) and raw.isascii():
        # NFC leaves ASCII unchanged and ASCII always encodes, so trimming is all that is left.
        text = raw.strip()
        return _one(text) if text else EMPTY
    if isinstance(raw, bool):
        return _one("true" if raw else "false")
    if isinstance(raw, (int, float)):
        number = _decimal(raw)
        return _dropped(number) if isinstance(number, str) else _one(format_number(number))
    if isinstance(raw, dict):
        return _dropped("an object, not a single value")
    if isinstance(raw, (list, tuple)):
        return _dropped("a list, not a single value")
    if not isinstance(raw, str):
        return _dropped(f"an unsupported value type ({type(raw).__name__})")
    text = clean_text(raw)
    if text is None:
        return EMPTY
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _dropped("text that is not valid Unicode (lone surrogate code points)")
    return _one(text)


# --------------------------------------------------------------------------- phones


@lru_cache(maxsize=2048)
def country_to_region(country: str) -> str | None:
    """Map a country as typed in Salesforce to an ISO 3166-1 alpha-2 region code.

    Accepts English names and a few local ones ("Germany", "Deutschland", "USA"), ISO
    alpha-2, alpha-3 and numeric codes ("DE", "DEU", "276"), and international calling
    codes written with ``+`` or ``00`` ("+49"). Returns None for anything else.
    """
    text = unicodedata.normalize("NFC", country).strip()
    if not text:
        return None
    alias = _COUNTRY_ALIASES.get(text.casefold())
    if alias:
        return alias
    calling_code = _CALLING_CODE.fullmatch(text)
    if calling_code:
        region = phonenumbers.region_code_for_country_code(int(calling_code.group(1)))
        return None if region == phonenumbers.UNKNOWN_REGION else region
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        return None


# The North American national form "(415) 555-0123", with an optional " ext. 204". For the
# regions below, phonenumbers 9 parses it to country code 1 and the ten digits, with the
# extension if there is one. tests/test_transforms_fast_paths.py checks this against
# phonenumbers.parse. The area code's first digit is 2 to 9, so no national prefix "1" applies.
_NANP_NATIONAL = re.compile(r"\(([2-9]\d\d)\) (\d{3})-(\d{4})(?: ext\. (\d{1,6}))?")
NANP_FAST_REGIONS = frozenset({"US", "CA"})


def parse_phone(raw: Any, region: str | None) -> phonenumbers.PhoneNumber | Converted:
    """Parse a phone number; return the parsed number, or a Converted that is empty or names the problem."""
    converted = scalar_text(raw)
    if not converted.values:
        return converted
    text = converted.values[0]
    if region in NANP_FAST_REGIONS:
        # The common form of US and Canadian numbers, without phonenumbers.parse's general
        # steps. Those took about 60% of the phone time per record in bench/mapping.py.
        nanp = _NANP_NATIONAL.fullmatch(text)
        if nanp is not None:
            area, exchange, line, extension = nanp.groups()
            return phonenumbers.PhoneNumber(country_code=1, national_number=int(area + exchange + line), extension=extension)
    if not text.startswith("+") and region is None:
        return _dropped("no country on the record and no default region", "phone_region_unknown")
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "unparseable")
        return _dropped(f"not a phone number ({reason})", "phone_invalid")


def to_phone(raw: Any, region: str | None) -> Converted:
    """Convert a phone number to E.164, which has no extension.

    ``region`` is used for numbers without a ``+`` prefix. Numbers that phonenumbers does
    not consider able to exist (``is_valid_number``) are dropped.
    """
    number = parse_phone(raw, region)
    if isinstance(number, Converted):
        return number
    return phone_e164(number, region)


@lru_cache(maxsize=None)
def _main_region(country_code: int) -> str | None:
    """Return the region that phonenumbers tries first for a calling code shared by several regions.

    phonenumbers.is_valid_number finds a number's region by trying the calling code's
    regions in order, and then checks the number against that region. A region without
    ``leading_digits`` is tried by checking the number against it. So when the first region
    has no ``leading_digits`` and the number is valid for it, is_valid_number returns True.
    Returns None for a calling code of one region, where that shortcut saves nothing.
    """
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    if len(regions) < 2:
        return None
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(regions[0], None)
    return regions[0] if metadata is not None and metadata.leading_digits is None else None


def is_valid_number(number: phonenumbers.PhoneNumber) -> bool:
    """Return what phonenumbers.is_valid_number returns, checking a number of the main region once.

    For a shared calling code such as +1, is_valid_number checks a number against the
    metadata of its region twice, first to find the region and then to validate.
    """
    main_region = _main_region(number.country_code)
    if main_region is not None and phonenumbers.is_valid_number_for_region(number, main_region):
        return True
    return phonenumbers.is_valid_number(number)


def phone_e164(number: phonenumbers.PhoneNumber, region: str | None) -> Converted:
    """Return a parsed number in E.164, or drop it unless phonenumbers considers it valid."""
    if not is_valid_number(number):
        where = f"region {region}" if region else "the country of its + prefix"
        return _dropped(f"not a valid number for {where}", "phone_invalid")
    return _one(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def to_phone_extension(raw: Any, region: str | None) -> Converted:
    """Return the extension of a phone number (``ext. 204``, ``x 99``), or nothing if it has none.

    The number itself need not be valid; whether it is decides only the phone targets.
    """
    number = parse_phone(raw, region)
    if isinstance(number, Converted):
        return number
    return phone_extension(number)


def phone_extension(number: phonenumbers.PhoneNumber) -> Converted:
    """Return the extension of a parsed number, or nothing if it has none."""
    return _one(number.extension) if number.extension else EMPTY


# --------------------------------------------------------------------------- emails


# An ASCII dot-atom local part (RFC 5322 atext), which email-validator accepts and keeps as it is.
_PLAIN_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# email-validator's limits (RFC 5321): 64 octets before the @, 254 for the whole address.
_MAX_LOCAL_PART = 64
_MAX_ADDRESS = 254


def to_email(raw: Any) -> Converted:
    """Check an email address's syntax with email-validator and return its normalised form.

    No DNS look-ups (``check_deliverability=False``): a sync loop must not depend on a
    resolver for every record.

    Most of email-validator's time goes to checking the domain, which few records differ
    in. An address with a plain ASCII local part therefore has its domain checked once per
    domain, with the same library call, and gets the same result as a full check. Other
    addresses take the full check.
    """
    converted = scalar_text(raw)
    if not converted.values:
        return converted
    address = converted.values[0]
    local_part, at_sign, domain = address.rpartition("@")
    if (
        at_sign
        and address.isascii()
        and len(local_part) <= _MAX_LOCAL_PART
        and _PLAIN_LOCAL_PART.fullmatch(local_part)
        # email-validator lowercases these (postmaster, abuse, ...); the full check does it.
        and local_part.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
    ):
        checked = _email_domain(domain)
        if isinstance(checked, Converted):
            return checked
        normalized = f"{local_part}@{checked[0]}"
        ascii_form = f"{local_part}@{checked[1]}"
        if max(len(address), len(normalized.encode("utf-8")), len(ascii_form)) <= _MAX_ADDRESS:
            return _one(normalized)
    try:
        result = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return _dropped(f"invalid email address ({_email_reason(exc)})")
    return _one(result.normalized)


@lru_cache(maxsize=4096)
def _email_domain(domain: str) -> tuple[str, str] | Converted:
    """Check the part after the @ once; return its normalised and ASCII forms, or the problem.

    The address checked has the local part ``a``, which is valid, so any error is the domain's.
    """
    try:
        result = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        return _dropped(f"invalid email address ({_email_reason(exc)})")
    return result.domain, result.ascii_domain or result.domain


def _email_reason(exc: EmailNotValidError) -> str:
    """Return email-validator's message without the characters it quotes from the address."""
    message = str(exc)
    # Messages quote parts of the address after a colon or in brackets: "... invalid characters: '<'."
    return re.split(r":| \(", message, maxsplit=1)[0].strip().rstrip(".") or "invalid syntax"


# --------------------------------------------------------------------------- multi-select picklists


def to_list(raw: Any, separator: str | None) -> Converted:
    """Split a multi-select picklist value into trimmed items, in order, without duplicates.

    Salesforce joins the selected values with ``;``. A list of values (from a JSON file of
    records) is taken item by item. With ``separator`` None the whole value is one item.
    """
    if isinstance(raw, (list, tuple)):
        items: list[Any] = list(raw)
    else:
        converted = scalar_text(raw)
        if not converted.values:
            return converted
        text = converted.values[0]
        items = text.split(separator) if separator else [text]
    values: dict[str, None] = {}
    problem = None
    for item in items:
        converted = scalar_text(item)
        if converted.problem:
            problem = f"an item is {converted.problem}"
        for value in converted.values:
            values[value] = None
    return Converted(values=tuple(values), problem=problem)


# --------------------------------------------------------------------------- booleans and numbers


def to_boolean(raw: Any) -> Converted:
    """Write a checkbox value as ``"true"`` or ``"false"``; the strings true and false are accepted too."""
    if raw is None:
        return EMPTY
    if isinstance(raw, bool):
        return _one("true" if raw else "false")
    if isinstance(raw, str):
        text = raw.strip().casefold()
        if not text:
            return EMPTY
        if text in ("true", "false"):
            return _one(text)
    return _dropped("not a boolean")


def to_number(raw: Any, decimals: int | None) -> Converted:
    """Write a number in plain decimal notation, or with exactly ``decimals`` places (rounded half up)."""
    if raw is None:
        return EMPTY
    if isinstance(raw, str):
        raw = raw.strip()
        if not raw:
            return EMPTY
    elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return _dropped("not a number")
    number = _decimal(raw)
    if isinstance(number, str):
        return _dropped(number)
    if decimals is None:
        return _one(format_number(number))
    # Enough precision for every digit the exponent limit allows, so quantize never fails.
    context = Context(prec=2 * MAX_NUMBER_EXPONENT + decimals + 2, rounding=ROUND_HALF_UP)
    return _one(f"{number.quantize(Decimal(1).scaleb(-decimals), context=context):f}")


# --------------------------------------------------------------------------- dates and times

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def to_date(raw: Any, fmt: str | None) -> Converted:
    """Write a date as ``YYYY-MM-DD``, or with the strftime pattern ``fmt``.

    A datetime value gives its date in UTC.
    """
    converted = scalar_text(raw) if not isinstance(raw, (int, float, bool)) else _dropped("not a date")
    if not converted.values:
        return converted
    text = converted.values[0]
    try:
        if _DATE_ONLY.fullmatch(text):
            day = date.fromisoformat(text)
        else:
            day = parse_salesforce_datetime(text).date()
    except (ValueError, OverflowError):
        return _dropped("not a date (expected YYYY-MM-DD or an ISO 8601 datetime with an offset)")
    return _one(day.isoformat() if fmt is None else day.strftime(fmt))


def to_datetime(raw: Any, fmt: str | None) -> Converted:
    """Write a datetime in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` (seconds), or with the strftime pattern ``fmt``."""
    converted = scalar_text(raw) if not isinstance(raw, (int, float, bool)) else _dropped("not a datetime")
    if not converted.values:
        return converted
    try:
        moment = parse_salesforce_datetime(converted.values[0])
    except (ValueError, OverflowError):
        return _dropped("not a datetime (expected ISO 8601 with a UTC offset, such as 2025-01-23T10:26:15.000+0000)")
    if fmt is not None:
        return _one(moment.strftime(fmt))
    return _one(moment.replace(tzinfo=None, microsecond=0).isoformat() + "Z")


def check_time_format(fmt: str) -> str | None:
    """Return why ``fmt`` is not a usable strftime pattern, or None if it is.

    Only the directives of the C89 standard plus ``%f``, ``%G``, ``%u`` and ``%V`` are
    accepted, because what other directives produce differs between platforms.
    """
    directives = re.findall(r"%(.?)", fmt, flags=re.DOTALL)
    if "" in directives:
        return f"format {fmt!r} ends with a lone %; write %% for a percent sign"
    unknown = sorted({f"%{code}" for code in directives if code not in _STRFTIME_CODES and code != "%"})
    if unknown:
        return f"format {fmt!r} has unknown strftime directives: {', '.join(unknown)}"
    if not any(code in _STRFTIME_CODES for code in directives):
        return f"format {fmt!r} has no strftime directive such as %Y, %m or %d"
    return None
