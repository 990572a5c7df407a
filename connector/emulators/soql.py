"""A subset of SOQL for the Salesforce emulator: tokenizer, recursive-descent parser and query compiler.

Supported grammar (keywords are case-insensitive)::

    query      := SELECT (COUNT '(' ')' | field (',' field)*) FROM object
                  [WHERE condition] [ORDER BY order (',' order)*] [LIMIT int] [OFFSET int]
    condition  := unary ((AND unary)* | (OR unary)*)
    unary      := NOT unary | '(' condition ')' | comparison
    comparison := field ('=' | '!=' | '<>' | '<' | '<=' | '>' | '>=') literal
                | field [NOT] IN '(' literal (',' literal)* ')'
                | field LIKE string
                | field (INCLUDES | EXCLUDES) '(' string (',' string)* ')'
    order      := field [ASC | DESC] [NULLS (FIRST | LAST)]

As in Salesforce, AND and OR cannot be mixed on one level without parentheses.
Literals are single-quoted strings with backslash escapes, numbers, ``true``, ``false``,
``null``, dates (``2025-01-23``) and datetimes with a UTC offset (``2025-01-23T10:26:15Z``,
``...15.000Z``, ``...+00:00``, ``...+0000``, ``...-05:00``).

Semantics follow the SOQL reference: text comparisons and sorting ignore case, Id fields
compare case-sensitively, ``!=`` and ``NOT IN`` match null values, and null values sort
first unless ``NULLS LAST`` is given.

Errors are raised as :class:`SoqlError` with the Salesforce ``errorCode`` and a message
in the Salesforce form (query line, caret, ``ERROR at Row:R:Column:C`` and the reason).
"""

from __future__ import annotations

import datetime as dt
import operator
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BoundField",
    "CompiledQuery",
    "FieldSpec",
    "RelationshipSpec",
    "Schema",
    "SelectStatement",
    "SoqlError",
    "compile_query",
    "compile_text",
    "id_checksum",
    "parse",
    "to_id18",
    "tokenize",
]

TEXT_TYPES = frozenset(
    {"string", "picklist", "multipicklist", "textarea", "phone", "email", "url", "combobox", "encryptedstring"}
)
ID_TYPES = frozenset({"id", "reference"})
NUMBER_TYPES = frozenset({"double", "int", "long", "currency", "percent"})

# Words that end a field list or a condition, so they can never be read as field names.
RESERVED_WORDS = frozenset(
    {
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "ORDER", "BY", "LIMIT", "OFFSET", "IN", "LIKE",
        "ASC", "DESC", "NULLS", "TRUE", "FALSE", "NULL", "GROUP", "HAVING", "INCLUDES", "EXCLUDES",
        "WITH", "FOR", "USING",
    }
)

MAX_OFFSET = 2000

ID_PATTERN = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
ID_CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


