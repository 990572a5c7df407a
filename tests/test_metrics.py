"""Metrics and health endpoints: real cycles against the emulators, scraped over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.emulators.charles import Fault
from connector.errors import ConfigurationError
from connector.metrics import (
    HEARTBEAT_TIMEOUT_S,
    Metrics,
    MetricsServer,
    record_counts,
    serve_metrics,
    start_metrics_server,
    stop_metrics_server,
)
from tests.conftest import ROOT, settings_from

SHARED_PHONE = "+14155550199"


class FakeClock:
    """Unix time that moves only when a test moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text into {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scraped: dict, name: str, **labels: str) -> float:
    """A sample's value; cycle series carry the pipeline label, ``contacts`` unless given."""
    labelled = tuple(sorted({"pipeline": "contacts", **labels}.items()))
    if (name, labelled) in scraped:
        return scraped[(name, labelled)]
    return scraped[(name, tuple(sorted(labels.items())))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics(60.0, clock=clock)
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    yield metrics, server
    stop_metrics_server(server)


# Settings


def test_metrics_settings_default_off(env) -> None:
    settings = settings_from(env)

    assert settings.metrics_port is None
    assert settings.metrics_host == "127.0.0.1"


@pytest.mark.parametrize("port", ["0", "65536", "ninety"])
def test_invalid_metrics_port_named(env, port: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        settings_from(env, metrics_port=port)

    assert "SFCHARLES_METRICS_PORT" in str(raised.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "localhost", "metrics.internal"])
def test_valid_metrics_host_accepted(env, host: str) -> None:
    assert settings_from(env, metrics_host=host).metrics_host == host


@pytest.mark.parametrize("host", ["http://0.0.0.0", "0.0.0.0:9477", "two words", "-leading.dash"])
def test_invalid_metrics_host_named(env, host: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        settings_from(env, metrics_host=host)

    assert "SFCHARLES_METRICS_HOST" in str(raised.value)


def test_serve_metrics_off_without_port(env) -> None:
    with serve_metrics(settings_from(env)) as metrics:
        assert metrics is None


def test_port_in_use_is_configuration_error(clock: FakeClock) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(ConfigurationError) as raised:
            start_metrics_server(Metrics(60.0, clock=clock), "127.0.0.1", port)

    assert "SFCHARLES_METRICS_PORT" in str(raised.value)
    assert str(port) in str(raised.value)


# Metrics after real cycles


def test_scrape_after_real_cycle(salesforce, charles, make_app, served, clock) -> None:
    metrics, server = served
    stamp = salesforce.now() - timedelta(seconds=5)
    for name in ("Shared A", "Shared B"):
        salesforce.create_record("Contact", {"LastName": name, "MobilePhone": SHARED_PHONE}, modstamp=stamp)
    charles.reject(SHARED_PHONE)  # Charles rejects the first owner, and the second is set aside as a duplicate

    report = make_app().syncer().run_cycle()
    metrics.observe_cycle(report)
    scraped = samples(httpx.get(f"{server.url}/metrics").text)

    assert report.status == "partial"
    assert report.set_aside == 2
    assert value(scraped, "sfcharles_records_total", outcome="pushed") == report.pushed == len(charles.upserts)
    assert value(scraped, "sfcharles_records_total", outcome="skipped") == report.skipped == 84
    assert value(scraped, "sfcharles_records_total", outcome="set_aside") == 2
    assert value(scraped, "sfcharles_records_total", outcome="failed") == 0
    assert value(scraped, "sfcharles_records_total", outcome="unchanged") == 0
    assert value(scraped, "sfcharles_cycles_total", status="partial") == 1
    assert value(scraped, "sfcharles_cycles_total", status="succeeded") == 0
    assert value(scraped, "sfcharles_cycle_duration_seconds_count") == 1
    assert value(scraped, "sfcharles_cycle_duration_seconds_sum") == pytest.approx(report.duration_s)
    assert report.api_used is not None and report.api_limit is not None
    assert value(scraped, "sfcharles_salesforce_api_requests_used") == report.api_used
    assert value(scraped, "sfcharles_salesforce_api_requests_limit") == report.api_limit
    assert value(scraped, "sfcharles_watermark_lag_seconds") == report.watermark_lag_s()
    # Only set-aside failures: the watermark reached the window's end, so this cycle counts.
    assert value(scraped, "sfcharles_last_success_timestamp_seconds") == clock.now
    assert value(scraped, "sfcharles_poll_interval_seconds") == 60.0


def test_counters_add_over_cycles(salesforce, charles, make_app, served) -> None:
    metrics, server = served
    syncer = make_app().syncer()
    first = syncer.run_cycle()
    salesforce.advance(2)
    # The sample records are older than the lookback, so only a rewound watermark makes the
    # next cycle read them again, each already handled.
    syncer.store.set_watermark(syncer.pipeline, None)
    second = syncer.run_cycle()
    metrics.observe_cycle(first)
    metrics.observe_cycle(second)

    scraped = samples(httpx.get(f"{server.url}/metrics").text)

    assert second.reread > 0
    assert value(scraped, "sfcharles_cycles_total", status="succeeded") == 2
    assert value(scraped, "sfcharles_records_total", outcome="pushed") == first.pushed + second.pushed
    assert value(scraped, "sfcharles_records_total", outcome="reread") == first.reread + second.reread
    assert value(scraped, "sfcharles_records_total", outcome="skipped") == first.skipped + second.skipped
    assert value(scraped, "sfcharles_cycle_duration_seconds_count") == 2


def test_held_record_counts_failed_not_success(salesforce, charles, make_app, served) -> None:
    metrics, server = served
    charles.set_faults([Fault.status(503)])  # the first upsert fails, and with one attempt allowed it is not retried

    report = make_app(charles_max_attempts="1").syncer().run_cycle()
    metrics.observe_cycle(report)
    scraped = samples(httpx.get(f"{server.url}/metrics").text)

    assert report.status == "partial"
    assert dict(report.failed_by_reason) == {"http_503": 1}
    assert value(scraped, "sfcharles_records_total", outcome="failed") == 1
    assert value(scraped, "sfcharles_records_total", outcome="set_aside") == 0
    assert value(scraped, "sfcharles_last_success_timestamp_seconds") == 0, "a record holds the watermark"


def test_record_counts_split_failed_from_set_aside(salesforce, charles, make_app) -> None:
    charles.reject(SHARED_PHONE)
    salesforce.create_record("Contact", {"LastName": "Rejected", "MobilePhone": SHARED_PHONE}, modstamp=salesforce.now() - timedelta(seconds=5))

    report = make_app().syncer().run_cycle()
    counts = record_counts(report)

    assert counts["set_aside"] == 1
    assert counts["failed"] == 0
    assert report.failed == 1, "CycleReport.failed includes set-aside records; the metric does not"
    assert sum(counts.values()) == report.fetched


def test_cycle_error_counted_failed(served) -> None:
    metrics, server = served

    metrics.observe_cycle_error()
    scraped = samples(httpx.get(f"{server.url}/metrics").text)

    assert value(scraped, "sfcharles_cycles_total", status="failed") == 1
    assert value(scraped, "sfcharles_cycle_duration_seconds_count") == 0


def test_gauges_nan_before_first_cycle(served) -> None:
    _metrics, server = served

    scraped = samples(httpx.get(f"{server.url}/metrics").text)

    assert value(scraped, "sfcharles_watermark_lag_seconds") != value(scraped, "sfcharles_watermark_lag_seconds")  # NaN
    assert value(scraped, "sfcharles_last_success_timestamp_seconds") == 0
    for outcome in ("pushed", "unchanged", "reread", "skipped", "set_aside", "failed"):
        assert value(scraped, "sfcharles_records_total", outcome=outcome) == 0


def test_labels_never_carry_record_ids(salesforce, charles, make_app, served) -> None:
    metrics, server = served
    metrics.observe_cycle(make_app().syncer().run_cycle())

    text = httpx.get(f"{server.url}/metrics").text

    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sfcharles_"):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= {"pipeline", "outcome", "status", "version", "le"}, sample


# Health


def test_readyz_during_first_interval(served, clock) -> None:
    _metrics, server = served

    response = httpx.get(f"{server.url}/readyz")

    assert response.status_code == 200
    assert response.json()["status"] == "starting"


def test_readyz_503_without_success(served, clock) -> None:
    _metrics, server = served
    clock.advance(61)

    response = httpx.get(f"{server.url}/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["last_success"] is None


def test_readyz_turns_503_when_success_old(salesforce, charles, make_app, served, clock) -> None:
    metrics, server = served
    clock.advance(100)
    metrics.observe_cycle(make_app().syncer().run_cycle())

    clock.advance(179)
    fresh = httpx.get(f"{server.url}/readyz")
    clock.advance(1)
    stale = httpx.get(f"{server.url}/readyz")

    assert fresh.status_code == 200
    assert fresh.json()["status"] == "ready"
    assert stale.status_code == 503, "three 60 s intervals have passed since the last success"
    assert stale.json()["last_success_age_s"] == 180
    assert stale.json()["max_age_s"] == 180


def test_failed_cycle_keeps_readyz_503(served, clock) -> None:
    metrics, server = served
    clock.advance(61)

    metrics.observe_cycle_error()

    assert httpx.get(f"{server.url}/readyz").status_code == 503


def test_healthz_200_while_heartbeat_fresh(served, clock) -> None:
    metrics, server = served
    starting = httpx.get(f"{server.url}/healthz")
    metrics.heartbeat()
    clock.advance(HEARTBEAT_TIMEOUT_S)

    alive = httpx.get(f"{server.url}/healthz")

    assert starting.status_code == 200
    assert starting.json()["status"] == "starting"
    assert alive.status_code == 200
    assert alive.json()["status"] == "ok"


def test_healthz_503_when_loop_stalls(served, clock) -> None:
    metrics, server = served
    metrics.heartbeat()
    clock.advance(HEARTBEAT_TIMEOUT_S + 1)

    stalled = httpx.get(f"{server.url}/healthz")
    metrics.stopping()
    stopping = httpx.get(f"{server.url}/healthz")

    assert stalled.status_code == 503
    assert stalled.json()["status"] == "stalled"
    assert stopping.status_code == 200, "a slow shutdown is not a stall"


def test_unknown_path_and_method(served) -> None:
    _metrics, server = served

    missing = httpx.get(f"{server.url}/status")
    posted = httpx.post(f"{server.url}/metrics")

    assert missing.status_code == 404
    assert "/healthz" in missing.json()["error"]
    assert posted.status_code == 405


def test_stopped_server_refuses_connections(clock) -> None:
    server = start_metrics_server(Metrics(60.0, clock=clock), "127.0.0.1", 0)
    url = server.url

    stop_metrics_server(server)

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


# The daemon, as operators run it


def test_daemon_serves_metrics_and_health(env) -> None:
    port = free_port()
    base = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "run"],
        env={**base, **env, "SFCHARLES_POLL_INTERVAL_S": "2", "SFCHARLES_METRICS_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        scraped: dict = {}
        ready = health = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2)
                scraped = samples(httpx.get(f"{url}/metrics", timeout=2).text)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            health = httpx.get(f"{url}/healthz", timeout=2)
            # The scheduler loop beats once a second, and until its first beat /healthz returns "starting".
            if value(scraped, "sfcharles_cycles_total", status="succeeded") >= 1 and health.json()["status"] == "ok":
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)

    assert process.returncode == 0, err
    assert value(scraped, "sfcharles_cycles_total", status="succeeded") >= 1
    assert value(scraped, "sfcharles_records_total", outcome="pushed") == 78
    assert value(scraped, "sfcharles_last_success_timestamp_seconds") > 0
    assert ready is not None and ready.status_code == 200
    assert health is not None and health.status_code == 200
    assert health.json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
