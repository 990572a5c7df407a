"""Prometheus metrics and the health endpoints of the daemon, served over HTTP.

The daemon serves them only when ``SFCHARLES_METRICS_PORT`` is set:

- ``/metrics``: Prometheus text format from prometheus-client, on a registry of our own.
- ``/healthz``: 200 while the process and its scheduler loop are alive. It never depends
  on Salesforce or Charles, so an outage of either does not make an orchestrator restart
  the connector.
- ``/readyz``: 200 when, for every pipeline this process runs, the last successful cycle
  ended less than three poll intervals ago, or the pipeline is still in its first poll
  interval; also 200 for a replica that runs no pipeline (a standby). 503 otherwise.

prometheus-client's own ``start_http_server`` serves metrics on every path, so it cannot
serve the health paths. A small WSGI server from the standard library serves all three. No metric is labelled by record id: the only labels are the pipeline, from the
configuration, and the outcome of a record and the status of a cycle, both from small
fixed sets.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

from connector import __version__
from connector.errors import ConfigurationError
from connector.logs import get_logger
from connector.outcomes import CycleReport
from connector.settings import Settings

log = get_logger("connector.metrics")

RECORD_OUTCOMES = ("pushed", "unchanged", "reread", "skipped", "set_aside", "failed")
CYCLE_STATUSES = ("succeeded", "partial", "interrupted", "failed")

# /readyz fails once the last successful cycle is this many poll intervals old.
READY_MAX_INTERVALS = 3
# /healthz fails when the daemon's main loop, which beats about once a second, has not
# beaten for this long.
HEARTBEAT_TIMEOUT_S = 60.0
# From half a second, for a cycle with nothing to send, to two hours, for the first sync of a large org.
CYCLE_DURATION_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def record_counts(report: CycleReport) -> dict[str, int]:
    """Count the records of a cycle by outcome, each record under exactly one outcome.

    ``failed`` is the records whose push failed after its retries and that hold the
    watermark. It leaves out the set-aside records, which ``CycleReport.failed`` includes.
    """
    return {
        "pushed": report.pushed,
        "unchanged": report.unchanged,
        "reread": report.reread,
        "skipped": report.skipped,
        "set_aside": report.set_aside,
        "failed": sum(report.failed_by_reason.values()),
    }


def cycle_succeeded(report: CycleReport) -> bool:
    """Return whether a cycle handled every record that it read.

    A ``partial`` cycle counts when its only failures are records set aside in the
    dead-letter table, because the watermark then reached the end of the window. A
    partial cycle with records that hold the watermark does not count: when Charles is
    down, every push fails that way and nothing moves.
    """
    if report.status == "succeeded":
        return True
    return report.status == "partial" and not report.failed_by_reason


class Metrics:
    """The daemon's Prometheus metrics, and the state behind ``/healthz`` and ``/readyz``.

    ``clock`` returns Unix time in seconds. It is read for the start time, for each
    successful cycle and for each heartbeat. Every method is safe to call from any thread.
    """

    def __init__(
        self, poll_interval_s: float, *, pipelines: Iterable[str] = ("contacts",), clock: Callable[[], float] = time.time
    ) -> None:
        self.poll_interval_s = poll_interval_s
        self.pipelines = tuple(pipelines)
        self._clock = clock
        self._lock = threading.Lock()
        self.started_at = clock()
        self._last_success: dict[str, float] = {}
        self._last_heartbeat: float | None = None
        self._stopping = False
        # Pipeline -> since when this process runs it; every pipeline until set_leading names others.
        self._leading: dict[str, float] = dict.fromkeys(self.pipelines, self.started_at)

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

        self.records = Counter(
            "sfcharles_records", "Records handled by sync cycles, by pipeline and outcome.", ["pipeline", "outcome"], registry=self.registry
        )
        self.cycles = Counter("sfcharles_cycles", "Sync cycles finished, by pipeline and status.", ["pipeline", "status"], registry=self.registry)
        self.cycle_duration = Histogram(
            "sfcharles_cycle_duration_seconds",
            "Duration of sync cycles, in seconds.",
            ["pipeline"],
            buckets=CYCLE_DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.watermark_lag = Gauge(
            "sfcharles_watermark_lag_seconds",
            "How far the watermark trailed Salesforce's clock at the end of the last cycle that read it; NaN before that.",
            ["pipeline"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "sfcharles_last_success_timestamp_seconds",
            "Unix time at which the last successful cycle ended; 0 before the first.",
            ["pipeline"],
            registry=self.registry,
        )
        self.api_used = Gauge(
            "sfcharles_salesforce_api_requests_used",
            "Salesforce API requests used in the org's rolling 24-hour allocation, as of the last cycle; NaN before that.",
            ["pipeline"],
            registry=self.registry,
        )
        self.api_limit = Gauge(
            "sfcharles_salesforce_api_requests_limit",
            "The org's 24-hour Salesforce API request allocation, as of the last cycle; NaN before that.",
            ["pipeline"],
            registry=self.registry,
        )
        self.poll_interval = Gauge(
            "sfcharles_poll_interval_seconds", "Seconds between the daemon's cycles (SFCHARLES_POLL_INTERVAL_S).", registry=self.registry
        )
        self.pipeline_leading = Gauge(
            "sfcharles_pipeline_leading",
            "1 while this process runs the pipeline; with replicas on PostgreSQL, while it holds the pipeline's lock.",
            ["pipeline"],
            registry=self.registry,
        )
        self.build_info = Gauge("sfcharles_build_info", "Always 1; the label carries the connector's version.", ["version"], registry=self.registry)

        # Every label value exists from the start, so rate() and increase() see the first event.
        for pipeline in self.pipelines:
            for outcome in RECORD_OUTCOMES:
                self.records.labels(pipeline=pipeline, outcome=outcome)
            for status in CYCLE_STATUSES:
                self.cycles.labels(pipeline=pipeline, status=status)
            self.cycle_duration.labels(pipeline=pipeline)
            self.last_success.labels(pipeline=pipeline).set(0)
            self.pipeline_leading.labels(pipeline=pipeline).set(1)
            for gauge in (self.watermark_lag, self.api_used, self.api_limit):
                gauge.labels(pipeline=pipeline).set(float("nan"))
        self.poll_interval.set(poll_interval_s)
        self.build_info.labels(version=__version__).set(1)

    # Observations

    def _pipeline(self, pipeline: str | None) -> str:
        return pipeline if pipeline is not None else self.pipelines[0]

    def observe_cycle(self, report: CycleReport, pipeline: str | None = None) -> None:
        """Count a finished cycle of ``pipeline`` (default: the first), its records and duration, and update the gauges."""
        name = self._pipeline(pipeline)
        self.cycles.labels(pipeline=name, status=report.status).inc()
        self.cycle_duration.labels(pipeline=name).observe(report.duration_s)
        for outcome, count in record_counts(report).items():
            if count:
                self.records.labels(pipeline=name, outcome=outcome).inc(count)
        lag_s = report.watermark_lag_s()
        if lag_s is not None:
            self.watermark_lag.labels(pipeline=name).set(lag_s)
        if report.api_used is not None:
            self.api_used.labels(pipeline=name).set(report.api_used)
        if report.api_limit is not None:
            self.api_limit.labels(pipeline=name).set(report.api_limit)
        if cycle_succeeded(report):
            now = self._clock()
            with self._lock:
                self._last_success[name] = now
            self.last_success.labels(pipeline=name).set(now)

    def observe_cycle_error(self, pipeline: str | None = None) -> None:
        """Count a cycle that raised instead of returning a report, as failed."""
        self.cycles.labels(pipeline=self._pipeline(pipeline), status="failed").inc()

    def heartbeat(self) -> None:
        """Record that the scheduler loop is alive. The daemon calls this about once a second."""
        now = self._clock()
        with self._lock:
            self._last_heartbeat = now

    def set_leading(self, pipelines: Iterable[str]) -> None:
        """Record the pipelines this process runs now. A replica that runs none is a ready standby."""
        now = self._clock()
        leading = set(pipelines)
        with self._lock:
            self._leading = {name: self._leading.get(name, now) for name in self.pipelines if name in leading}
        for name in self.pipelines:
            self.pipeline_leading.labels(pipeline=name).set(1 if name in leading else 0)

    def stopping(self) -> None:
        """Record that the daemon is shutting down, so a slow shutdown is not reported as stalled."""
        with self._lock:
            self._stopping = True

    # Health

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Return whether the process is alive, with the details that ``/healthz`` shows.

        Alive means the scheduler loop beat within HEARTBEAT_TIMEOUT_S. Before its first
        beat the daemon is still starting (checking the field map against Salesforce),
        and while it shuts down it waits for the running cycle: both count as alive.
        """
        now = self._clock()
        with self._lock:
            heartbeat, stopping = self._last_heartbeat, self._stopping
        if heartbeat is None:
            return True, {"status": "starting"}
        age_s = round(now - heartbeat, 3)
        if stopping:
            return True, {"status": "stopping", "heartbeat_age_s": age_s}
        if age_s <= HEARTBEAT_TIMEOUT_S:
            return True, {"status": "ok", "heartbeat_age_s": age_s}
        return False, {"status": "stalled", "heartbeat_age_s": age_s, "max_heartbeat_age_s": HEARTBEAT_TIMEOUT_S}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Return whether the daemon is keeping up, with the details that ``/readyz`` shows."""
        now = self._clock()
        with self._lock:
            successes, leading = dict(self._last_success), dict(self._leading)
        max_age_s = READY_MAX_INTERVALS * self.poll_interval_s
        if not leading:
            return True, {"status": "standby", "detail": "this replica runs no pipeline now; it takes one over when a replica stops"}
        states: dict[str, str] = {}
        for name, since in leading.items():
            last = successes.get(name)
            if last is not None and now - last < max_age_s:
                states[name] = "ready"
            elif now - since < self.poll_interval_s:
                states[name] = "starting"
            else:
                states[name] = "not_ready"
        # The oldest success among the pipelines run here: the one that decides readiness.
        last_success = min((successes.get(name) for name in leading), key=lambda value: -1 if value is None else value)
        details: dict[str, Any] = {
            "last_success": None if last_success is None else _iso(last_success),
            "last_success_age_s": None if last_success is None else round(now - last_success, 3),
            "max_age_s": max_age_s,
        }
        if len(self.pipelines) > 1:
            details["pipelines"] = states
        if "not_ready" in states.values():
            return False, {"status": "not_ready", **details}
        if "starting" in states.values():
            return True, {"status": "starting", **details}
        return True, {"status": "ready", **details}

    # HTTP

    def wsgi_app(self) -> WsgiApp:
        """Build the WSGI application that serves ``/metrics``, ``/healthz`` and ``/readyz``."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                return _json_response(start_response, 405, {"error": "method not allowed; use GET"}, [("Allow", "GET, HEAD")])
            if path == "/metrics":
                return metrics_app(environ, start_response)
            if path == "/healthz":
                alive, details = self.liveness()
                return _json_response(start_response, 200 if alive else 503, details)
            if path == "/readyz":
                ready, details = self.readiness()
                return _json_response(start_response, 200 if ready else 503, details)
            return _json_response(start_response, 404, {"error": f"not found: {path}; use /metrics, /healthz or /readyz"})

        return app


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _json_response(
    start_response: Callable[..., Any], status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    data = json.dumps(body).encode("utf-8")
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-store"), *(headers or [])],
    )
    return [data]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        # Probes and scrapes arrive every few seconds; one access line each would bury the sync log.
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn, a reverse DNS query that can stall
        # start-up for 0.0.0.0 in a container. The WSGI environ needs no FQDN, so skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port
        self.setup_environ()


