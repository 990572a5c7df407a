"""A bad day on either API: faults, throttling, expired sessions, quota, shutdown, locking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import stamina

from connector.charles import CharlesSink, RateLimiter, parse_retry_after
from connector.emulators.charles import Fault
from connector.emulators.salesforce import SalesforceEmulator
from connector.errors import ConfigurationError, RecordError
from connector.field_map import Mapped, load_field_map
from connector.salesforce import ApiUsage
from connector.scheduler import ApiThrottle, Daemon
from tests.conftest import CLIENT_SECRET, ROOT, json_lines, run_cli, settings_from

INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
LIMIT_EXCEEDED = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]


def mapped_keys(salesforce: SalesforceEmulator) -> set[str]:
    field_map = load_field_map(default_region="US")
    outcomes = (field_map.apply(record) for record in salesforce.records("Contact"))
    return {o.payload["external_reference_id"] for o in outcomes if isinstance(o, Mapped)}


def stored_keys(charles) -> set[str]:
    return {person["channel_users"][0]["external_person_reference_id"] for person in charles.contacts()}


@pytest.fixture
def big_org():
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as emulator:
        base = emulator.now() - timedelta(minutes=30)
        for n in range(450):
            emulator.create_record("Contact", {"LastName": f"P{n}", "MobilePhone": f"+1415555{n:04d}"}, modstamp=base + timedelta(seconds=n))
        yield emulator


@pytest.fixture
def app_for(make_app):
    def build(salesforce: SalesforceEmulator, **overrides: str):
        return make_app(salesforce_login_url=salesforce.url, salesforce_ca_file=str(salesforce.ca_file), **overrides)

    return build


# Charles


def test_thirty_percent_faults_every_contact_delivered(salesforce, charles, make_app) -> None:
    faults = [
        Fault.status(429, retry_after=0), Fault.status(429), Fault.status(500), Fault.status(503),
        Fault.timeout(1.0), Fault.drop(),
    ]
    charles.set_faults(faults, rate=0.3, seed=11)
    app = make_app(charles_timeout_s="0.4", charles_max_attempts="12")

    report = app.syncer().run_cycle()

    expected = mapped_keys(salesforce)
    assert report.status == "succeeded"
    assert report.pushed == len(expected)
    assert stored_keys(charles) == expected
    faulted = [entry for entry in charles.requests if entry["fault"]]
    assert faulted, "the schedule injected faults"
    assert len(charles.requests) <= len(expected) * 12


def test_persistent_500_bounded_attempts(salesforce, charles, make_app) -> None:
    app = make_app(charles_max_attempts="3")
    payload = {"external_reference_id": "+14155550100", "source_type": "salesforce"}
    charles.reject(payload["external_reference_id"], status=500, message="boom")

    with pytest.raises(RecordError) as info:
        app.sink.upsert("003000000000001AAA", payload)

    assert info.value.retryable
    assert info.value.reason == "http_500"
    assert len(charles.requests) == 3


def test_retry_after_seconds_waited(charles, env) -> None:
    sink = CharlesSink(settings_from(env))
    charles.set_faults([Fault.status(429, retry_after=1)])
    try:
        with stamina.set_testing(False):
            started = time.monotonic()
            result = sink.upsert("003000000000001AAA", {"external_reference_id": "+14155550100", "source_type": "salesforce"})
            elapsed = time.monotonic() - started
    finally:
        sink.close()
    assert result.attempts == 2
    assert elapsed >= 1.0


def test_retry_after_http_date_waited(charles, env) -> None:
    sink = CharlesSink(settings_from(env))
    charles.set_faults([Fault.status(503, retry_after=datetime.now(UTC) + timedelta(seconds=2))])
    try:
        with stamina.set_testing(False):
            started = time.monotonic()
            sink.upsert("003000000000001AAA", {"external_reference_id": "+14155550100", "source_type": "salesforce"})
            elapsed = time.monotonic() - started
    finally:
        sink.close()
    assert elapsed >= 1.0  # the HTTP date has whole seconds, so at least one of the two remains


def test_parse_retry_after_forms() -> None:
    now = datetime(2025, 1, 23, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 23 Jan 2025 10:00:05 GMT", now=now) == 5.0
    assert parse_retry_after("Thu, 23 Jan 2025 09:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_rate_limiter_spaces_requests() -> None:
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = RateLimiter(4.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()

    assert slept == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_malformed_success_body_set_aside(salesforce, charles, make_app) -> None:
    charles.set_faults([Fault.malformed(200)])
    app = make_app(charles_max_in_flight="1")

    report = app.syncer().run_cycle()

    assert dict(report.set_aside_by_reason) == {"invalid_response": 1}
    [letter] = app.store.dead_letters(app.settings.pipeline)
    assert "not JSON" in (letter.error or "")


# Salesforce


def test_session_expiring_mid_paging(charles, big_org, app_for, logs) -> None:
    big_org.inject_fault("/query/01g", 401, INVALID_SESSION, count=1)
    app = app_for(big_org, salesforce_page_size="200")

    report = app.syncer().run_cycle()

    assert report.status == "succeeded"
    assert report.pushed == 450
    assert len(logs.events("salesforce.session_refreshed")) == 1


def test_second_401_in_a_row_is_configuration_error(charles, big_org, app_for) -> None:
    big_org.inject_fault("/query/01g", 401, INVALID_SESSION, count=2)
    app = app_for(big_org, salesforce_page_size="200")

    with pytest.raises(ConfigurationError, match="INVALID_SESSION_ID twice"):
        app.syncer().run_cycle()


def test_daily_limit_mid_cycle_then_lifted(charles, big_org, app_for, logs) -> None:
    big_org.inject_fault("/query/01g", 403, LIMIT_EXCEEDED, count=1)
    app = app_for(big_org, salesforce_page_size="200", api_limit_wait_s="60")
    clock = [1000.0]
    daemon = Daemon(lambda: app.syncer().run_cycle(), app.settings, app.stop_event, clock=lambda: clock[0])

    first = daemon.tick()
    waiting = daemon.tick()
    clock[0] += 61
    resumed = daemon.tick()

    assert first is not None and first.status == "failed" and first.error_type == "ApiLimitExceeded"
    assert first.watermark_after is not None and first.pushed == 200, "the first page was committed, nothing after it"
    assert waiting is None
    [notice] = logs.events("daemon.api_limit_reached")
    assert notice["salesforce_api_limit"] > 0
    assert resumed is not None and resumed.status == "succeeded"
    assert len(stored_keys(charles)) == 450


def test_throttle_thresholds_and_hysteresis() -> None:
    throttle = ApiThrottle(slow_share=0.8, pause_share=0.95, resume_share=0.9)

    assert throttle.update(ApiUsage(500, 1000)) == "normal"
    assert throttle.update(ApiUsage(850, 1000)) == "slowed"
    assert throttle.update(ApiUsage(960, 1000)) == "paused"
    assert throttle.update(ApiUsage(920, 1000)) == "paused", "stays paused until below the resume share"
    assert throttle.update(ApiUsage(890, 1000)) == "slowed"
    assert throttle.update(ApiUsage(100, 1000)) == "normal"
    assert throttle.update(None) == "normal"


def test_daemon_pauses_and_resumes_on_api_usage(salesforce, charles, make_app, logs) -> None:
    app = make_app()
    salesforce.set_api_usage(14_600)  # of 15,000: above the pause share

    def probe():
        app.source.server_time()
        return app.source.api_usage

    daemon = Daemon(lambda: app.syncer().run_cycle(), app.settings, app.stop_event, usage_probe=probe)

    first = daemon.tick()
    paused = daemon.tick()
    salesforce.set_api_usage(100)
    resumed = daemon.tick()

    assert first is not None
    assert daemon.throttle.state == "normal"
    assert paused is None
    assert resumed is not None
    assert [line["event"] for line in logs.lines if line["event"].startswith("daemon.")] == ["daemon.paused", "daemon.resumed"]


def test_cycle_time_limit_stops_fetching(charles, big_org, app_for) -> None:
    charles.set_latency(0.02)
    app = app_for(big_org, cycle_timeout_s="1", charles_max_in_flight="1")

    report = app.syncer().run_cycle()

    assert report.status == "interrupted"
    assert "SFCHARLES_CYCLE_TIMEOUT_S" in (report.error or "")
    assert 0 < report.pushed < 450
    assert app.store.get_watermark(app.settings.pipeline) is not None


# Processes


def popen_connector(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
    return subprocess.Popen(
        [sys.executable, "-m", "connector", *args], env={**base, **env}, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def big_org_env(env: dict[str, str], salesforce: SalesforceEmulator, **extra: str) -> dict[str, str]:
    return {
        **env, "SFCHARLES_SALESFORCE_LOGIN_URL": salesforce.url, "SFCHARLES_SALESFORCE_CA_FILE": str(salesforce.ca_file),
        **{f"SFCHARLES_{key.upper()}": value for key, value in extra.items()},
    }


def test_sigterm_mid_cycle_commits_and_exits_0(charles, big_org, env) -> None:
    charles.set_latency(0.02)
    settings = big_org_env(env, big_org, salesforce_page_size="200", charles_max_in_flight="2")
    process = popen_connector(["run"], settings)
    deadline = time.monotonic() + 60
    while len(charles.upserts) < 250 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 0, err
    events = [line["event"] for line in json_lines(out)]
    assert "daemon.stop_requested" in events
    [summary] = [line for line in json_lines(out) if line["event"] == "sync.cycle_completed"]
    assert summary["status"] == "interrupted"
    assert summary["watermark_after"] is not None
    charles.set_latency(0)
    assert run_cli(["sync"], settings).returncode == 0
    assert len(stored_keys(charles)) == 450


def test_second_daemon_refused(charles, salesforce, env) -> None:
    settings = {**env, "SFCHARLES_POLL_INTERVAL_S": "3600"}
    first = popen_connector(["run"], settings)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if json.loads(line)["event"] == "sync.cycle_completed":
                break

        second = run_cli(["sync"], settings)

        assert second.returncode == 4
        assert "in use by another sfcharles process" in second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    assert run_cli(["sync"], settings).returncode == 0, "the lock died with its holder"


def test_dead_letters_cli_replay(charles, salesforce, env) -> None:
    key = sorted(mapped_keys(salesforce))[0]
    charles.reject(key, status=422, message="Invalid custom property")

    first = run_cli(["sync"], env)
    listed = run_cli(["dead-letters", "list", "--json"], env)
    charles.accept(key)
    retried = run_cli(["dead-letters", "retry"], env)
    after = run_cli(["dead-letters", "list", "--json"], env)

    assert first.returncode == 3
    [letter] = json.loads(listed.stdout)
    assert letter["reason"] == "http_422"
    assert "Invalid custom property" in letter["error"]
    assert retried.returncode == 0, retried.stderr
    assert json.loads(after.stdout) == []
    assert charles.upserts[-1]["external_reference_id"] == key


def test_dead_letter_discard(charles, salesforce, env) -> None:
    key = sorted(mapped_keys(salesforce))[0]
    charles.reject(key, status=409, message="Conflict")
    run_cli(["sync"], env)
    [letter] = json.loads(run_cli(["dead-letters", "list", "--json"], env).stdout)

    discarded = run_cli(["dead-letters", "discard", letter["record_id"]], env)
    again = run_cli(["dead-letters", "discard", letter["record_id"]], env)

    assert discarded.returncode == 0
    assert json.loads(run_cli(["dead-letters", "list", "--json"], env).stdout) == []
    assert again.returncode == 1
    assert "no dead letter" in again.stderr


def test_charles_outage_fails_cycle_early(salesforce, charles, make_app, logs) -> None:
    app = make_app(charles_base_url="http://127.0.0.1:1", charles_max_attempts="2")

    first = app.syncer().run_cycle()
    second = app.syncer().run_cycle()
    third = app.syncer().run_cycle()

    assert first.status == "failed"
    assert first.error_type == "CharlesUnavailable"
    assert first.watermark_after is None
    assert third.consecutive_failures == 3
    levels = [line["level"] for line in logs.events("sync.cycle_completed")]
    assert levels == ["warning", "warning", "error"]
    assert len(logs.events("charles.upsert_failed")) <= 3 * 10
    assert not [line for line in logs.lines if line["event"] == "stamina.retry_scheduled"]
    assert second.status == "failed"


def test_missing_ca_is_configuration_error(salesforce, charles, env) -> None:
    from connector.app import App

    settings = settings_from({k: v for k, v in env.items() if k != "SFCHARLES_SALESFORCE_CA_FILE"})
    app = App.build(settings)
    try:
        with pytest.raises(ConfigurationError, match="SFCHARLES_SALESFORCE_CA_FILE"):
            app.source.login()
    finally:
        app.close()


def test_idle_cycle_has_no_lag(salesforce, charles, make_app) -> None:
    syncer = make_app().syncer()
    syncer.run_cycle()
    salesforce.advance(3600)

    idle = syncer.run_cycle()

    assert idle.watermark_lag_s() == 0.0
