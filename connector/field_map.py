"""Declarative field maps: from a Salesforce record to a Charles contact upsert body.

A map is a YAML file (see ``field_maps/contact.yaml``). Loading validates its schema and
reports problems with the file, line and key. ``FieldMap.apply`` turns one record into
either a ``Mapped`` payload or a ``Skipped`` outcome with a reason; it never raises on
record values, so one bad record cannot stop a cycle.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import phonenumbers
import pycountry
import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connector.errors import ConfigurationError

SOURCE_TYPE = "salesforce"

# Salesforce API names: letters, digits and underscores, custom ones ending in __c; a
# relationship path such as Account.Name joins two of them with a dot.
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}(\.[A-Za-z][A-Za-z0-9_]{0,79}){0,4}")
# Charles custom property technical names, as shown in the tenant's settings.
_PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

# Country names that ISO 3166 (and so pycountry) does not list but Salesforce users type.
_COUNTRY_ALIASES = {
    "usa": "US", "u.s.": "US", "u.s.a.": "US", "america": "US", "united states of america": "US",
    "uk": "GB", "u.k.": "GB", "great britain": "GB", "england": "GB", "scotland": "GB", "wales": "GB",
    "deutschland": "DE", "österreich": "AT", "schweiz": "CH", "suisse": "CH", "españa": "ES",
    "italia": "IT", "nederland": "NL", "holland": "NL", "россия": "RU", "south korea": "KR", "korea": "KR",
}

_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "invalid country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}

SkipReason = Literal["no_phone", "phone_invalid", "phone_region_unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceSpec(_Model):
    """One value read from a Salesforce field, or from the first non-empty of several."""

    source: list[str] = Field(alias="from", min_length=1)
    optional: bool = False

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("source")
    @classmethod
    def _valid_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _FIELD_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a Salesforce field API name (letters, digits, _, and . for relationships)")
        return value


class TypedSourceSpec(SourceSpec):
    type: str = Field(min_length=1, max_length=40)


class IdentitySpec(SourceSpec):
    """Where ``external_reference_id`` comes from: the first valid phone number in the list."""

    country_from: str | None = None

    @field_validator("country_from")
    @classmethod
    def _valid_country_field(cls, value: str | None) -> str | None:
        if value is not None and not _FIELD_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Salesforce field API name")
        return value


class TagSpec(SourceSpec):
    split: str | None = ";"


class FieldMapSpec(_Model):
    object: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    identity: IdentitySpec
    names: dict[Literal["first_name", "middle_name", "last_name"], SourceSpec] = {}
    phone_numbers: list[TypedSourceSpec] = []
    email_addresses: list[TypedSourceSpec] = []
    custom_properties: dict[str, SourceSpec] = {}
    tags: list[TagSpec] = []

    @field_validator("custom_properties")
    @classmethod
    def _property_names(cls, value: dict[str, SourceSpec]) -> dict[str, SourceSpec]:
        for name in value:
            if not _PROPERTY_NAME.fullmatch(name):
                raise ValueError(
                    f"custom property name {name!r} is invalid: use lower-case letters, digits and _, "
                    "starting with a letter, as Charles technical names are"
                )
        return value


@dataclass(frozen=True)
class Mapped:
    """A record that becomes an upsert; ``notes`` say which values were dropped and why."""

    record_id: str
    payload: dict[str, Any]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A record that is not sent, with a stable reason code for counting."""

    record_id: str
    reason: SkipReason
    detail: str


@dataclass
class _Normalised:
    value: str | None = None
    problem: str | None = None
    reason: SkipReason | None = None


@lru_cache(maxsize=2048)
def country_to_region(country: str) -> str | None:
    """Map a country as typed in Salesforce ("Germany", "DE", "USA") to an ISO region code."""
    text = unicodedata.normalize("NFC", country).strip()
    if not text:
        return None
    alias = _COUNTRY_ALIASES.get(text.lower())
    if alias:
        return alias
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        return None