class SoqlError(Exception):
    """A query that Salesforce would reject, with its REST ``errorCode`` and message."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def id_checksum(id15: str) -> str:
    """Return the three-character case-checksum suffix that turns a 15-character Id into 18 characters."""
    suffix = []
    for chunk_start in (0, 5, 10):
        flags = 0
        for bit, char in enumerate(id15[chunk_start : chunk_start + 5]):
            if "A" <= char <= "Z":
                flags |= 1 << bit
        suffix.append(ID_CHECKSUM_ALPHABET[flags])
    return "".join(suffix)


def to_id18(value: str) -> str | None:
    """Return the 18-character form of a 15- or 18-character Id, or None when ``value`` is no Id."""
    if not ID_PATTERN.fullmatch(value):
        return None
    if len(value) == 15:
        return value + id_checksum(value)
    return value


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """One lexical token. ``offset`` is the index of its first character in the query text."""

    kind: str  # ident, string, number, date, datetime, op, lparen, rparen, comma, eof
    text: str
    offset: int
    value: Any = None


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME_RE = re.compile(r"T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?")
_OFFSET_RE = re.compile(r"Z|([+-])(\d{2}):?(\d{2})")
_OPERATORS = ("!=", "<>", "<=", ">=", "=", "<", ">")
_STRING_ESCAPES = {
    "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f",
    '"': '"', "'": "'", "\\": "\\", "%": "%", "_": "_",
}


def _locate(query: str, offset: int) -> tuple[int, int, str]:
    """Return the 1-based row and column of ``offset`` and the text of that row."""
    row = query.count("\n", 0, offset) + 1
    line_start = query.rfind("\n", 0, offset) + 1
    line_end = query.find("\n", offset)
    if line_end == -1:
        line_end = len(query)
    return row, offset - line_start + 1, query[line_start:line_end]


def _error_at(query: str, offset: int, error_code: str, message: str) -> SoqlError:
    """Build a SoqlError whose message points at ``offset`` the way Salesforce messages do."""
    row, column, line = _locate(query, offset)
    caret = " " * (column - 1) + "^"
    return SoqlError(error_code, f"\n{line}\n{caret}\nERROR at Row:{row}:Column:{column}\n{message}")


def _unexpected(query: str, token: Token) -> SoqlError:
    text = "<EOF>" if token.kind == "eof" else token.text
    message = f"unexpected token: '{text}'"
    if token.offset == 0:
        # Salesforce returns the bare message when the very first token is wrong (q=invalid).
        return SoqlError("MALFORMED_QUERY", message)
    return _error_at(query, token.offset, "MALFORMED_QUERY", message)


def _no_viable_alternative(query: str, offset: int) -> SoqlError:
    row, column, _ = _locate(query, offset)
    character = query[offset] if offset < len(query) else "<EOF>"
    return _error_at(
        query, offset, "MALFORMED_QUERY", f"line {row}:{column} no viable alternative at character '{character}'"
    )


def _scan_string(query: str, start: int) -> tuple[Token, int]:
    """Scan a single-quoted literal starting at ``start``. The token value is the raw text between the quotes."""
    index = start + 1
    while index < len(query):
        char = query[index]
        if char == "\\":
            if index + 1 >= len(query):
                break
            escaped = query[index + 1]
            if escaped == "u":
                if not re.fullmatch(r"[0-9A-Fa-f]{4}", query[index + 2 : index + 6]):
                    raise _error_at(
                        query, index, "MALFORMED_QUERY", "Invalid unicode escape sequence in string literal"
                    )
                index += 6
                continue
            if escaped not in _STRING_ESCAPES:
                raise _error_at(
                    query, index, "MALFORMED_QUERY", f"Invalid string literal: invalid escape sequence '\\{escaped}'"
                )
            index += 2
            continue
        if char == "'":
            raw = query[start + 1 : index]
            return Token("string", query[start : index + 1], start, raw), index + 1
        index += 1
    row, column, _ = _locate(query, len(query))
    raise _error_at(
        query, len(query), "MALFORMED_QUERY", f"line {row}:{column} mismatched character '<EOF>' expecting '''"
    )


def _scan_date_or_datetime(query: str, start: int) -> tuple[Token, int] | None:
    """Scan a date or datetime literal at ``start``, or return None when the text there is no date."""
    date_match = _DATE_RE.match(query, start)
    if date_match is None:
        return None
    try:
        date_value = dt.date(*(int(part) for part in date_match.groups()))
    except ValueError:
        raise _no_viable_alternative(query, start) from None

    index = date_match.end()
    if index >= len(query) or query[index] != "T":
        if index < len(query) and (query[index].isalnum() or query[index] in "_:."):
            raise _no_viable_alternative(query, index)
        return Token("date", query[start:index], start, date_value), index

    time_match = _TIME_RE.match(query, index)
    if time_match is None:
        raise _no_viable_alternative(query, index)
    hour, minute, second, fraction = time_match.groups()
    # NOTE: whether Salesforce accepts more than three fractional digits is undocumented.
    # The emulator rejects them, the cautious choice for a client under test.
    if fraction is not None and len(fraction) > 3:
        raise _no_viable_alternative(query, time_match.start(4) + 3)
    index = time_match.end()

    offset_match = _OFFSET_RE.match(query, index)
    if offset_match is None:
        # Salesforce rejects a datetime without a UTC offset with MALFORMED_QUERY.
        raise _no_viable_alternative(query, index)
    if offset_match.group(0) == "Z":
        zone = dt.timezone.utc
    else:
        sign, zone_hours, zone_minutes = offset_match.groups()
        delta = dt.timedelta(hours=int(zone_hours), minutes=int(zone_minutes))
        if delta >= dt.timedelta(hours=24):
            raise _no_viable_alternative(query, offset_match.start())
        zone = dt.timezone(-delta if sign == "-" else delta)
    end = offset_match.end()
    if end < len(query) and (query[end].isalnum() or query[end] in "_:."):
        raise _no_viable_alternative(query, end)

    try:
        microsecond = int((fraction or "0").ljust(3, "0")[:3]) * 1000
        value = dt.datetime(
            date_value.year, date_value.month, date_value.day,
            int(hour), int(minute), int(second), microsecond, tzinfo=zone,
        ).astimezone(dt.timezone.utc)
    except ValueError:
        raise _no_viable_alternative(query, index) from None
    return Token("datetime", query[start:end], start, value), end


def tokenize(query: str) -> list[Token]:
    """Split a SOQL query into tokens, ending with an ``eof`` token. Raises SoqlError on invalid characters."""
    tokens: list[Token] = []
    index = 0
    length = len(query)
    while index < length:
        char = query[index]
        if char.isspace():
            index += 1
            continue
        if char == "'":
            token, index = _scan_string(query, index)
            tokens.append(token)
            continue
        if char.isdigit():
            scanned = _scan_date_or_datetime(query, index)
            if scanned is not None:
                token, index = scanned
                tokens.append(token)
                continue
        if char.isdigit() or (char == "-" and index + 1 < length and query[index + 1].isdigit()):
            match = _NUMBER_RE.match(query, index)
            assert match is not None
            end = match.end()
            if end < length and (query[end].isalpha() or query[end] == "_"):
                raise _no_viable_alternative(query, end)
            text = match.group(0)
            tokens.append(Token("number", text, index, float(text) if "." in text else int(text)))
            index = end
            continue
        if char.isalpha() or char == "_":
            match = _IDENT_RE.match(query, index)
            assert match is not None
            tokens.append(Token("ident", match.group(0), index))
            index = match.end()
            continue
        if char == "(":
            tokens.append(Token("lparen", char, index))
            index += 1
            continue
        if char == ")":
            tokens.append(Token("rparen", char, index))
            index += 1
            continue
        if char == ",":
            tokens.append(Token("comma", char, index))
            index += 1
            continue
        operator_text = next((op for op in _OPERATORS if query.startswith(op, index)), None)
        if operator_text is not None:
            tokens.append(Token("op", operator_text, index))
            index += len(operator_text)
            continue
        raise _no_viable_alternative(query, index)
    tokens.append(Token("eof", "", length))
    return tokens


# --------------------------------------------------------------------------------------------
# Syntax tree and parser
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldPath:
    """A field reference as written, such as ``Account.Name``, split at the dots."""

    parts: tuple[str, ...]
    offset: int

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Literal:
    """A literal value. ``kind`` is string, number, date, datetime, boolean or null."""

    kind: str
    value: Any
    offset: int
    text: str


@dataclass(frozen=True)
class Comparison:
    field: FieldPath
    operator: str  # =, !=, <, <=, >, >=, LIKE, IN, NOT IN, INCLUDES, EXCLUDES
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class Junction:
    operator: str  # AND or OR
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Negation:
    condition: Condition


Condition = Comparison | Junction | Negation


@dataclass(frozen=True)
class OrderItem:
    field: FieldPath
    descending: bool
    nulls_last: bool


@dataclass(frozen=True)
class SelectStatement:
    """A parsed query. ``fields`` is empty for ``SELECT COUNT()``."""

    text: str
    fields: tuple[FieldPath, ...]
    is_count: bool
    object_name: str
    object_offset: int
    where: Condition | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = tokenize(query)
        self.position = 0

    # Token helpers

    def peek(self) -> Token:
        return self.tokens[self.position]

    def advance(self) -> Token:
        token = self.tokens[self.position]
        if token.kind != "eof":
            self.position += 1
        return token

    def is_keyword(self, word: str, token: Token | None = None) -> bool:
        token = token or self.peek()
        return token.kind == "ident" and token.text.upper() == word

    def accept_keyword(self, word: str) -> bool:
        if self.is_keyword(word):
            self.advance()
            return True
        return False

    def expect_keyword(self, word: str) -> Token:
        if not self.is_keyword(word):
            raise _unexpected(self.query, self.peek())
        return self.advance()

    def expect(self, kind: str) -> Token:
        if self.peek().kind != kind:
            raise _unexpected(self.query, self.peek())
        return self.advance()

    # Grammar

    def parse_statement(self) -> SelectStatement:
        self.expect_keyword("SELECT")
        fields: list[FieldPath] = []
        is_count = False
        if self.is_keyword("COUNT") and self.tokens[self.position + 1].kind == "lparen":
            self.advance()
            self.advance()
            if self.peek().kind != "rparen":
                raise SoqlError(
                    "MALFORMED_QUERY",
                    "The emulator supports only COUNT() without a field; aggregate queries are not implemented.",
                )
            self.advance()
            is_count = True
        else:
            fields.append(self.parse_field())
            while self.peek().kind == "comma":
                self.advance()
                fields.append(self.parse_field())

        self.expect_keyword("FROM")
        object_token = self.expect("ident")
        if object_token.text.upper() in RESERVED_WORDS or "." in object_token.text:
            raise _unexpected(self.query, object_token)

        where = None
        if self.accept_keyword("WHERE"):
            where = self.parse_condition()

        order_by: list[OrderItem] = []
        if self.accept_keyword("ORDER"):
            self.expect_keyword("BY")
            order_by.append(self.parse_order_item())
            while self.peek().kind == "comma":
                self.advance()
                order_by.append(self.parse_order_item())

        limit = self.parse_count_clause("LIMIT")
        offset = self.parse_count_clause("OFFSET")
        if self.peek().kind != "eof":
            raise _unexpected(self.query, self.peek())

        return SelectStatement(
            text=self.query,
            fields=tuple(fields),
            is_count=is_count,
            object_name=object_token.text,
            object_offset=object_token.offset,
            where=where,
            order_by=tuple(order_by),
            limit=limit,
            offset=offset,
        )

    def parse_count_clause(self, keyword: str) -> int | None:
        if not self.accept_keyword(keyword):
            return None
        token = self.peek()
        if token.kind != "number" or not isinstance(token.value, int) or token.value < 0:
            raise _unexpected(self.query, token)
        self.advance()
        return token.value

    def parse_field(self) -> FieldPath:
        token = self.peek()
        if token.kind != "ident" or token.text.upper() in RESERVED_WORDS:
            raise _unexpected(self.query, token)
        self.advance()
        return FieldPath(tuple(token.text.split(".")), token.offset)

    def parse_order_item(self) -> OrderItem:
        field = self.parse_field()
        descending = False
        if self.accept_keyword("DESC"):
            descending = True
        else:
            self.accept_keyword("ASC")
        nulls_last = False
        if self.accept_keyword("NULLS"):
            if self.accept_keyword("LAST"):
                nulls_last = True
            else:
                self.expect_keyword("FIRST")
        return OrderItem(field, descending, nulls_last)

    def parse_condition(self) -> Condition:
        conditions = [self.parse_unary()]
        junction: str | None = None
        while self.is_keyword("AND") or self.is_keyword("OR"):
            token = self.peek()
            word = token.text.upper()
            if junction is not None and word != junction:
                # SOQL needs parentheses to mix AND and OR on one level.
                raise _unexpected(self.query, token)
            junction = word
            self.advance()
            conditions.append(self.parse_unary())
        if junction is None:
            return conditions[0]
        return Junction(junction, tuple(conditions))

    def parse_unary(self) -> Condition:
        if self.accept_keyword("NOT"):
            return Negation(self.parse_unary())
        if self.peek().kind == "lparen":
            self.advance()
            condition = self.parse_condition()
            self.expect("rparen")
            return condition
        return self.parse_comparison()

    def parse_comparison(self) -> Comparison:
        field = self.parse_field()
        token = self.peek()
        if token.kind == "op":
            self.advance()
            operator_text = "!=" if token.text == "<>" else token.text
            return Comparison(field, operator_text, (self.parse_literal(),))
        if self.accept_keyword("LIKE"):
            return Comparison(field, "LIKE", (self.parse_literal(),))
        if self.accept_keyword("NOT"):
            self.expect_keyword("IN")
            return Comparison(field, "NOT IN", self.parse_literal_list())
        if self.accept_keyword("IN"):
            return Comparison(field, "IN", self.parse_literal_list())
        if self.accept_keyword("INCLUDES"):
            return Comparison(field, "INCLUDES", self.parse_literal_list())
        if self.accept_keyword("EXCLUDES"):
            return Comparison(field, "EXCLUDES", self.parse_literal_list())
        raise _unexpected(self.query, token)

    def parse_literal_list(self) -> tuple[Literal, ...]:
        self.expect("lparen")
        values = [self.parse_literal()]
        while self.peek().kind == "comma":
            self.advance()
            values.append(self.parse_literal())
        self.expect("rparen")
        return tuple(values)

    def parse_literal(self) -> Literal:
        token = self.peek()
        if token.kind in ("string", "number", "date", "datetime"):
            self.advance()
            return Literal(token.kind, token.value, token.offset, token.text)
        if token.kind == "ident":
            word = token.text.upper()
            if word in ("TRUE", "FALSE"):
                self.advance()
                return Literal("boolean", word == "TRUE", token.offset, token.text)
            if word == "NULL":
                self.advance()
                return Literal("null", None, token.offset, token.text)
        raise _unexpected(self.query, token)


def parse(query: str) -> SelectStatement:
    """Parse a SOQL query into a SelectStatement. Raises SoqlError with MALFORMED_QUERY on syntax errors."""
    return _Parser(query).parse_statement()


# --------------------------------------------------------------------------------------------
# Binding against an object schema, and evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """API name, describe ``type`` and query flags of one field, as the compiler uses them."""

    name: str
    type: str
    filterable: bool = True
    sortable: bool = True


@dataclass(frozen=True)
class RelationshipSpec:
    """A parent relationship such as ``Account`` on Contact, reached through the ``AccountId`` reference field."""

    name: str
    reference_field: str
    target_object: str


class Schema(Protocol):
    """Name lookups that the compiler needs. Each takes any letter case and returns the canonical spelling."""

    def find_object(self, name: str) -> str | None: ...

    def find_field(self, object_name: str, name: str) -> FieldSpec | None: ...

    def find_relationship(self, object_name: str, name: str) -> RelationshipSpec | None: ...


Record = dict[str, Any]
Dereference = Callable[[str, str], Record | None]


@dataclass(frozen=True)
class BoundField:
    """A field path resolved to canonical names: the parent relationships to follow, then the field."""

    relationships: tuple[RelationshipSpec, ...]
    field: FieldSpec

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(rel.name for rel in self.relationships) + (self.field.name,)


def _field_type_label(field_type: str) -> str:
    if field_type == "datetime":
        return "dateTime"
    if field_type in ID_TYPES:
        return "id"
    if field_type in TEXT_TYPES:
        return "string"
    return field_type


def make_getter(bound: BoundField, dereference: Dereference) -> Callable[[Record], Any]:
    """Return a function that reads the bound field from a record, following parent references."""
    name = bound.field.name
    hops = tuple((rel.reference_field, rel.target_object) for rel in bound.relationships)
    if not hops:
        return lambda record: record.get(name)

    def get(record: Record) -> Any:
        current: Record | None = record
        for reference_field, target_object in hops:
            parent_id = current.get(reference_field)
            if parent_id is None:
                return None
            current = dereference(target_object, parent_id)
            if current is None:
                return None
        return current.get(name)

    return get


def _normalizer(field_type: str) -> Callable[[Any], Any]:
    """Return the function that maps stored values to comparison keys (text ignores case)."""
    if field_type in TEXT_TYPES:
        return lambda value: None if value is None else value.casefold()
    return lambda value: value


def _decode_string(raw: str) -> str:
    """Resolve the backslash escapes of a string literal's raw text."""
    parts: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "\\" and index + 1 < len(raw):
            escaped = raw[index + 1]
            if escaped == "u":
                parts.append(chr(int(raw[index + 2 : index + 6], 16)))
                index += 6
                continue
            parts.append(_STRING_ESCAPES[escaped])
            index += 2
            continue
        parts.append(char)
        index += 1
    return "".join(parts)


