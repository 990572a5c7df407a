"""The daemon, ``sfcharles run``, after a backfill: idle cycles and the latency of changes.

Idle: nothing changes in Salesforce, the daemon polls every second, and the harness
counts the Salesforce API calls (the emulator's own counter) and the daemon's CPU time
(/proc) across a number of cycles after the first two.

Change latency: the daemon polls every ``latency_interval_s`` seconds while the harness
changes the last name of one contact at a time at random moments spread over four poll
intervals. Each latency runs from the change's SystemModstamp (the Salesforce emulator's
clock) to the ``updated_at`` of the person in the Charles emulator (its clock). Both
emulators read the same system clock.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from pathlib import Path
from typing import Any

from bench import processes
from bench.report import Result, median
from bench.workloads import Profile
from connector.cursor import Watermark, parse_salesforce_datetime
from connector.field_map import Mapped, load_field_map
from connector.salesforce import build_changes_query

TARGET_CALLS = 2
TARGET_CPU_MS = 50.0
TARGET_SLACK_S = 1.0
LOOKBACK_S = 600.0  # the connector's default SFCHARLES_LOOKBACK_S
WARM_UP_CYCLES = 2
MAP_FIELDS = ["FirstName", "LastName", "MobilePhone", "Phone", "Email", "MailingCountry"]


def _raw_window_read(sf: processes.Salesforce, watermark: str) -> tuple[dict[str, Any], list[str]]:
    """Time a raw client reading the window an idle cycle reads: the lookback behind the watermark."""
    after = Watermark.start_of(parse_salesforce_datetime(watermark.split("/")[0]) - dt.timedelta(seconds=LOOKBACK_S))
    soql = build_changes_query("Contact", MAP_FIELDS, after, dt.datetime.now(dt.timezone.utc))
    return processes.run_json(
        "bench.ceiling",
        ["salesforce", "--url", sf.url, "--ca-file", sf.ca_file, "--client-id", processes.CLIENT_ID,
         "--client-secret", processes.CLIENT_SECRET, "--soql", soql],
        timeout_s=120,
    )


def idle(profile: Profile, workdir: Path) -> list[Result]:
    cycles = profile.idle_cycles
    calls_per_cycle: list[float] = []
    cpu_ms_per_cycle: list[float] = []
    reread: list[int] = []
    with processes.salesforce(workdir, generated_contacts=profile.idle_contacts) as sf, processes.charles() as ch:
        env = processes.connector_env(sf, ch, workdir / "idle.db", poll_interval_s="1")
        backfill = processes.run_connector(["backfill"], env, timeout_s=300 + profile.idle_contacts * 0.02).summary()
        for _ in range(profile.runs):
            requests_before = ch.counts()["count"]
            with processes.daemon(env) as daemon:
                daemon.wait_for_cycles(WARM_UP_CYCLES, timeout_s=120)
                calls_before, cpu_before = sf.api_calls(), processes.cpu_seconds(daemon.process.pid)
                summaries = daemon.wait_for_cycles(WARM_UP_CYCLES + cycles, timeout_s=120 + cycles * 30)
                calls_after, cpu_after = sf.api_calls(), processes.cpu_seconds(daemon.process.pid)
                command = daemon.command
            if ch.counts()["count"] != requests_before:
                raise processes.BenchError("the idle daemon sent upserts to Charles although nothing changed")
            calls_per_cycle.append((calls_after - calls_before) / cycles)
            cpu_ms_per_cycle.append((cpu_after - cpu_before) * 1000 / cycles)
            reread.append(summaries[-1]["reread"])
        raw, raw_command = _raw_window_read(sf, backfill["watermark_after"])
        names = processes.placeholders(sf, ch)

    calls, cpu_ms = median(calls_per_cycle), median(cpu_ms_per_cycle)
    return [Result(
        key="idle_cycle",
        title="Idle cycle",
        workload=(
            f"{profile.idle_contacts:,} contacts after a backfill, no changes, poll every 1 s, {cycles} cycles per run; "
            f"each cycle re-reads the {median(reread):,.0f} records of the {LOOKBACK_S:.0f} s lookback"
        ),
        figure=f"{calls:.1f} Salesforce API calls and {cpu_ms:.0f} ms CPU per cycle",
        target=f"≤ {TARGET_CALLS} API calls and ≤ {TARGET_CPU_MS:.0f} ms CPU per cycle",
        met=calls <= TARGET_CALLS and cpu_ms <= TARGET_CPU_MS,
        emulator=f"raw client, login + the same lookback query: {raw['records']:,} records in {raw['seconds'] * 1000:.0f} ms",
        commands=[
            processes.display(sf.command, names),
            processes.display(ch.command, names),
            f"SFCHARLES_POLL_INTERVAL_S=1 SFCHARLES_DEFAULT_REGION=US {processes.display(command)}   # after sfcharles backfill",
            processes.display(raw_command, names),
        ],
        values={"api_calls_per_cycle": calls_per_cycle, "cpu_ms_per_cycle": cpu_ms_per_cycle, "reread_per_cycle": reread},
    )]


def _percentile(values: list[float], share: float) -> float:
    """Return the nearest-rank percentile: the smallest value with ``share`` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _mapped_ids(sf: processes.Salesforce) -> list[str]:
    """Return the Ids of the stored Contacts that the default map sends to Charles."""
    field_map = load_field_map(default_region="US")
    with sf.admin() as admin:
        records = admin.get("/_emulator/records/Contact").raise_for_status().json()["records"]
    return sorted(record["Id"] for record in records if isinstance(field_map.apply(record), Mapped))


