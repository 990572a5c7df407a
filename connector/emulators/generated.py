"""Contacts computed from their index, so the Salesforce emulator can serve millions of them.

``GeneratedContacts(count, end=...)`` stands for ``count`` Contacts that are never stored.
Record ``i`` (``0 <= i < count``) is built from ``i`` alone each time a query reaches it:

* ``Id`` is the emulator's Id for sequence number ``FIRST_NUMBER + i``, so Ids rise with ``i``;
* ``SystemModstamp``, ``CreatedDate`` and ``LastModifiedDate`` are whole seconds, five
  records per second, and the last record is stamped before ``end``. Records therefore
  sort by ``(SystemModstamp, Id)`` in index order, and groups of five share a timestamp;
* ``MobilePhone`` is a valid US number in national form, such as ``(415) 234-0001``, that
  no other generated record has. ``MailingCountry`` names the United States, so a
  connector can find the region of the number from the record;
* every fourth record has a work ``Phone`` with an extension, every other record a work
  ``Phone`` without one, and the rest none; names, ``Email``, ``LeadSource``, ``Title``
  and the mailing address cycle through fixed lists.

``query`` serves a compiled SOQL query over the generated records lazily, merged with
the emulator's stored Contacts in ``(SystemModstamp, Id)`` order. Comparisons of
``SystemModstamp`` and ``Id`` in the WHERE clause narrow the index range by binary search,
so the connector's keyset condition
``(SystemModstamp > X OR (SystemModstamp = X AND Id > 'Y')) AND SystemModstamp < Z``
costs nothing to position. Every row is still checked against the full compiled
predicate. Other conditions fall back to a scan of the narrowed range, which costs time but
no memory.

Limits: generated records are read-only and are not found by the record, Get Updated and
admin endpoints, only by queries. A query on Contact may have no ORDER BY, or
``ORDER BY SystemModstamp [ASC][, Id [ASC]]``; any other order is rejected, because sorting
would need every record in memory. Paging through ``nextRecordsUrl`` is cheapest in order;
a jump to another offset re-reads the records before it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from connector.emulators import soql

__all__ = ["GeneratedContacts", "GeneratedQueryError", "GeneratedResult"]

Record = dict[str, Any]

# Sequence numbers of generated Ids start here, far above the numbers of stored records.
FIRST_NUMBER = 3_000_000_000
RECORDS_PER_SECOND = 5

# Exchanges 200-999 without the N11 service codes and 555, with all 10,000 line numbers.
_EXCHANGES = tuple(exchange for exchange in range(200, 1000) if exchange % 100 != 11 and exchange != 555)
_MOBILE_AREA_CODES = ("415", "312", "617", "206", "303", "512", "646", "702")
_NUMBERS_PER_AREA_CODE = len(_EXCHANGES) * 10_000
MAX_COUNT = len(_MOBILE_AREA_CODES) * _NUMBERS_PER_AREA_CODE
_OFFICE_AREA_CODE = "212"

_FIRST_NAMES = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John",
    "Katherine", "Linus", "Margaret", "Niklaus", "Radia", "Tim", "Yukihiro", "Sophie",
)
_LAST_NAMES = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus",
    "Johnson", "Torvalds", "Hamilton", "Wirth", "Perlman", "Berners-Lee", "Matsumoto", "Wilson",
)
_TITLES = ("Buyer", "Director of Operations", "Office Manager", "VP Sales", None)
_LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other", None)
_CITIES = (
    ("San Francisco", "CA", "94105"), ("Chicago", "IL", "60601"), ("Boston", "MA", "02110"),
    ("Seattle", "WA", "98101"), ("Denver", "CO", "80202"), ("Austin", "TX", "78701"),
)
_COUNTRIES = ("United States", "USA", "US")
_NATURAL_ORDER = ("SystemModstamp", "Id")


class GeneratedQueryError(Exception):
    """A query that the generated org cannot serve, with the REST ``errorCode`` to return."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def _us_number(area_code: str, serial: int) -> str:
    exchange = _EXCHANGES[serial // 10_000]
    return f"({area_code}) {exchange}-{serial % 10_000:04d}"


class GeneratedContacts:
    """``count`` read-only Contacts, each computed from its index when a query reaches it.

    ``make_id(key_prefix, number)`` builds an 18-character Id; Ids built for rising
    numbers must sort in the same order under case-sensitive comparison.
    """

    def __init__(
        self,
        count: int,
        *,
        end: dt.datetime,
        make_id: Callable[[str, int], str],
        owner_id: str,
    ) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"generated_contacts must be an integer from 0 to {MAX_COUNT}, got {count!r}")
        if end.tzinfo is None:
            raise ValueError(f"end must be timezone-aware, got naive {end.isoformat()}")
        self.count = count
        self.start = end.replace(microsecond=0) - dt.timedelta(seconds=math.ceil(count / RECORDS_PER_SECOND))
        self._make_id = make_id
        self._owner_id = owner_id

    # Records

    def record_id(self, index: int) -> str:
        return self._make_id("003", FIRST_NUMBER + index)

    def modstamp(self, index: int) -> dt.datetime:
        return self.start + dt.timedelta(seconds=index // RECORDS_PER_SECOND)

    def mobile_phone(self, index: int) -> str:
        area_code = _MOBILE_AREA_CODES[index // _NUMBERS_PER_AREA_CODE]
        return _us_number(area_code, index % _NUMBERS_PER_AREA_CODE)

    def record(self, index: int) -> Record:
        """Return record ``index`` in the form the emulator stores records (datetimes as datetime objects)."""
        if not 0 <= index < self.count:
            raise IndexError(f"generated record {index} is out of range 0..{self.count - 1}")
        first_name = _FIRST_NAMES[index % len(_FIRST_NAMES)]
        last_name = _LAST_NAMES[(index // len(_FIRST_NAMES)) % len(_LAST_NAMES)]
        city, state, postal_code = _CITIES[index % len(_CITIES)]
        stamp = self.modstamp(index)
        phone = None
        if index % 2 == 0:
            phone = _us_number(_OFFICE_AREA_CODE, index % _NUMBERS_PER_AREA_CODE)
            if index % 4 == 0:
                phone += f" ext. {100 + index % 900}"
        return {
            "Id": self.record_id(index),
            "IsDeleted": False,
            "MasterRecordId": None,
            "AccountId": None,
            "FirstName": first_name,
            "LastName": last_name,
            "Name": f"{first_name} {last_name}",
            "MobilePhone": self.mobile_phone(index),
            "Phone": phone,
            "Email": f"{first_name}.{last_name}.{index}@example.com".lower(),
            "Title": _TITLES[index % len(_TITLES)],
            "LeadSource": _LEAD_SOURCES[index % len(_LEAD_SOURCES)],
            "MailingStreet": f"{100 + index % 9900} Market Street",
            "MailingCity": city,
            "MailingState": state,
            "MailingPostalCode": postal_code,
            "MailingCountry": _COUNTRIES[index % len(_COUNTRIES)],
            "OwnerId": self._owner_id,
            "CreatedById": self._owner_id,
            "LastModifiedById": self._owner_id,
            "CreatedDate": stamp,
            "LastModifiedDate": stamp,
            "SystemModstamp": stamp,
            "IsEmailBounced": False,
        }

    # Queries

    def query(
        self,
        compiled: soql.CompiledQuery,
        stored: Iterable[Record],
        batch_size: int,
        render: Callable[[Record, str], dict[str, Any]],
    ) -> GeneratedResult:
        """Prepare the rows of a Contact query: generated records merged with ``stored`` ones.

        ``stored`` are the emulator's stored Contacts that the query may see (deleted ones
        only for queryAll). ``render(record, version)`` turns a row into its API form.
        Raises GeneratedQueryError for an ORDER BY other than the natural order.
        """
        self._check_order(compiled)
        predicate = compiled.predicate
        selection, exact = self._select(compiled.statement.where)
        matching_stored = sorted(
            (record for record in stored if predicate is None or predicate(record)), key=_position
        )
        generated_total = len(selection) if exact else sum(1 for _ in self._matching(selection, predicate))
        statement = compiled.statement
        skip = statement.offset or 0
        total = max(0, generated_total + len(matching_stored) - skip)
        if statement.limit is not None:
            total = min(total, statement.limit)

        def rows() -> Iterator[Record]:
            generated = self._matching(selection, predicate)
            merged = heapq.merge(generated, matching_stored, key=_position) if matching_stored else generated
            return itertools.islice(merged, skip, skip + total)

        return GeneratedResult(rows, total, batch_size, render)

    def _matching(self, selection: range | list[int], predicate: Callable[[Record], bool] | None) -> Iterator[Record]:
        for index in selection:
            record = self.record(index)
            if predicate is None or predicate(record):
                yield record

    @staticmethod
    def _check_order(compiled: soql.CompiledQuery) -> None:
        names = []
        for bound, descending, _nulls_last in compiled.order_by:
            names.append(None if bound.relationships or descending else bound.field.name)
        if tuple(names) != _NATURAL_ORDER[: len(names)]:
            raise GeneratedQueryError(
                "MALFORMED_QUERY",
                "The emulator's generated Contacts can be queried only without ORDER BY or with "
                "ORDER BY SystemModstamp ASC, Id ASC, because other orders would need every record in memory.",
            )

    def _select(self, condition: soql.Condition | None) -> tuple[range | list[int], bool]:
        """Return the ascending indices that can match ``condition``, and whether all of them do."""
        everything = range(self.count)
        if condition is None:
            return everything, True
        if isinstance(condition, soql.Junction):
            parts = [self._select(item) for item in condition.conditions]
            if condition.operator == "AND":
                selection: range | list[int] = everything
                for part, _ in parts:
                    selection = _intersect(selection, part)
                return selection, all(exact for _, exact in parts)
            return _union(parts, everything)
        if isinstance(condition, soql.Comparison):
            found = self._select_comparison(condition)
            if found is not None:
                return found, True
        return everything, False

    def _select_comparison(self, comparison: soql.Comparison) -> range | list[int] | None:
        """Return the indices matching a comparison of SystemModstamp or Id, or None for any other."""
        parts = comparison.field.parts
        if len(parts) == 2 and parts[0].lower() == "contact":
            parts = parts[1:]
        if len(parts) != 1:
            return None
        name = parts[0].lower()
        if name == "systemmodstamp":
            key: Callable[[int], Any] = self.modstamp
            values = [literal.value for literal in comparison.values if literal.kind == "datetime"]
        elif name == "id":
            key = self.record_id
            values = [soql.to_id18(literal.value) for literal in comparison.values if literal.kind == "string"]
        else:
            return None
        if len(values) != len(comparison.values) or any(value is None for value in values):
            return None

        everything = range(self.count)
        if comparison.operator == "IN":
            indices = set()
            for value in values:
                index = bisect.bisect_left(everything, value, key=key)
                if index < self.count and key(index) == value:
                    indices.add(index)
            return sorted(indices)
        if len(values) != 1:
            return None
        first_at_or_after = bisect.bisect_left(everything, values[0], key=key)
        first_after = bisect.bisect_right(everything, values[0], key=key)
        bounds = {
            "=": (first_at_or_after, first_after),
            ">": (first_after, self.count),
            ">=": (first_at_or_after, self.count),
            "<": (0, first_at_or_after),
            "<=": (0, first_after),
        }.get(comparison.operator)
        return None if bounds is None else range(*bounds)


class GeneratedResult:
    """The rows of one query over generated Contacts, produced page by page and never all held.

    It pages like the emulator's stored query snapshots: ``rows`` has the row count as its
    length (the emulator checks locator offsets against it), and ``page`` returns one
    REST response body.
    """

    def __init__(
        self,
        rows: Callable[[], Iterator[Record]],
        total: int,
        batch_size: int,
        render: Callable[[Record, str], dict[str, Any]],
    ) -> None:
        self.rows = range(total)
        self.batch_size = batch_size
        self.locator: str | None = None
        self.last_used: dt.datetime | None = None
        self._open_rows = rows
        self._render = render
        self._iterator: Iterator[Record] | None = None
        self._position = 0
        self._lock = threading.Lock()

    def page(self, start: int, batch_size: int, version: str) -> dict[str, Any]:
        total = len(self.rows)
        with self._lock:
            if self._iterator is None or start != self._position:
                # Not the next page in order: start over and skip the rows before ``start``.
                self._iterator = self._open_rows()
                self._position = start
                for _ in itertools.islice(self._iterator, start):
                    pass
            records = list(itertools.islice(self._iterator, max(0, min(batch_size, total - start))))
            self._position = start + len(records)
        end = start + len(records)
        body: dict[str, Any] = {"totalSize": total, "done": end >= total}
        if end < total:
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{self.locator}-{end}"
        body["records"] = [self._render(record, version) for record in records]
        return body


def _position(record: Record) -> tuple[dt.datetime, str]:
    return record["SystemModstamp"], record["Id"]


def _intersect(first: range | list[int], second: range | list[int]) -> range | list[int]:
    if isinstance(first, range) and isinstance(second, range):
        start = max(first.start, second.start)
        return range(start, max(start, min(first.stop, second.stop)))
    if isinstance(first, range):
        return [index for index in second if index in first]
    if isinstance(second, range):
        return [index for index in first if index in second]
    return sorted(set(first) & set(second))


def _union(parts: list[tuple[range | list[int], bool]], everything: range) -> tuple[range | list[int], bool]:
    """Join the selections of an OR; fall back to every index unless the union is exact and simple."""
    if not all(exact for _, exact in parts):
        return everything, False
    ranges = sorted((part for part, _ in parts if isinstance(part, range) and len(part)), key=lambda part: part.start)
    lists = [part for part, _ in parts if isinstance(part, list) and part]
    if lists and not ranges:
        return sorted(set(itertools.chain.from_iterable(lists))), True
    if lists:
        return everything, False
    if not ranges:
        return range(0), True
    joined = ranges[0]
    for part in ranges[1:]:
        if part.start > joined.stop:
            return everything, False  # a gap: the hull would include rows that do not match
        joined = range(joined.start, max(joined.stop, part.stop))
    return joined, True
