"""The schema of field map files, as pydantic models.

Validation here covers what the file alone can show: keys, names, option combinations,
templates and ``where`` literals. Whether the fields exist in the org, and whether their
types suit the transforms, is checked later against the object's describe
(``FieldMap.check_against``). ``docs/field-maps.md`` describes the format for operators.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connector.transforms import Transform, check_time_format, format_number

# Salesforce API names: letters, digits and underscores, custom ones ending in __c. A
# relationship path such as Account.Name joins up to five of them with dots.
FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}(\.[A-Za-z][A-Za-z0-9_]{0,79}){0,4}")
# Charles custom property technical names, as shown in the tenant's settings.
PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

# Options that only some transforms take.
TRANSFORM_OPTIONS: dict[str, frozenset[str]] = {
    "country_from": frozenset({"phone", "phone_extension"}),
    "split": frozenset({"multipicklist"}),
    "decimals": frozenset({"number"}),
    "format": frozenset({"date", "datetime"}),
}
# Transforms whose output can go through a value map. The others produce normalised phone
# numbers, addresses and dates, which no picklist label should replace.
MAPPABLE_TRANSFORMS = frozenset({"text", "boolean", "number", "multipicklist"})

_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _either(items: list[str]) -> str:
    """Write ``["a", "b", "c"]`` as ``a, b or c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_field_names(names: list[str]) -> list[str]:
    for name in names:
        if not FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a Salesforce field API name (letters, digits, _, and . for relationships)")
    return names


