from datetime import UTC, datetime

import pytest

from connector.cursor import (
    OrderGuard,
    Watermark,
    ensure_forward,
    format_iso,
    parse_salesforce_datetime,
    soql_datetime,
    validate_salesforce_id,
)
from connector.errors import CursorOrderError

ID_A = "003000000000001AAA"
ID_B = "003000000000002AAA"


@pytest.mark.parametrize(
    "text",
    ["2025-01-23T10:26:15.000+0000", "2025-01-23T10:26:15Z", "2025-01-23T10:26:15.000Z", "2025-01-23T11:26:15+01:00"],
)
def test_parse_accepts_salesforce_forms(text: str) -> None:
    assert parse_salesforce_datetime(text) == datetime(2025, 1, 23, 10, 26, 15, tzinfo=UTC)


def test_parse_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_salesforce_datetime("2025-01-23T10:26:15")


def test_parse_rejects_garbage_naming_value() -> None:
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_salesforce_datetime("yesterday")


def test_format_iso_keeps_milliseconds() -> None:
    assert format_iso(datetime(2025, 1, 23, 10, 26, 15, 123456, tzinfo=UTC)) == "2025-01-23T10:26:15.123Z"


def test_soql_literal_is_unquoted_utc() -> None:
    moment = parse_salesforce_datetime("2025-01-23T11:26:15+01:00")
    assert soql_datetime(moment) == "2025-01-23T10:26:15Z"
    assert soql_datetime(moment.replace(microsecond=5000)) == "2025-01-23T10:26:15.005Z"


def test_watermark_orders_by_time_then_id() -> None:
    early = Watermark.from_strings("2025-01-23T10:26:15Z", ID_B)
    same_second = Watermark.from_strings("2025-01-23T10:26:15Z", ID_A)
    later = Watermark.from_strings("2025-01-23T10:26:16Z", ID_A)
    assert same_second < early < later


def test_watermark_keyset_condition() -> None:
    mark = Watermark.from_strings("2025-01-23T10:26:15.000+0000", ID_A)
    assert mark.soql_after() == (
        "(SystemModstamp > 2025-01-23T10:26:15Z OR "
        f"(SystemModstamp = 2025-01-23T10:26:15Z AND Id > '{ID_A}'))"
    )


def test_watermark_without_id_is_inclusive() -> None:
    assert Watermark.from_strings("2025-01-23T10:26:15Z").soql_after() == "SystemModstamp >= 2025-01-23T10:26:15Z"


@pytest.mark.parametrize("bad", ["003' OR Id != '", "003", "003000000000001AAA0", ""])
def test_invalid_id_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_salesforce_id(bad)


def test_watermark_rejects_injected_id() -> None:
    with pytest.raises(ValueError, match="invalid Salesforce Id"):
        Watermark(datetime(2025, 1, 1, tzinfo=UTC), "x' OR Name != '")


def test_order_guard_names_both_positions() -> None:
    guard = OrderGuard(None)
    guard.check(Watermark.from_strings("2025-01-23T10:26:16Z", ID_A))
    with pytest.raises(CursorOrderError) as info:
        guard.check(Watermark.from_strings("2025-01-23T10:26:15Z", ID_B))
    assert "2025-01-23T10:26:16.000Z" in str(info.value)
    assert "2025-01-23T10:26:15.000Z" in str(info.value)


def test_order_guard_rejects_repeat() -> None:
    mark = Watermark.from_strings("2025-01-23T10:26:16Z", ID_A)
    guard = OrderGuard(mark)
    with pytest.raises(CursorOrderError):
        guard.check(mark)


def test_backwards_watermark_raises() -> None:
    later = Watermark.from_strings("2025-01-23T10:26:16Z", ID_A)
    earlier = Watermark.from_strings("2025-01-23T10:26:15Z", ID_A)
    ensure_forward(earlier, later)
    with pytest.raises(CursorOrderError, match="backwards"):
        ensure_forward(later, earlier)
