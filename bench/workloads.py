"""Workload sizes of the benchmark profiles: full (the figures in docs/benchmarks.md), quick and tiny."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    """Workload sizes of the benchmarks and the number of runs of each.

    ``runs`` repeats every benchmark except the large memory run, which runs
    ``large_runs`` times because it alone takes longer than the others together.
    """

    name: str
    runs: int
    push_contacts: int
    baseline_sample: int  # upserts the sequential baseline sends; the harness scales its time up
    charles_ceiling_requests: int
    mapping_contacts: int
    memory_small: int
    memory_large: int
    large_runs: int
    idle_contacts: int
    idle_cycles: int
    latency_changes: int
    latency_interval_s: float


FULL = Profile(
    name="full",
    runs=3,
    push_contacts=20_000,
    baseline_sample=500,
    charles_ceiling_requests=4_000,
    mapping_contacts=100_000,
    memory_small=100_000,
    memory_large=1_000_000,
    large_runs=1,
    idle_contacts=20_000,
    idle_cycles=10,
    latency_changes=50,
    latency_interval_s=5.0,
)

QUICK = Profile(
    name="quick",
    runs=2,
    push_contacts=4_000,
    baseline_sample=200,
    charles_ceiling_requests=1_000,
    mapping_contacts=20_000,
    memory_small=20_000,
    memory_large=200_000,
    large_runs=1,
    idle_contacts=4_000,
    idle_cycles=5,
    latency_changes=20,
    latency_interval_s=5.0,
)


def tiny(contacts: int, runs: int) -> Profile:
    """Return a profile with every workload of about ``contacts`` records, for checking the harness itself."""
    return Profile(
        name=f"tiny-{contacts}",
        runs=runs,
        push_contacts=contacts,
        baseline_sample=min(contacts, 20),
        charles_ceiling_requests=min(contacts, 200),
        mapping_contacts=contacts,
        memory_small=contacts,
        memory_large=contacts * 10,
        large_runs=1,
        idle_contacts=contacts,
        idle_cycles=2,
        latency_changes=min(contacts, 5),
        latency_interval_s=1.0,
    )


def with_runs(profile: Profile, runs: int | None) -> Profile:
    return profile if runs is None else replace(profile, runs=runs)
