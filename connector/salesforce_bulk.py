"""Changed records through one Bulk API 2.0 query job, for backfills too large for REST paging.

:class:`BulkReader` runs the SOQL that :meth:`SalesforceSource.changes` sends
(:func:`build_changes_query`, as ``queryAll`` so deleted and merged records come too), waits
for the job with growing poll intervals, and streams its CSV results. It yields the same
:class:`Page` objects as ``changes()``, with records shaped like REST records, so a sync
cycle handles them the same way. Only one page of ``page_size`` records is kept in memory.

Every request goes through the source's requests session, so timeouts, the extra CA bundle
and the API usage header apply as they do to REST calls. An expired session (HTTP 401)
makes the source log in again, and the request is sent once more. simple-salesforce's
Bulk 2.0 client is not used: in version 1.12 it keeps the session it was created with and
never logs in again, so a long job would fail when the token expires.

The number of records received is checked against the job's ``numberRecordsProcessed``
and against each result set's ``Sforce-NumberOfRecords`` header. A difference raises
:class:`BulkCountMismatch`.

NOTE: Salesforce's Bulk API 2.0 guide advises against ORDER BY, because it turns off PK
chunking and large queries may then time out. The cursor needs the order all the same. If
records ever arrived out of ``(SystemModstamp, Id)`` order, the cycle's OrderGuard would
stop it with CursorOrderError rather than skip records.
"""

from __future__ import annotations

import codecs
import csv
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import requests
import stamina

from connector.cursor import Watermark, parse_salesforce_datetime
from connector.errors import ConfigurationError, FatalError, TransientError
from connector.logs import get_logger
from connector.salesforce import ApiLimitExceeded, Page, SalesforceSource, build_changes_query

log = get_logger("connector.salesforce_bulk")

JOBS_PATH = "jobs/query"
# maxRecords of one results request. Salesforce may return fewer, and Sforce-Locator then points to the rest.
RESULT_SET_RECORDS = 50_000
# Job polling: the first poll is sent at once, then the interval grows to the maximum.
POLL_FIRST_INTERVAL_S = 0.5
POLL_MAX_INTERVAL_S = 30.0
POLL_GROWTH = 2.0
# A job that is not finished after this long is given up, even without a stop request.
MAX_JOB_WAIT_S = 24 * 3600.0
STREAM_CHUNK_BYTES = 64 * 1024
# Attempts to read one result set when its download breaks off part-way.
MAX_RESULT_SET_ATTEMPTS = 4
TERMINAL_STATES = ("JobComplete", "Failed", "Aborted")
# Field types whose CSV text is converted back to the JSON type that REST returns.
_BOOLEAN_TYPES = frozenset({"boolean"})
_INTEGER_TYPES = frozenset({"int", "long"})
_DECIMAL_TYPES = frozenset({"double", "currency", "percent"})
# Bulk API 2.0 rejects queries that select compound fields.
_COMPOUND_TYPES = frozenset({"address", "location"})


class BulkCountMismatch(FatalError):
    """The number of records received differs from the number Salesforce reported for the job."""


