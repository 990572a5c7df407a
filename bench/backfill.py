"""Backfills of large generated orgs: peak memory, and a second backfill of unchanged contacts.

The connector runs as users run it, ``sfcharles backfill`` in its own process, against
the Salesforce emulator's generated Contacts and a Charles emulator that only counts
requests (``--no-store``) and adds no latency. Peak resident memory is the ``wait4``
figure of the connector process alone.

Each small run backfills into a fresh state store and then backfills again: the first
backfill gives the small memory figure, the second the unchanged re-sync figures.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from bench import processes
from bench.report import Result, median
from bench.workloads import Profile
from connector.salesforce import build_changes_query

TARGET_PEAK_MB = 250
TARGET_GROWTH = 0.15
TARGET_SPEEDUP = 5.0
IN_FLIGHT = 8  # the connector's default
MAP_FIELDS = [
    "FirstName", "MiddleName", "LastName", "MobilePhone", "Phone", "Email", "LeadSource",
    "MailingStreet", "MailingCity", "MailingState", "MailingPostalCode", "MailingCountry",
]


def _backfill(sf: processes.Salesforce, ch: processes.Charles, state_db: Path, contacts: int) -> tuple[processes.ConnectorRun, dict[str, Any]]:
    env = processes.connector_env(sf, ch, state_db)
    run = processes.run_connector(["backfill"], env, timeout_s=300 + contacts * 0.01)
    summary = run.summary()
    if summary["status"] != "succeeded" or summary["fetched"] != contacts:
        raise processes.BenchError(
            f"the backfill read {summary['fetched']} of {contacts} contacts, status {summary['status']}, error {summary.get('error')}"
        )
    return run, summary


def _raw_read_rate(sf: processes.Salesforce, contacts: int) -> tuple[float, list[str]]:
    soql = build_changes_query("Contact", MAP_FIELDS, None, dt.datetime.now(dt.timezone.utc))
    result, command = processes.run_json(
        "bench.ceiling",
        ["salesforce", "--url", sf.url, "--ca-file", sf.ca_file, "--client-id", processes.CLIENT_ID,
         "--client-secret", processes.CLIENT_SECRET, "--soql", soql],
        timeout_s=300 + contacts * 0.001,
    )
    return result["per_second"], command


def run(profile: Profile, workdir: Path) -> list[Result]:
    small, large = profile.memory_small, profile.memory_large
    small_rss: list[float] = []
    large_rss: list[float] = []
    large_bulk: list[bool] = []
    first_s: list[float] = []
    second_s: list[float] = []
    second_requests: list[int] = []
    speedups: list[float] = []
    first_rates: list[float] = []

    with processes.charles(store=False) as ch:
        with processes.salesforce(workdir, generated_contacts=small) as sf:
            for number in range(profile.runs):
                state_db = workdir / f"backfill-{number}.db"
                ch.reset(0.0)
                first, first_summary = _backfill(sf, ch, state_db, small)
                requests_after_first = ch.counts()["count"]
                second, second_summary = _backfill(sf, ch, state_db, small)
                small_rss.append(first.peak_rss_mb)
                first_s.append(first_summary["duration_s"])
                second_s.append(second_summary["duration_s"])
                second_requests.append(ch.counts()["count"] - requests_after_first)
                speedups.append(first_summary["duration_s"] / second_summary["duration_s"])
                first_rates.append(first_summary["pushed"] / first_summary["duration_s"])
            read_rate, read_command = _raw_read_rate(sf, small)
            names = processes.placeholders(sf, ch)
            small_commands = [processes.display(sf.command, names)]
            read_shown = processes.display(read_command, names)
        ch.reset(0.0)
        raw, raw_command = processes.run_json(
            "bench.ceiling",
            ["charles", "--url", ch.url, "--api-key", processes.CHARLES_KEY,
             "--requests", str(min(small, 20_000)), "--concurrency", str(IN_FLIGHT)],
            timeout_s=300,
        )

        with processes.salesforce(workdir, generated_contacts=large) as sf:
            for number in range(profile.large_runs):
                ch.reset(0.0)
                first, _ = _backfill(sf, ch, workdir / f"backfill-large-{number}.db", large)
                large_rss.append(first.peak_rss_mb)
                large_bulk.append(any(line.get("event") == "sync.bulk_selected" for line in first.lines))
            large_commands = [processes.display(sf.command, processes.placeholders(sf, ch))]
        charles_command = processes.display(ch.command, names)
        raw_shown = processes.display(raw_command, names)

    backfill_command = f"SFCHARLES_DEFAULT_REGION=US {processes.display([*processes.sfcharles_command(), 'backfill'])}"
    emulator = (
        f"raw clients: Salesforce {read_rate:,.0f} records/s read, "
        f"Charles {raw['per_second']:,.0f} requests/s at {IN_FLIGHT} connections; connector first backfill {median(first_rates):,.0f}/s"
    )
    peak_small, peak_large = median(small_rss), median(large_rss)
    growth = peak_large / peak_small - 1
    memory = Result(
        key="memory",
        title="Memory",
        workload=(
            f"backfill of {large:,} generated contacts ({'Bulk API 2.0' if all(large_bulk) else 'REST queries'}, "
            f"the default for that size), compared with {small:,}; {profile.large_runs} run{'s' if profile.large_runs != 1 else ''} of the large one"
        ),
        figure=f"peak RSS {peak_large:.0f} MB for {large:,}, {peak_small:.0f} MB for {small:,} ({growth:+.0%})",
        target=f"≤ {TARGET_PEAK_MB} MB and within {TARGET_GROWTH:.0%} of the {small:,} run",
        met=peak_large <= TARGET_PEAK_MB and growth <= TARGET_GROWTH,
        emulator=emulator,
        commands=[*small_commands, *large_commands, charles_command, backfill_command],
        values={
            "peak_rss_mb_small": small_rss,
            "peak_rss_mb_large": large_rss,
            "large_runs": profile.large_runs,
            "large_read_through_bulk_api": large_bulk,
        },
    )
    resync = Result(
        key="unchanged_resync",
        title="Unchanged re-sync",
        workload=f"second backfill of {small:,} unchanged contacts",
        figure=(
            f"{max(second_requests)} Charles requests; {median(second_s):.1f} s against {median(first_s):.1f} s "
            f"for the first backfill ({median(speedups):.1f}× faster)"
        ),
        target=f"0 Charles requests and ≥ {TARGET_SPEEDUP:g}× faster than the first",
        met=max(second_requests) == 0 and median(speedups) >= TARGET_SPEEDUP,
        emulator=emulator,
        commands=[*small_commands, charles_command, f"{backfill_command}   # twice, same state store", read_shown, raw_shown],
        values={"first_s": first_s, "second_s": second_s, "second_requests": second_requests, "speedup": speedups},
    )
    return [memory, resync]
