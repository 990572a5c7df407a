"""Local emulator of the Charles contact upsert API, for tests, benchmarks and the demo.

``CharlesEmulator`` runs a real HTTP/1.1 server (keep-alive, one thread per connection)
that accepts ``PUT /api/v1beta/contacts`` the way the vendor documents it:

- The request needs ``x-api-key`` equal to the configured key (else 401, and the key is
  never echoed), ``Content-Type: application/json`` (else 415) and a JSON object body
  (else 400). Fields are validated and every problem is listed (422).
- A person is stored under ``(source_type, external_reference_id)``. The first upsert
  creates it with a new uuid4 ``id``. Later upserts keep ``id`` and ``created_at``,
  overwrite the names that are given, add new tags after the existing ones, merge
  ``custom_properties`` key by key and add phone numbers and email addresses that are not
  stored yet. Phone values are stored without their leading ``+``, as the vendor returns them.
- Every response uses the vendor's envelope: ``status``, ``msg``, ``messages``,
  ``localized_messages``, ``errors``, ``request`` (the Host header and a new uuid4) and
  ``data`` (the person, or null on errors).

The last request body stored for a person is in ``data["channel_users"][0]["payload"]``,
which is where the vendor's example response shows it. ``CharlesEmulator.upserts`` also
lists every accepted body in arrival order.

``store=False`` (``--no-store``) keeps neither people, bodies nor request log entries, only
counts (``request_count``, ``upsert_count`` and the counts of ``/_emulator/requests``), so a
benchmark can send millions of upserts without the emulator's memory growing. Every
upsert then gets the response to a first upsert: a new person with a new ``id``.

NOTE: the vendor documents only the success response. The error envelope, the status
codes for each validation failure, the 422 for unknown fields and the rule that a phone
number or email address is new when its ``(type, value)`` pair is new are this
emulator's assumptions. Phone and email formats are not checked.

Faults (``Fault``), latency and per-key rejections are set from Python or over HTTP under
``/_emulator/`` on the same server. Admin requests need no key, get no latency or faults
and are not recorded in ``CharlesEmulator.requests``.

Command line::

    python -m connector.emulators.charles --host 127.0.0.1 --port 8080 \\
        --api-key KEY --latency-ms 0

The command prints one JSON line, ``{"event": "charles_emulator.ready", "url": ...}``,
once it accepts connections, and exits with status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import email.utils
import hmac
import http
import json
import logging
import random
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = ["CharlesEmulator", "Fault", "validate_contact", "main"]

logger = logging.getLogger(__name__)

CONTACTS_PATH = "/api/v1beta/contacts"
ADMIN_PREFIX = "/_emulator/"
DEFAULT_API_KEY = "emulator-api-key"
DEFAULT_SOURCE_TYPE = "salesforce"

# Maximum request body size. A contact body is usually a few kilobytes, so the limit only stops runaway clients.
MAX_BODY_BYTES = 1024 * 1024

# Seconds that an idle keep-alive connection stays open before the server closes it.
IDLE_CONNECTION_TIMEOUT_S = 120.0

NAME_FIELDS = ("first_name", "middle_name", "last_name")
CONTACT_POINT_FIELDS = ("phone_numbers", "email_addresses")
KNOWN_FIELDS = frozenset(
    {"external_reference_id", "source_type", "custom_properties", "tags", *NAME_FIELDS, *CONTACT_POINT_FIELDS}
)

HTML_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>{code} {phrase}</title></head>\n"
    "<body><h1>{code} {phrase}</h1><p>The upstream server returned an invalid response.</p>"
    "<hr><center>nginx</center></body></html>\n"
)


# --------------------------------------------------------------------------- faults


@dataclasses.dataclass(frozen=True)
class Fault:
    """Failure that the emulator returns in place of a normal response.

    Build one with ``Fault.status``, ``Fault.timeout``, ``Fault.drop`` or
    ``Fault.malformed``. ``kind`` is ``"status"``, ``"timeout"``, ``"drop"`` or
    ``"malformed"``. ``code`` is the HTTP status for ``status`` and ``malformed``,
    ``retry_after`` the Retry-After header value, ``body`` a custom response body and
    ``seconds`` the delay of a ``timeout``.
    """

    kind: str
    code: int | None = None
    retry_after: str | None = None
    body: str | None = None
    seconds: float = 0.0

    @classmethod
    def status(
        cls,
        code: int,
        retry_after: int | str | dt.datetime | None = None,
        body: str | bytes | dict[str, Any] | list[Any] | None = None,
    ) -> Fault:
        """Build a fault that responds with the error status ``code`` (400-599).

        ``retry_after`` becomes the Retry-After header: an int is whole seconds, a
        datetime is formatted as an HTTP date and a string is sent unchanged. Without
        ``body`` the response is the error envelope. A dict or list body is sent as
        JSON, a string or bytes body as it is.
        """
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError(f"Fault.status code must be an int from 400 to 599, got {code!r}")
        return cls(kind="status", code=code, retry_after=_format_retry_after(retry_after), body=_body_text(body))

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        """Build a fault that waits ``seconds`` and then handles the request normally.

        A client with a shorter timeout gives up first. The emulator still applies the
        upsert, as a real server that finished the work would.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"Fault.timeout seconds must be a positive number, got {seconds!r}")
        return cls(kind="timeout", seconds=float(seconds))

    @classmethod
    def drop(cls) -> Fault:
        """Build a fault that closes the TCP connection without sending a response."""
        return cls(kind="drop")

    @classmethod
    def malformed(cls, status: int = 200) -> Fault:
        """Build a fault that responds with ``status`` and an HTML page in place of JSON."""
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"Fault.malformed status must be an int from 200 to 599, got {status!r}")
        return cls(kind="malformed", code=status)

    @classmethod
    def from_dict(cls, spec: Any) -> Fault:
        """Build a fault from its JSON form, as the ``/_emulator/faults`` endpoint takes it.

        Forms: ``{"kind": "status", "code": 429, "retry_after": "1", "body": ...}``,
        ``{"kind": "timeout", "seconds": 2}``, ``{"kind": "drop"}`` and
        ``{"kind": "malformed", "status": 502}``. Raises ValueError on any other form.
        """
        if not isinstance(spec, dict):
            raise ValueError(f"a fault must be a JSON object, got {spec!r}")
        kind = spec.get("kind")
        allowed = {
            "status": {"kind", "code", "retry_after", "body"},
            "timeout": {"kind", "seconds"},
            "drop": {"kind"},
            "malformed": {"kind", "status"},
        }
        if kind not in allowed:
            raise ValueError(f"fault kind must be one of {sorted(allowed)}, got {kind!r}")
        unknown = set(spec) - allowed[kind]
        if unknown:
            raise ValueError(f"unknown keys for a {kind} fault: {sorted(unknown)}")

        if kind == "status":
            if "code" not in spec:
                raise ValueError('missing "code" in a status fault')
            return cls.status(spec["code"], retry_after=spec.get("retry_after"), body=spec.get("body"))
        if kind == "timeout":
            if "seconds" not in spec:
                raise ValueError('missing "seconds" in a timeout fault')
            return cls.timeout(spec["seconds"])
        if kind == "drop":
            return cls.drop()
        return cls.malformed(spec.get("status", 200))

    @property
    def name(self) -> str:
        """Short label used in the request log: ``status_429``, ``timeout``, ``drop`` or ``malformed``."""
        if self.kind == "status":
            return f"status_{self.code}"
        return self.kind


