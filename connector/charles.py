"""Charles sink: contact upserts over one pooled httpx client, several in flight.

The only module that imports httpx and the only one that implements the Charles contract
(``PUT /api/v1beta/contacts``, header ``x-api-key``, the response envelope). The endpoint
is in closed beta, so everything that may move is kept here.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any

import httpx
import stamina

from connector import __version__
from connector.errors import ConfigurationError, LeadershipLost, RecordError, TransientError
from connector.logs import get_logger
from connector.settings import Settings

log = get_logger("connector.charles")

CONTACTS_PATH = "/api/v1beta/contacts"


class Action(Enum):
    ACKNOWLEDGED = "acknowledged"
    RETRY = "retry"
    REJECT_RECORD = "reject_record"
    STOP = "stop"


# The action for each HTTP status, for the record and the cycle. Statuses not listed fall back
# by class: 2xx acknowledged, 5xx retried, anything else rejects the record.
OUTCOMES: dict[int, Action] = {
    200: Action.ACKNOWLEDGED,
    201: Action.ACKNOWLEDGED,
    400: Action.REJECT_RECORD,
    401: Action.STOP,
    403: Action.STOP,
    404: Action.REJECT_RECORD,
    408: Action.RETRY,
    409: Action.REJECT_RECORD,
    422: Action.REJECT_RECORD,
    429: Action.RETRY,
}


def action_for(status: int) -> Action:
    if status in OUTCOMES:
        return OUTCOMES[status]
    if 200 <= status < 300:
        return Action.ACKNOWLEDGED
    if status >= 500:
        return Action.RETRY
    return Action.REJECT_RECORD


@dataclass(frozen=True)
class PushResult:
    """Charles acknowledged the upsert."""

    record_id: str
    status: int
    person_id: str | None
    request_id: str | None
    attempts: int


class _RetryableStatus(TransientError):
    def __init__(self, status: int, retry_after_s: float | None) -> None:
        super().__init__(f"Charles answered HTTP {status}")
        self.status = status
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header given in seconds or as an HTTP date."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (moment - current).total_seconds())


def _backoff(exc: Exception) -> bool | float:
    """stamina hook: retry transport errors and retryable statuses, honouring Retry-After."""
    if isinstance(exc, _RetryableStatus):
        return exc.retry_after_s if exc.retry_after_s is not None else True
    return isinstance(exc, httpx.TransportError)


def _error_text(response: httpx.Response) -> str:
    """Charles' own error text from the envelope, without echoing the request."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} with a body that is not JSON"
    if isinstance(body, dict):
        errors = body.get("errors") or []
        parts = [str(error.get("message", error)) if isinstance(error, dict) else str(error) for error in errors]
        message = "; ".join(parts) or str(body.get("msg") or "")
        return f"HTTP {response.status_code}: {message}"[:500]
    return f"HTTP {response.status_code}"