def template_fields(template: str) -> list[str]:
    """Return the field names of a template's ``{Field}`` placeholders, in order.

    Raises ValueError naming the first placeholder that is not a plain field name.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is not valid ({exc}); write literal braces as {{{{ and }}}}") from None
    fields: list[str] = []
    for _literal, field_name, format_spec, conversion in parts:
        if field_name is None:
            continue
        if format_spec or conversion:
            raise ValueError(f"template placeholder {{{field_name}}} takes only a field name, without ! or : parts")
        if not FIELD_NAME.fullmatch(field_name):
            raise ValueError(f"template placeholder {{{field_name}}} is not a Salesforce field API name")
        fields.append(field_name)
    return fields


def _map_key(key: Any) -> str:
    """Return a value map key as the text a transform produces for it (YAML reads true and 5 as non-strings)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)) and math.isfinite(key):
        return format_number(Decimal(repr(key)) if isinstance(key, float) else Decimal(key))
    if isinstance(key, str) and key.strip():
        return unicodedata.normalize("NFC", key).strip()
    raise ValueError(f"value map key {key!r} is not a picklist value; use a non-empty string, number or boolean")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ValueSpec(_Model):
    """One output value: read from a field or a fallback chain, a constant, or a template."""

    # Transforms a target allows, and the one it applies when the map names none.
    allowed_transforms: ClassVar[frozenset[str] | None] = None
    target_label: ClassVar[str] = "this target"

    source: list[str] | None = Field(default=None, alias="from", min_length=1)
    value: str | None = None
    template: str | None = None
    optional: bool = False
    transform: Transform = "text"
    map: dict[str, str] | None = None
    default: str | None = None
    country_from: list[str] | None = Field(default=None, min_length=1)
    split: str | None = ";"
    decimals: int | None = Field(default=None, ge=0, le=12)
    format: str | None = None

    @field_validator("source", "country_from", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("source", "country_from")
    @classmethod
    def _valid_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_field_names(value)

    @field_validator("value", "default")
    @classmethod
    def _non_empty_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = unicodedata.normalize("NFC", value).strip()
        if not text:
            raise ValueError("must not be empty; leave the key out instead")
        return text

    @field_validator("template")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        if value is not None and not template_fields(value):
            raise ValueError("template has no {Field} placeholder; use value: for a constant")
        return value

    @field_validator("map", mode="before")
    @classmethod
    def _map_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        keys: dict[str, Any] = {}
        seen: dict[str, str] = {}
        for key, label in value.items():
            text = _map_key(key)
            folded = text.casefold()
            if folded in seen:
                raise ValueError(f"value map keys {seen[folded]!r} and {text!r} differ only in case; keys match case-insensitively")
            seen[folded] = text
            if isinstance(label, bool):
                # YAML 1.1 reads unquoted yes, no, on and off as booleans.
                raise ValueError(f"value map label for {text!r} is a YAML boolean; quote it, as in \"Yes\"")
            keys[text] = label
        return keys

    @field_validator("map")
    @classmethod
    def _map_labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("value map is empty; give at least one picklist value and its label")
        labels = {key: unicodedata.normalize("NFC", label).strip() for key, label in value.items()}
        for key, label in labels.items():
            if not label:
                raise ValueError(f"value map label for {key!r} is empty")
        return labels

    @field_validator("format")
    @classmethod
    def _valid_format(cls, value: str | None) -> str | None:
        problem = None if value is None else check_time_format(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ValueSpec:
        sources = {"from": self.source, "value": self.value, "template": self.template}
        sources_given = [key for key, present in sources.items() if present is not None]
        if len(sources_given) != 1:
            raise ValueError(f"give exactly one of from, value or template (got {', '.join(sources_given) or 'none'})")
        allowed = self.allowed_transforms
        if allowed is not None and self.transform not in allowed:
            raise ValueError(f"transform {self.transform!r} does not fit {self.target_label}; use {_either(sorted(allowed))}")
        for option, transforms in TRANSFORM_OPTIONS.items():
            if option in self.model_fields_set and self.transform not in transforms:
                raise ValueError(f"option {option!r} does not apply to transform {self.transform!r}; it applies to {', '.join(sorted(transforms))}")
        if self.value is not None and ("transform" in self.model_fields_set or self.map is not None):
            raise ValueError("a constant (value:) takes no transform and no map")
        if self.map is not None and self.transform not in MAPPABLE_TRANSFORMS:
            raise ValueError(f"map does not apply to transform {self.transform!r}; it applies to {', '.join(sorted(MAPPABLE_TRANSFORMS))}")
        if self.default is not None and self.map is None:
            raise ValueError("default applies only together with map")
        return self

    def fields(self) -> list[str]:
        """Return the Salesforce fields this value reads, country fields included."""
        names = list(self.source or [])
        if self.template is not None:
            names += template_fields(self.template)
        return names + list(self.country_from or [])


class ScalarSpec(ValueSpec):
    """A value for a name or a custom property: one string."""

    allowed_transforms: ClassVar[frozenset[str] | None] = frozenset(
        {"text", "phone", "phone_extension", "email", "boolean", "number", "date", "datetime"}
    )
    target_label: ClassVar[str] = "a name or custom property, which holds one string"


class PhoneSpec(ValueSpec):
    allowed_transforms: ClassVar[frozenset[str] | None] = frozenset({"phone"})
    target_label: ClassVar[str] = "phone_numbers"

    type: str = Field(min_length=1, max_length=40)
    transform: Transform = "phone"


class EmailSpec(ValueSpec):
    allowed_transforms: ClassVar[frozenset[str] | None] = frozenset({"email"})
    target_label: ClassVar[str] = "email_addresses"

    type: str = Field(min_length=1, max_length=40)
    transform: Transform = "email"


class TagSpec(ValueSpec):
    """Tags from one field; a multi-select picklist is split on ``;`` unless ``split`` names another separator."""

    target_label: ClassVar[str] = "tags"

    transform: Transform = "multipicklist"


class IdentitySpec(_Model):
    """Source of ``external_reference_id``: the first valid phone number of the fields in ``from``."""

    source: list[str] = Field(alias="from", min_length=1)
    country_from: list[str] | None = Field(default=None, min_length=1)
    optional: bool = False

    @field_validator("source", "country_from", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("source", "country_from")
    @classmethod
    def _valid_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_field_names(value)


def soql_literal(value: bool | int | float | str) -> str:
    """Write a ``where`` value as a SOQL literal; strings are quoted with every special character escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_number(Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    return "'" + "".join(_SOQL_ESCAPES.get(char, char) for char in value) + "'"


class FieldMapSpec(_Model):
    object: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
    where: dict[str, bool | int | float | str] = {}
    identity: IdentitySpec
    names: dict[str, ScalarSpec] = {}
    phone_numbers: list[PhoneSpec] = []
    email_addresses: list[EmailSpec] = []
    custom_properties: dict[str, ScalarSpec] = {}
    tags: list[TagSpec] = []

    @field_validator("names")
    @classmethod
    def _name_targets(cls, value: dict[str, ScalarSpec]) -> dict[str, ScalarSpec]:
        for name in value:
            if name not in ("first_name", "middle_name", "last_name"):
                raise ValueError(f"names takes first_name, middle_name and last_name, not {name!r}")
        return value

    @field_validator("custom_properties")
    @classmethod
    def _property_names(cls, value: dict[str, ScalarSpec]) -> dict[str, ScalarSpec]:
        for name in value:
            if not PROPERTY_NAME.fullmatch(name):
                raise ValueError(
                    f"custom property name {name!r} is invalid: use lower-case letters, digits and _, "
                    "starting with a letter, as Charles technical names are"
                )
        return value

    @field_validator("where", mode="before")
    @classmethod
    def _where_conditions(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic reports that a mapping is expected
        for name, literal in value.items():
            if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
                raise ValueError(f"where field {name!r} is not a Salesforce field API name")
            if not isinstance(literal, (bool, int, float, str)):
                raise ValueError(f"where value of {name} must be true, false, a number or a string, compared with =")
            if isinstance(literal, float) and not math.isfinite(literal):
                raise ValueError(f"where value of {name} is not a finite number")
            if isinstance(literal, str) and any(unicodedata.category(char) == "Cc" and char not in _SOQL_ESCAPES for char in literal):
                raise ValueError(f"where value of {name} contains a control character that SOQL cannot escape")
        return value
