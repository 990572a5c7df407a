"""Push throughput of a backfill against a slow Charles, and the sequential baseline script.

Both run against the same two emulator processes, with the Charles emulator adding the
same latency to every request. Each run does the connector, the baseline and the raw
client one after the other, so the ratio of a run compares figures taken moments apart.
"""

from __future__ import annotations

from pathlib import Path

from bench import processes
from bench.report import Result, median
from bench.workloads import Profile

LATENCY_S = 0.050
IN_FLIGHT = 16
TARGET_SHARE_OF_CEILING = 0.90
TARGET_RATIO = 12.0


def run(profile: Profile, workdir: Path) -> list[Result]:
    contacts = profile.push_contacts
    ceiling = IN_FLIGHT / LATENCY_S
    connector_rates: list[float] = []
    wall_rates: list[float] = []
    baseline_rates: list[float] = []
    ratios: list[float] = []
    raw_rates: list[float] = []
    baseline_details: list[dict[str, float]] = []

    with processes.salesforce(workdir, generated_contacts=contacts) as sf, processes.charles(latency_ms=LATENCY_S * 1000) as ch:
        connector_command: list[str] = []
        baseline_command: list[str] = []
        raw_command: list[str] = []
        for number in range(profile.runs):
            ch.reset(LATENCY_S)
            env = processes.connector_env(sf, ch, workdir / f"push-{number}.db", charles_max_in_flight=str(IN_FLIGHT))
            connector = processes.run_connector(["backfill"], env, timeout_s=120 + contacts * 0.02)
            summary = connector.summary()
            if summary["status"] != "succeeded" or summary["pushed"] != contacts:
                raise processes.BenchError(
                    f"the backfill pushed {summary['pushed']} of {contacts} contacts, status {summary['status']}, error {summary.get('error')}"
                )
            if ch.counts()["count"] != contacts:
                raise processes.BenchError(f"Charles received {ch.counts()['count']} requests for {contacts} contacts")
            connector_rates.append(summary["pushed"] / summary["duration_s"])
            wall_rates.append(summary["pushed"] / connector.wall_s)
            connector_command = [*processes.sfcharles_command(), "backfill"]

            ch.reset(LATENCY_S)
            baseline, baseline_command = processes.run_json(
                "bench.baseline",
                [
                    "--salesforce-url", sf.url, "--ca-file", sf.ca_file, "--client-id", processes.CLIENT_ID,
                    "--client-secret", processes.CLIENT_SECRET, "--charles-url", ch.url,
                    "--charles-key", processes.CHARLES_KEY, "--limit", str(profile.baseline_sample),
                ],
                timeout_s=300 + profile.baseline_sample * 0.5,
            )
            # Sequential puts take the same time each, so the measured sample scales to the whole workload.
            projected_s = baseline["read_s"] + baseline["push_s"] * contacts / baseline["sent"]
            baseline_rates.append(contacts / projected_s)
            baseline_details.append({**baseline, "projected_s": projected_s})
            ratios.append(connector_rates[-1] / baseline_rates[-1])

            ch.reset(LATENCY_S)
            raw, raw_command = processes.run_json(
                "bench.ceiling",
                ["charles", "--url", ch.url, "--api-key", processes.CHARLES_KEY,
                 "--requests", str(profile.charles_ceiling_requests), "--concurrency", str(IN_FLIGHT)],
                timeout_s=120 + profile.charles_ceiling_requests * 0.05,
            )
            raw_rates.append(raw["per_second"])

        names = processes.placeholders(sf, ch)
        emulators = [processes.display(sf.command, names), processes.display(ch.command, names)]

    rate = median(connector_rates)
    ratio = median(ratios)
    raw_rate = median(raw_rates)
    share = rate / ceiling
    emulator = f"raw client, {IN_FLIGHT} connections: {raw_rate:.0f} requests/s ({raw_rate / ceiling:.0%} of the ceiling)"
    push = Result(
        key="push_throughput",
        title="Push throughput",
        workload=f"backfill of {contacts:,} contacts, Charles +{LATENCY_S * 1000:.0f} ms per request, in-flight {IN_FLIGHT}",
        figure=(
            f"{rate:.0f} contacts/s = {share:.0%} of the {ceiling:.0f}/s ceiling; {ratio:.1f}× the baseline "
            f"(process wall clock: {median(wall_rates):.0f}/s)"
        ),
        target=f"≥ {TARGET_SHARE_OF_CEILING:.0%} of ceiling ({TARGET_SHARE_OF_CEILING * ceiling:.0f}/s) and ≥ {TARGET_RATIO:g}× baseline",
        met=share >= TARGET_SHARE_OF_CEILING and ratio >= TARGET_RATIO,
        emulator=emulator,
        commands=[
            *emulators,
            f"SFCHARLES_CHARLES_MAX_IN_FLIGHT={IN_FLIGHT} SFCHARLES_DEFAULT_REGION=US {processes.display(connector_command)}",
            processes.display(raw_command, names),
        ],
        values={
            "contacts_per_s": connector_rates,
            "wall_contacts_per_s": wall_rates,
            "ceiling_per_s": ceiling,
            "share_of_ceiling": share,
            "ratio_to_baseline": ratios,
            "raw_client_per_s": raw_rates,
        },
    )
    baseline_rate = median(baseline_rates)
    baseline_row = Result(
        key="baseline",
        title="Baseline (sequential script)",
        workload=(
            f"simple-salesforce query_all of {contacts:,} contacts, then one httpx.put each; "
            f"{profile.baseline_sample:,} puts timed and scaled to {contacts:,}"
        ),
        figure=f"{baseline_rate:.1f} contacts/s (whole workload: {contacts / baseline_rate:,.0f} s)",
        target="reported, no target",
        met=None,
        emulator=emulator,
        commands=[*emulators, processes.display(baseline_command, names)],
        values={"contacts_per_s": baseline_rates, "runs": baseline_details},
    )
    return [push, baseline_row]
