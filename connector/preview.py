"""Preview: the upsert bodies that chosen records would produce, without sending anything.

Records come from Salesforce by Id or by a SOQL condition, or from a JSON file. Each one
goes through the field map exactly as a sync cycle maps it. The result lists the body
with a note for every dropped value, or the reason the record would be skipped.
Nothing is sent to Charles and no state is stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connector.cursor import validate_salesforce_id
from connector.errors import ConfigurationError
from connector.field_map import FieldMap, Mapped, load_field_map
from connector.salesforce import SalesforceSource
from connector.settings import Settings

# An IN list of this many 18-character Ids keeps the query far below SOQL's length limit.
MAX_PREVIEW_IDS = 200


def preview_records(field_map: FieldMap, records: Sequence[Any]) -> list[dict[str, Any]]:
    """Map each record and describe the outcome: the payload and notes, or the skip reason and detail."""
    results: list[dict[str, Any]] = []
    for record in records:
        outcome = field_map.apply(record)
        if isinstance(outcome, Mapped):
            results.append(
                {"record_id": outcome.record_id, "outcome": "mapped", "payload": outcome.payload, "notes": list(outcome.notes)}
            )
        else:
            results.append(
                {"record_id": outcome.record_id, "outcome": "skipped", "reason": outcome.reason, "detail": outcome.detail}
            )
    return results


def read_records_file(path: Path) -> list[Any]:
    """Read records from a JSON file.

    The file contains a list of records, an object with a ``records`` list (a REST query
    result or an sfdx tree file), or the output of ``sf data query --json``
    (``result.records``). Each record is an object of field API names to values.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"records file {str(path)!r}: cannot read it ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"records file {path}: not valid JSON ({exc})") from None
    records = document
    if isinstance(records, dict) and isinstance(records.get("result"), dict):
        records = records["result"]
    if isinstance(records, dict):
        records = records.get("records")
    if not isinstance(records, list):
        raise ConfigurationError(f"records file {path}: expected a JSON list of records, or an object with a records list")
    for position, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ConfigurationError(f"records file {path}: record {position} is not a JSON object")
    return records


def ids_condition(ids: Sequence[str]) -> str:
    """Build ``Id IN ('...')`` from validated Salesforce Ids."""
    if len(ids) > MAX_PREVIEW_IDS:
        raise ConfigurationError(f"{len(ids)} Ids given; preview at most {MAX_PREVIEW_IDS} at a time")
    checked = []
    for record_id in ids:
        try:
            checked.append(validate_salesforce_id(record_id.strip()))
        except ValueError as exc:
            raise ConfigurationError(f"--id: {exc}") from None
    return "Id IN (" + ", ".join(f"'{record_id}'" for record_id in checked) + ")"


def fetch_records(
    source: SalesforceSource, field_map: FieldMap, *, ids: Sequence[str] = (), where: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Read the records to preview from Salesforce, after checking the map against the object's describe.

    By Id, the map's own ``where`` is not added, so a record it filters out is shown as
    skipped instead of missing. With ``where``, the operator's condition is sent as
    written, in brackets, and ANDed with the map's ``where``, so the limit is spent on
    records that a sync would read.
    """
    problems = field_map.check_against(source.describe_fields(field_map.object_name))
    if problems:
        raise ConfigurationError("field map does not match Salesforce:\n" + "\n".join(f"  - {problem}" for problem in problems))
    if ids:
        return source.fetch_where(field_map.object_name, field_map.source_fields(), ids_condition(ids), len(ids))
    if where is None or not where.strip():
        raise ConfigurationError("--where is empty; give a SOQL condition such as \"LastName = 'Smith'\"")
    condition = " AND ".join([f"({where})", *field_map.soql_conditions()])
    return source.fetch_where(field_map.object_name, field_map.source_fields(), condition, limit)


def run_preview(
    settings: Settings,
    *,
    ids: Sequence[str] = (),
    where: str | None = None,
    records_file: Path | None = None,
    limit: int = 20,
    map_path: Path | None = None,
) -> dict[str, Any]:
    """Build the preview document for one of the three ways of choosing records.

    ``map_path`` replaces SFCHARLES_FIELD_MAP. With ``records_file`` nothing connects to
    Salesforce, so the map is not checked against the org's describe.
    """
    chosen = [name for name, given in (("--id", bool(ids)), ("--where", where is not None), ("--file", records_file is not None)) if given]
    if len(chosen) != 1:
        raise ConfigurationError(f"give exactly one of --id, --where and --file (got {', '.join(chosen) or 'none'})")
    field_map = load_field_map(map_path or settings.field_map, default_region=settings.default_region, tags_field=settings.tags_field)
    document: dict[str, Any] = {"object": field_map.object_name, "field_map": field_map.origin}
    if records_file is not None:
        records = read_records_file(records_file)
    else:
        source = SalesforceSource(settings)
        try:
            records = fetch_records(source, field_map, ids=ids, where=where, limit=limit)
        finally:
            source.close()
        if ids:
            found = {str(record.get("Id", ""))[:15] for record in records}
            document["not_found"] = [record_id for record_id in ids if record_id.strip()[:15] not in found]
    results = preview_records(field_map, records)
    document["records"] = results
    document["counts"] = {
        "mapped": sum(1 for result in results if result["outcome"] == "mapped"),
        "skipped": sum(1 for result in results if result["outcome"] == "skipped"),
    }
    return document