def _format_retry_after(value: int | str | dt.datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return email.utils.format_datetime(value.astimezone(dt.timezone.utc), usegmt=True)
    if isinstance(value, bool):
        raise ValueError(f"retry_after must be whole seconds, an HTTP date or a datetime, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"retry_after seconds must not be negative, got {value}")
        return str(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"retry_after must be whole seconds, an HTTP date or a datetime, got {value!r}")


def _body_text(body: str | bytes | dict[str, Any] | list[Any] | None) -> str | None:
    if body is None or isinstance(body, str):
        return body
    if isinstance(body, bytes):
        return body.decode("utf-8")
    if isinstance(body, (dict, list)):
        return json.dumps(body)
    raise ValueError(f"a fault body must be a str, bytes, dict or list, got {type(body).__name__}")


# --------------------------------------------------------------------------- validation


def validate_contact(body: dict[str, Any]) -> list[dict[str, str]]:
    """Check a decoded upsert body and return one ``{"field", "message"}`` per problem.

    An empty list means the body is valid. Field names in errors use the request's
    spelling, with ``[i]`` for array items and ``.key`` for object members.
    """
    errors: list[dict[str, str]] = []

    def fail(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    for key in body:
        if key not in KNOWN_FIELDS:
            hint = " Use email_addresses." if key == "email_address" else ""
            fail(key, f"{key} is not a known field.{hint}")

    for key in ("external_reference_id", "source_type"):
        if key not in body:
            fail(key, f"{key} is required.")
        elif not _is_non_empty_string(body[key]):
            fail(key, f"{key} must be a non-empty string.")

    for key in NAME_FIELDS:
        if key in body and not isinstance(body[key], str):
            fail(key, f"{key} must be a string.")

    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list):
            fail("tags", "tags must be an array of strings.")
        else:
            for index, tag in enumerate(tags):
                if not _is_non_empty_string(tag):
                    fail(f"tags[{index}]", f"tags[{index}] must be a non-empty string.")

    if "custom_properties" in body:
        properties = body["custom_properties"]
        if not isinstance(properties, dict):
            fail("custom_properties", "custom_properties must be an object with string values.")
        else:
            for name, value in properties.items():
                field = f"custom_properties.{name}"
                if not name.strip():
                    fail("custom_properties", "custom_properties keys must be non-empty.")
                elif not isinstance(value, str):
                    fail(field, f"{field} must be a string.")

    for key in CONTACT_POINT_FIELDS:
        if key in body:
            _validate_contact_points(key, body[key], fail)

    return errors


def _validate_contact_points(key: str, points: Any, fail: Any) -> None:
    if not isinstance(points, list):
        fail(key, f"{key} must be an array of {{type, value}} objects.")
        return
    for index, point in enumerate(points):
        item = f"{key}[{index}]"
        if not isinstance(point, dict):
            fail(item, f"{item} must be an object with type and value.")
            continue
        for member in point:
            if member not in ("type", "value"):
                fail(f"{item}.{member}", f"{item}.{member} is not a known field.")
        for member in ("type", "value"):
            field = f"{item}.{member}"
            if member not in point:
                fail(field, f"{field} is required.")
            elif not _is_non_empty_string(point[member]):
                fail(field, f"{field} must be a non-empty string.")


def _is_non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# --------------------------------------------------------------------------- stored people


@dataclasses.dataclass(slots=True)
class _ContactPoint:
    id: str
    type: str
    value: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(slots=True)
class _Person:
    """Stored state of one person. ``_render_person`` expands it to the vendor's shape."""

    id: str
    source_type: str
    external_reference_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    channel_user_id: str
    direct_feed_id: str
    last_request: dict[str, Any]
    first_name: str | None = None
    middle_name: str | None = None
    last_name: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    custom_properties: dict[str, str] = dataclasses.field(default_factory=dict)
    phonenumbers: list[_ContactPoint] = dataclasses.field(default_factory=list)
    emails: list[_ContactPoint] = dataclasses.field(default_factory=list)


def _new_person(body: dict[str, Any], now: dt.datetime) -> _Person:
    return _Person(
        id=str(uuid.uuid4()),
        source_type=body["source_type"],
        external_reference_id=body["external_reference_id"],
        created_at=now,
        updated_at=now,
        channel_user_id=str(uuid.uuid4()),
        direct_feed_id=str(uuid.uuid4()),
        last_request=body,
    )


def _merge_into_person(person: _Person, body: dict[str, Any], now: dt.datetime) -> None:
    """Apply one validated upsert body to a stored person."""
    person.updated_at = now
    person.last_request = body

    for key in NAME_FIELDS:
        if key in body:
            setattr(person, key, body[key])

    for tag in body.get("tags", ()):
        if tag not in person.tags:
            person.tags.append(tag)

    person.custom_properties.update(body.get("custom_properties", {}))

    # The vendor returns phone values without the leading "+".
    for point in body.get("phone_numbers", ()):
        _add_contact_point(person.phonenumbers, point["type"], point["value"].removeprefix("+"), now)
    for point in body.get("email_addresses", ()):
        _add_contact_point(person.emails, point["type"], point["value"], now)


def _add_contact_point(points: list[_ContactPoint], kind: str, value: str, now: dt.datetime) -> None:
    for point in points:
        if point.type == kind and point.value == value:
            point.updated_at = now
            return
    points.append(_ContactPoint(id=str(uuid.uuid4()), type=kind, value=value, created_at=now, updated_at=now))


def _person_timestamp(moment: dt.datetime) -> str:
    """Format a person timestamp the way the vendor does: UTC, milliseconds and ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _nested_timestamp(moment: dt.datetime) -> str:
    """Format a phone, email or channel user timestamp: UTC and milliseconds without ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _render_person(person: _Person) -> dict[str, Any]:
    """Build the person as the API returns it in ``data``, as a new object graph."""
    phonenumbers = [
        {
            "id": point.id,
            "person": person.id,
            "type": point.type,
            "value": point.value,
            "created_at": _nested_timestamp(point.created_at),
            "updated_at": _nested_timestamp(point.updated_at),
            "comment": None,
            "deleted": False,
            "active": True,
            "channel_user": person.channel_user_id,
            "is_proxy": False,
            "proxy_vendor": "",
            "is_portable": None,
            "portability": None,
        }
        for point in person.phonenumbers
    ]
    emails = [
        {
            "id": point.id,
            "person": person.id,
            "type": point.type,
            "value": point.value,
            "created_at": _nested_timestamp(point.created_at),
            "updated_at": _nested_timestamp(point.updated_at),
            "comment": None,
            "deleted": False,
            "active": True,
            "channel_user": person.channel_user_id,
            "proxy_vendor": "",
        }
        for point in person.emails
    ]
    return {
        "id": person.id,
        "kind": "Contact",
        "first_name": person.first_name,
        "nickname": None,
        "middle_name": person.middle_name,
        "last_name": person.last_name,
        "name": None,
        "avatar": None,
        "email": None,
        "date_of_birth": None,
        "created_at": _person_timestamp(person.created_at),
        "updated_at": _person_timestamp(person.updated_at),
        "gender": None,
        "comment": None,
        "deleted": False,
        "active": True,
        "measurements": None,
        "annotations": None,
        "custom_properties": dict(person.custom_properties),
        "tags": list(person.tags),
        "name_preference": None,
        "language_preference": None,
        "parents": [],
        "default_address": None,
        "assumed_language": None,
        "addresses": [],
        "phonenumbers": phonenumbers,
        "channel_users": [_render_channel_user(person)],
        "emails": emails,
        "direct_feed": person.direct_feed_id,
    }


def _render_channel_user(person: _Person) -> dict[str, Any]:
    """Build the channel user that links the person to its source system."""
    return {
        "id": person.channel_user_id,
        "person": person.id,
        "updated_at": _nested_timestamp(person.updated_at),
        "created_at": _nested_timestamp(person.created_at),
        "last_source_fetch_at": _nested_timestamp(person.updated_at),
        "broker": person.source_type,
        "external_person_reference_id": person.external_reference_id,
        "last_external_person_reference_id": None,
        "external_person_custom_id": None,
        "external_channel_reference_id": None,
        "source_type": person.source_type,
        "payload_name": None,
        "first_name": person.first_name,
        "middle_name": person.middle_name,
        "last_name": person.last_name,
        "email": None,
        "phone": None,
        "name": None,
        "payload": _copy_json(person.last_request),
        "source_api": person.source_type,
        "active": True,
        "deleted": False,
        "external_organization_reference_ids": None,
        "organizations": None,
        "comment": None,
        "links": None,
        "verified": False,
        "last_verified_at": None,
        "last_cached_at": None,
        "custom_properties": {},
        "channel_profile": None,
    }


def _copy_json(value: Any) -> Any:
    """Deep-copy a JSON value. A round trip through the C encoder is faster than copy.deepcopy."""
    return json.loads(json.dumps(value))


def _envelope(
    status: int,
    msg: str,
    host: str,
    errors: list[dict[str, Any]] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "msg": msg,
        "messages": [],
        "localized_messages": [],
        "errors": errors or [],
        "request": {"host": host, "id": str(uuid.uuid4())},
        "data": data,
    }


# --------------------------------------------------------------------------- HTTP handler


class _BodyError(Exception):
    """Request body that cannot be read.

    ``close`` is True when unread body bytes are left on the connection, so it must be closed.
    """

    def __init__(self, status: int, message: str, *, close: bool) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CharlesEmulator/1.0"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    # Headers and body go out in two writes, so Nagle's algorithm would hold the body back.
    disable_nagle_algorithm = True

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack_connection(self.connection)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    # ----------------------------------------------------------------- request flow

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(ADMIN_PREFIX):
            self._handle_admin(path)
        else:
            self._handle_api(path)

    def _handle_api(self, path: str) -> None:
        emulator = self.server.emulator
        arrived_at = time.monotonic()
        try:
            raw_body: bytes | None = self._read_body()
            body_error: _BodyError | None = None
        except _BodyError as error:
            raw_body, body_error = None, error
            self.close_connection = self.close_connection or error.close
        parsed, parse_error = _parse_json(raw_body)

        fault, latency_s = emulator._begin_request()
        entry: dict[str, Any] = {
            "method": self.command,
            "path": self.path,
            "status": None,
            "external_reference_id": _reference_of(parsed),
            "fault": fault.name if fault else None,
            "at": arrived_at,
        }
        # The entry is logged before the response goes out, so a client that has
        # its response already finds the request in CharlesEmulator.requests.
        try:
            if latency_s > 0 and emulator._wait(latency_s):
                self.close_connection = True  # the emulator is stopping
                return
            if fault is not None and fault.kind == "timeout" and emulator._wait(fault.seconds):
                self.close_connection = True
                return
            if fault is not None and fault.kind != "timeout":
                response = self._fault_response(fault)
            else:
                status, payload = self._answer_contacts(path, body_error, parsed, parse_error)
                response = _json_response(status, payload, {"Allow": "PUT"} if status == 405 else None)
            if response is None:
                self.close_connection = True  # a drop fault: close without a response
                return
            entry["status"] = response.status
        finally:
            emulator._record_request(entry)
        self._send(response)

    def _answer_contacts(
        self,
        path: str,
        body_error: _BodyError | None,
        parsed: Any,
        parse_error: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Run the checks of ``PUT /api/v1beta/contacts`` in order and return the status and body."""
        emulator = self.server.emulator
        host = self.headers.get("Host", "")

        def error(status: int, msg: str, field: str | None = None, errors: list[dict[str, Any]] | None = None):
            listed = errors if errors is not None else [{"field": field, "message": msg}]
            return status, _envelope(status, msg, host, errors=listed)

        if path != CONTACTS_PATH:
            return error(404, f"No route matches {self.command} {path}. The contact API is PUT {CONTACTS_PATH}.")
        if self.command != "PUT":
            return error(405, f"Method {self.command} is not allowed on {CONTACTS_PATH}. Use PUT.")

        presented_key = self.headers.get("x-api-key")
        if not presented_key:
            return error(401, "Missing API key. Send it in the x-api-key header.", "x-api-key")
        if not hmac.compare_digest(presented_key.encode("utf-8"), emulator._api_key.encode("utf-8")):
            return error(401, "Invalid API key.", "x-api-key")

        media_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            received_type = media_type or "none"
            return error(415, f"Content-Type must be application/json, got {received_type}.", "content-type")

        if body_error is not None:
            return error(body_error.status, body_error.message)
        if parse_error is not None:
            return error(400, parse_error)
        if not isinstance(parsed, dict):
            return error(400, f"Request body must be a JSON object, got a JSON {_json_type(parsed)}.")

        problems = validate_contact(parsed)
        if problems:
            more = f" ({len(problems) - 1} more listed in errors)" if len(problems) > 1 else ""
            return error(422, f"Invalid contact: {problems[0]['message']}{more}", errors=problems)

        rejection = emulator._rejection_for(parsed["external_reference_id"])
        if rejection is not None:
            status, message = rejection
            return error(status, message, "external_reference_id")

        person = emulator._upsert(parsed)
        return 200, _envelope(200, "Upserted contact successfully.", host, data=person)

    def _handle_admin(self, path: str) -> None:
        try:
            raw_body = self._read_body()
        except _BodyError as error:
            self.close_connection = self.close_connection or error.close
            self._send(_json_response(error.status, {"error": error.message}))
            return
        status, payload = self.server.emulator._admin(self.command, path, raw_body)
        self._send(_json_response(status, payload))

    # ----------------------------------------------------------------- I/O

    def _read_body(self) -> bytes:
        """Read the request body, by Content-Length or chunked transfer coding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()

        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BodyError(400, f"Invalid Content-Length header: {length_header!r}.", close=True) from None
        if length < 0:
            raise _BodyError(400, f"Invalid Content-Length header: {length_header!r}.", close=True)
        if length > MAX_BODY_BYTES:
            message = f"Request body of {length} bytes exceeds the {MAX_BODY_BYTES} byte limit."
            raise _BodyError(413, message, close=True)
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "Invalid chunk size in a chunked request body.", close=True) from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, f"Request body exceeds the {MAX_BODY_BYTES} byte limit.", close=True)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF after each chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields are ignored
        return b"".join(chunks)

    def _fault_response(self, fault: Fault) -> _Response | None:
        """Build the response of an injected fault, or return None when the fault drops the connection."""
        if fault.kind == "drop":
            return None

        if fault.kind == "malformed":
            code = fault.code or 200
            phrase = http.HTTPStatus(code).phrase
            page = HTML_ERROR_PAGE.format(code=code, phrase=phrase).encode("utf-8")
            return _Response(code, page, "text/html; charset=utf-8", {})

        code = fault.code or 500
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.body is not None:
            content_type = "application/json" if _is_json(fault.body) else "text/plain; charset=utf-8"
            return _Response(code, fault.body.encode("utf-8"), content_type, headers)

        phrase = http.HTTPStatus(code).phrase
        host = self.headers.get("Host", "")
        payload = _envelope(code, f"{phrase}.", host, errors=[{"field": None, "message": f"{phrase}."}])
        return _json_response(code, payload, headers)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode("utf-8"), "application/json; charset=utf-8", headers or {})


