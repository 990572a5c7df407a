"""Daemon replicas on one PostgreSQL state store, as separate processes.

Each test starts `sfcharles run` two or three times against the emulators and a
throwaway database, then kills a leader, cuts its database connection, or only watches
how the pipelines are divided. Every process is stopped at the end of its test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.emulators.charles import CharlesEmulator
from connector.leader import holders
from connector.state import StateStore
from tests.conftest import CHARLES_KEY, ROOT, json_lines, run_cli
from tests.postgres import PostgresServer

HEARTBEAT_S = 0.5
LEASE_S = 2.0


class Replica:
    """One `sfcharles run` process with its JSON log in a file."""

    def __init__(self, replica_id: str, env: dict[str, str], folder: Path) -> None:
        self.replica_id = replica_id
        self.log_path = folder / f"{replica_id}.log"
        base = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector", "run"],
            env={**base, **env, "SFCHARLES_REPLICA_ID": replica_id},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def events(self, name: str, pipeline: str | None = None) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name and (pipeline is None or line.get("pipeline") == pipeline)]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def replicated_env(env: dict[str, str], postgres_url: str) -> dict[str, str]:
    return {
        **env,
        "SFCHARLES_STATE_URL": postgres_url,
        "SFCHARLES_LEADER_HEARTBEAT_S": str(HEARTBEAT_S),
        "SFCHARLES_LEADER_LEASE_S": str(LEASE_S),
        "SFCHARLES_POLL_INTERVAL_S": "2",
        "SFCHARLES_LOG_FORMAT": "json",
        "SFCHARLES_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Replica]]:
    started: list[Replica] = []

    def start(replica_id: str, env: dict[str, str]) -> Replica:
        replica = Replica(replica_id, env, tmp_path)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if replica.process.poll() is None:
            replica.process.kill()
            replica.process.wait()


@pytest.fixture
def reference_ids(env: dict[str, str], tmp_path: Path) -> set[str]:
    """The external_reference_ids that one uninterrupted sync sends, from its own Charles emulator."""
    with CharlesEmulator(api_key=CHARLES_KEY) as reference:
        result = run_cli(
            ["sync"], {**env, "SFCHARLES_CHARLES_BASE_URL": reference.url, "SFCHARLES_STATE_URL": f"sqlite:///{tmp_path / 'ref.db'}"}
        )
        assert result.returncode == 0, result.stderr
        ids = {body["external_reference_id"] for body in reference.upserts}
    assert len(ids) > 20
    return ids


def current_holder(url: str, pipeline: str) -> str | None:
    store = StateStore(url)
    try:
        return holders(store).get(pipeline)
    finally:
        store.close()


def charles_ids(charles: CharlesEmulator) -> set[str]:
    return {body["external_reference_id"] for body in charles.upserts}


def test_pipelines_are_divided_between_replicas(
    replicated_env: dict[str, str], start_replica: Callable[[str, dict[str, str]], Replica], tmp_path: Path, postgres_url: str
) -> None:
    config = tmp_path / "pipelines.toml"
    config.write_text("".join(f"[pipelines.org-{n}]\npoll_interval_s = 2\n\n" for n in range(4)))
    env = {**replicated_env, "SFCHARLES_CONFIG_FILE": str(config)}
    replicas = [start_replica("r1", env), start_replica("r2", env)]

    def divided() -> dict[str, str] | None:
        store = StateStore(postgres_url)
        try:
            held = holders(store)
        finally:
            store.close()
        return held if len(held) == 4 and sorted(held.values()).count("r1") == 2 else None

    held = wait_for(divided, 30, "the four pipelines to be divided two and two")
    assert sorted(held.values()) == ["r1", "r1", "r2", "r2"]
    # Every pipeline ran a cycle, on the replica that has its lock, and its log lines name it.
    for pipeline, replica_id in held.items():
        replica = next(r for r in replicas if r.replica_id == replica_id)
        wait_for(lambda: replica.events("sync.cycle_completed", pipeline), 30, f"a cycle of {pipeline} on {replica_id}")

    status = run_cli(["status", "--json"], env)
    assert status.returncode == 0, status.stderr
    shown = {item["pipeline"]: item["held_by"] for item in json.loads(status.stdout)["pipelines"]}
    assert shown == held

    assert [replica.stop() for replica in replicas] == [0, 0]
    for replica in replicas:
        cycle_lines = [line for line in replica.lines() if line.get("event", "").startswith("sync.")]
        assert cycle_lines and all(line.get("pipeline") in held for line in cycle_lines)


def test_sigkill_of_the_leader_mid_cycle_loses_nothing(
    replicated_env: dict[str, str],
    start_replica: Callable[[str, dict[str, str]], Replica],
    charles: CharlesEmulator,
    reference_ids: set[str],
    postgres_url: str,
) -> None:
    charles.set_latency(0.15)
    env = {**replicated_env, "SFCHARLES_CHARLES_MAX_IN_FLIGHT": "2"}
    replicas = {name: start_replica(name, env) for name in ("r1", "r2", "r3")}
    leader_id = wait_for(lambda: current_holder(postgres_url, "contacts"), 30, "a leader")
    leader = replicas[leader_id]
    wait_for(lambda: len(charles.upserts) >= 10, 30, "the leader's first upserts")
    leader.process.kill()
    killed_at = time.monotonic()
    leader.process.wait()
    assert len(charles_ids(charles)) < len(reference_ids), "the cycle finished before the kill; slow Charles down"

    new_id = wait_for(lambda: current_holder(postgres_url, "contacts"), 30, "a new leader")
    assert new_id != leader_id
    taken_at = time.monotonic()
    new = replicas[new_id]
    wait_for(lambda: charles_ids(charles) >= reference_ids, 60, "every contact in Charles")
    assert charles_ids(charles) == reference_ids
    acquired = new.events("leader.acquired", "contacts")
    assert acquired
    assert acquired[0]["first_cycle_in_s"] == LEASE_S  # not handed back: it waited a lease
    assert taken_at - killed_at < HEARTBEAT_S * 4 + 5

    for name, replica in replicas.items():
        if name != leader_id:
            assert replica.stop() == 0


def test_cut_leader_stops_first(
    replicated_env: dict[str, str],
    start_replica: Callable[[str, dict[str, str]], Replica],
    charles: CharlesEmulator,
    reference_ids: set[str],
    postgres_url: str,
    postgres_server: PostgresServer,
) -> None:
    charles.set_latency(0.15)
    env = {**replicated_env, "SFCHARLES_CHARLES_MAX_IN_FLIGHT": "2"}
    replicas = {name: start_replica(name, env) for name in ("r1", "r2")}
    leader_id = wait_for(lambda: current_holder(postgres_url, "contacts"), 30, "a leader")
    old = replicas[leader_id]
    wait_for(lambda: len(charles.upserts) >= 10, 30, "the leader's first upserts")
    database = postgres_url.rsplit("/", 1)[1]
    terminated = postgres_server.admin_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
        (f"sfcharles {leader_id}", database),
    )
    assert terminated == [(True,)]

    new_id = wait_for(
        lambda: (holder := current_holder(postgres_url, "contacts")) not in (None, leader_id) and holder, 30, "another replica to take over"
    )
    new = replicas[new_id]
    wait_for(lambda: charles_ids(charles) >= reference_ids, 60, "every contact in Charles")
    wait_for(lambda: new.events("sync.cycle_completed", "contacts"), 30, "the new leader's first cycle")

    lost = old.events("leader.lost", "contacts")
    assert lost, "the old leader did not notice that it lost its lock"
    old_cycles = old.events("sync.cycle_completed", "contacts")
    assert old_cycles[-1]["status"] in ("failed", "interrupted")
    first_new_cycle = new.events("sync.cycle_started", "contacts")[0]
    # The old leader's last cycle ended before the new leader's first began.
    assert old_cycles[-1]["timestamp"] < first_new_cycle["timestamp"]
    # Its writes were refused or never attempted: every record reached Charles anyway.
    assert charles_ids(charles) == reference_ids
    # It stays up as a standby, reconnected.
    wait_for(lambda: len(old.events("leader.connected")) >= 2, 30, "the old leader to reconnect")
    assert old.process.poll() is None
    assert old.stop() == 0
    assert new.stop() == 0


def test_one_process_runs_every_pipeline_on_sqlite(
    env: dict[str, str], start_replica: Callable[[str, dict[str, str]], Replica], charles: CharlesEmulator, tmp_path: Path
) -> None:
    config = tmp_path / "pipelines.toml"
    config.write_text("[pipelines.first]\n\n[pipelines.second]\nlookback_s = 60\n")
    sqlite_env = {**env, "SFCHARLES_CONFIG_FILE": str(config), "SFCHARLES_POLL_INTERVAL_S": "2", "SFCHARLES_LOG_FORMAT": "json"}
    replica = start_replica("only", sqlite_env)
    for pipeline in ("first", "second"):
        wait_for(lambda p=pipeline: replica.events("sync.cycle_completed", p), 60, f"a cycle of {pipeline}")
    # The second process on the same SQLite file is refused as before, whatever the pipelines.
    second = run_cli(["run"], sqlite_env, timeout=60)
    assert second.returncode == 4, second.stderr
    assert replica.stop() == 0
    completed = replica.events("sync.cycle_completed")
    assert {line["pipeline"] for line in completed} == {"first", "second"}
    assert all(line["status"] == "succeeded" for line in completed)
    # Both pipelines sent the same contacts: each pipeline keeps its own state.
    assert len(charles.upserts) == 2 * len({body["external_reference_id"] for body in charles.upserts})


def test_check_covers_every_pipeline(env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / "field_maps" / "contact.yaml").read_text().replace("MobilePhone", "CellPhone__c"))
    config = tmp_path / "pipelines.toml"
    config.write_text(f'[pipelines.good]\n\n[pipelines.broken]\nfield_map = "{broken}"\n')

    result = run_cli(["check"], {**env, "SFCHARLES_CONFIG_FILE": str(config), "SFCHARLES_LOG_FORMAT": "json"})

    assert result.returncode == 2
    assert "pipeline broken: field map does not match Salesforce" in result.stderr
    assert "CellPhone__c" in result.stderr
    completed = {line["pipeline"]: line["field_map"] for line in json_lines(result.stdout) if line.get("event") == "check.completed"}
    assert completed == {"good": "ok", "broken": "invalid"}