def _like_regex(raw: str) -> re.Pattern[str]:
    """Translate a LIKE pattern (``%`` any run, ``_`` one character, backslash escapes) into a regex."""
    pieces: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "\\" and index + 1 < len(raw):
            escaped = raw[index + 1]
            if escaped == "u":
                pieces.append(re.escape(chr(int(raw[index + 2 : index + 6], 16))))
                index += 6
                continue
            pieces.append(re.escape(_STRING_ESCAPES[escaped]))
            index += 2
            continue
        if char == "%":
            pieces.append(".*")
        elif char == "_":
            pieces.append(".")
        else:
            pieces.append(re.escape(char))
        index += 1
    return re.compile("".join(pieces), re.IGNORECASE | re.DOTALL)


_RELATIONAL_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass
class CompiledQuery:
    """A statement bound to a schema: ready to filter, sort and cut a collection of records."""

    statement: SelectStatement
    object_name: str
    fields: tuple[BoundField, ...]
    predicate: Callable[[Record], bool] | None
    order_by: tuple[tuple[BoundField, bool, bool], ...]
    dereference: Dereference

    @property
    def is_count(self) -> bool:
        return self.statement.is_count

    @property
    def relationship_paths(self) -> tuple[tuple[RelationshipSpec, ...], ...]:
        """Each distinct chain of parent relationships that the selected fields go through."""
        seen: dict[tuple[str, ...], tuple[RelationshipSpec, ...]] = {}
        for bound in self.fields:
            for depth in range(1, len(bound.relationships) + 1):
                chain = bound.relationships[:depth]
                seen.setdefault(tuple(rel.name for rel in chain), chain)
        return tuple(seen.values())

    def execute(self, records: Iterable[Record], shuffle_seed: int | None = None) -> list[Record]:
        """Return the matching records in query order, after OFFSET and LIMIT.

        Without ORDER BY the records are shuffled with ``shuffle_seed`` (when given), because
        Salesforce promises no order and clients must not depend on one.
        """
        if self.predicate is None:
            rows = list(records)
        else:
            predicate = self.predicate
            rows = [record for record in records if predicate(record)]

        if self.order_by:
            rows = self._sort(rows)
        elif shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(rows)

        if self.statement.offset:
            rows = rows[self.statement.offset :]
        if self.statement.limit is not None:
            rows = rows[: self.statement.limit]
        return rows

    def _sort(self, rows: list[Record]) -> list[Record]:
        # One stable sort per key, from the last key to the first, gives the combined order.
        # Nulls are split off before each pass because they do not compare with values.
        for bound, descending, nulls_last in reversed(self.order_by):
            get = make_getter(bound, self.dereference)
            normalize = _normalizer(bound.field.type)
            keyed = [(get(record), record) for record in rows]
            nulls = [record for value, record in keyed if value is None]
            present = [(normalize(value), record) for value, record in keyed if value is not None]
            present.sort(key=operator.itemgetter(0), reverse=descending)
            ordered = [record for _, record in present]
            rows = ordered + nulls if nulls_last else nulls + ordered
        return rows