def _parse_json(raw: bytes | None) -> tuple[Any, str | None]:
    """Decode a JSON body and return ``(value, None)``, or ``(None, error message)``."""
    if raw is None:
        return None, None
    if not raw.strip():
        return None, "Request body is empty. Send the contact as a JSON object."
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"Request body is not valid UTF-8: {error}."
    try:
        return json.loads(text, parse_constant=_reject_json_constant), None
    except ValueError as error:
        return None, f"Request body is not valid JSON: {error}."


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _reference_of(parsed: Any) -> str | None:
    if isinstance(parsed, dict) and isinstance(parsed.get("external_reference_id"), str):
        return parsed["external_reference_id"]
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], emulator: CharlesEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn, which can wait on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def track_connection(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack_connection(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open client connection, so that keep-alive clients see the server go away."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client closed it already

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)) or (
            isinstance(error, OSError) and self.emulator._stopping.is_set()
        ):
            logger.debug("connection from %s ended: %r", client_address, error)
            return
        logger.exception("unhandled error while serving %s", client_address)


# --------------------------------------------------------------------------- emulator


class CharlesEmulator:
    """Charles contact API emulator running on a background thread.

    ``start()`` binds the socket and returns self. The emulator is also a context
    manager. All methods are thread-safe. One lock guards the store, the logs and the
    fault schedule, and latency and timeout sleeps happen outside it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        latency_s: float = 0.0,
        *,
        store: bool = True,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self._host = host
        self._port = port
        self._api_key = api_key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

        self._store = store
        self._people: dict[tuple[str, str], _Person] = {}
        self._upserts: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._upsert_count = 0
        self._status_counts: collections.Counter[str] = collections.Counter()
        self._fault_counts: collections.Counter[str] = collections.Counter()
        self._in_flight = 0
        self._rejections: dict[str, tuple[int, str]] = {}
        self._latency_s = 0.0
        self._script: collections.deque[Fault] = collections.deque()
        self._random_faults: list[Fault] = []
        self._fault_rate = 0.0
        self._rng = random.Random()
        self.set_latency(latency_s)

    def __repr__(self) -> str:
        # The API key is left out on purpose.
        return f"CharlesEmulator(url={self._url!r}, running={self._server is not None})"

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> CharlesEmulator:
        """Bind the socket, start serving on a background thread and return self."""
        if self._server is not None:
            raise RuntimeError(f"the Charles emulator is already running at {self._url}")
        self._stopping.clear()
        server = _Server((self._host, self._port), self)
        host, port = server.server_address[:2]
        shown_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown_host}:{port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"charles-emulator-{port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("Charles emulator listening on %s", self._url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and every open connection.

        Handlers that sleep for latency or a timeout fault wake up and close their
        connection without sending a response. Calling stop() twice is harmless.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None
        logger.info("Charles emulator at %s stopped", self._url)

    def __enter__(self) -> CharlesEmulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Tenant base URL, ``http://host:port``. The API is at ``url + "/api/v1beta/contacts"``."""
        if self._url is None:
            raise RuntimeError("the Charles emulator has not been started; call start() first")
        return self._url

    # ----------------------------------------------------------------- inspection

    def contacts(self) -> list[dict[str, Any]]:
        """Return every stored person as the API returns it in ``data``, in creation order."""
        with self._lock:
            return [_render_person(person) for person in self._people.values()]

    def contact(self, external_reference_id: str, source_type: str = DEFAULT_SOURCE_TYPE) -> dict[str, Any] | None:
        """Return the stored person for this key as the API returns it, or None."""
        with self._lock:
            person = self._people.get((source_type, external_reference_id))
            return _render_person(person) if person is not None else None

    @property
    def upserts(self) -> list[dict[str, Any]]:
        """Copy of every accepted request body, in the order the emulator applied them."""
        with self._lock:
            return _copy_json(self._upserts)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copy of the API request log, one entry per request, in the order the responses were ready.

        Each entry has ``method``, ``path``, ``status`` (None when the connection was
        dropped or closed by stop()), ``external_reference_id`` (None unless the body
        is a JSON object with a string value), ``fault`` (``Fault.name`` or None) and
        ``at`` (``time.monotonic()`` when the request arrived). Admin requests are
        not logged.
        """
        with self._lock:
            return [dict(entry) for entry in self._requests]

    @property
    def request_count(self) -> int:
        """Number of API requests finished since the start or the last reset(), stored or not."""
        with self._lock:
            return sum(self._status_counts.values())

    @property
    def upsert_count(self) -> int:
        """Number of upserts accepted since the start or the last reset(), stored or not."""
        with self._lock:
            return self._upsert_count

    @property
    def in_flight(self) -> int:
        """Number of API requests that have arrived and are not finished yet."""
        with self._lock:
            return self._in_flight

    # ----------------------------------------------------------------- control

    def set_latency(self, seconds: float) -> None:
        """Set the delay added before every API response, in seconds."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ValueError(f"latency must be a number of seconds >= 0, got {seconds!r}")
        with self._lock:
            self._latency_s = float(seconds)

    def set_faults(self, faults: list[Fault] | None, *, rate: float = 1.0, seed: int | None = None) -> None:
        """Replace the fault schedule. ``None`` or an empty list clears it.

        With ``rate == 1.0`` the faults form a script: the next ``len(faults)`` API
        requests get them in order, and later requests are normal. With ``rate < 1.0``
        each request fails with probability ``rate``, and the fault is drawn uniformly
        from ``faults`` by ``random.Random(seed)``, until the schedule is replaced.
        """
        faults = list(faults or [])
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be a number from 0 to 1, got {rate!r}")
        for fault in faults:
            if not isinstance(fault, Fault):
                raise ValueError(f"faults must be Fault instances, got {fault!r}")
        if 0.0 < rate < 1.0 and not faults:
            raise ValueError("a fault rate above 0 needs at least one fault to draw from")

        with self._lock:
            if rate == 1.0:
                self._script = collections.deque(faults)
                self._random_faults = []
                self._fault_rate = 0.0
            else:
                self._script = collections.deque()
                self._random_faults = faults
                self._fault_rate = float(rate)
            self._rng = random.Random(seed)

    def reject(self, external_reference_id: str, status: int = 422, message: str = "Contact rejected.") -> None:
        """Respond to every valid upsert for this key with ``status`` and an error envelope until accept()."""
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"reject status must be an int from 400 to 599, got {status!r}")
        with self._lock:
            self._rejections[external_reference_id] = (status, message)

    def accept(self, external_reference_id: str) -> None:
        """Stop rejecting upserts for this key."""
        with self._lock:
            self._rejections.pop(external_reference_id, None)

    def reset(self) -> None:
        """Forget contacts, upserts, the request log, faults, rejections and latency (back to 0)."""
        with self._lock:
            self._people.clear()
            self._upserts.clear()
            self._requests.clear()
            self._upsert_count = 0
            self._status_counts.clear()
            self._fault_counts.clear()
            self._rejections.clear()
            self._latency_s = 0.0
            self._script = collections.deque()
            self._random_faults = []
            self._fault_rate = 0.0
            self._rng = random.Random()

    # ----------------------------------------------------------------- used by the handler

    def _begin_request(self) -> tuple[Fault | None, float]:
        """Pick the fault for a new API request and return it with the current latency."""
        with self._lock:
            self._in_flight += 1
            fault: Fault | None = None
            if self._script:
                fault = self._script.popleft()
            elif self._fault_rate > 0.0 and self._rng.random() < self._fault_rate:
                fault = self._rng.choice(self._random_faults)
            return fault, self._latency_s

    def _wait(self, seconds: float) -> bool:
        """Sleep in the calling handler thread. Return True if stop() interrupted the sleep."""
        return self._stopping.wait(seconds)

    def _record_request(self, entry: dict[str, Any]) -> None:
        """Log a finished API request. Every ``_begin_request`` call must be paired with one."""
        with self._lock:
            self._in_flight -= 1
            self._status_counts["none" if entry["status"] is None else str(entry["status"])] += 1
            if entry["fault"] is not None:
                self._fault_counts[entry["fault"]] += 1
            if self._store:
                self._requests.append(entry)

    def _rejection_for(self, external_reference_id: str) -> tuple[int, str] | None:
        with self._lock:
            return self._rejections.get(external_reference_id)

    def _upsert(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create or update the person for a validated body and return it as the API does."""
        now = dt.datetime.now(dt.timezone.utc)
        key = (body["source_type"], body["external_reference_id"])
        if not self._store:
            with self._lock:
                self._upsert_count += 1
            person = _new_person(body, now)
            _merge_into_person(person, body, now)
            return _render_person(person)
        with self._lock:
            self._upsert_count += 1
            person = self._people.get(key)
            if person is None:
                person = _new_person(body, now)
                self._people[key] = person
            _merge_into_person(person, body, now)
            self._upserts.append(body)
            return _render_person(person)

    def _admin(self, method: str, path: str, raw_body: bytes) -> tuple[int, dict[str, Any]]:
        """Serve one ``/_emulator/`` request and return the status and JSON body."""
        routes = {
            "/_emulator/contacts": ("GET", self._admin_contacts),
            "/_emulator/requests": ("GET", self._admin_requests),
            "/_emulator/latency": ("POST", self._admin_latency),
            "/_emulator/faults": ("POST", self._admin_faults),
            "/_emulator/reject": ("POST", self._admin_reject),
            "/_emulator/accept": ("POST", self._admin_accept),
            "/_emulator/reset": ("POST", self._admin_reset),
        }
        route = routes.get(path)
        if route is None:
            return 404, {"error": f"unknown admin path {path}; known paths: {sorted(routes)}"}
        expected_method, handler = route
        if method != expected_method:
            return 405, {"error": f"{path} takes {expected_method}, got {method}"}

        body: Any = {}
        if raw_body.strip():
            try:
                body = json.loads(raw_body)
            except ValueError as error:
                return 400, {"error": f"request body is not valid JSON: {error}"}
        if not isinstance(body, dict):
            return 400, {"error": "request body must be a JSON object"}
        try:
            return 200, handler(body)
        except (TypeError, ValueError) as error:
            return 400, {"error": str(error)}

    def _admin_contacts(self, _body: dict[str, Any]) -> dict[str, Any]:
        contacts = self.contacts()
        return {"count": len(contacts), "contacts": contacts}

    def _admin_requests(self, _body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return {
                "count": sum(self._status_counts.values()),
                "by_status": dict(self._status_counts),
                "by_fault": dict(self._fault_counts),
                "in_flight": self._in_flight,
                "upserts": self._upsert_count,
            }

    def _admin_latency(self, body: dict[str, Any]) -> dict[str, Any]:
        if "seconds" not in body:
            raise ValueError('missing "seconds": send {"seconds": <number>}')
        self.set_latency(body["seconds"])
        return {"seconds": float(body["seconds"])}

    def _admin_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        specs = body.get("faults") or []
        if not isinstance(specs, list):
            raise ValueError("faults must be an array of fault objects")
        faults = [Fault.from_dict(spec) for spec in specs]
        rate = body.get("rate", 1.0)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or null, got {seed!r}")
        self.set_faults(faults, rate=rate, seed=seed)
        return {"faults": [fault.name for fault in faults], "rate": rate, "seed": seed}

    def _admin_reject(self, body: dict[str, Any]) -> dict[str, Any]:
        reference = body.get("external_reference_id")
        if not _is_non_empty_string(reference):
            raise ValueError("external_reference_id must be a non-empty string")
        status = body.get("status", 422)
        message = body.get("message", "Contact rejected.")
        if not isinstance(message, str):
            raise ValueError("message must be a string")
        self.reject(reference, status=status, message=message)
        return {"external_reference_id": reference, "status": status}

    def _admin_accept(self, body: dict[str, Any]) -> dict[str, Any]:
        reference = body.get("external_reference_id")
        if not _is_non_empty_string(reference):
            raise ValueError("external_reference_id must be a non-empty string")
        self.accept(reference)
        return {"external_reference_id": reference}

    def _admin_reset(self, _body: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        return {"reset": True}


# --------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m connector.emulators.charles",
        description="Run the local Charles contact API emulator until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one (default: 8080)")
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help=f"value that requests must send in x-api-key (default: {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay added before every API response, in milliseconds (default: 0)",
    )
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="keep only request and upsert counts, not people, bodies or the request log (for large benchmarks)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log lines written to stderr (default: INFO)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    if not args.latency_ms >= 0:
        parser.error(f"--latency-ms must be >= 0, got {args.latency_ms}")
    if not args.api_key:
        parser.error("--api-key must not be empty")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the emulator from the command line and return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    received_signals: list[int] = []
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        received_signals.append(signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    emulator = CharlesEmulator(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        latency_s=args.latency_ms / 1000.0,
        store=not args.no_store,
    )
    try:
        emulator.start()
    except OSError as error:
        logger.error(
            "failed to listen on %s port %d: %s. Pick another --port, or 0 for a free one.",
            args.host,
            args.port,
            error,
        )
        return 1
    try:
        print(json.dumps({"event": "charles_emulator.ready", "url": emulator.url}), flush=True)
        # A timed wait lets the main thread run the signal handler promptly.
        while not stop_requested.wait(0.5):
            pass
        logger.info("received %s, stopping", signal.Signals(received_signals[0]).name)
    finally:
        emulator.stop()
    return 0

if __name__ == "__main__":
    sys.exit(main())
