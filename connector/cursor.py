"""The (SystemModstamp, Id) keyset cursor and Salesforce's datetime formats.

Salesforce returns datetimes as ``2025-01-23T10:26:15.000+0000``. SOQL takes unquoted
literals with ``Z`` or an offset. Every datetime here is timezone-aware UTC: a naive
value raises instead of being read as local time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from connector.errors import CursorOrderError

# Salesforce record Ids are 15 or 18 case-sensitive alphanumeric characters.
_SALESFORCE_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def parse_salesforce_datetime(text: str) -> datetime:
    """Parse a datetime as Salesforce or an operator writes it (offset required)."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    # ``+0000`` (Salesforce's JSON form) is accepted by fromisoformat from Python 3.11 on.
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid datetime {text!r}: expected ISO 8601 with an offset, "
            "for example 2025-01-23T10:26:15Z or 2025-01-23T10:26:15.000+0000"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(
            f"invalid datetime {text!r}: it has no UTC offset; add Z or +00:00"
        )
    return parsed.astimezone(UTC)


def format_iso(moment: datetime) -> str:
    """Format an aware datetime as UTC with milliseconds: ``2025-01-23T10:26:15.000Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the connector only handles aware UTC values")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def soql_datetime(moment: datetime) -> str:
    """Format an aware datetime as an unquoted SOQL literal.

    The SOQL reference documents ``YYYY-MM-DDThh:mm:ssZ``; fractions are added only when
    the value has milliseconds, which keeps the common case in the documented form.
    """
    utc = moment.astimezone(UTC)
    if utc.microsecond // 1000:
        return format_iso(utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate_to_millisecond(moment: datetime) -> datetime:
    return moment.replace(microsecond=(moment.microsecond // 1000) * 1000)


def validate_salesforce_id(value: str) -> str:
    """Return the Id unchanged if it is a well-formed Salesforce Id, else raise."""
    if not _SALESFORCE_ID.fullmatch(value):
        raise ValueError(f"invalid Salesforce Id {value!r}: expected 15 or 18 letters and digits")
    return value


@dataclass(frozen=True, order=True)
class Watermark:
    """A position in the ``ORDER BY SystemModstamp, Id`` stream of changes.

    Everything at or before this position has been handled: acknowledged by Charles or
    deliberately skipped. Ordering compares the timestamp first, then the Id as a plain
    string, which is how Salesforce orders Ids.
    """

    modstamp: datetime
    record_id: str = ""

    def __post_init__(self) -> None:
        if self.modstamp.tzinfo is None:
            raise ValueError("a watermark needs an aware UTC timestamp")
        if self.record_id:
            validate_salesforce_id(self.record_id)

    def __str__(self) -> str:
        return f"{format_iso(self.modstamp)}/{self.record_id or '-'}"

    def soql_after(self, field: str = "SystemModstamp") -> str:
        """Return the keyset condition that selects records strictly after this position."""
        stamp = soql_datetime(self.modstamp)
        if not self.record_id:
            return f"{field} >= {stamp}"
        return f"({field} > {stamp} OR ({field} = {stamp} AND Id > '{self.record_id}'))"

    def to_dict(self) -> dict[str, str]:
        return {"modstamp": format_iso(self.modstamp), "record_id": self.record_id}

    @classmethod
    def from_strings(cls, modstamp: str, record_id: str = "") -> Watermark:
        return cls(parse_salesforce_datetime(modstamp), record_id)

    @classmethod
    def start_of(cls, moment: datetime) -> Watermark:
        """Return a position just before every record stamped at or after ``moment``."""
        return cls(moment.astimezone(UTC), "")


def describe(watermark: Watermark | None) -> str | None:
    return None if watermark is None else str(watermark)


class OrderGuard:
    """Checks that records arrive in strictly increasing (SystemModstamp, Id) order.

    A query that is not ordered as the cursor assumes would make the watermark skip
    records, so the first out-of-order record stops the cycle.
    """

    def __init__(self, start: Watermark | None) -> None:
        self._last = start

    def check(self, position: Watermark) -> None:
        if self._last is not None and position <= self._last:
            raise CursorOrderError(
                f"Salesforce returned record {position.record_id} at {position} after "
                f"{self._last}; changes must arrive in SystemModstamp, Id order",
                previous=str(self._last),
                current=str(position),
            )
        self._last = position


def ensure_forward(before: Watermark | None, after: Watermark | None) -> None:
    """Raise if a watermark update would move it backwards."""
    if before is not None and after is not None and after < before:
        raise CursorOrderError(
            f"watermark would move backwards from {before} to {after}",
            previous=str(before),
            current=str(after),
        )

