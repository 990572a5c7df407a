"""Salesforce source: OAuth, describe, and changed records streamed page by page.

The only module that imports simple_salesforce; requests is also used by
:mod:`connector.salesforce_bulk`, through this module's session. We obtain the OAuth token
ourselves, because simple-salesforce posts logins only to ``*.salesforce.com`` hosts,
then hand the session to simple-salesforce. Its own re-login is therefore off, which also
avoids its unbounded re-login recursion; we re-authenticate once per expired session.

Changes are read with the keyset ``(SystemModstamp, Id)`` in that order, bounded above by
Salesforce's clock (the ``Date`` header of its responses), never by the local clock.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import jwt
import requests
import stamina
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from connector.cursor import Watermark, parse_salesforce_datetime, soql_datetime, validate_salesforce_id
from connector.errors import ConfigurationError, FatalError, TransientError
from connector.logs import get_logger
from connector.settings import Settings

log = get_logger("connector.salesforce")

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_FIELD_PATH = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}(\.[A-Za-z][A-Za-z0-9_]{0,79}){0,4}")
_API_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
_T = TypeVar("_T")
# Largest LIMIT that fetch_where sends: one query page at the maximum batch size.
MAX_FETCH_LIMIT = 2000

# Always selected: the cursor (SystemModstamp, Id) and the fields that mark deletes and merges.
CURSOR_FIELDS = ("Id", "SystemModstamp", "IsDeleted", "MasterRecordId")
# Lower bound of a window that has none, for splitting; Salesforce has no older records.
EARLIEST_MODSTAMP = datetime(1999, 1, 1, tzinfo=UTC)
# A window this narrow that still times out is reported instead of split further.
MIN_SPLIT_WINDOW = timedelta(seconds=1)


@dataclass(frozen=True)
class ApiUsage:
    used: int
    limit: int


@dataclass(frozen=True)
class Page:
    """One page of query results, as Salesforce returned it."""

    records: list[dict[str, Any]]
    total_size: int


class _TrustingAdapter(HTTPAdapter):
    """An adapter that applies a default timeout and trusts an extra CA bundle.

    requests lets REQUESTS_CA_BUNDLE replace a Session's own ``verify`` setting, so an
    extra CA given through ``verify`` is silently ignored when that variable is set. An
    SSL context loaded here survives that, because urllib3 adds the bundle on top of it.
    """

    def __init__(self, timeout_s: float, ca_file: str | None) -> None:
        self._timeout_s = timeout_s
        self._context: ssl.SSLContext | None = None
        if ca_file:
            self._context = ssl.create_default_context()
            self._context.load_verify_locations(cafile=ca_file)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._context is not None:
            kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        # simple-salesforce passes no timeout at all; without one a silent server hangs a cycle forever.
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout_s
        return super().send(request, **kwargs)


class SalesforceSource:
    """Reads one Salesforce org through its REST API."""

    def __init__(self, settings: Settings, *, version: str | None = None) -> None:
        self._settings = settings
        self._version = version or settings.salesforce_api_version
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "sfcharles"
        ca_file = str(settings.salesforce_ca_file) if settings.salesforce_ca_file else None
        self._session.mount("https://", _TrustingAdapter(settings.salesforce_timeout_s, ca_file))
        self._session.hooks["response"].append(self._observe_response)
        self._client: Salesforce | None = None
        self._login_lock = threading.Lock()
        self._login_generation = 0
        self.last_server_time: datetime | None = None
        self.api_usage: ApiUsage | None = None
        self.api_calls = 0

    # Authentication

    def _observe_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.api_calls += 1
        date = response.headers.get("Date")
        if date:
            try:
                self.last_server_time = parsedate_to_datetime(date).astimezone(UTC)
            except (TypeError, ValueError):
                pass
        usage = _API_USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if usage:
            self.api_usage = ApiUsage(int(usage.group(1)), int(usage.group(2)))

    def _token_request(self) -> dict[str, str]:
        settings = self._settings
        if settings.resolved_auth() == "jwt":
            assert settings.salesforce_private_key is not None and settings.salesforce_username is not None
            claims = {
                "iss": settings.salesforce_client_id,
                "sub": settings.salesforce_username,
                "aud": settings.salesforce_login_url,
                # The JWT's own expiry is the one place the local clock is right to use.
                "exp": int(time.time()) + 180,
            }
            try:
                assertion = jwt.encode(claims, settings.salesforce_private_key.get_secret_value(), algorithm="RS256")
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise ConfigurationError(
                    f"SFCHARLES_SALESFORCE_PRIVATE_KEY: cannot sign the JWT ({exc.__class__.__name__}); "
                    "give an RSA private key in PEM form"
                ) from None
            return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        return {"grant_type": "client_credentials"}

    def login(self) -> None:
        """Obtain an access token and build the REST client on it."""
        settings = self._settings
        url = f"{settings.salesforce_login_url}/services/oauth2/token"
        auth = None
        if settings.resolved_auth() == "client_credentials":
            assert settings.salesforce_client_secret is not None
            auth = (settings.salesforce_client_id, settings.salesforce_client_secret.get_secret_value())
        try:
            response = self._session.post(url, data=self._token_request(), auth=auth)
        except requests.exceptions.SSLError:
            raise ConfigurationError(_TLS_HINT.format(what=f"login at {url}")) from None
        except requests.RequestException as exc:
            raise TransientError(f"Salesforce login at {url} failed: {exc.__class__.__name__}: {_cause(exc)}") from None
        if response.status_code >= 500:
            raise TransientError(f"Salesforce login at {url} failed with HTTP {response.status_code}")
        body = _json_or_empty(response)
        if response.status_code != 200 or "access_token" not in body:
            error = str(body.get("error", f"HTTP {response.status_code}"))
            description = str(body.get("error_description", ""))
            raise ConfigurationError(
                f"Salesforce login at {url} was rejected: {error} {description}".rstrip()
                + f"; check {_credential_hint(settings, error)}"
            )
        self._login_generation += 1
        self._client = Salesforce(
            instance_url=body["instance_url"],
            session_id=body["access_token"],
            session=self._session,
            version=self._version,
        )
        log.info("salesforce.logged_in", auth=settings.resolved_auth(), instance_url=body["instance_url"])

    def _call(self, operation: Callable[[Salesforce], _T], what: str) -> _T:
        """Run one REST call; re-login once on an expired session; translate errors."""
        if self._client is None:
            self.login()
        return _retry_transient(lambda: self._call_with_relogin(operation, what))

    def _call_with_relogin(self, operation: Callable[[Salesforce], _T], what: str) -> _T:
        assert self._client is not None
        generation = self._login_generation
        try:
            return _translate(lambda: operation(self._client), what)  # type: ignore[arg-type]
        except _SessionExpired:
            with self._login_lock:
                # Callers that hit the same expired session share one re-login.
                if self._login_generation == generation:
                    log.info("salesforce.session_refreshed", reason="INVALID_SESSION_ID")
                    self.login()
        try:
            return _translate(lambda: operation(self._client), what)  # type: ignore[arg-type]
        except _SessionExpired:
            raise ConfigurationError(
                f"Salesforce rejected a fresh session for {what} (INVALID_SESSION_ID twice in a row); "
                "check that the connected app's user has API access"
            ) from None

    # Reads

    def server_time(self) -> datetime:
        """Salesforce's current time, from the Date header of a cheap REST call (limits)."""
        self.last_server_time = None
        limits = self._call(lambda sf: sf.restful("limits/"), "limits")
        daily = limits.get("DailyApiRequests") if isinstance(limits, dict) else None
        if isinstance(daily, dict) and "Max" in daily and "Remaining" in daily:
            limit = int(daily["Max"])
            self.api_usage = ApiUsage(limit - int(daily["Remaining"]), limit)
        if self.last_server_time is None:
            raise FatalError("Salesforce's limits response had no Date header; the window's upper bound cannot be set")
        return self.last_server_time

    def describe_fields(self, object_name: str) -> dict[str, str]:
        """Field API name to type, from ``sobjects/<object>/describe``."""
        _check_identifier(object_name)
        body = self._call(lambda sf: sf.restful(f"sobjects/{object_name}/describe"), f"describe {object_name}")
        return {item["name"]: item["type"] for item in body.get("fields", [])}

    def fetch_where(self, object_name: str, fields: list[str], where: str, limit: int) -> list[dict[str, Any]]:
        """Return at most ``limit`` records of ``SELECT Id, <fields> FROM <object> WHERE <where>``.

        The object and field names are validated. ``where`` is sent as written, because it is
        an operator's own condition (the ``preview`` command), not data from a record.
        """
        _check_identifier(object_name)
        if not 1 <= limit <= MAX_FETCH_LIMIT:
            raise ConfigurationError(f"limit {limit} is out of range; use 1 to {MAX_FETCH_LIMIT}")
        selected: dict[str, None] = {"Id": None}
        for name in fields:
            if not _FIELD_PATH.fullmatch(name):
                raise ConfigurationError(f"field {name!r} is not a Salesforce field API name; fix the field map")
            selected[name] = None
        soql = f"SELECT {', '.join(selected)} FROM {object_name} WHERE {where} LIMIT {limit}"
        log.debug("salesforce.query_started", soql=soql)
        result = self._call(lambda sf: sf.query_all(soql), f"query on {object_name}")
        return list(result.get("records", []))

    def changes(
        self, object_name: str, fields: list[str], after: Watermark | None, before: datetime, conditions: tuple[str, ...] = ()
    ) -> Iterator[Page]:
        """Stream records with ``after < (SystemModstamp, Id)`` and ``SystemModstamp < before``.

        Deleted and merged records are included (``queryAll``). Pages come through
        ``nextRecordsUrl``, so memory holds one page at a time. A QUERY_TIMEOUT splits the
        remaining window in two and carries on from the last record received, so a slow
        query never ends a cycle with records missing.
        """
        yield from self._window(object_name, fields, after, before, conditions)

    def _window(
        self, object_name: str, fields: list[str], after: Watermark | None, before: datetime, conditions: tuple[str, ...]
    ) -> Iterator[Page]:
        last = after
        try:
            for page in self._pages(build_changes_query(object_name, fields, last, before, conditions)):
                yield page
                if page.records:
                    last = record_position(page.records[-1])
            return
        except QueryTimeout:
            lower = last.modstamp if last is not None else EARLIEST_MODSTAMP
            if before - lower <= MIN_SPLIT_WINDOW:
                raise FatalError(
                    f"Salesforce query on {object_name} timed out (QUERY_TIMEOUT) even for the window "
                    f"{lower.isoformat()} to {before.isoformat()}; the cycle stops without moving the watermark"
                ) from None
            middle = lower + (before - lower) / 2
            middle = middle.replace(microsecond=(middle.microsecond // 1000) * 1000)
            log.warning("salesforce.query_split", reason="QUERY_TIMEOUT", window_start=lower.isoformat(), split_at=middle.isoformat(), window_end=before.isoformat())
        yield from self._window(object_name, fields, last, middle, conditions)
        yield from self._window(object_name, fields, Watermark.start_of(middle), before, conditions)

    def _pages(self, soql: str) -> Iterator[Page]:
        headers = {"Sforce-Query-Options": f"batchSize={self._settings.salesforce_page_size}"}
        log.debug("salesforce.query_started", soql=soql)
        result = self._call(lambda sf: sf.query(soql, include_deleted=True, headers=headers), "query")
        while True:
            yield Page(records=result.get("records", []), total_size=int(result.get("totalSize", 0)))
            next_url = result.get("nextRecordsUrl")
            if result.get("done", True) or not next_url:
                return
            result = self._call(lambda sf: sf.query_more(next_url, identifier_is_url=True, headers=headers), "next query page")

    def count_changes(
        self, object_name: str, after: Watermark | None, before: datetime, conditions: tuple[str, ...] = ()
    ) -> int:
        """Count the records that ``changes`` returns for the same window, deleted ones included."""
        soql = f"SELECT COUNT() FROM {_checked(object_name)} WHERE {window_condition(after, before, conditions)}"
        log.debug("salesforce.query_started", soql=soql)
        result = self._call(lambda sf: sf.query(soql, include_deleted=True), f"count on {object_name}")
        return int(result.get("totalSize", 0))

    def fetch_by_ids(self, object_name: str, fields: list[str], record_ids: list[str]) -> Iterator[dict[str, Any]]:
        """The current version of each record, deleted ones included, in chunks of 200 Ids."""
        for start in range(0, len(record_ids), 200):
            chunk = [validate_salesforce_id(record_id) for record_id in record_ids[start : start + 200]]
            id_list = ", ".join(f"'{record_id}'" for record_id in chunk)
            soql = f"SELECT {', '.join(_select_list(fields))} FROM {_checked(object_name)} WHERE Id IN ({id_list})"
            for page in self._pages(soql):
                yield from page.records

    # Access for the Bulk API 2.0 reader, which sends its own requests

    @property
    def http_session(self) -> requests.Session:
        """The session that every Salesforce request goes through: timeouts, CA trust, API usage."""
        return self._session

    def rest_endpoint(self) -> tuple[str, str]:
        """Return the REST base URL (``https://<instance>/services/data/vNN.N/``) and the access token.

        Logs in first if there is no session yet.
        """
        if self._client is None:
            self.login()
        assert self._client is not None
        return self._client.base_url, self._client.session_id

    def close(self) -> None:
        self._session.close()


def build_changes_query(
    object_name: str, fields: list[str], after: Watermark | None, before: datetime, conditions: tuple[str, ...] = ()
) -> str:
    """Build the keyset SOQL; every identifier is validated, never pasted from input.

    ``conditions`` are SOQL fragments that the field map built from validated names and
    escaped literals.
    """
    return (
        f"SELECT {', '.join(_select_list(fields))} FROM {_checked(object_name)} "
        f"WHERE {window_condition(after, before, conditions)} ORDER BY SystemModstamp ASC, Id ASC"
    )


def window_condition(after: Watermark | None, before: datetime, conditions: tuple[str, ...] = ()) -> str:
    """Build the WHERE condition of a change window: the keyset lower bound, ``before`` and the map's conditions."""
    clauses = [f"SystemModstamp < {soql_datetime(before)}"]
    if after is not None:
        clauses.insert(0, after.soql_after())
    clauses.extend(f"({condition})" for condition in conditions)
    return " AND ".join(clauses)


def _select_list(fields: list[str]) -> list[str]:
    """Id and the cursor and delete fields first, then the map's fields, without repeats."""
    selected: dict[str, None] = dict.fromkeys(CURSOR_FIELDS)
    for name in fields:
        if not _FIELD_PATH.fullmatch(name):
            raise ConfigurationError(f"field {name!r} is not a Salesforce field API name; fix the field map")
        selected[name] = None
    return list(selected)


def record_position(record: dict[str, Any]) -> Watermark:
    """A record's place in the change stream."""
    try:
        return Watermark(parse_salesforce_datetime(str(record["SystemModstamp"])), str(record["Id"]))
    except (KeyError, ValueError) as exc:
        raise FatalError(f"Salesforce returned a record without a usable Id and SystemModstamp: {exc}") from None


def _checked(object_name: str) -> str:
    _check_identifier(object_name)
    return object_name


def _check_identifier(name: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(f"object {name!r} is not a Salesforce object API name; fix the field map's object key")


_TLS_HINT = (
    "Salesforce {what} failed: the server's TLS certificate could not be verified; if a "
    "TLS-inspecting proxy or a local emulator sits in between, set SFCHARLES_SALESFORCE_CA_FILE "
    "to the CA bundle that signed it"
)


def _cause(exc: Exception) -> str:
    """The innermost reason of a requests error, such as "Connection refused"."""
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner).split(": ")[-1]
    return text[:200]


class _SessionExpired(Exception):
    pass


class ApiLimitExceeded(FatalError):
    """The org's daily API allocation is used up (REQUEST_LIMIT_EXCEEDED)."""


class QueryTimeout(TransientError):
    """Salesforce gave up on a query (QUERY_TIMEOUT); a narrower window may succeed."""


def _error_code(exc: SalesforceError) -> str:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode", ""))
    return ""


def _error_message(exc: SalesforceError) -> str:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("message", "")).strip()
    return ""


def _translate(call: Callable[[], _T], what: str) -> _T:
    """Map simple-salesforce and requests errors to the connector's error classes."""
    try:
        return call()
    except SalesforceExpiredSession as exc:
        raise _SessionExpired() from exc
    except SalesforceRefusedRequest as exc:
        code = _error_code(exc)
        if code == "REQUEST_LIMIT_EXCEEDED":
            raise ApiLimitExceeded(f"Salesforce {what}: the org's API request limit is used up (REQUEST_LIMIT_EXCEEDED)") from None
        raise ConfigurationError(f"Salesforce {what} was refused ({code or 'HTTP 403'}); check the integration user's permissions") from None
    except SalesforceMalformedRequest as exc:
        code = _error_code(exc)
        if code == "QUERY_TIMEOUT":
            raise QueryTimeout(f"Salesforce {what} timed out on the server (QUERY_TIMEOUT)") from None
        if code in ("INVALID_FIELD", "INVALID_TYPE"):
            raise ConfigurationError(f"Salesforce {what} failed: {code}: {_error_message(exc)}; fix the field map") from None
        raise FatalError(f"Salesforce {what} failed: {code or 'HTTP 400'}: {_error_message(exc)}") from None
    except SalesforceResourceNotFound as exc:
        raise ConfigurationError(f"Salesforce {what}: not found ({_error_code(exc) or 'HTTP 404'}); check the object name and SFCHARLES_SALESFORCE_API_VERSION") from None
    except SalesforceError as exc:
        if exc.status >= 500:
            raise TransientError(f"Salesforce {what} failed with HTTP {exc.status}") from None
        raise FatalError(f"Salesforce {what} failed with HTTP {exc.status}: {_error_code(exc)}") from None
    except requests.exceptions.SSLError:
        raise ConfigurationError(_TLS_HINT.format(what=what)) from None
    except requests.Timeout:
        raise TransientError(f"Salesforce {what} timed out") from None
    except requests.RequestException as exc:
        raise TransientError(f"Salesforce {what} failed: {exc.__class__.__name__}") from None


def _retry_transient(call: Callable[[], _T]) -> _T:
    """Retry transient failures with exponential backoff and jitter, bounded in attempts and time."""
    def retryable(exc: Exception) -> bool:
        # A timed-out query is split by the caller instead of being sent again as it was.
        return isinstance(exc, TransientError) and not isinstance(exc, QueryTimeout)

    for attempt in stamina.retry_context(on=retryable, attempts=4, timeout=timedelta(seconds=120)):
        with attempt:
            return call()
    raise AssertionError("unreachable: stamina re-raises the last error")


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _credential_hint(settings: Settings, error: str) -> str:
    if error in ("invalid_client_id", "invalid_client"):
        return "SFCHARLES_SALESFORCE_CLIENT_ID" + (" and SFCHARLES_SALESFORCE_CLIENT_SECRET" if settings.resolved_auth() == "client_credentials" else "")
    if settings.resolved_auth() == "jwt":
        return "SFCHARLES_SALESFORCE_USERNAME, SFCHARLES_SALESFORCE_PRIVATE_KEY and that the app is pre-authorised for the user"
    return "SFCHARLES_SALESFORCE_CLIENT_ID, SFCHARLES_SALESFORCE_CLIENT_SECRET and SFCHARLES_SALESFORCE_LOGIN_URL (the org's My Domain)"
