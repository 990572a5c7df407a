"""The Grafana dashboard's LogQL queries use only fields that real log lines contain.

Loki parses each line at query time, so a misspelt field in a query does not fail: its
panel just stays empty. These tests run real cycles through the emulators, capture the
JSON lines, flatten them as Loki's ``| json`` stage does, and check every field and event
name that a query uses against them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from connector.emulators.charles import Fault
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "sfcharles-loki.json"
SHARED_PHONE = "+14155550199"

# Labels that Loki adds itself, such as the error of a failed unwrap.
LOKI_INTERNAL_LABELS = {"__error__", "__error_details__"}
VARIABLES = {"$selector": '{app="sfcharles"}', "$level": "info", "$__interval": "1m", "$__auto": "1m", "$__range": "1h"}

FILTER = re.compile(r"(?<![\w.$])([A-Za-z_]\w*)\s*(=~|!~|!=|==|>=|<=|=|>|<)\s*(\"(?:[^\"\\]|\\.)*\"|`[^`]*`|[-\d.]+\w*)")
UNWRAP = re.compile(r"\bunwrap\s+(?:(?:duration|duration_seconds|bytes)\(\s*)?([A-Za-z_]\w*)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
JSON_STAGE = re.compile(r"\|\s*json\b((?:\s*,?\s*[A-Za-z_]\w*\s*=\s*\"[^\"]*\")*)")
JSON_PARAMETER = re.compile(r"([A-Za-z_]\w*)\s*=\s*\"([^\"]*)\"")
TEMPLATE_FIELD = re.compile(r"\{\{[^}]*?\.([A-Za-z_]\w*)")
STREAM_SELECTOR = re.compile(r"\{[^{}]*\}")


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel.get("targets", [])]


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def unquote(literal: str) -> str:
    return json.loads(literal) if literal.startswith('"') else literal.strip("`")


class Query:
    """The fields and event filters that one LogQL query uses."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        text = substitute(expr)
        self.fields: set[str] = set()
        self.declared: set[str] = set()  # labels the json stage creates under new names
        self.unwrapped: list[str] = []
        self.events: list[tuple[str, str]] = []  # (operator, value) of each filter on "event"

        self.fields |= set(TEMPLATE_FIELD.findall(text))
        for match in JSON_STAGE.finditer(text):
            for label, path in JSON_PARAMETER.findall(match.group(1)):
                self.declared.add(label)
                self.fields.add(re.split(r"[.\[]", path)[0])
        text = JSON_STAGE.sub("| json", text)
        text = STREAM_SELECTOR.sub("", text)

        for name, operator, literal in FILTER.findall(text):
            self.fields.add(name)
            if name == "event":
                self.events.append((operator, unquote(literal)))
        self.unwrapped = UNWRAP.findall(text)
        self.fields |= set(self.unwrapped)
        for group in GROUPING.findall(text):
            self.fields |= {name.strip() for name in group.split(",") if name.strip()}
        self.fields -= LOKI_INTERNAL_LABELS | self.declared

    def selects(self, line: dict[str, Any]) -> bool:
        """Whether the query's event filters keep this line."""
        for operator, value in self.events:
            event = str(line.get("event", ""))
            matched = event == value if operator in ("=", "==") else re.fullmatch(value, event) is not None
            if matched != (operator in ("=", "==", "=~")):
                return False
        return True


