"""Failover of replicas on PostgreSQL: ``python -m bench.failover [--runs N] [--contacts N]``.

Starts a throwaway PostgreSQL server, the two emulators and two ``sfcharles run``
replicas with the default heartbeat and lease, all on 127.0.0.1. In each run the leader
is stopped mid-cycle in one of three ways, and the figures come from the replicas' own
log timestamps:

* ``kill``: SIGKILL. From the kill to the new leader's first cycle, and a check that
  Charles received every generated contact once the new leader's cycle ended.
* ``cut``: ``pg_terminate_backend`` on the leader's lock connection. From the cut to the
  old leader noticing, to its cycle ending, and to the new leader's first cycle.
* ``sigterm``: a clean stop, which hands the pipeline back, so the next leader need not
  wait a lease.

Then one replica leads 1 and then 8 idle pipelines of the sample org, polled every 5 s,
for its resident memory and CPU share.

Prints Markdown tables of medians and writes every measurement to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.processes import ROOT, Charles, Salesforce, charles, connector_env, cpu_seconds, salesforce, sfcharles_command
from tests.postgres import PostgresServer, find_bindir

SCENARIOS = ("kill", "cut", "sigterm")
DATABASE = "failover"


class Replica:
    def __init__(self, replica_id: str, env: dict[str, str], folder: Path) -> None:
        self.replica_id = replica_id
        self.log_path = folder / f"{replica_id}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*sfcharles_command(), "run"], env={**env, "SFCHARLES_REPLICA_ID": replica_id},
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                if item.get("event") == name:
                    lines.append(item)
        return lines

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def unix(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def people_in_charles(ch: Charles) -> int:
    with ch.admin() as client:
        return int(client.get("/_emulator/contacts").raise_for_status().json()["count"])


def one_run(scenario: str, server: PostgresServer, sf: Salesforce, ch: Charles, workdir: Path, contacts: int) -> dict[str, Any]:
    server.admin_sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    server.create_database(DATABASE)
    ch.reset(latency_s=0.02)
    env = connector_env(
        sf, ch, workdir / "unused.db",
        STATE_URL=server.url(DATABASE), CHARLES_MAX_IN_FLIGHT="4", POLL_INTERVAL_S="5", LOG_FORMAT="json",
    )
    first = Replica("replica-1", env, workdir)
    wait_for(lambda: first.events("sync.cycle_started"), 60, "the first replica's first cycle")
    second = Replica("replica-2", env, workdir)
    try:
        wait_for(lambda: second.events("daemon.started"), 60, "the second replica")
        wait_for(lambda: ch.counts()["upserts"] >= contacts // 10, 120, "a tenth of the upserts")
        stopped_at = time.time()
        if scenario == "kill":
            first.process.kill()
        elif scenario == "cut":
            terminated = server.admin_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                ("sfcharles replica-1", DATABASE),
            )
            if terminated != [(True,)]:
                raise RuntimeError(f"expected to terminate one lock connection, got {terminated}")
        else:
            first.process.send_signal(signal.SIGTERM)
        started = wait_for(lambda: second.events("sync.cycle_started"), 120, "the second replica's first cycle")
        acquired = second.events("leader.acquired")[0]
        result: dict[str, Any] = {
            "scenario": scenario,
            "takeover_s": round(unix(acquired) - stopped_at, 3),
            "first_cycle_s": round(unix(started[0]) - stopped_at, 3),
            "waited_lease_s": acquired["first_cycle_in_s"],
        }
        if scenario == "cut":
            lost = wait_for(lambda: first.events("leader.lost"), 60, "the first replica to notice")
            ended = wait_for(lambda: first.events("sync.cycle_completed"), 60, "the first replica's cycle to end")
            result["old_noticed_s"] = round(unix(lost[0]) - stopped_at, 3)
            result["old_cycle_ended_s"] = round(unix(ended[-1]) - stopped_at, 3)
            result["overlap"] = unix(ended[-1]) >= unix(started[0])
        if scenario == "kill":
            wait_for(lambda: second.events("sync.cycle_completed"), 600, "the second replica's cycle to end")
            result["contacts_in_charles"] = people_in_charles(ch)
            result["contacts_expected"] = contacts
        return result
    finally:
        first.stop()
        second.stop()


def capacity(pipelines: int, server: PostgresServer, sf: Salesforce, ch: Charles, workdir: Path, window_s: float) -> dict[str, Any]:
    """Measure one replica leading ``pipelines`` idle pipelines: resident memory and CPU share once they caught up."""
    server.admin_sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    server.create_database(DATABASE)
    ch.reset(latency_s=0.0)
    config = workdir / f"pipelines-{pipelines}.toml"
    config.write_text("".join(f"[pipelines.org-{n}]\n" for n in range(pipelines)))
    env = connector_env(
        sf, ch, workdir / "unused.db",
        STATE_URL=server.url(DATABASE), POLL_INTERVAL_S="5", LOG_FORMAT="json", CONFIG_FILE=str(config),
    )
    replica = Replica("replica-1", env, workdir)
    try:
        wait_for(lambda: len(replica.events("sync.cycle_completed")) >= 2 * pipelines, 600, "two cycles of every pipeline")
        before = cpu_seconds(replica.process.pid)
        time.sleep(window_s)
        after = cpu_seconds(replica.process.pid)
        status = Path(f"/proc/{replica.process.pid}/status").read_text()
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return {
            "pipelines": pipelines,
            "rss_mb": round(rss_kib / 1024, 1),
            "cpu_share": round((after - before) / window_s, 4),
            "window_s": window_s,
        }
    finally:
        replica.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--contacts", type=int, default=4000)
    parser.add_argument("--capacity", type=int, nargs="*", default=[1, 8], help="Pipelines per replica to measure idle; none to skip.")
    parser.add_argument("--window", type=float, default=30.0, help="Seconds over which idle CPU is measured.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "failover.json")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sfcharles-failover-") as folder:
        workdir = Path(folder)
        server = PostgresServer(find_bindir())
        server.start()
        try:
            with salesforce(workdir, generated_contacts=args.contacts) as sf, charles() as ch:
                for run in range(args.runs):
                    for scenario in SCENARIOS:
                        result = one_run(scenario, server, sf, ch, workdir, args.contacts)
                        result["run"] = run + 1
                        print(json.dumps(result), file=sys.stderr, flush=True)
                        results.append(result)
            with salesforce(workdir, seeded=True) as sf, charles() as ch:
                for count in args.capacity:
                    load = capacity(count, server, sf, ch, workdir, args.window)
                    print(json.dumps(load), file=sys.stderr, flush=True)
                    loads.append(load)
        finally:
            server.stop()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "contacts": args.contacts, "results": results, "idle_replica": loads}, indent=2) + "\n")
    print("| Scenario | Takeover (lock taken) | First cycle of the new leader | Old leader noticed | Old cycle ended |")
    print("|---|---|---|---|---|")
    for scenario in SCENARIOS:
        rows = [result for result in results if result["scenario"] == scenario]

        def median(key: str, rows: list[dict[str, Any]] = rows) -> str:
            values = [row[key] for row in rows if key in row]
            return f"{statistics.median(values):.2f} s" if values else "-"

        print(f"| {scenario} | {median('takeover_s')} | {median('first_cycle_s')} | {median('old_noticed_s')} | {median('old_cycle_ended_s')} |")
    if loads:
        print()
        print("| Idle pipelines on one replica | Resident memory | CPU share |")
        print("|---|---|---|")
        for load in loads:
            print(f"| {load['pipelines']} | {load['rss_mb']} MB | {load['cpu_share'] * 100:.1f}% of one core |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