class RateLimiter:
    """A thread-safe ceiling on requests per second, spacing requests evenly.

    Each caller reserves the next free slot and sleeps until it; ``rate`` None means no
    ceiling. Retries count too, because Charles has to process them like any request.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 0.0 if not rate else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


def queued_upserts(in_flight: int) -> int:
    """Return how many upserts may wait for a free worker beyond the ``in_flight`` open ones.

    The cycle's thread maps and decides records, and writes checkpoints, between its
    submits. Queued upserts replace finished requests meanwhile, so the open requests
    stay at ``in_flight`` through those pauses.

    NOTE: when Charles is down, the cycle waits for the queued upserts' retries as well
    before it stops, so it gives up after up to twice the retry time of one round.
    """
    return in_flight


class CharlesSink:
    """Pushes contact upserts with at most ``max_in_flight`` requests open at once."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings
        in_flight = settings.charles_max_in_flight
        verify: Any = str(settings.charles_ca_file) if settings.charles_ca_file else True
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        self._client = httpx.Client(
            base_url=settings.charles_base_url,
            headers={
                "x-api-key": settings.charles_api_key.get_secret_value(),
                "User-Agent": f"sfcharles/{__version__}",
            },
            timeout=httpx.Timeout(settings.charles_timeout_s, connect=min(10.0, settings.charles_timeout_s)),
            # The transport's own retry covers only failed connection attempts; everything
            # else goes through the retry loop in upsert().
            transport=transport or httpx.HTTPTransport(retries=1, verify=verify, limits=limits),
        )
        # A slot is an upsert submitted and not finished: open, or queued for a free worker.
        self._slots = threading.BoundedSemaphore(in_flight + queued_upserts(in_flight))
        self._rate = RateLimiter(settings.charles_max_rps)
        self._rejected_key: ConfigurationError | None = None
        self._executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="charles-push")
        self.requests_sent = 0
        self._count_lock = threading.Lock()
        # Called before every request; raises LeadershipLost when this process may no
        # longer push for its pipeline (replicas on PostgreSQL, see connector.leader).
        self.guard: Callable[[], None] | None = None
        self._aborted = False

    def begin_cycle(self) -> None:
        """Forget an authentication failure of an earlier cycle, so a new cycle tries again."""
        self._rejected_key = None

    def submit(self, record_id: str, payload: dict[str, Any]) -> Future[PushResult]:
        """Queue one upsert; blocks while ``max_in_flight`` upserts are open and as many more are queued.

        After Charles rejected the API key, raises that error instead of sending more.
        """
        if self._rejected_key is not None:
            raise self._rejected_key
        # Waits for a free slot, but not past an abort: a cut upsert may hold its slot until it times out.
        while not self._slots.acquire(timeout=0.1):
            if self._aborted:
                raise LeadershipLost("pushing was aborted: this process no longer leads the pipeline")
        if self._aborted:
            self._slots.release()
            raise LeadershipLost("pushing was aborted: this process no longer leads the pipeline")
        context = contextvars.copy_context()  # so worker log lines carry the cycle's bound context
        try:
            future = self._executor.submit(context.run, self.upsert, record_id, payload)
        except RuntimeError:
            self._slots.release()
            if self._aborted:  # abort() shut the executor down after the check above
                raise LeadershipLost("pushing was aborted: this process no longer leads the pipeline") from None
            raise
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def upsert(self, record_id: str, payload: dict[str, Any]) -> PushResult:
        """Send one upsert, retrying transient failures; raise RecordError or ConfigurationError."""
        if self._rejected_key is not None:
            raise self._rejected_key  # no request storm once the key is known to be wrong
        attempts = 0
        try:
            for attempt in stamina.retry_context(
                on=_backoff,
                attempts=self._settings.charles_max_attempts,
                timeout=timedelta(seconds=self._settings.charles_retry_total_s),
                wait_initial=0.5,
                wait_max=30.0,
            ):
                with attempt:
                    attempts = attempt.num
                    return self._send_once(record_id, payload, attempts)
        except _RetryableStatus as exc:
            raise RecordError(
                f"Charles still returned HTTP {exc.status} for record {record_id} after {attempts} attempts",
                record_id=record_id, reason=f"http_{exc.status}", retryable=True,
            ) from None
        except httpx.TransportError as exc:
            raise RecordError(
                f"Charles upsert for record {record_id} failed after {attempts} attempts: {exc.__class__.__name__}",
                record_id=record_id, reason="transport_error", retryable=True,
            ) from None
        raise AssertionError("unreachable: stamina re-raises the last error")

    def _send_once(self, record_id: str, payload: dict[str, Any], attempt: int) -> PushResult:
        self._rate.acquire()
        self._check_guard(record_id)
        with self._count_lock:
            self.requests_sent += 1
        try:
            response = self._client.put(CONTACTS_PATH, json=payload)
        except RuntimeError:
            if self._aborted:  # the client was closed under this request by abort()
                raise RecordError(f"upsert of record {record_id} cut: pushing was aborted", record_id=record_id, reason="aborted", retryable=True) from None
            raise
        action = action_for(response.status_code)
        if action is Action.RETRY:
            log.debug("charles.upsert_retrying", record_id=record_id, status=response.status_code, attempt=attempt)
            raise _RetryableStatus(response.status_code, parse_retry_after(response.headers.get("Retry-After")))
        if action is Action.STOP:
            self._rejected_key = ConfigurationError(
                f"Charles rejected the API key (HTTP {response.status_code}) at {self._settings.charles_base_url}"
                f" for pipeline {self._settings.pipeline}; check that pipeline's charles_api_key and charles_base_url"
                " (SFCHARLES_CHARLES_API_KEY and SFCHARLES_CHARLES_BASE_URL for a single pipeline)"
            )
            raise self._rejected_key
        if action is Action.REJECT_RECORD:
            raise RecordError(
                f"Charles rejected record {record_id}: {_error_text(response)}",
                record_id=record_id, reason=f"http_{response.status_code}",
            )
        try:
            body = response.json()
        except ValueError:
            raise RecordError(
                f"Charles returned HTTP {response.status_code} for record {record_id} with a body that is not JSON",
                record_id=record_id, reason="invalid_response",
            ) from None
        data = body.get("data") if isinstance(body, dict) else None
        request = body.get("request") if isinstance(body, dict) else None
        result = PushResult(
            record_id=record_id,
            status=response.status_code,
            person_id=data.get("id") if isinstance(data, dict) else None,
            request_id=request.get("id") if isinstance(request, dict) else None,
            attempts=attempt,
        )
        log.debug("charles.upserted", record_id=record_id, person_id=result.person_id, request_id=result.request_id, attempts=attempt)
        return result

    def _check_guard(self, record_id: str) -> None:
        if self._aborted:
            raise RecordError(f"upsert of record {record_id} not sent: pushing was aborted", record_id=record_id, reason="aborted", retryable=True)
        if self.guard is None:
            return
        try:
            self.guard()
        except LeadershipLost as exc:
            raise RecordError(
                f"upsert of record {record_id} not sent: {exc}", record_id=record_id, reason="leadership_lost", retryable=True
            ) from None

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Send nothing more and cut the requests in flight; the sink cannot be used again.

        Records whose upserts are cut are not checkpointed, so the pipeline's next run sends them.
        NOTE: a request already on the wire is not recalled, and Charles may still apply it.
        """
        self._aborted = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def close(self, *, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
        self._client.close()
