"""Bulk API 2.0 query jobs for the Salesforce emulator.

The emulator routes ``/services/data/vNN.N/jobs/query...`` here after it has checked the
session, so authentication and API usage work as for REST calls:

* ``POST jobs/query`` with ``{"operation": "query" | "queryAll", "query": SOQL}`` creates a
  job in state ``UploadComplete``. The query runs at once on the emulator's SOQL engine,
  and the matching rows are kept as the job's snapshot.
* ``GET jobs/query/<id>`` returns the job. Each request counts as a poll: the job reports
  ``InProgress`` until ``polls_before_complete`` polls, then ``JobComplete`` with
  ``numberRecordsProcessed``.
* ``GET jobs/query/<id>/results?locator=&maxRecords=`` returns a CSV page with a header row,
  every value quoted, and the ``Sforce-Locator`` (``null`` on the last page) and
  ``Sforce-NumberOfRecords`` headers.
* ``PATCH jobs/query/<id>`` with ``{"state": "Aborted"}`` aborts a job, and ``DELETE`` removes it.

As Salesforce's Bulk API 2.0 guide lists, a query with COUNT() or a compound address or
geolocation field is rejected. Values are written as the CSV results of that API show them:
empty for null, ``true``/``false`` and datetimes such as ``2025-01-23T10:26:15.000Z``.

Test hooks: :meth:`BulkQueryJobs.fail_next_job`, :meth:`BulkQueryJobs.misreport_next_job`,
and the attributes ``polls_before_complete`` and ``max_records_per_page``.

Salesforce does not document everything, so the emulator makes these choices:

* the error code ``INVALIDJOB`` for a job request that cannot run, ``INVALIDJOBSTATE`` for
  results of an unfinished job or an abort of a finished one, and ``INVALIDLOCATOR``;
* HTTP 400 for each of those, and 10,000 records per results page without ``maxRecords``;
* locators are the base64 form of the row offset, as the locators seen from Salesforce look.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.emulators import soql

logger = logging.getLogger(__name__)

DEFAULT_POLLS_BEFORE_COMPLETE = 2
DEFAULT_MAX_RECORDS = 10_000
FIRST_JOB_NUMBER = 2_000_000_000
CSV_CONTENT_TYPE = "text/csv"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
_LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_COMPOUND_TYPES = frozenset({"address", "location"})
_TERMINAL_STATES = frozenset({"JobComplete", "Failed", "Aborted"})

# status, body, headers: the emulator turns this into its own response object.
Reply = tuple[int, bytes, list[tuple[str, str]]]


class QueryResult(Protocol):
    """The part of the emulator's query snapshot that jobs use: the rows (for their count) and REST-shaped pages."""

    rows: Any

    def page(self, start: int, batch_size: int, version: str) -> dict[str, Any]: ...


# A function that compiles and runs SOQL. It returns the compiled query with its snapshot, or raises soql.SoqlError.
RunQuery = Callable[[str, bool], tuple[soql.CompiledQuery, QueryResult]]


@dataclass
class _Job:
    id: str
    operation: str
    object_name: str
    query: str
    version: str
    created: dt.datetime
    line_ending: str
    columns: list[tuple[tuple[str, ...], str]]  # selected field path and its field type
    result: QueryResult
    fail_message: str | None = None
    count_offset: int = 0
    state: str = "UploadComplete"
    polls: int = 0
    modified: dt.datetime | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.result.rows)


