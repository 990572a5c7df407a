"""Crash safety: a SIGKILLed connector and random histories with crashes lose no change."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from connector.app import App
from connector.emulators.charles import CharlesEmulator
from connector.emulators.salesforce import SalesforceEmulator
from connector.cursor import parse_salesforce_datetime
from connector.field_map import Mapped, load_field_map
from connector.outcomes import DELETED_PROPERTY, DELETED_TAG, MERGED_INTO_PROPERTY
from tests.conftest import CHARLES_KEY, CLIENT_SECRET, ROOT, settings_from

FIELD_MAP = load_field_map(default_region="US")


def last_payloads(charles: CharlesEmulator) -> dict[str, dict[str, Any]]:
    """The last body Charles accepted for each key."""
    latest: dict[str, dict[str, Any]] = {}
    for body in charles.upserts:
        latest[body["external_reference_id"]] = body
    return latest


def expected_payloads(salesforce: SalesforceEmulator, *, delivered: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """What Charles must hold last for each key, computed from Salesforce's final state.

    A deleted record is expected as marked only if it is in ``delivered`` (Charles had it
    before the delete); otherwise Charles may hold it marked or not at all.
    """
    expected: dict[str, dict[str, Any]] = {}
    for record in salesforce.records("Contact", include_deleted=True):
        outcome = FIELD_MAP.apply(record)
        if not isinstance(outcome, Mapped):
            continue
        payload = dict(outcome.payload)
        if record["IsDeleted"]:
            if delivered is not None and record["Id"] not in delivered:
                continue
            payload["tags"] = [*payload.get("tags", []), DELETED_TAG]
            properties = dict(payload.get("custom_properties", {}))
            properties[DELETED_PROPERTY] = "true"
            if record.get("MasterRecordId"):
                properties[MERGED_INTO_PROPERTY] = record["MasterRecordId"]
            payload["custom_properties"] = properties
        expected[payload["external_reference_id"]] = payload
    return expected


def connector_env(salesforce: SalesforceEmulator, charles: CharlesEmulator, state_url: str, **extra: str) -> dict[str, str]:
    return {
        "SFCHARLES_SALESFORCE_LOGIN_URL": salesforce.url,
        "SFCHARLES_SALESFORCE_CLIENT_ID": salesforce.client_id,
        "SFCHARLES_SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
        "SFCHARLES_SALESFORCE_CA_FILE": str(salesforce.ca_file),
        "SFCHARLES_CHARLES_BASE_URL": charles.url,
        "SFCHARLES_CHARLES_API_KEY": CHARLES_KEY,
        "SFCHARLES_STATE_URL": state_url,
        "SFCHARLES_DEFAULT_REGION": "US",
        **extra,
    }


def test_sigkill_mid_cycle_then_restart_delivers_everything(tmp_path) -> None:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as salesforce, CharlesEmulator(api_key=CHARLES_KEY) as charles:
        base = salesforce.now() - timedelta(minutes=30)
        for n in range(1000):
            salesforce.create_record("Contact", {"LastName": f"P{n}", "MobilePhone": f"+1415555{n:04d}"}, modstamp=base + timedelta(milliseconds=300 * n))
        charles.set_latency(0.01)
        env = connector_env(
            salesforce, charles, f"sqlite:///{tmp_path / 'state.db'}",
            SFCHARLES_SALESFORCE_PAGE_SIZE="200", SFCHARLES_CHARLES_MAX_IN_FLIGHT="4",
        )
        full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFCHARLES_")}, **env}
        process = subprocess.Popen([sys.executable, "-m", "connector", "sync"], env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(charles.upserts) < 450 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        delivered_before_kill = len(charles.upserts)
        assert process.returncode == -signal.SIGKILL
        assert 0 < delivered_before_kill < 1000, "the kill landed mid-cycle"

        charles.set_latency(0)
        restart = subprocess.run([sys.executable, "-m", "connector", "sync"], env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=120)

        assert restart.returncode == 0, restart.stderr
        assert last_payloads(charles) == expected_payloads(salesforce)
        resent = len(charles.upserts) - 1000
        # At-least-once: what was in flight or after the last checkpoint is sent again, no more.
        assert 0 <= resent <= delivered_before_kill


class SimulatedCrash(BaseException):
    """Stands in for the process dying: nothing after it runs, no state is committed."""


class CrashingSink:
    def __init__(self, sink: Any, crash_after: int) -> None:
        self._sink = sink
        self._left = crash_after

    def submit(self, record_id: str, payload: dict[str, Any]) -> Any:
        if self._left == 0:
            raise SimulatedCrash()
        self._left -= 1
        return self._sink.submit(record_id, payload)


class SyncHistory(RuleBasedStateMachine):
    """Random Salesforce histories, cycles and crashes; Charles must end up matching Salesforce."""

    def __init__(self) -> None:
        super().__init__()
        self.salesforce = SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET).start()
        self.charles = CharlesEmulator(api_key=CHARLES_KEY).start()
        self.state_dir = tempfile.mkdtemp(prefix="sfcharles-model-")
        self.settings = settings_from(connector_env(
            self.salesforce, self.charles, f"sqlite:///{self.state_dir}/state.db", SFCHARLES_SALESFORCE_PAGE_SIZE="200",
        ))
        self.ids: list[str] = []
        self.next_phone = 0
        self.delivered: set[str] = set()  # records Charles surely received before any delete

    def _new_phone(self, valid: bool = True) -> str:
        self.next_phone += 1
        return f"+1415555{self.next_phone:04d}" if valid else f"+1196555{self.next_phone:04d}"

    def _run(self, crash_after: int | None = None) -> None:
        app = App.build(self.settings)
        try:
            if crash_after is not None:
                app.sink = CrashingSink(app.sink, crash_after)  # type: ignore[assignment]
            try:
                app.syncer().run_cycle()
            except SimulatedCrash:
                pass
        finally:
            sink = app.sink._sink if isinstance(app.sink, CrashingSink) else app.sink
            sink.close()
            app.source.close()
            app.store.close()

    @initialize()
    def seed(self) -> None:
        self.salesforce.advance(1)

    @rule(count=st.integers(1, 5), valid=st.booleans(), age_s=st.integers(0, 3))
    def create(self, count: int, valid: bool, age_s: int) -> None:
        stamp = self.salesforce.now() - timedelta(seconds=age_s)
        for _ in range(count):
            self.ids.append(self.salesforce.create_record("Contact", {"LastName": "New", "MobilePhone": self._new_phone(valid)}, modstamp=stamp))

    @rule()
    def burst_larger_than_page(self) -> None:
        stamp = self.salesforce.now()
        for _ in range(230):
            self.ids.append(self.salesforce.create_record("Contact", {"LastName": "Burst", "MobilePhone": self._new_phone()}, modstamp=stamp))

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, 10_000), name=st.sampled_from(["Ada", "Zoë", "O'Neil", "Пётр"]))
    def rename(self, index: int, name: str) -> None:
        self._update(index, {"FirstName": name})

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, 10_000))
    def change_phone(self, index: int) -> None:
        self._update(index, {"MobilePhone": self._new_phone()})

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, 10_000), behind_s=st.integers(5, 300))
    def late_commit(self, index: int, behind_s: int) -> None:
        self._update(index, {"LastName": "Late"}, modstamp=self.salesforce.now() - timedelta(seconds=behind_s))

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, 10_000))
    def delete(self, index: int) -> None:
        record_id = self.ids[index % len(self.ids)]
        if not self.salesforce.get_record("Contact", record_id)["IsDeleted"]:
            self.salesforce.delete_record("Contact", record_id)

    @precondition(lambda self: len(self.ids) >= 2)
    @rule(a=st.integers(0, 10_000), b=st.integers(0, 10_000))
    def merge(self, a: int, b: int) -> None:
        winner, loser = self.ids[a % len(self.ids)], self.ids[b % len(self.ids)]
        records = {record_id: self.salesforce.get_record("Contact", record_id) for record_id in (winner, loser)}
        if winner != loser and not any(record["IsDeleted"] for record in records.values()):
            self.salesforce.merge_records("Contact", winner, loser)

    @rule(seconds=st.integers(1, 20))
    def advance(self, seconds: int) -> None:
        self.salesforce.advance(seconds)

    @rule()
    def cycle(self) -> None:
        # A finished cycle delivers every live record with a valid number stamped before
        # Salesforce's clock at its start (the Date header it reads is no earlier).
        cutoff = self.salesforce.now().replace(microsecond=0)
        self._run()
        for record in self.salesforce.records("Contact"):
            if isinstance(FIELD_MAP.apply(record), Mapped) and parse_salesforce_datetime(record["SystemModstamp"]) < cutoff:
                self.delivered.add(record["Id"])

    @rule(after=st.integers(0, 40))
    def crash_mid_cycle(self, after: int) -> None:
        self._run(crash_after=after)

    def _update(self, index: int, fields: dict[str, str], modstamp: Any = None) -> None:
        record_id = self.ids[index % len(self.ids)]
        record = self.salesforce.get_record("Contact", record_id)
        if record["IsDeleted"]:
            return
        if modstamp is not None:
            # One record's SystemModstamp never goes back: a late commit is older than the
            # watermark, not older than the record's previous version.
            previous = parse_salesforce_datetime(record["SystemModstamp"])
            modstamp = max(modstamp, previous + timedelta(milliseconds=1))
        self.salesforce.update_record("Contact", record_id, fields, modstamp=modstamp)

    def check_charles_matches_salesforce(self) -> None:
        actual = last_payloads(self.charles)
        expected = expected_payloads(self.salesforce, delivered=self.delivered)
        mismatched = {key: (actual.get(key), payload) for key, payload in expected.items() if actual.get(key) != payload}
        assert not mismatched, f"Charles (left) differs from mapped Salesforce (right): {mismatched}"
        # Keys Charles holds beyond those are the old numbers of contacts whose phone changed.
        store = App.build(self.settings).store
        retired = {row["external_reference_id"] for row in store.retired_keys(self.settings.pipeline)}
        store.close()
        deleted_keys = set(expected_payloads(self.salesforce)) - set(expected)
        assert set(actual) - set(expected) <= retired | deleted_keys

    def teardown(self) -> None:
        try:
            self.salesforce.advance(2)
            self._run()
            self._run()
            self.check_charles_matches_salesforce()
        finally:
            self.salesforce.stop()
            self.charles.stop()
            shutil.rmtree(self.state_dir, ignore_errors=True)


TestSyncHistory = SyncHistory.TestCase
TestSyncHistory.settings = settings(
    max_examples=12,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