class BulkReader:
    """Reader of one change window of an object, through a Bulk API 2.0 query job."""

    def __init__(
        self,
        source: SalesforceSource,
        *,
        page_size: int,
        result_set_records: int = RESULT_SET_RECORDS,
        should_stop: Callable[[], bool] | None = None,
        poll_first_interval_s: float = POLL_FIRST_INTERVAL_S,
        poll_max_interval_s: float = POLL_MAX_INTERVAL_S,
        max_job_wait_s: float = MAX_JOB_WAIT_S,
    ) -> None:
        if page_size < 1 or result_set_records < 1:
            raise ValueError(f"page_size ({page_size}) and result_set_records ({result_set_records}) must be at least 1")
        self._source = source
        self._page_size = page_size
        self._result_set_records = result_set_records
        self._should_stop = should_stop or (lambda: False)
        self._poll_first_interval_s = poll_first_interval_s
        self._poll_max_interval_s = poll_max_interval_s
        self._max_job_wait_s = max_job_wait_s
        # The last state seen of each job not discarded yet, to know whether it must be aborted.
        self._job_states: dict[str, str] = {}

    def changes(
        self, object_name: str, fields: list[str], after: Watermark | None, before: datetime, conditions: tuple[str, ...] = ()
    ) -> Iterator[Page]:
        """Stream records with ``after < (SystemModstamp, Id)`` and ``SystemModstamp < before``, in that order.

        Returns without a page if ``should_stop`` turns true while the job runs. The job
        is deleted at the end, or aborted and deleted if reading stops early.
        """
        field_types = self._source.describe_fields(object_name)
        compound = [name for name in fields if field_types.get(name) in _COMPOUND_TYPES]
        if compound:
            raise ConfigurationError(
                f"Bulk API 2.0 cannot read the compound fields {', '.join(compound)}; map their component "
                "fields (such as MailingCity) instead, or set SFCHARLES_BULK_THRESHOLD=0 to read through REST"
            )
        soql = build_changes_query(object_name, fields, after, before, conditions)
        job_id = self._create_job(soql, object_name)
        try:
            processed = self._wait_for_job(job_id)
            if processed is None:
                return
            yield from self._pages(job_id, processed, field_types)
        finally:
            self._discard_job(job_id)

    # Job lifecycle

    def _create_job(self, soql: str, object_name: str) -> str:
        body = {"operation": "queryAll", "query": soql, "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"}
        log.debug("salesforce.query_started", soql=soql, api="bulk")
        job = self._json(self._send("POST", JOBS_PATH, "Bulk API query job creation", json=body))
        job_id = str(job.get("id") or "")
        if not job_id:
            raise FatalError(f"Salesforce Bulk API created a query job on {object_name} but returned no job id")
        log.info("salesforce.bulk_job_created", job_id=job_id, object=object_name)
        return job_id

    def _wait_for_job(self, job_id: str) -> int | None:
        """Poll until the job completes and return its ``numberRecordsProcessed``, or None if a stop was requested."""
        started = time.monotonic()
        interval = self._poll_first_interval_s
        polls = 0
        while True:
            job = self._json(self._send("GET", f"{JOBS_PATH}/{job_id}", f"Bulk API query job {job_id} status"))
            polls += 1
            state = str(job.get("state", ""))
            self._job_states[job_id] = state
            if state == "JobComplete":
                processed = _job_count(job, job_id)
                log.info("salesforce.bulk_job_completed", job_id=job_id, records=processed, polls=polls)
                return processed
            if state in ("Failed", "Aborted"):
                message = str(job.get("errorMessage") or "no error message")
                raise FatalError(f"Salesforce Bulk API query job {job_id} ended in state {state}: {message}")
            waited = time.monotonic() - started
            if waited + interval > self._max_job_wait_s:
                raise FatalError(
                    f"Salesforce Bulk API query job {job_id} is still {state or 'unknown'} after {waited:.0f} s; "
                    "the cycle stops without moving the watermark"
                )
            if not self._sleep(interval):
                log.info("salesforce.bulk_job_waiting_stopped", job_id=job_id, state=state)
                return None
            interval = min(interval * POLL_GROWTH, self._poll_max_interval_s)

    def _sleep(self, seconds: float) -> bool:
        """Sleep in short steps, and return False as soon as a stop is requested."""
        deadline = time.monotonic() + seconds
        while True:
            if self._should_stop():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(remaining, 0.25))

    def _discard_job(self, job_id: str) -> None:
        """Abort the job if it still runs, then delete it with its results. Failures are only logged."""
        state = self._job_states.pop(job_id, "UploadComplete")
        try:
            if state not in TERMINAL_STATES:
                self._send("PATCH", f"{JOBS_PATH}/{job_id}", f"Bulk API query job {job_id} abort", json={"state": "Aborted"}).close()
            self._send("DELETE", f"{JOBS_PATH}/{job_id}", f"Bulk API query job {job_id} deletion").close()
        except (ConfigurationError, FatalError, TransientError) as exc:
            log.warning("salesforce.bulk_job_delete_failed", job_id=job_id, error_type=exc.__class__.__name__, error=str(exc))

    # Results

    def _pages(self, job_id: str, processed: int, field_types: dict[str, str]) -> Iterator[Page]:
        records: list[dict[str, Any]] = []
        for row in self._rows(job_id, processed):
            records.append(_to_record(row, field_types))
            if len(records) == self._page_size:
                yield Page(records=records, total_size=processed)
                records = []
        if records:
            yield Page(records=records, total_size=processed)

    def _rows(self, job_id: str, processed: int) -> Iterator[dict[str, str]]:
        """Yield every result row as a dict of CSV header to text, checking the counts on the way."""
        received = 0
        locator: str | None = None
        while True:
            result_set = _ResultSet(self, job_id, locator)
            for row in result_set.rows():
                received += 1
                if received > processed:
                    raise BulkCountMismatch(
                        f"Salesforce Bulk API query job {job_id} reported {processed} records "
                        f"(numberRecordsProcessed) but returned more; the cycle stops"
                    )
                yield row
            locator = result_set.next_locator
            if locator is None:
                break
        if received != processed:
            raise BulkCountMismatch(
                f"Salesforce Bulk API query job {job_id} returned {received} records but reported {processed} "
                "(numberRecordsProcessed); the cycle stops without moving the watermark"
            )

    # HTTP

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        """Send one request and return the successful response; retry transient failures with backoff."""
        for attempt in stamina.retry_context(on=TransientError, attempts=4, timeout=timedelta(seconds=120)):
            with attempt:
                return self._send_with_relogin(method, path, what, **kwargs)
        raise AssertionError("unreachable: stamina re-raises the last error")

    def _send_with_relogin(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        response = self._send_once(method, path, what, **kwargs)
        if response.status_code != 401:
            return _checked(response, what)
        response.close()
        log.info("salesforce.session_refreshed", reason="INVALID_SESSION_ID", api="bulk")
        self._source.login()
        response = self._send_once(method, path, what, **kwargs)
        if response.status_code == 401:
            response.close()
            raise ConfigurationError(
                f"Salesforce rejected a fresh session for {what} (INVALID_SESSION_ID twice in a row); "
                "check that the connected app's user has API access"
            )
        return _checked(response, what)

    def _send_once(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response:
        base_url, token = self._source.rest_endpoint()
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        try:
            return self._source.http_session.request(method, base_url + path, headers=headers, **kwargs)
        except requests.Timeout:
            raise TransientError(f"Salesforce {what} timed out") from None
        except requests.RequestException as exc:
            raise TransientError(f"Salesforce {what} failed: {exc.__class__.__name__}") from None

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise FatalError(f"Salesforce Bulk API returned a body that is not a JSON object (HTTP {response.status_code})")
        return body


class _ResultSet:
    """One ``results`` request of a job: its rows, its row count and the locator of the next set.

    A download that breaks off part-way is requested again with the same locator, which
    Salesforce serves unchanged while the job exists, and the rows already yielded are skipped.
    """

    def __init__(self, reader: BulkReader, job_id: str, locator: str | None) -> None:
        self._reader = reader
        self._job_id = job_id
        self._locator = locator
        self.next_locator: str | None = None

    def rows(self) -> Iterator[dict[str, str]]:
        params: dict[str, Any] = {"maxRecords": self._reader._result_set_records}
        if self._locator:
            params["locator"] = self._locator
        what = f"Bulk API query job {self._job_id} results"
        delivered = 0
        for attempt in range(1, MAX_RESULT_SET_ATTEMPTS + 1):
            response = self._reader._send("GET", f"{JOBS_PATH}/{self._job_id}/results", what, params=params, stream=True)
            try:
                locator = response.headers.get("Sforce-Locator", "null")
                self.next_locator = None if locator in ("", "null") else locator
                announced = response.headers.get("Sforce-NumberOfRecords")
                count = 0
                for row in _parse_csv(response, what):
                    count += 1
                    if count > delivered:
                        delivered = count
                        yield row
            except requests.RequestException as exc:
                if attempt == MAX_RESULT_SET_ATTEMPTS:
                    raise TransientError(f"Salesforce {what}: the download broke off {attempt} times ({exc.__class__.__name__})") from None
                log.warning("salesforce.bulk_results_retrying", job_id=self._job_id, rows_read=delivered, error_type=exc.__class__.__name__)
                continue
            finally:
                response.close()
            if announced is not None and announced.isdigit() and int(announced) != count:
                raise BulkCountMismatch(
                    f"Salesforce {what}: the Sforce-NumberOfRecords header is {announced} but the CSV contains {count} records"
                )
            log.debug("salesforce.bulk_results_read", job_id=self._job_id, records=count, more=self.next_locator is not None)
            return


def _parse_csv(response: requests.Response, what: str) -> Iterator[dict[str, str]]:
    """Parse a streamed CSV body into dicts keyed by the header row."""
    reader = csv.reader(_lines(response.iter_content(chunk_size=STREAM_CHUNK_BYTES)), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if len(row) != len(header):
                raise FatalError(f"Salesforce {what}: a CSV row has {len(row)} values for {len(header)} columns")
            yield dict(zip(header, row, strict=True))
    except csv.Error as exc:
        raise FatalError(f"Salesforce {what}: the CSV body is malformed: {exc}") from None


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    r"""Decode UTF-8 chunks into lines that keep their ``\n``, as the csv module needs for quoted line breaks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    for chunk in chunks:
        parts = (pending + decoder.decode(chunk)).split("\n")
        pending = parts.pop()
        for part in parts:
            yield part + "\n"
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _to_record(row: dict[str, str], field_types: dict[str, str]) -> dict[str, Any]:
    """Shape a CSV row like a REST record.

    Empty text becomes None, because Salesforce stores no empty strings. Checkbox, number
    and datetime fields of the object get their REST types and forms. ``Account.Name``
    becomes ``{"Account": {"Name": ...}}``, and a parent whose values are all empty becomes
    None, as REST returns a missing parent. CSV cannot tell that apart from a parent whose
    selected fields are all empty.

    NOTE: values of relationship fields stay text, because their types would need the
    describe of every parent object.
    """
    record: dict[str, Any] = {}
    for column, text in row.items():
        value: Any = None if text == "" else text
        parts = column.split(".")
        if len(parts) == 1:
            record[column] = _typed(column, value, field_types.get(column))
            continue
        parent = record
        for part in parts[:-1]:
            child = parent.get(part)
            if not isinstance(child, dict):
                child = {}
                parent[part] = child
            parent = child
        parent[parts[-1]] = value
    for key, value in record.items():
        if isinstance(value, dict) and _all_empty(value):
            record[key] = None
    return record


def _all_empty(values: dict[str, Any]) -> bool:
    return all(_all_empty(value) if isinstance(value, dict) else value is None for value in values.values())


def _typed(column: str, value: str | None, field_type: str | None) -> Any:
    if value is None or field_type is None:
        return value
    try:
        if field_type in _BOOLEAN_TYPES:
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        if field_type in _INTEGER_TYPES:
            return int(value)
        if field_type in _DECIMAL_TYPES:
            return float(value)
        if field_type == "datetime":
            moment = parse_salesforce_datetime(value)
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"
    except ValueError:
        raise FatalError(f"Salesforce Bulk API returned {value!r} for {column}, which is not a valid {field_type}") from None
    return value


def _job_count(job: dict[str, Any], job_id: str) -> int:
    value = job.get("numberRecordsProcessed")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FatalError(f"Salesforce Bulk API query job {job_id} completed without a valid numberRecordsProcessed ({value!r})")
    return value


def _checked(response: requests.Response, what: str) -> requests.Response:
    """Return a 2xx response; raise the connector's error for any other status."""
    status = response.status_code
    if status < 300:
        return response
    code, message = _error_details(response)
    response.close()
    if status >= 500:
        raise TransientError(f"Salesforce {what} failed with HTTP {status}")
    if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
        raise ApiLimitExceeded(f"Salesforce {what}: the org's API request limit is used up (REQUEST_LIMIT_EXCEEDED)")
    if status == 403:
        raise ConfigurationError(
            f"Salesforce {what} was rejected ({code or 'HTTP 403'}); check that the integration user has the API Enabled "
            "and Bulk API permissions"
        )
    if code in ("INVALID_FIELD", "INVALID_TYPE"):
        raise ConfigurationError(f"Salesforce {what} failed: {code}: {message}; fix the field map")
    raise FatalError(f"Salesforce {what} failed with HTTP {status}: {code or 'no error code'}: {message}".rstrip(": "))


def _error_details(response: requests.Response) -> tuple[str, str]:
    """Return the errorCode and message of a Salesforce error body (a JSON list of error objects)."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode", "")), str(body[0].get("message", "")).strip()
    return "", ""