def _change_once(sf: processes.Salesforce, ch: processes.Charles, ids: list[str], run: int, interval_s: float) -> list[float]:
    """Change each record once at random moments over four intervals; return each change's latency in seconds."""
    rng = random.Random(run)
    moments = sorted(rng.uniform(0, 4 * interval_s) for _ in ids)
    markers = {record_id: f"Latency {run}-{number}" for number, record_id in enumerate(ids)}
    started = time.monotonic()
    with sf.admin() as admin:
        for record_id, moment in zip(ids, moments, strict=True):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            admin.patch(f"/_emulator/records/Contact/{record_id}", json={"fields": {"LastName": markers[record_id]}}).raise_for_status()
        changed_at = {
            record_id: parse_salesforce_datetime(admin.get(f"/_emulator/records/Contact/{record_id}").raise_for_status().json()["SystemModstamp"])
            for record_id in ids
        }

    deadline = time.monotonic() + 3 * interval_s + 30
    arrived: dict[str, dt.datetime] = {}
    with ch.admin() as admin:
        while len(arrived) < len(ids):
            if time.monotonic() > deadline:
                raise processes.BenchError(f"{len(ids) - len(arrived)} of {len(ids)} changes never reached Charles")
            people = admin.get("/_emulator/contacts").raise_for_status().json()["contacts"]
            by_marker = {person["last_name"]: person for person in people}
            for record_id, marker in markers.items():
                if record_id not in arrived and marker in by_marker:
                    arrived[record_id] = parse_salesforce_datetime(by_marker[marker]["updated_at"])
            time.sleep(0.25)
    return [(arrived[record_id] - changed_at[record_id]).total_seconds() for record_id in ids]


def change_latency(profile: Profile, workdir: Path) -> list[Result]:
    interval = profile.latency_interval_s
    latencies: list[float] = []
    per_run_p95: list[float] = []
    with processes.salesforce(workdir, seeded=True) as sf, processes.charles() as ch:
        env = processes.connector_env(sf, ch, workdir / "latency.db", poll_interval_s=f"{interval:g}")
        backfill = processes.run_connector(["backfill"], env, timeout_s=300).summary()
        ids = _mapped_ids(sf)[: profile.latency_changes]
        if len(ids) < profile.latency_changes:
            raise processes.BenchError(f"the sample org has only {len(ids)} contacts that the default map sends")
        for run in range(profile.runs):
            with processes.daemon(env) as daemon:
                daemon.wait_for_cycles(1, timeout_s=120)
                run_latencies = _change_once(sf, ch, ids, run, interval)
                command = daemon.command
            latencies += run_latencies
            per_run_p95.append(_percentile(run_latencies, 0.95))
        raw, raw_command = _raw_window_read(sf, backfill["watermark_after"])
        names = processes.placeholders(sf, ch)

    p95 = _percentile(latencies, 0.95)
    limit = interval + TARGET_SLACK_S
    return [Result(
        key="change_latency",
        title="Change latency",
        workload=f"{len(ids)} changes over four poll intervals, daemon polling every {interval:g} s, {profile.runs} runs",
        figure=(
            f"p95 {p95:.2f} s over {len(latencies)} changes (per run: {', '.join(f'{value:.2f}' for value in per_run_p95)} s); "
            f"median {median(latencies):.2f} s, max {max(latencies):.2f} s"
        ),
        target=f"p95 ≤ {limit:g} s (interval + {TARGET_SLACK_S:g} s)",
        met=p95 <= limit,
        emulator=f"raw client, login + the cycle's lookback query: {raw['records']:,} records in {raw['seconds'] * 1000:.0f} ms",
        commands=[
            processes.display(sf.command, names),
            processes.display(ch.command, names),
            f"SFCHARLES_POLL_INTERVAL_S={interval:g} SFCHARLES_DEFAULT_REGION=US {processes.display(command)}   # after sfcharles backfill",
            processes.display(raw_command, names),
        ],
        values={"latencies_s": latencies, "p95_per_run_s": per_run_p95},
    )]


