"""docs/operations.md lists the log events that the connector emits, and no others."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

LOG_METHODS = {"debug", "info", "warning", "error", "exception"}


def code_events() -> set[str]:
    """Event names of every ``log.<level>("name", ...)`` call in the package, emulators excluded."""
    events = set()
    for path in (ROOT / "connector").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                events.add(node.args[0].value)
    return events


def documented_events() -> set[str]:
    """Event names in the first column of the event table."""
    events = set()
    for line in (ROOT / "docs" / "operations.md").read_text().splitlines():
        if line.startswith("| `") and "." in line.split("|")[1]:
            events |= set(re.findall(r"`([a-z_]+\.[a-z_]+)`", line.split("|")[1]))
    return events


def test_every_event_documented() -> None:
    missing = code_events() - documented_events()

    assert not missing, f"add these log events to the event table in docs/operations.md: {sorted(missing)}"


def test_documented_events_exist() -> None:
    unknown = documented_events() - code_events()

    assert not unknown, f"docs/operations.md lists events the code never logs: {sorted(unknown)}"
