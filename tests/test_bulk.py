"""Backfills through Bulk API 2.0 query jobs, against the Salesforce and Charles emulators."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import requests

from connector.backfill import BackfillProgress
from connector.cursor import Watermark, parse_salesforce_datetime
from connector.emulators.charles import CharlesEmulator
from connector.emulators.salesforce import SalesforceEmulator
from connector.errors import ConfigurationError
from connector.field_map import Mapped, load_field_map
from connector.salesforce import SalesforceSource, record_position
from connector.salesforce_bulk import BulkReader
from connector.state import StateStore
from tests.conftest import CHARLES_KEY, CLIENT_SECRET, ROOT, json_lines, run_cli, settings_from

FIELD_MAP = load_field_map(default_region="US")
SAMPLE_CONTACTS = 162


def last_position(salesforce: SalesforceEmulator) -> Watermark:
    return max(record_position(record) for record in salesforce.records("Contact", include_deleted=True))


def mapped_payloads(salesforce: SalesforceEmulator) -> dict[str, dict[str, Any]]:
    payloads = {}
    for record in salesforce.records("Contact"):
        outcome = FIELD_MAP.apply(record)
        if isinstance(outcome, Mapped):
            payloads[outcome.payload["external_reference_id"]] = outcome.payload
    return payloads


def create_contacts(salesforce: SalesforceEmulator, count: int, *, spacing_ms: int = 300) -> list[str]:
    """Create contacts with valid, distinct mobile numbers and distinct timestamps in the past."""
    base = salesforce.now() - timedelta(hours=1)
    return [
        salesforce.create_record(
            "Contact", {"LastName": f"Bulk{n}", "MobilePhone": f"+1415555{n:04d}"}, modstamp=base + timedelta(milliseconds=spacing_ms * n)
        )
        for n in range(count)
    ]


def without_attributes(record: dict[str, Any]) -> dict[str, Any]:
    """A REST record without its ``attributes`` keys, which CSV results do not have."""
    return {
        key: without_attributes(value) if isinstance(value, dict) else value
        for key, value in record.items()
        if key != "attributes"
    }


def bulk_job_requests(salesforce: SalesforceEmulator) -> list[dict[str, Any]]:
    return [entry for entry in salesforce.request_log if "/jobs/query" in entry["path"]]


# The backfill cycle on the Bulk path


def test_bulk_backfill_delivers_each_contact_once(salesforce, charles, make_app, logs) -> None:
    app = make_app(bulk_threshold="100")

    report = app.syncer().run_cycle("backfill")

    assert report.status == "succeeded", report.error
    assert [line["count"] for line in logs.events("sync.bulk_selected")] == [SAMPLE_CONTACTS]
    assert report.fetched == SAMPLE_CONTACTS
    expected = mapped_payloads(salesforce)
    assert Counter(body["external_reference_id"] for body in charles.upserts) == Counter(expected.keys())
    assert {body["external_reference_id"]: body for body in charles.upserts} == expected
    assert app.store.get_watermark(app.settings.pipeline) == last_position(salesforce)
    assert BackfillProgress(app.store, app.settings.pipeline).stored() is None
    assert salesforce.bulk.jobs() == [], "the finished job is deleted"
    assert not [entry for entry in salesforce.request_log if entry["path"].endswith("/queryAll") and "COUNT()" not in (entry["query"] or "")]


def test_bulk_and_rest_records_are_equal(salesforce, env) -> None:
    settings = settings_from(env)
    source = SalesforceSource(settings)
    fields = [*FIELD_MAP.source_fields(), "Account.Name", "CreatedDate"]
    end = source.server_time()
    try:
        rest = [record for page in source.changes("Contact", fields, None, end) for record in page.records]
        salesforce.bulk.max_records_per_page = 50
        bulk = [record for page in BulkReader(source, page_size=40).changes("Contact", fields, None, end) for record in page.records]
    finally:
        source.close()

    assert len(bulk) == SAMPLE_CONTACTS
    assert bulk == [without_attributes(record) for record in rest]
    assert any(record["Account"] for record in bulk), "some sample contacts have an account"
    assert isinstance(bulk[0]["IsDeleted"], bool)


def test_below_threshold_reads_through_rest(salesforce, charles, make_app, logs) -> None:
    report = make_app(bulk_threshold=str(SAMPLE_CONTACTS)).syncer().run_cycle("backfill")

    assert report.status == "succeeded"
    assert logs.events("sync.bulk_selected") == []
    assert [line["count"] for line in logs.events("sync.backfill_counted")] == [SAMPLE_CONTACTS]
    assert bulk_job_requests(salesforce) == []


def test_threshold_zero_never_uses_bulk(salesforce, charles, make_app, logs) -> None:
    make_app(bulk_threshold="0").syncer().run_cycle("backfill")

    assert logs.events("sync.bulk_selected") == []
    assert bulk_job_requests(salesforce) == []


def test_incremental_cycle_never_uses_bulk(salesforce, charles, make_app) -> None:
    make_app(bulk_threshold="1").syncer().run_cycle()

    assert bulk_job_requests(salesforce) == []


# Record count verification


def test_overreported_count_holds_watermark(salesforce, charles, make_app) -> None:
    app = make_app(bulk_threshold="100")
    syncer = app.syncer()
    syncer.run_cycle()
    watermark = app.store.get_watermark(app.settings.pipeline)
    create_contacts(salesforce, 3)
    salesforce.bulk.misreport_next_job(5)

    report = syncer.run_cycle("backfill")

    assert report.status == "failed"
    assert report.error_type == "BulkCountMismatch"
    assert "returned 165 records but reported 170" in str(report.error)
    assert report.fetched == 0, "the last page is checked before it is handed on"
    assert app.store.get_watermark(app.settings.pipeline) == watermark
    assert BackfillProgress(app.store, app.settings.pipeline).stored() is None, "the next backfill reads the whole window"

    again = syncer.run_cycle("backfill")

    assert again.status == "succeeded", again.error
    assert again.pushed == 3, "only the new contacts; what Charles accepted is suppressed as unchanged"
    assert app.store.get_watermark(app.settings.pipeline) == last_position(salesforce)


def test_underreported_count_stops_early(salesforce, charles, make_app) -> None:
    app = make_app(bulk_threshold="100")
    salesforce.bulk.misreport_next_job(-2)

    report = app.syncer().run_cycle("backfill")

    assert report.status == "failed"
    assert report.error_type == "BulkCountMismatch"
    assert "reported 160 records" in str(report.error)
    assert report.fetched < SAMPLE_CONTACTS
    assert app.store.get_watermark(app.settings.pipeline) is None


# Failures of the job and of the session


def test_failed_job_fails_cycle(salesforce, charles, make_app) -> None:
    app = make_app(bulk_threshold="100")
    salesforce.bulk.fail_next_job("InternalServerError: the query could not be completed")

    report = app.syncer().run_cycle("backfill")

    assert report.status == "failed"
    assert report.error_type == "FatalError"
    assert "ended in state Failed: InternalServerError: the query could not be completed" in str(report.error)
    assert charles.upserts == []
    assert app.store.get_watermark(app.settings.pipeline) is None
    assert salesforce.bulk.jobs() == [], "the failed job is deleted"


def test_session_expiring_during_result_paging(salesforce, env, logs) -> None:
    source = SalesforceSource(settings_from(env))
    salesforce.bulk.max_records_per_page = 50
    end = source.server_time()
    records: list[dict[str, Any]] = []
    try:
        for page in BulkReader(source, page_size=40).changes("Contact", FIELD_MAP.source_fields(), None, end):
            records.extend(page.records)
            if len(records) == 80:
                salesforce.expire_all_tokens()
    finally:
        source.close()

    assert len(records) == SAMPLE_CONTACTS
    positions = [record_position(record) for record in records]
    assert positions == sorted(set(positions)), "no record lost or repeated around the re-login"
    assert [line.get("api") for line in logs.events("salesforce.session_refreshed")] == ["bulk"]
    assert len(salesforce.issued_tokens()) == 2


def test_session_expiring_during_backfill_cycle(salesforce, charles, make_app) -> None:
    app = make_app(bulk_threshold="100")
    salesforce.bulk.max_records_per_page = 50
    original = salesforce.bulk.handle
    results_served = 0

    def expire_after_first_results(method, version, segments, params, body):
        nonlocal results_served
        reply = original(method, version, segments, params, body)
        if segments[1:] == ["results"]:
            results_served += 1
            if results_served == 1:
                salesforce.expire_all_tokens()
        return reply

    salesforce.bulk.handle = expire_after_first_results

    report = app.syncer().run_cycle("backfill")

    assert report.status == "succeeded", report.error
    assert report.fetched == SAMPLE_CONTACTS
    assert results_served == 4
    assert len(salesforce.issued_tokens()) == 2


def test_second_unauthorized_is_configuration_error(salesforce, env) -> None:
    source = SalesforceSource(settings_from(env))
    invalid = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    salesforce.inject_fault("/results", 401, invalid, count=2)
    try:
        with pytest.raises(ConfigurationError, match="INVALID_SESSION_ID twice in a row"):
            list(BulkReader(source, page_size=200).changes("Contact", FIELD_MAP.source_fields(), None, source.server_time()))
    finally:
        source.close()


def test_compound_field_rejected_before_job(salesforce, env) -> None:
    source = SalesforceSource(settings_from(env))
    try:
        with pytest.raises(ConfigurationError, match="MailingAddress"):
            list(BulkReader(source, page_size=200).changes("Contact", ["MailingAddress"], None, source.server_time()))
    finally:
        source.close()
    assert bulk_job_requests(salesforce) == []


def test_stop_while_job_runs_aborts_it(salesforce, charles, make_app) -> None:
    app = make_app(bulk_threshold="100")
    salesforce.bulk.polls_before_complete = 1_000_000
    timer = threading.Timer(1.0, app.stop_event.set)
    timer.start()
    try:
        report = app.syncer().run_cycle("backfill")
    finally:
        timer.cancel()

    assert report.status == "interrupted"
    assert report.fetched == 0
    assert salesforce.bulk.jobs() == [], "the running job is aborted and deleted"
    assert [entry["method"] for entry in bulk_job_requests(salesforce)][-2:] == ["PATCH", "DELETE"]


# Resuming a backfill


def test_interrupted_backfill_resumes_after_page(charles, env, make_app, logs) -> None:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as salesforce:
        ids = create_contacts(salesforce, 500)
        app = make_app(
            salesforce_login_url=salesforce.url, salesforce_ca_file=str(salesforce.ca_file),
            salesforce_page_size="200", bulk_threshold="100",
        )
        syncer = app.syncer()
        progress = BackfillProgress(app.store, app.settings.pipeline)

        def stop_after_first_page(fetched: int, total: int | None) -> None:
            assert total == 500
            app.stop_event.set()

        first = syncer.run_cycle("backfill", force=True, on_page=stop_after_first_page)
        stored = progress.stored()

        assert first.status == "interrupted"
        assert stored is not None
        assert stored[1].record_id == ids[199]
        assert app.store.get_watermark(app.settings.pipeline) is None, "an unchecked Bulk read holds the watermark"

        app.stop_event.clear()
        second = syncer.run_cycle("backfill", force=True)

        assert second.status == "succeeded", second.error
        assert [line["resume_after"] for line in logs.events("sync.backfill_resumed")] == [str(stored[1])]
        assert second.fetched == 300
        assert Counter(body["custom_properties"]["salesforce_id"] for body in charles.upserts) == Counter(ids)
        assert app.store.get_watermark(app.settings.pipeline) == last_position(salesforce)
        assert progress.stored() is None


def test_restart_or_new_since_rereads(charles, env, make_app, logs) -> None:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as salesforce:
        create_contacts(salesforce, 450)
        app = make_app(
            salesforce_login_url=salesforce.url, salesforce_ca_file=str(salesforce.ca_file),
            salesforce_page_size="200", bulk_threshold="0",
        )
        syncer = app.syncer()
        since = salesforce.now() - timedelta(days=1)

        def interrupt(fetched: int, total: int | None) -> None:
            app.stop_event.set()

        syncer.run_cycle("backfill", since=since, on_page=interrupt)
        app.stop_event.clear()
        other_since = syncer.run_cycle("backfill", since=since - timedelta(days=1), on_page=interrupt)
        app.stop_event.clear()
        restarted = syncer.run_cycle("backfill", since=since - timedelta(days=1), restart=True)

        assert other_since.fetched == 200, "another --since starts at its own beginning"
        assert restarted.fetched == 450
        assert [line["reason"] for line in logs.events("sync.backfill_progress_discarded")] == ["another window start", "restart requested"]
        assert logs.events("sync.backfill_resumed") == []


def test_killed_backfill_resumes_without_resending(tmp_path) -> None:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as salesforce, CharlesEmulator(api_key=CHARLES_KEY) as charles:
        ids = create_contacts(salesforce, 1000)
        charles.set_latency(0.01)
        state_url = f"sqlite:///{tmp_path / 'state.db'}"
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")},
            "SFCHARLES_SALESFORCE_LOGIN_URL": salesforce.url,
            "SFCHARLES_SALESFORCE_CLIENT_ID": salesforce.client_id,
            "SFCHARLES_SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
            "SFCHARLES_SALESFORCE_CA_FILE": str(salesforce.ca_file),
            "SFCHARLES_CHARLES_BASE_URL": charles.url,
            "SFCHARLES_CHARLES_API_KEY": CHARLES_KEY,
            "SFCHARLES_STATE_URL": state_url,
            "SFCHARLES_DEFAULT_REGION": "US",
            "SFCHARLES_SALESFORCE_PAGE_SIZE": "200",
            "SFCHARLES_CHARLES_MAX_IN_FLIGHT": "4",
            "SFCHARLES_BULK_THRESHOLD": "100",
        }
        command = [sys.executable, "-m", "connector", "backfill", "--force"]
        with open(tmp_path / "killed.log", "w") as output:
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while len(charles.upserts) < 450 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        delivered_before_kill = len(charles.upserts)
        assert process.returncode == -signal.SIGKILL
        assert 0 < delivered_before_kill < 1000, "the kill landed mid-backfill"
        store = StateStore(state_url)
        try:
            stored = BackfillProgress(store, "contacts").stored()
        finally:
            store.close()
        assert stored is not None, "at least one page was committed before the kill"
        acknowledged = {record["Id"] for record in salesforce.records("Contact") if record_position(record) <= stored[1]}
        assert acknowledged

        charles.set_latency(0)
        sent_before = len(charles.upserts)
        resumed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)

        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        events = {line["event"]: line for line in json_lines(resumed.stdout)}
        assert events["sync.backfill_resumed"]["resume_after"] == str(stored[1])
        assert events["sync.bulk_selected"]["count"] == 1000 - len(acknowledged)
        sent_after = [body["custom_properties"]["salesforce_id"] for body in charles.upserts[sent_before:]]
        assert not acknowledged & set(sent_after), "no record of a committed page is sent again"
        assert {body["custom_properties"]["salesforce_id"] for body in charles.upserts} == set(ids)


# The command line


def test_dry_run_sends_nothing(salesforce, charles, env, tmp_path) -> None:
    result = run_cli(["backfill", "--dry-run"], {**env, "SFCHARLES_BULK_THRESHOLD": "100"})

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["records"] == SAMPLE_CONTACTS
    assert document["bulk"] is True
    assert document["window"]["resume_after"] is None
    assert len(document["samples"]) == 5
    assert all(sample["outcome"] in ("mapped", "skipped") for sample in document["samples"])
    assert any("payload" in sample for sample in document["samples"])
    assert charles.request_count == 0
    assert bulk_job_requests(salesforce) == []
    store = StateStore(env["SFCHARLES_STATE_URL"])
    try:
        assert store.get_watermark("contacts") is None
        assert store.recent_cycles("contacts") == []
        assert BackfillProgress(store, "contacts").stored() is None
        assert store.pipelines() == []
    finally:
        store.close()


def test_dry_run_below_threshold_uses_rest(salesforce, charles, env) -> None:
    result = run_cli(["backfill", "--dry-run", "--since", "2000-01-01T00:00:00Z"], env)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["bulk"] is False
    assert document["bulk_threshold"] == 100_000
    assert document["window"]["since"] == "2000-01-01T00:00:00.000Z"


def test_no_progress_bar_without_terminal(salesforce, charles, env) -> None:
    result = run_cli(["backfill"], {**env, "SFCHARLES_BULK_THRESHOLD": "100"})

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), "stdout holds only JSON log lines"
    assert "sync.bulk_selected" in {json.loads(line)["event"] for line in lines}


def test_progress_bar_on_terminal(salesforce, charles, env) -> None:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    base = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "backfill"],
        env={**base, **env, "SFCHARLES_BULK_THRESHOLD": "100"},
        cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal, text=True,
    )
    os.close(terminal)
    terminal_output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            terminal_output += chunk
        elif process.poll() is not None:
            break
    stdout, _ = process.communicate(timeout=30)
    os.close(controller)

    assert process.returncode == 0
    text = terminal_output.decode("utf-8", errors="replace")
    assert "backfill" in text
    assert f"{SAMPLE_CONTACTS}/{SAMPLE_CONTACTS}" in text
    assert all(line.startswith("{") for line in stdout.splitlines() if line.strip())


def test_state_show_lists_unfinished_backfill(charles, env, make_app) -> None:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as salesforce:
        create_contacts(salesforce, 250)
        overrides = {"SFCHARLES_SALESFORCE_LOGIN_URL": salesforce.url, "SFCHARLES_SALESFORCE_CA_FILE": str(salesforce.ca_file)}
        app = make_app(salesforce_login_url=salesforce.url, salesforce_ca_file=str(salesforce.ca_file), salesforce_page_size="200")
        app.syncer().run_cycle("backfill", on_page=lambda fetched, total: app.stop_event.set())

        result = run_cli(["state", "show", "--json"], {**env, **overrides})

    assert result.returncode == 0, result.stderr
    backfill = json.loads(result.stdout)["backfill"]
    assert backfill["window_start"] == "1999-01-01T00:00:00.000Z"
    assert parse_salesforce_datetime(backfill["handled_until"]["modstamp"]) < salesforce.now()


# The emulator's Bulk API 2.0 endpoints


class BulkClient:
    """Plain requests to the emulator's Bulk API 2.0 endpoints."""

    def __init__(self, salesforce: SalesforceEmulator) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the emulator's CA
        self.session.verify = salesforce.ca_file
        token = self.session.post(
            f"{salesforce.url}/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(salesforce.client_id, CLIENT_SECRET),
        ).json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.base = f"{salesforce.url}/services/data/v62.0/jobs/query"

    def create(self, query: str, operation: str = "queryAll") -> requests.Response:
        return self.session.post(self.base, json={"operation": operation, "query": query})

    def poll_until_done(self, job_id: str) -> dict[str, Any]:
        for _ in range(10):
            job = self.session.get(f"{self.base}/{job_id}").json()
            if job["state"] in ("JobComplete", "Failed", "Aborted"):
                return job
        raise AssertionError(f"job {job_id} did not finish")