class MetricsServer:
    """The HTTP server of ``/metrics``, ``/healthz`` and ``/readyz``, in a background thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("_Server", (_ThreadingWSGIServer,), {"address_family": family})
            self._server = make_server(host, port, metrics.wsgi_app(), server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigurationError(
                f"SFCHARLES_METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "choose a free port, fix SFCHARLES_METRICS_HOST, or unset SFCHARLES_METRICS_PORT"
            ) from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` on ``host:port``, where port 0 picks a free port.

    Raises ConfigurationError when the address cannot be bound.
    """
    server = MetricsServer(metrics, host, port)
    log.info("metrics.started", host=host, port=server.port, paths=["/metrics", "/healthz", "/readyz"])
    return server


def stop_metrics_server(server: MetricsServer | None) -> None:
    """Stop a server that start_metrics_server returned. None is accepted and ignored."""
    if server is None:
        return
    server.stop()
    log.info("metrics.stopped", port=server.port)


@contextmanager
def serve_metrics(
    settings: Settings,
    *,
    poll_interval_s: float | None = None,
    pipelines: Iterable[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[Metrics | None]:
    """Serve metrics and health while the block runs, when SFCHARLES_METRICS_PORT is set.

    Yields the Metrics to observe cycles with, or None when the port is not set.
    ``poll_interval_s`` overrides the settings' interval: the longest of several pipelines,
    which ``pipelines`` names; by default the settings' one pipeline.
    """
    if settings.metrics_port is None:
        yield None
        return
    metrics = Metrics(poll_interval_s or settings.poll_interval_s, pipelines=pipelines or (settings.pipeline,), clock=clock)
    server = start_metrics_server(metrics, settings.metrics_host, settings.metrics_port)
    try:
        yield metrics
    finally:
        stop_metrics_server(server)