class _Compiler:
    def __init__(self, statement: SelectStatement, schema: Schema, dereference: Dereference) -> None:
        self.statement = statement
        self.query = statement.text
        self.schema = schema
        self.dereference = dereference
        self.object_name = ""

    def compile(self) -> CompiledQuery:
        statement = self.statement
        object_name = self.schema.find_object(statement.object_name)
        if object_name is None:
            raise _error_at(
                self.query,
                statement.object_offset,
                "INVALID_TYPE",
                f"sObject type '{statement.object_name}' is not supported. If you are attempting to use a custom "
                "object, be sure to append the '__c' after the entity name. Please reference your WSDL or the "
                "describe call for the appropriate names.",
            )
        self.object_name = object_name

        fields: list[BoundField] = []
        seen_paths: set[tuple[str, ...]] = set()
        for path in statement.fields:
            bound = self.bind(path)
            if bound.path in seen_paths:
                raise _error_at(
                    self.query, path.offset, "MALFORMED_QUERY", f"duplicate field selected: {'.'.join(bound.path)}"
                )
            seen_paths.add(bound.path)
            fields.append(bound)

        predicate = None if statement.where is None else self.compile_condition(statement.where)

        order_by: list[tuple[BoundField, bool, bool]] = []
        for item in statement.order_by:
            bound = self.bind(item.field)
            if not bound.field.sortable:
                raise _error_at(
                    self.query,
                    item.field.offset,
                    "INVALID_FIELD",
                    f"field '{bound.field.name}' can not be sorted in a query call",
                )
            order_by.append((bound, item.descending, item.nulls_last))

        if statement.offset is not None and statement.offset > MAX_OFFSET:
            raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", f"Maximum SOQL offset allowed is {MAX_OFFSET}")

        return CompiledQuery(
            statement=statement,
            object_name=object_name,
            fields=tuple(fields),
            predicate=predicate,
            order_by=tuple(order_by),
            dereference=self.dereference,
        )

    def bind(self, path: FieldPath) -> BoundField:
        parts = list(path.parts)
        # "SELECT Contact.Email FROM Contact" is valid: a leading object name is dropped.
        if len(parts) > 1 and parts[0].lower() == self.object_name.lower():
            parts = parts[1:]

        current_object = self.object_name
        relationships: list[RelationshipSpec] = []
        for part in parts[:-1]:
            relationship = self.schema.find_relationship(current_object, part)
            if relationship is None:
                raise _error_at(
                    self.query,
                    path.offset,
                    "INVALID_FIELD",
                    f"Didn't understand relationship '{part}' in field path. If you are attempting to use a "
                    "custom relationship, be sure to append the '__r' after the custom relationship name. "
                    "Please reference your WSDL or the describe call for the appropriate names.",
                )
            relationships.append(relationship)
            current_object = relationship.target_object

        field = self.schema.find_field(current_object, parts[-1])
        if field is None:
            raise _error_at(
                self.query,
                path.offset,
                "INVALID_FIELD",
                f"No such column '{parts[-1]}' on entity '{current_object}'. If you are attempting to use a "
                "custom field, be sure to append the '__c' after the custom field name. Please reference your "
                "WSDL or the describe call for the appropriate names.",
            )
        return BoundField(tuple(relationships), field)

    def compile_condition(self, condition: Condition) -> Callable[[Record], bool]:
        if isinstance(condition, Junction):
            parts = tuple(self.compile_condition(item) for item in condition.conditions)
            if condition.operator == "AND":
                return lambda record: all(part(record) for part in parts)
            return lambda record: any(part(record) for part in parts)
        if isinstance(condition, Negation):
            inner = self.compile_condition(condition.condition)
            return lambda record: not inner(record)
        return self.compile_comparison(condition)

    def coerce(self, field: FieldSpec, literal: Literal) -> Any:
        """Convert a literal to the comparison key for ``field``, or raise the Salesforce type error."""
        if literal.kind == "null":
            return None
        field_type = field.type
        quoted_types = TEXT_TYPES | ID_TYPES
        expected_kind = {
            "datetime": "datetime",
            "date": "date",
            "boolean": "boolean",
        }.get(field_type, "number" if field_type in NUMBER_TYPES else "string")

        if literal.kind != expected_kind:
            if field_type in quoted_types:
                message = (
                    f"Value of filter criterion for field '{field.name}' must be of type "
                    f"{_field_type_label(field_type)} and should be enclosed in quotes."
                )
            else:
                message = (
                    f"Value of filter criterion for field '{field.name}' must be of type "
                    f"{_field_type_label(field_type)} and should not be enclosed in quotes."
                )
            raise _error_at(self.query, literal.offset, "INVALID_FIELD", message)

        if field_type in ID_TYPES:
            text = _decode_string(literal.value)
            id18 = to_id18(text)
            if id18 is None:
                raise _error_at(
                    self.query, literal.offset, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {text}"
                )
            return id18
        if field_type in TEXT_TYPES:
            return _decode_string(literal.value).casefold()
        if field_type in NUMBER_TYPES:
            return float(literal.value)
        return literal.value

    def compile_comparison(self, comparison: Comparison) -> Callable[[Record], bool]:
        bound = self.bind(comparison.field)
        field = bound.field
        if not field.filterable:
            raise _error_at(
                self.query,
                comparison.field.offset,
                "INVALID_FIELD",
                f"field '{field.name}' can not be filtered in a query call",
            )
        get = make_getter(bound, self.dereference)
        normalize = _normalizer(field.type)
        op = comparison.operator

        if op == "LIKE":
            return self.compile_like(bound, comparison, get)

        if op in ("INCLUDES", "EXCLUDES"):
            return self.compile_includes(bound, comparison, get)

        if op in ("IN", "NOT IN"):
            keys = frozenset(self.coerce(field, literal) for literal in comparison.values)
            if op == "IN":
                return lambda record: normalize(get(record)) in keys
            return lambda record: normalize(get(record)) not in keys

        key = self.coerce(field, comparison.values[0])
        if op == "=":
            if key is None:
                return lambda record: get(record) is None
            return lambda record: normalize(get(record)) == key
        if op == "!=":
            if key is None:
                return lambda record: get(record) is not None
            return lambda record: normalize(get(record)) != key

        compare = _RELATIONAL_OPERATORS[op]
        if key is None:
            return lambda record: False

        def relational(record: Record) -> bool:
            value = get(record)
            return value is not None and compare(normalize(value), key)

        return relational

    def compile_like(
        self, bound: BoundField, comparison: Comparison, get: Callable[[Record], Any]
    ) -> Callable[[Record], bool]:
        field = bound.field
        literal = comparison.values[0]
        if field.type in ID_TYPES:
            raise _error_at(
                self.query, comparison.field.offset, "INVALID_QUERY_FILTER_OPERATOR", "invalid operator on id field"
            )
        if field.type not in TEXT_TYPES or literal.kind != "string":
            # Report the same type error that a plain comparison with this literal gets.
            self.coerce(field, literal)
            raise _error_at(
                self.query,
                literal.offset,
                "INVALID_FIELD",
                f"Value of filter criterion for field '{field.name}' must be of type string and should be "
                "enclosed in quotes.",
            )
        pattern = _like_regex(literal.value)

        def like(record: Record) -> bool:
            value = get(record)
            return value is not None and pattern.fullmatch(value) is not None

        return like

    def compile_includes(
        self, bound: BoundField, comparison: Comparison, get: Callable[[Record], Any]
    ) -> Callable[[Record], bool]:
        field = bound.field
        if field.type != "multipicklist":
            raise _error_at(
                self.query,
                comparison.field.offset,
                "INVALID_FIELD",
                "includes or excludes operator only valid on multipicklist field",
            )
        # Each listed value is a ';'-separated set of picklist values that must all be present.
        required_sets = [
            frozenset(part.strip().casefold() for part in _decode_string(literal.value).split(";"))
            for literal in comparison.values
            if literal.kind == "string"
        ]

        def includes(record: Record) -> bool:
            value = get(record)
            present = frozenset(part.strip().casefold() for part in value.split(";")) if value else frozenset()
            return any(required <= present for required in required_sets)

        if comparison.operator == "INCLUDES":
            return includes
        return lambda record: not includes(record)


def compile_query(statement: SelectStatement, schema: Schema, dereference: Dereference) -> CompiledQuery:
    """Bind a parsed statement to ``schema``. Raises SoqlError for unknown objects, fields and bad literals.

    ``dereference(object_name, record_id)`` returns the stored parent record for relationship
    paths such as ``Account.Name``, or None.
    """
    return _Compiler(statement, schema, dereference).compile()


def compile_text(query: str, schema: Schema, dereference: Dereference) -> CompiledQuery:
    """Parse and bind a SOQL query in one step."""
    return compile_query(parse(query), schema, dereference)

