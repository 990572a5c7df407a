"""Mapping cost: map, hash and serialise generated Contacts with the default field map, in this process.

The records are the generated Contacts in the form Salesforce's JSON gives them, built
before the clock starts. The timed loop does per record what a cycle does before a push:
``FieldMap.apply``, ``payload_hash`` and ``json.dumps`` of the payload. The figure is
records per CPU second of this single-threaded loop, so it is the rate on one core.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from bench.report import Result, median
from bench.workloads import Profile
from connector.emulators.generated import GeneratedContacts
from connector.emulators.salesforce import USER_ID, format_datetime, make_id
from connector.field_map import Mapped, load_field_map
from connector.outcomes import payload_hash

TARGET_PER_S = 20_000


def api_records(count: int) -> list[dict[str, Any]]:
    """Return ``count`` generated Contacts as the REST API renders them (datetimes as text)."""
    contacts = GeneratedContacts(count, end=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), make_id=make_id, owner_id=USER_ID)
    return [
        {name: format_datetime(value) if isinstance(value, dt.datetime) else value for name, value in contacts.record(index).items()}
        for index in range(count)
    ]


def map_all(records: list[dict[str, Any]]) -> int:
    """Map, hash and serialise every record; return how many were mapped."""
    field_map = load_field_map(default_region="US")
    mapped = 0
    for record in records:
        outcome = field_map.apply(record)
        if isinstance(outcome, Mapped):
            payload_hash(outcome.payload)
            json.dumps(outcome.payload)
            mapped += 1
    return mapped


def run(profile: Profile, workdir: Path) -> list[Result]:
    records = api_records(profile.mapping_contacts)
    cpu_rates: list[float] = []
    wall_rates: list[float] = []
    for _ in range(profile.runs):
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        mapped = map_all(records)
        cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - wall_started
        if mapped != len(records):
            raise RuntimeError(f"the default map skipped {len(records) - mapped} of {len(records)} generated contacts")
        cpu_rates.append(len(records) / cpu_s)
        wall_rates.append(len(records) / wall_s)
    rate = median(cpu_rates)
    return [
        Result(
            key="mapping",
            title="Mapping cost",
            workload=f"{len(records):,} generated contacts, default map, apply + payload_hash + json.dumps, no network",
            figure=f"{rate:,.0f} contacts/s per core ({1e6 / rate:.0f} µs each; wall clock {median(wall_rates):,.0f}/s)",
            target=f"≥ {TARGET_PER_S:,} contacts/s on one core",
            met=rate >= TARGET_PER_S,
            emulator="no network",
            commands=["python -m bench --only mapping (in-process: bench/mapping.py)"],
            values={"contacts_per_cpu_s": cpu_rates, "contacts_per_wall_s": wall_rates},
        )
    ]