class BulkQueryJobs:
    """The org's Bulk API 2.0 query jobs, behind one lock."""

    def __init__(
        self,
        run_query: RunQuery,
        *,
        now: Callable[[], dt.datetime],
        make_id: Callable[[str, int], str],
        user_id: str,
    ) -> None:
        self._run_query = run_query
        self._now = now
        self._make_id = make_id
        self._user_id = user_id
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._job_number = FIRST_JOB_NUMBER
        self._next_failure: str | None = None
        self._next_count_offset = 0
        self.polls_before_complete = DEFAULT_POLLS_BEFORE_COMPLETE
        self.max_records_per_page: int | None = None

    # Test hooks

    def fail_next_job(self, message: str = "Job failed due to an internal error") -> None:
        """Make the next job created end in state Failed with ``message`` as its errorMessage."""
        with self._lock:
            self._next_failure = message

    def misreport_next_job(self, offset: int) -> None:
        """Make the next job report ``offset`` more records in numberRecordsProcessed than its results contain."""
        with self._lock:
            self._next_count_offset = offset

    def jobs(self) -> list[dict[str, Any]]:
        """Return every job not deleted, in creation order, with its ``query`` text added to the job info."""
        with self._lock:
            return [{**self._info(job), "query": job.query} for job in self._jobs.values()]

    # Requests

    def handle(self, method: str, version: str, segments: list[str], params: dict[str, list[str]], body: bytes) -> Reply:
        """Serve one request below ``jobs/query``; ``segments`` are the path parts after it."""
        if not segments:
            if method == "POST":
                return self._create(version, body)
            return _error(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are POST")
        with self._lock:
            job = self._jobs.get(segments[0])
        if job is None:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        if len(segments) == 1:
            if method in ("GET", "HEAD"):
                return self._poll(job)
            if method == "PATCH":
                return self._abort(job, body)
            if method == "DELETE":
                return self._delete(job)
            return _error(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE")
        if segments[1:] == ["results"] and method in ("GET", "HEAD"):
            return self._results(job, version, params)
        return _error(404, "NOT_FOUND", "The requested resource does not exist")

    def _create(self, version: str, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            return _error(400, "JSON_PARSER_ERROR", f"The request body is not valid JSON: {error}")
        if not isinstance(request, dict):
            return _error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = request.get("operation")
        text = request.get("query")
        if operation not in ("query", "queryAll"):
            return _error(400, "INVALIDJOB", f"Invalid operation {operation!r}; use query or queryAll")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "INVALIDJOB", "The query is missing")
        if request.get("contentType", "CSV") != "CSV" or request.get("columnDelimiter", "COMMA") != "COMMA":
            return _error(400, "INVALIDJOB", "The emulator serves only contentType CSV with columnDelimiter COMMA")
        line_ending = request.get("lineEnding", "LF")
        if line_ending not in _LINE_ENDINGS:
            return _error(400, "INVALIDJOB", f"Invalid lineEnding {line_ending!r}; use LF or CRLF")

        try:
            compiled, result = self._run_query(text, operation == "queryAll")
        except soql.SoqlError as error:
            logger.info("bulk query job rejected: error_code=%s query=%r", error.error_code, text)
            return _error(400, error.error_code, error.message)
        if compiled.is_count:
            return _error(400, "INVALIDJOB", "Aggregate queries such as COUNT() are not supported by Bulk API 2.0 query jobs")
        columns = [(bound.path, bound.field.type) for bound in compiled.fields]
        compound = [".".join(path) for path, field_type in columns if field_type in _COMPOUND_TYPES]
        if compound:
            return _error(400, "INVALIDJOB", f"Compound fields are not supported by Bulk API 2.0 query jobs: {', '.join(compound)}")

        created = self._now()
        with self._lock:
            self._job_number += 1
            job = _Job(
                id=self._make_id("750", self._job_number),
                operation=operation,
                object_name=compiled.object_name,
                query=text,
                version=version,
                created=created,
                line_ending=line_ending,
                columns=columns,
                result=result,
                fail_message=self._next_failure,
                count_offset=self._next_count_offset,
                modified=created,
            )
            self._next_failure = None
            self._next_count_offset = 0
            self._jobs[job.id] = job
            info = self._info(job)
        logger.info("bulk query job created: id=%s object=%s rows=%d", job.id, job.object_name, job.total)
        return _json(200, info)

    def _poll(self, job: _Job) -> Reply:
        with self._lock:
            if job.state not in _TERMINAL_STATES:
                job.polls += 1
                job.modified = self._now()
                if job.polls < self.polls_before_complete:
                    job.state = "InProgress"
                elif job.fail_message is not None:
                    job.state = "Failed"
                else:
                    job.state = "JobComplete"
            info = self._info(job)
        return _json(200, info)

    def _abort(self, job: _Job, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            return _error(400, "JSON_PARSER_ERROR", f"The request body is not valid JSON: {error}")
        if not isinstance(request, dict) or request.get("state") != "Aborted":
            return _error(400, "INVALIDJOBSTATE", 'A query job can only be changed to {"state": "Aborted"}')
        with self._lock:
            if job.state in _TERMINAL_STATES:
                return _error(400, "INVALIDJOBSTATE", f"Job {job.id} is already {job.state}")
            job.state = "Aborted"
            job.modified = self._now()
            info = self._info(job)
        return _json(200, info)

    def _delete(self, job: _Job) -> Reply:
        with self._lock:
            if job.state == "InProgress":
                return _error(400, "INVALIDJOBSTATE", f"Job {job.id} is InProgress; abort it before deleting it")
            self._jobs.pop(job.id, None)
        return 204, b"", []

    def _results(self, job: _Job, version: str, params: dict[str, list[str]]) -> Reply:
        if version != job.version:
            return _error(409, "INVALIDVERSION", f"Get the results with the API version that created the job ({job.version})")
        with self._lock:
            state = job.state
        if state != "JobComplete":
            return _error(400, "INVALIDJOBSTATE", f"Job {job.id} is {state}; results are available once it is JobComplete")

        start = _decode_locator((params.get("locator") or [""])[0])
        if start is None or start > job.total:
            return _error(400, "INVALIDLOCATOR", "Invalid locator")
        max_records_text = (params.get("maxRecords") or [""])[0]
        if max_records_text and (not max_records_text.isdigit() or int(max_records_text) < 1):
            return _error(400, "INVALIDJOB", f"Invalid maxRecords {max_records_text!r}; give a positive integer")
        max_records = int(max_records_text) if max_records_text else DEFAULT_MAX_RECORDS
        if self.max_records_per_page is not None:
            max_records = min(max_records, self.max_records_per_page)

        count = max(0, min(max_records, job.total - start))
        records = job.result.page(start, count, version)["records"] if count else []
        end = start + len(records)
        body = _csv_body(job, records)
        locator = _encode_locator(end) if end < job.total else "null"
        headers = [("Content-Type", CSV_CONTENT_TYPE), ("Sforce-Locator", locator), ("Sforce-NumberOfRecords", str(len(records)))]
        return 200, body, headers

    def _info(self, job: _Job) -> dict[str, Any]:
        processed = job.total + job.count_offset if job.state == "JobComplete" else 0
        info: dict[str, Any] = {
            "id": job.id,
            "operation": job.operation,
            "object": job.object_name,
            "createdById": self._user_id,
            "createdDate": _format_datetime(job.created),
            "systemModstamp": _format_datetime(job.modified or job.created),
            "state": job.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(job.version),
            "jobType": "V2Query",
            "lineEnding": job.line_ending,
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": processed,
            "retries": 0,
            "totalProcessingTime": 0,
        }
        if job.state == "Failed":
            info["errorMessage"] = job.fail_message
        return info


def _csv_body(job: _Job, records: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator=_LINE_ENDINGS[job.line_ending])
    writer.writerow([".".join(path) for path, _ in job.columns])
    for record in records:
        writer.writerow([_csv_value(_value_at(record, path), field_type) for path, field_type in job.columns])
    return buffer.getvalue().encode("utf-8")


def _value_at(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _csv_value(value: Any, field_type: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if field_type == "datetime" and isinstance(value, str) and value.endswith("+0000"):
        return value[: -len("+0000")] + "Z"
    return str(value)


def _encode_locator(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode("ascii")).decode("ascii").rstrip("=")


def _decode_locator(text: str) -> int | None:
    """Return the row offset of a locator (0 for none), or None if it is not one of ours."""
    if not text:
        return 0
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return int(decoded) if decoded.isdigit() else None


def _format_datetime(value: dt.datetime) -> str:
    value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def _json(status: int, payload: Any) -> Reply:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return status, body, [("Content-Type", JSON_CONTENT_TYPE)]


def _error(status: int, error_code: str, message: str) -> Reply:
    return _json(status, [{"errorCode": error_code, "message": message}])
