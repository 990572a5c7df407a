"""The incremental window after an idle cycle, per-slice decisions, and merge winners sent again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.emulators.salesforce import SalesforceEmulator
from connector.sync import DECIDE_SLICE
from tests.conftest import CLIENT_SECRET


@pytest.fixture
def empty_org():
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET) as emulator:
        yield emulator


@pytest.fixture
def app_for(make_app):
    def build(salesforce: SalesforceEmulator, **overrides: str):
        return make_app(salesforce_login_url=salesforce.url, salesforce_ca_file=str(salesforce.ca_file), **overrides)

    return build


def phone(n: int) -> str:
    return f"+1415555{n:04d}"


def count_apply_calls(syncer) -> list[str]:
    calls: list[str] = []
    apply = syncer.field_map.apply

    def counting(record):
        calls.append(record.get("Id"))
        return apply(record)

    syncer.field_map.apply = counting
    return calls


def test_idle_cycle_reads_empty_window(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    for n in range(5):
        empty_org.create_record("Contact", {"LastName": f"Old{n}", "MobilePhone": phone(n)}, modstamp=now - timedelta(seconds=1200))
    syncer = app_for(empty_org).syncer()
    first = syncer.run_cycle()
    empty_org.advance(2)
    second = syncer.run_cycle()
    calls = empty_org.api_calls

    third = syncer.run_cycle()

    assert first.pushed == 5
    # The second cycle has the first one's window end: the records are older than it less
    # the lookback, so the window starts at the watermark.
    assert second.fetched == 0
    assert third.fetched == 0
    assert third.status == "succeeded"
    assert empty_org.api_calls - calls <= 2


def test_late_commit_found_after_idle_cycles(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    empty_org.create_record("Contact", {"LastName": "Old", "MobilePhone": phone(1)}, modstamp=now - timedelta(seconds=1200))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    empty_org.advance(5)
    assert syncer.run_cycle().fetched == 0
    # A long transaction commits a record stamped before the last window end, within the lookback.
    late = empty_org.create_record("Contact", {"LastName": "Late", "MobilePhone": phone(2)}, modstamp=empty_org.now() - timedelta(seconds=300))

    report = syncer.run_cycle()

    assert report.pushed == 1
    assert charles.upserts[-1]["custom_properties"]["salesforce_id"] == late


def test_failed_cycle_window_end_ignored(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    empty_org.create_record("Contact", {"LastName": "Old", "MobilePhone": phone(1)}, modstamp=now - timedelta(seconds=1200))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    succeeded_end = syncer.store.last_window_end(syncer.pipeline, "incremental")
    # A failed cycle with a later window end, as a crash in the middle of a read leaves.
    syncer.store.start_cycle("failed-cycle", syncer.pipeline, "incremental", None)
    later = (now + timedelta(seconds=3600)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    syncer.store.finish_cycle("failed-cycle", status="failed", counts={}, watermark_after=None, summary={"window_end": later})

    assert syncer.store.last_window_end(syncer.pipeline, "incremental") == succeeded_end
    late = empty_org.create_record("Contact", {"LastName": "Late", "MobilePhone": phone(2)}, modstamp=empty_org.now() - timedelta(seconds=300))
    report = syncer.run_cycle()

    assert report.pushed == 1
    assert charles.upserts[-1]["custom_properties"]["salesforce_id"] == late


def test_window_end_in_cycle_summary(charles, empty_org, app_for) -> None:
    syncer = app_for(empty_org).syncer()

    report = syncer.run_cycle()

    assert report.log_fields()["window_end"] is not None
    assert syncer.store.last_window_end(syncer.pipeline, "incremental") == report.window_end.replace(
        microsecond=report.window_end.microsecond // 1000 * 1000
    )


def test_reread_records_not_mapped(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    ids = [empty_org.create_record("Contact", {"LastName": f"N{n}", "MobilePhone": phone(n)}, modstamp=now - timedelta(seconds=60)) for n in range(5)]
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    changed = ids[2]
    empty_org.update_record("Contact", changed, {"LastName": "Changed"}, modstamp=now - timedelta(seconds=30))
    calls = count_apply_calls(syncer)

    report = syncer.run_cycle()

    assert report.reread == 4
    assert report.pushed == 1
    assert calls == [changed]


def test_forced_backfill_maps_every_record(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    for n in range(3):
        empty_org.create_record("Contact", {"LastName": f"N{n}", "MobilePhone": phone(n)}, modstamp=now - timedelta(seconds=60))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    calls = count_apply_calls(syncer)

    report = syncer.run_cycle("backfill", force=True)

    assert report.pushed == 3
    assert len(calls) == 3


def test_key_released_in_earlier_slice(charles, empty_org, app_for) -> None:
    """A key that one record gives up is free for a record in a later slice of the same page."""
    old = empty_org.now() - timedelta(seconds=120)
    giver = empty_org.create_record("Contact", {"LastName": "Giver", "MobilePhone": phone(1)}, modstamp=old)
    fillers = [
        empty_org.create_record("Contact", {"LastName": f"F{n}", "MobilePhone": phone(100 + n)}, modstamp=old)
        for n in range(DECIDE_SLICE + 10)
    ]
    taker = empty_org.create_record("Contact", {"LastName": "Taker", "MobilePhone": phone(2)}, modstamp=old)
    syncer = app_for(empty_org).syncer()
    assert syncer.run_cycle().pushed == DECIDE_SLICE + 12

    changed = empty_org.now() - timedelta(seconds=60)
    empty_org.update_record("Contact", giver, {"MobilePhone": phone(3)}, modstamp=changed)
    for n, filler in enumerate(fillers):
        empty_org.update_record("Contact", filler, {"LastName": f"G{n}"}, modstamp=changed)
    empty_org.update_record("Contact", taker, {"MobilePhone": phone(1)}, modstamp=changed)
    report = syncer.run_cycle()

    assert report.set_aside == 0
    assert report.pushed == DECIDE_SLICE + 12
    owners = syncer.store.key_owners(syncer.pipeline, [phone(1), phone(3)])
    assert owners == {phone(1): taker, phone(3): giver}


def test_pushed_merge_winner_not_sent_again(charles, empty_org, app_for) -> None:
    stamp = empty_org.now() - timedelta(seconds=60)
    winner = empty_org.create_record("Contact", {"LastName": "Winner", "MobilePhone": phone(1)}, modstamp=stamp)
    loser = empty_org.create_record("Contact", {"LastName": "Loser", "MobilePhone": phone(2)}, modstamp=stamp)
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    empty_org.update_record("Contact", winner, {"LastName": "Winner Renamed"}, modstamp=stamp + timedelta(seconds=10))
    empty_org.merge_records("Contact", winner, loser, modstamp=stamp + timedelta(seconds=20))
    sent = len(charles.upserts)

    syncer.run_cycle()

    winner_bodies = [body for body in charles.upserts[sent:] if body["external_reference_id"] == phone(1)]
    assert len(winner_bodies) == 1
    assert winner_bodies[0]["last_name"] == "Winner Renamed"