def test_emulator_job_lifecycle_and_paging(salesforce) -> None:
    client = BulkClient(salesforce)
    created = client.create("SELECT Id, LastName, IsDeleted, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id")
    assert created.status_code == 200
    job = created.json()
    assert job["state"] == "UploadComplete"
    assert job["object"] == "Contact"
    assert job["operation"] == "queryAll"

    early = client.session.get(f"{client.base}/{job['id']}/results")
    assert early.status_code == 400
    assert early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert client.session.get(f"{client.base}/{job['id']}").json()["state"] == "InProgress"
    done = client.poll_until_done(job["id"])
    assert done["state"] == "JobComplete"
    assert done["numberRecordsProcessed"] == SAMPLE_CONTACTS

    rows: list[list[str]] = []
    locator = ""
    pages = 0
    while True:
        response = client.session.get(f"{client.base}/{job['id']}/results", params={"locator": locator, "maxRecords": 70})
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        page = list(csv.reader(io.StringIO(response.text)))
        assert page[0] == ["Id", "LastName", "IsDeleted", "SystemModstamp"]
        assert int(response.headers["Sforce-NumberOfRecords"]) == len(page) - 1
        rows.extend(page[1:])
        pages += 1
        locator = response.headers["Sforce-Locator"]
        if locator == "null":
            break
    assert pages == 3
    assert len(rows) == SAMPLE_CONTACTS
    assert {row[2] for row in rows} == {"false"}
    assert rows[0][3].endswith(".000Z")
    assert response.text.splitlines()[1].startswith('"')

    assert client.session.delete(f"{client.base}/{job['id']}").status_code == 204
    assert client.session.get(f"{client.base}/{job['id']}").status_code == 404


