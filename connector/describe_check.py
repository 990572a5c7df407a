"""Checks of a field map against an object's describe: field existence, types and ``where`` values.

``FieldMap.check_against`` collects one ``FieldUse`` per field that the map reads and
passes each to these functions, which return the problems. Types are the ``type`` names of Salesforce's
``sobjects/<object>/describe``, in lower case.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from connector import transforms
from connector.transforms import UNREADABLE_TYPES

_BOOLEAN_TYPES = frozenset({"boolean"})
_NUMBER_TYPES = frozenset({"int", "long", "double", "currency", "percent"})
_STRING_TYPES = frozenset(
    {"string", "textarea", "combobox", "encryptedstring", "picklist", "multipicklist", "phone", "email", "url", "id", "reference"}
)


@dataclass(frozen=True)
class FieldUse:
    """One field that the map reads, and the describe types that the reading accepts (None: any readable type)."""

    key: str
    loc: tuple[str | int, ...]
    name: str
    accepted: frozenset[str] | None
    reader: str
    optional: bool


def field_exists(name: str, types: dict[str, str]) -> bool:
    """Return whether a field, or the lookup field behind a relationship path, is in the describe."""
    if "." not in name:
        return name.lower() in types
    # A relationship path starts with a relationship name, not a field name: the lookup
    # field behind it (Account -> AccountId, Partner__r -> Partner__c) must exist.
    root = name.split(".")[0].lower()
    if root.endswith("__r"):
        return root[: -len("__r")] + "__c" in types
    return f"{root}id" in types


def type_problem(field_type: str, use: FieldUse) -> str | None:
    """Return why ``use`` cannot read a field of ``field_type``, or None if it can."""
    if use.accepted is None:
        if field_type in UNREADABLE_TYPES:
            return f"which {use.reader} cannot read; map its component fields instead"
        return None
    if field_type not in use.accepted:
        return f"which {use.reader} cannot read; it reads {', '.join(sorted(use.accepted))}"
    return None


def where_problem(name: str, literal: bool | int | float | str, types: dict[str, str], object_name: str) -> str | None:
    """Return why a ``where`` condition does not suit the org's field, or None if it does."""
    if not field_exists(name, types):
        return f"where field {name!r} does not exist on {object_name} in this org"
    field_type = types.get(name.lower())
    if field_type is None:
        return None  # a relationship path: its type is on the parent object
    if field_type in _BOOLEAN_TYPES:
        expected, fits = "true or false", isinstance(literal, bool)
    elif field_type in _NUMBER_TYPES:
        expected, fits = "a number", isinstance(literal, (int, float)) and not isinstance(literal, bool)
    elif field_type in _STRING_TYPES:
        expected, fits = "a string", isinstance(literal, str)
    else:
        return f"where field {name!r} is of type {field_type} on {object_name}; where compares only boolean, number and text fields"
    if fits:
        return None
    return f"where field {name!r} is of type {field_type} on {object_name}; compare it with {expected}"


def where_matches(raw: Any, literal: bool | int | float | str) -> bool:
    """Return whether a record value equals a ``where`` value the way SOQL ``=`` compares them."""
    if isinstance(literal, bool):
        return transforms.to_boolean(raw).values == ("true" if literal else "false",)
    if isinstance(literal, (int, float)):
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            return False
        try:
            # str() raises ValueError for an int beyond Python's int-to-str digit limit.
            raw_text = repr(raw) if isinstance(raw, float) else str(raw).strip()
            literal_text = repr(literal) if isinstance(literal, float) else str(literal)
            return Decimal(raw_text) == Decimal(literal_text)
        except (InvalidOperation, ValueError):
            return False
    text = transforms.scalar_text(raw)
    # Text comparisons in SOQL ignore case.
    return bool(text.values) and text.values[0].casefold() == literal.casefold()