def loki_json_fields(line: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a log line as Loki's json parser does: nested keys joined by "_", arrays skipped."""
    flat: dict[str, Any] = {}
    for key, value in line.items():
        name = prefix + re.sub(r"[^A-Za-z0-9_]", "_", key)
        if isinstance(value, dict):
            flat.update(loki_json_fields(value, name + "_"))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture
def captured(salesforce, charles, make_app, logs) -> list[dict[str, Any]]:
    """Log lines of two real cycles that, between them, hit every outcome the dashboard shows."""
    stamp = salesforce.now() - timedelta(seconds=5)
    for name in ("Shared A", "Shared B"):
        salesforce.create_record("Contact", {"LastName": name, "MobilePhone": SHARED_PHONE}, modstamp=stamp)
    charles.reject(SHARED_PHONE)  # Charles rejects the first owner, and the second is set aside as a duplicate
    syncer = make_app(charles_max_attempts="1").syncer()
    first = syncer.run_cycle()

    # A changed record whose upsert fails once, with no retry left: it holds the watermark.
    changed = charles.upserts[0]["custom_properties"]["salesforce_id"]
    salesforce.update_record("Contact", changed, {"LastName": "Changed"})
    salesforce.advance(2)
    charles.set_faults([Fault.status(503)])
    second = syncer.run_cycle()

    assert first.set_aside == 2
    assert dict(second.failed_by_reason) == {"http_503": 1}
    return logs.lines


def test_queries_found(dashboard) -> None:
    queries = dashboard_queries()

    assert len(queries) >= 10
    for title, expr in queries:
        assert "| json" in expr, f"{title}: {expr} does not parse the JSON line"
        assert "$selector" in expr, f"{title}: {expr} does not use the stream selector variable"


def test_query_fields_exist_in_real_lines(captured) -> None:
    for title, expr in dashboard_queries():
        query = Query(expr)
        selected = [line for line in captured if query.selects(line)]
        assert selected, f"{title}: no captured line passes the event filters of {expr}"
        keys = set().union(*(loki_json_fields(line) for line in selected))
        for field in sorted(query.fields):
            assert field in keys, f"{title}: field {field!r} in {expr} is not in any selected log line"


def test_event_names_appear_in_real_lines(captured) -> None:
    events = {line.get("event") for line in captured}
    for title, expr in dashboard_queries():
        for operator, value in Query(expr).events:
            names = value.split("|") if operator == "=~" else [value]
            for name in names:
                assert name in events, f"{title}: event {name!r} never appears in a real cycle's log"


def test_unwrapped_fields_are_numbers(captured) -> None:
    for title, expr in dashboard_queries():
        query = Query(expr)
        selected = [loki_json_fields(line) for line in captured if query.selects(line)]
        for field in query.unwrapped:
            numbers = [line[field] for line in selected if isinstance(line.get(field), (int, float)) and not isinstance(line.get(field), bool)]
            assert numbers, f"{title}: {field!r} is never a number in the selected lines"
        if query.unwrapped:
            # A null value (no watermark yet) fails conversion, so the query must drop such lines.
            assert '__error__=""' in expr, f"{title}: {expr} does not drop lines whose value is not a number"


def test_level_variable_covers_real_levels(dashboard, captured) -> None:
    [variable] = [item for item in dashboard["templating"]["list"] if item["name"] == "level"]
    options = set(variable["query"].split(","))

    assert {line["level"] for line in captured} <= options
    assert options <= {"debug", "info", "warning", "error", "critical"}


def test_logs_panel_filters_by_level(dashboard) -> None:
    [logs_panel] = [panel for panel in panels(dashboard) if panel["type"] == "logs"]

    assert [target["expr"] for target in logs_panel["targets"]] == ['$selector | json | level=~"$level"']


def test_targets_use_datasource_variable(dashboard) -> None:
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}

    assert variables["datasource"]["query"] == "loki"
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "loki", "uid": "${datasource}"}, panel["title"]


def test_query_parser_catches_unknown_field(captured) -> None:
    """The checks above can fail: a misspelt field is reported."""
    query = Query('sum(sum_over_time($selector | json | event="sync.cycle_completed" | unwrap pushd | __error__="" [$__interval]))')
    keys = set().union(*(loki_json_fields(line) for line in captured if query.selects(line)))

    assert query.fields == {"event", "pushd"}
    assert "pushd" not in keys
    assert "pushed" in keys


def test_query_parser_reads_json_parameters_and_grouping() -> None:
    query = Query('sum by (reason) (count_over_time($selector | json lag="watermark_lag_s", kind="error_type" | lag > 10 [$__interval]))')

    assert query.fields == {"watermark_lag_s", "error_type", "reason"}
    assert query.declared == {"lag", "kind"}