def test_emulator_rejects_unsupported_queries(salesforce) -> None:
    client = BulkClient(salesforce)

    count = client.create("SELECT COUNT() FROM Contact")
    compound = client.create("SELECT Id, MailingAddress FROM Contact")
    unknown = client.create("SELECT Id, NoSuchField__c FROM Contact")
    operation = client.create("SELECT Id FROM Contact", operation="insert")

    assert (count.status_code, count.json()[0]["errorCode"]) == (400, "INVALIDJOB")
    assert (compound.status_code, compound.json()[0]["errorCode"]) == (400, "INVALIDJOB")
    assert (unknown.status_code, unknown.json()[0]["errorCode"]) == (400, "INVALID_FIELD")
    assert (operation.status_code, operation.json()[0]["errorCode"]) == (400, "INVALIDJOB")


def test_emulator_query_skips_deleted(salesforce) -> None:
    salesforce.delete_record("Contact", salesforce.records("Contact")[0]["Id"])
    client = BulkClient(salesforce)

    plain = client.poll_until_done(client.create("SELECT Id FROM Contact", operation="query").json()["id"])
    everything = client.poll_until_done(client.create("SELECT Id FROM Contact").json()["id"])

    assert plain["numberRecordsProcessed"] == SAMPLE_CONTACTS - 1
    assert everything["numberRecordsProcessed"] == SAMPLE_CONTACTS


def test_emulator_bulk_needs_valid_session(salesforce) -> None:
    client = BulkClient(salesforce)
    salesforce.expire_all_tokens()

    response = client.create("SELECT Id FROM Contact")

    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
