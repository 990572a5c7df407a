"""End-to-end demo on 127.0.0.1: emulators, a backfill, a few edits, an incremental cycle.

``make demo`` runs this module. It starts the Salesforce and Charles emulators as
separate processes seeded with the bundled sample Contacts, runs the connector's CLI
against them, checks what arrived in Charles, prints the connector's JSON log lines and a
short summary, stops the emulators and exits 0, or 1 when a check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from connector.field_map import Mapped, Skipped, load_field_map

CHARLES_KEY = "demo-charles-api-key"
CLIENT_ID = "demo-client-id"
CLIENT_SECRET = "demo-client-secret"
DEFAULT_REGION = "US"


class DemoFailure(Exception):
    pass


def _start(module: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start an emulator process and wait for its one-line JSON ready message."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise DemoFailure(f"{module} exited before it was ready (exit code {process.wait()})")
    return process, json.loads(line)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def _connector(args: list[str], env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    """Run the connector CLI, echo its JSON lines, and return the exit code and parsed lines."""
    result = subprocess.run([sys.executable, "-m", "connector", *args], env=env, capture_output=True, text=True, timeout=300)
    lines = []
    for raw in result.stdout.splitlines():
        print(f"    {raw}")
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    if result.stderr.strip():
        print(result.stderr.rstrip(), file=sys.stderr)
    return result.returncode, lines


def _summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    summaries = [line for line in lines if line.get("event") == "sync.cycle_completed"]
    if len(summaries) != 1:
        raise DemoFailure(f"expected one sync.cycle_completed line, found {len(summaries)}")
    return summaries[0]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)
    print(f"  ok: {message}")


def run_demo(workdir: Path) -> None:
    ca_file = workdir / "salesforce-ca.pem"
    salesforce, sf_ready = _start(
        "connector.emulators.salesforce", "--ca-file", str(ca_file), "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET
    )
    charles, charles_ready = _start("connector.emulators.charles", "--api-key", CHARLES_KEY)
    try:
        sf_url, charles_url = sf_ready["url"], charles_ready["url"]
        print(f"Salesforce emulator: {sf_url}   Charles emulator: {charles_url}")
        env = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
        env.update(
            SFCHARLES_SALESFORCE_LOGIN_URL=sf_url,
            SFCHARLES_SALESFORCE_CLIENT_ID=CLIENT_ID,
            SFCHARLES_SALESFORCE_CLIENT_SECRET=CLIENT_SECRET,
            SFCHARLES_SALESFORCE_CA_FILE=str(ca_file),
            SFCHARLES_CHARLES_BASE_URL=charles_url,
            SFCHARLES_CHARLES_API_KEY=CHARLES_KEY,
            SFCHARLES_DEFAULT_REGION=DEFAULT_REGION,
            SFCHARLES_STATE_URL=f"sqlite:///{workdir / 'state.db'}",
        )
        with httpx.Client(base_url=sf_url, verify=str(ca_file), timeout=30) as sf_admin, httpx.Client(base_url=charles_url, timeout=30) as charles_admin:
            _demo_steps(env, sf_admin, charles_admin)
    finally:
        _stop(salesforce)
        _stop(charles)


def _expected_outcomes(sf_admin: httpx.Client) -> dict[str, Mapped | Skipped]:
    """What the default map makes of every Contact the emulator holds, by Salesforce Id."""
    records = sf_admin.get("/_emulator/records/Contact").raise_for_status().json()["records"]
    field_map = load_field_map(default_region=DEFAULT_REGION)
    return {record["Id"]: field_map.apply(record) for record in records}


def _charles_people(charles_admin: httpx.Client) -> dict[str, dict[str, Any]]:
    """People stored in the Charles emulator, by the external_reference_id that keys them."""
    people = charles_admin.get("/_emulator/contacts").raise_for_status().json()["contacts"]
    return {person["channel_users"][0]["external_person_reference_id"]: person for person in people}


def _demo_steps(env: dict[str, str], sf_admin: httpx.Client, charles_admin: httpx.Client) -> None:
    expected = _expected_outcomes(sf_admin)
    mapped = {rid: outcome for rid, outcome in expected.items() if isinstance(outcome, Mapped)}
    skipped = Counter(outcome.reason for outcome in expected.values() if isinstance(outcome, Skipped))

    print("\n== 1. Backfill: every Contact from Salesforce into Charles")
    code, lines = _connector(["backfill"], env)
    backfill = _summary(lines)
    _expect(code == 0, "backfill exited 0")
    _expect(backfill["fetched"] == len(expected), f"fetched all {len(expected)} contacts")
    _expect(backfill["pushed"] == len(mapped), f"pushed the {len(mapped)} contacts with a valid phone number")
    _expect(backfill["skipped_by_reason"] == dict(skipped), f"skipped the others with reasons {dict(skipped)}")

    people = _charles_people(charles_admin)
    requests_after_backfill = charles_admin.get("/_emulator/requests").raise_for_status().json()["count"]
    _expect(requests_after_backfill == len(mapped), "Charles received one upsert per contact, none twice")
    for outcome in mapped.values():
        person = people.get(outcome.payload["external_reference_id"])
        if person is None or person.get("last_name") != outcome.payload.get("last_name"):
            raise DemoFailure(f"Charles is missing or has a wrong person for Salesforce record {outcome.record_id}")
    _expect(len(people) == len(mapped), "every mapped contact is stored in Charles with its mapped name")

    print("\n== 2. Edit contacts in Salesforce: three renamed, one invalid phone fixed")
    renamed = sorted(mapped)[:3]
    for number, record_id in enumerate(renamed, start=1):
        sf_admin.patch(f"/_emulator/records/Contact/{record_id}", json={"fields": {"LastName": f"Edited-{number}"}}).raise_for_status()
    fixed = sorted(rid for rid, outcome in expected.items() if isinstance(outcome, Skipped))[0]
    sf_admin.patch(f"/_emulator/records/Contact/{fixed}", json={"fields": {"MobilePhone": "+1 415 555 2671"}}).raise_for_status()
    changed = {*renamed, fixed}
    # The connector reads only changes stamped before Salesforce's current second; let it pass.
    time.sleep(1.2)

    print("\n== 3. Incremental cycle: only the changed contacts")
    code, lines = _connector(["sync"], env)
    incremental = _summary(lines)
    _expect(code == 0, "sync exited 0")
    _expect(incremental["fetched"] - incremental["reread"] == len(changed), f"read exactly the {len(changed)} changed contacts besides the lookback re-read")
    _expect(incremental["pushed"] == len(changed), f"pushed exactly the {len(changed)} changed contacts")
    requests_now = charles_admin.get("/_emulator/requests").raise_for_status().json()["count"]
    _expect(requests_now - requests_after_backfill == len(changed), "Charles received one upsert per changed contact")
    people = _charles_people(charles_admin)
    for number, record_id in enumerate(renamed, start=1):
        key = mapped[record_id].payload["external_reference_id"]
        if people[key]["last_name"] != f"Edited-{number}":
            raise DemoFailure(f"Charles does not show the new last name of Salesforce record {record_id}")
    _expect("+14155552671" in people, "the contact whose phone was fixed now exists in Charles")

    print("\n== 4. A second incremental cycle finds nothing new")
    code, lines = _connector(["sync"], env)
    idle = _summary(lines)
    _expect(code == 0 and idle["pushed"] == 0 and idle["fetched"] == idle["reread"], "nothing new read, nothing pushed")

    print("\nSummary")
    print(f"  backfill:    fetched {backfill['fetched']}, pushed {backfill['pushed']}, skipped {backfill['skipped']} {backfill['skipped_by_reason']}, {backfill['duration_s']} s")
    print(f"  incremental: fetched {incremental['fetched']} ({incremental['reread']} re-read in the lookback window), pushed {incremental['pushed']}, {incremental['duration_s']} s")
    print(f"  idle cycle:  fetched {idle['fetched']} ({idle['reread']} re-read in the lookback window), pushed {idle['pushed']}, {idle['duration_s']} s")
    print(f"  Charles now holds {len(people)} contacts from Salesforce")
    print(f"  watermark:   {idle['watermark_after']}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sfcharles-demo-") as workdir:
        try:
            run_demo(Path(workdir))
        except (DemoFailure, httpx.HTTPError) as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            return 1
    print("\nDemo finished: every check passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