def normalise_phone(raw: str, region: str | None) -> _Normalised:
    """Parse a phone number to E.164; extensions are not part of the result."""
    text = raw.strip()
    if not text.startswith("+") and region is None:
        return _Normalised(problem="no country on the record and no default region", reason="phone_region_unknown")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "unparseable")
        return _Normalised(problem=f"not a phone number ({reason})", reason="phone_invalid")
    if not phonenumbers.is_valid_number(number):
        return _Normalised(problem=f"not a valid number for region {region or 'given by its + prefix'}", reason="phone_invalid")
    return _Normalised(value=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _text(value: Any) -> str | None:
    """A record value as trimmed NFC text; None, empty and non-scalar values become None."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = unicodedata.normalize("NFC", str(value)).strip()
    return text or None


def _lookup(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class FieldMap:
    """A validated field map, ready to apply to records."""

    def __init__(self, spec: FieldMapSpec, *, origin: str, default_region: str | None = None, tags_field: str | None = None) -> None:
        self.spec = spec
        self.origin = origin
        self.default_region = default_region
        self._tags = list(spec.tags)
        if tags_field:
            self._tags.append(TagSpec.model_validate({"from": tags_field}))
        self._unavailable: frozenset[str] = frozenset()

    @property
    def object_name(self) -> str:
        return self.spec.object

    def _specs(self) -> list[SourceSpec]:
        return [
            self.spec.identity,
            *self.spec.names.values(),
            *self.spec.phone_numbers,
            *self.spec.email_addresses,
            *self.spec.custom_properties.values(),
            *self._tags,
        ]

    def source_fields(self) -> list[str]:
        """Every Salesforce field the map reads, in a stable order, for the SOQL SELECT."""
        names: dict[str, None] = {}
        for spec in self._specs():
            for name in spec.source:
                if name not in self._unavailable:
                    names[name] = None
        if self.spec.identity.country_from:
            names[self.spec.identity.country_from] = None
        return list(names)

    def check_against(self, describe_fields: dict[str, str]) -> list[str]:
        """Compare the map with the object's describe (field name to type).

        Returns the problems found. Optional fields that the org lacks are dropped from
        the map instead, because orgs differ (MiddleName exists only where middle names
        are enabled).
        """
        known = {name.lower() for name in describe_fields}
        problems: list[str] = []
        unavailable: set[str] = set()
        for spec in self._specs():
            for name in spec.source:
                root = name.split(".")[0]
                if "." in name:
                    # A relationship path starts with a relationship name, not a field name;
                    # the lookup field behind it (Account -> AccountId) must exist.
                    present = f"{root}id".lower() in known or root.lower().endswith("__r")
                else:
                    present = name.lower() in known
                if present:
                    continue
                if spec.optional:
                    unavailable.add(name)
                else:
                    problems.append(
                        f"{self.origin}: field {name!r} does not exist on {self.object_name} in this org; "
                        "fix the name, mark it optional: true, or remove it"
                    )
        country = self.spec.identity.country_from
        if country and country.lower() not in known:
            problems.append(f"{self.origin}: identity.country_from field {country!r} does not exist on {self.object_name}")
        self._unavailable = frozenset(unavailable)
        return problems

    def apply(self, record: dict[str, Any]) -> Mapped | Skipped:
        """Map one record; never raises on record values."""
        record_id = str(record.get("Id") or "")
        region = self._record_region(record)
        notes: list[str] = []

        identity = self._identity(record, region)
        if isinstance(identity, Skipped):
            return Skipped(record_id, identity.reason, identity.detail)

        payload: dict[str, Any] = {"external_reference_id": identity, "source_type": SOURCE_TYPE}
        for target, spec in self.spec.names.items():
            value = self._first_text(record, spec)
            if value is not None:
                payload[target] = value

        phones = self._typed_values(record, self.spec.phone_numbers, notes, lambda text: normalise_phone(text, region))
        if phones:
            payload["phone_numbers"] = phones
        emails = self._typed_values(record, self.spec.email_addresses, notes, _normalise_email)
        if emails:
            payload["email_addresses"] = emails

        properties = {}
        for name, spec in self.spec.custom_properties.items():
            value = self._first_text(record, spec)
            if value is not None:
                properties[name] = value
        if properties:
            payload["custom_properties"] = properties

        tags = self._tag_values(record)
        if tags:
            payload["tags"] = tags
        return Mapped(record_id, payload, tuple(notes))

    def _record_region(self, record: dict[str, Any]) -> str | None:
        field_name = self.spec.identity.country_from
        if field_name:
            country = _text(_lookup(record, field_name))
            if country:
                region = country_to_region(country)
                if region:
                    return region
        return self.default_region

    def _identity(self, record: dict[str, Any], region: str | None) -> str | Skipped:
        first_problem: _Normalised | None = None
        first_field = ""
        for name in self.spec.identity.source:
            if name in self._unavailable:
                continue
            text = _text(_lookup(record, name))
            if text is None:
                continue
            result = normalise_phone(text, region)
            if result.value:
                return result.value
            if first_problem is None:
                first_problem, first_field = result, name
        record_id = str(record.get("Id") or "")
        if first_problem is None:
            fields = " and ".join(self.spec.identity.source)
            return Skipped(record_id, "no_phone", f"{fields} are empty")
        assert first_problem.reason is not None
        return Skipped(record_id, first_problem.reason, f"{first_field}: {first_problem.problem}")

    def _first_text(self, record: dict[str, Any], spec: SourceSpec) -> str | None:
        for name in spec.source:
            if name in self._unavailable:
                continue
            value = _text(_lookup(record, name))
            if value is not None:
                return value
        return None

    def _typed_values(self, record: dict[str, Any], specs: list[TypedSourceSpec], notes: list[str], normalise: Any) -> list[dict[str, str]]:
        values: list[dict[str, str]] = []
        seen: set[str] = set()
        for spec in specs:
            for name in spec.source:
                if name in self._unavailable:
                    continue
                text = _text(_lookup(record, name))
                if text is None:
                    continue
                result = normalise(text)
                if result.problem:
                    notes.append(f"{name} dropped: {result.problem}")
                    continue
                key = result.value.lower()
                if key not in seen:
                    seen.add(key)
                    values.append({"type": spec.type, "value": result.value})
                break
        return values

    def _tag_values(self, record: dict[str, Any]) -> list[str]:
        tags: dict[str, None] = {}
        for spec in self._tags:
            for name in spec.source:
                text = _text(_lookup(record, name))
                if text is None:
                    continue
                parts = text.split(spec.split) if spec.split else [text]
                for part in parts:
                    tag = part.strip()
                    if tag:
                        tags[tag] = None
        return list(tags)


def _normalise_email(text: str) -> _Normalised:
    try:
        # No DNS look-ups: a sync loop must not depend on a resolver for every record.
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        return _Normalised(problem=f"invalid email address ({exc})")
    return _Normalised(value=result.normalized)


def builtin_map_path(name: str = "contact.yaml") -> Path:
    """The shipped map: from the source tree in a checkout, else from the installed package."""
    checkout = Path(__file__).resolve().parent.parent / "field_maps" / name
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("connector") / "builtin_field_maps" / name))


def load_field_map(path: Path | None = None, *, default_region: str | None = None, tags_field: str | None = None) -> FieldMap:
    """Read and validate a field map file; raise ConfigurationError naming file, line and key."""
    map_path = path or builtin_map_path()
    try:
        text = map_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"field map {str(map_path)!r}: cannot read it ({exc.strerror}); set SFCHARLES_FIELD_MAP to an existing file") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"field map {map_path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"field map {map_path}: the top level must be a mapping with object, identity and the target fields")
    try:
        spec = FieldMapSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = [str(part) for part in error["loc"]]
            line = _line_of(node, error["loc"])
            where = f"{map_path}:{line}" if line else str(map_path)
            problems.append(f"  - {where}: key {'.'.join(loc) or '(top level)'}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError(f"invalid field map ({len(problems)} problem(s)):\n" + "\n".join(problems)) from None
    return FieldMap(spec, origin=str(map_path), default_region=default_region, tags_field=tags_field)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node on the error's path that exists."""
    line = None
    current = node
    for part in loc:
        if current is None:
            break
        line = current.start_mark.line + 1
        child = None
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if key_node.value == str(part):
                    line = key_node.start_mark.line + 1
                    child = value_node
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            child = current.value[part]
        current = child
    if current is not None:
        line = current.start_mark.line + 1
    return line
