"""Never losing a change: ties, late commits, deletes, merges, key changes, timeouts, schema upgrades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.cursor import Watermark
from connector.emulators.salesforce import SalesforceEmulator
from connector.outcomes import DELETED_PROPERTY, DELETED_TAG, MERGED_INTO_PROPERTY, mask_key
from connector.salesforce import build_changes_query
from connector.state import SCHEMA_VERSION, StateStore
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


def test_soql_uses_keyset_and_salesforce_literals() -> None:
    after = Watermark.from_strings("2025-01-23T10:26:15.000+0000", "003000000000001AAA")
    soql = build_changes_query("Contact", ["FirstName", "Account.Name"], after, datetime(2025, 1, 24, tzinfo=UTC))

    assert soql == (
        "SELECT Id, SystemModstamp, IsDeleted, MasterRecordId, FirstName, Account.Name FROM Contact "
        "WHERE (SystemModstamp > 2025-01-23T10:26:15Z OR (SystemModstamp = 2025-01-23T10:26:15Z "
        "AND Id > '003000000000001AAA')) AND SystemModstamp < 2025-01-24T00:00:00Z "
        "ORDER BY SystemModstamp ASC, Id ASC"
    )


def test_burst_larger_than_page_across_cycles(charles, empty_org, app_for) -> None:
    stamp = empty_org.now() - timedelta(seconds=30)
    first_ids = [empty_org.create_record("Contact", {"LastName": f"A{n}", "MobilePhone": phone(n)}, modstamp=stamp) for n in range(2100)]
    syncer = app_for(empty_org).syncer()
    first = syncer.run_cycle()
    # A second burst in the same second as the first one, after the first cycle.
    late_ids = [empty_org.create_record("Contact", {"LastName": f"B{n}", "MobilePhone": phone(5000 + n)}, modstamp=stamp) for n in range(300)]

    second = syncer.run_cycle()

    assert first.pushed == 2100
    assert second.pushed == 300
    sent = [body["custom_properties"]["salesforce_id"] for body in charles.upserts]
    assert sorted(sent) == sorted(first_ids + late_ids)


def test_late_commit_inside_lookback_delivered(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    empty_org.create_record("Contact", {"LastName": "Early", "MobilePhone": phone(1)}, modstamp=now - timedelta(seconds=60))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    # A long transaction commits a record stamped before the watermark.
    late = empty_org.create_record("Contact", {"LastName": "Late", "MobilePhone": phone(2)}, modstamp=now - timedelta(seconds=120))

    report = syncer.run_cycle()

    assert report.pushed == 1
    assert report.reread == 1
    assert charles.upserts[-1]["custom_properties"]["salesforce_id"] == late


def test_late_commit_outside_lookback_missed_without_rewind(charles, empty_org, app_for) -> None:
    now = empty_org.now()
    empty_org.create_record("Contact", {"LastName": "Early", "MobilePhone": phone(1)}, modstamp=now - timedelta(seconds=30))
    syncer = app_for(empty_org, lookback_s="60").syncer()
    syncer.run_cycle()
    empty_org.create_record("Contact", {"LastName": "Very late", "MobilePhone": phone(2)}, modstamp=now - timedelta(seconds=600))

    assert syncer.run_cycle().pushed == 0
    syncer.store.set_watermark(syncer.pipeline, Watermark.start_of(now - timedelta(seconds=900)))
    assert syncer.run_cycle().pushed == 1


def test_empty_cycle_never_moves_watermark(charles, empty_org, app_for) -> None:
    syncer = app_for(empty_org).syncer()

    report = syncer.run_cycle()
    empty_org.advance(3600)
    again = syncer.run_cycle()

    assert report.watermark_after is None
    assert again.watermark_after is None


def test_unchanged_payload_not_sent(charles, empty_org, app_for) -> None:
    record_id = empty_org.create_record("Contact", {"LastName": "Same", "MobilePhone": phone(1)}, modstamp=empty_org.now() - timedelta(seconds=5))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    # A field the map does not read changes: SystemModstamp moves, the payload does not.
    empty_org.update_record("Contact", record_id, {"Title": "Director"})
    empty_org.advance(2)

    report = syncer.run_cycle()

    assert report.unchanged == 1
    assert report.pushed == 0
    assert len(charles.upserts) == 1


def test_deleted_contact_marked(charles, empty_org, app_for) -> None:
    record_id = empty_org.create_record("Contact", {"LastName": "Gone", "MobilePhone": phone(1)}, modstamp=empty_org.now() - timedelta(seconds=5))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    empty_org.delete_record("Contact", record_id)
    empty_org.advance(2)

    report = syncer.run_cycle()

    assert report.deleted == 1
    body = charles.upserts[-1]
    assert body["external_reference_id"] == phone(1)
    assert DELETED_TAG in body["tags"]
    assert body["custom_properties"][DELETED_PROPERTY] == "true"


def test_delete_policy_skip_sends_nothing(charles, empty_org, app_for) -> None:
    record_id = empty_org.create_record("Contact", {"LastName": "Gone", "MobilePhone": phone(1)}, modstamp=empty_org.now() - timedelta(seconds=5))
    syncer = app_for(empty_org, delete_policy="skip").syncer()
    syncer.run_cycle()
    empty_org.delete_record("Contact", record_id)
    empty_org.advance(2)

    report = syncer.run_cycle()

    assert report.pushed == 0
    assert dict(report.skipped_by_reason) == {"deleted": 1}


def test_merge_resends_winner_and_marks_distinct_loser(charles, empty_org, app_for) -> None:
    stamp = empty_org.now() - timedelta(seconds=5)
    winner = empty_org.create_record("Contact", {"LastName": "Winner", "MobilePhone": phone(1)}, modstamp=stamp)
    loser = empty_org.create_record("Contact", {"LastName": "Loser", "MobilePhone": phone(2)}, modstamp=stamp)
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    empty_org.merge_records("Contact", winner, loser)
    empty_org.advance(2)
    sent = len(charles.upserts)

    syncer.run_cycle()

    new = charles.upserts[sent:]
    by_key = {body["external_reference_id"]: body for body in new}
    assert by_key[phone(1)]["last_name"] == "Winner"
    assert by_key[phone(2)]["custom_properties"][MERGED_INTO_PROPERTY] == winner
    assert DELETED_TAG in by_key[phone(2)]["tags"]


def test_merge_with_shared_key_never_marks_winner(charles, empty_org, app_for) -> None:
    stamp = empty_org.now() - timedelta(seconds=5)
    first = empty_org.create_record("Contact", {"LastName": "First", "MobilePhone": phone(1)}, modstamp=stamp)
    second = empty_org.create_record("Contact", {"LastName": "Second", "MobilePhone": phone(1)}, modstamp=stamp)
    syncer = app_for(empty_org).syncer()
    initial = syncer.run_cycle()
    assert dict(initial.set_aside_by_reason) == {"duplicate_external_reference_id": 1}
    # The duplicate is merged away; the record that was set aside is the winner.
    winner, loser = sorted([first, second])[::-1]
    empty_org.merge_records("Contact", winner, loser)
    empty_org.advance(2)
    sent = len(charles.upserts)

    report = syncer.run_cycle()

    new = charles.upserts[sent:]
    assert all(DELETED_TAG not in body.get("tags", []) for body in new)
    assert new[-1]["custom_properties"]["salesforce_id"] == winner
    assert report.skipped_by_reason["merged"] == 1
    assert syncer.store.dead_letters(syncer.pipeline) == []


def test_shared_phone_second_owner_set_aside(charles, empty_org, app_for, logs) -> None:
    stamp = empty_org.now() - timedelta(seconds=5)
    ids = sorted(empty_org.create_record("Contact", {"LastName": name, "MobilePhone": phone(7)}, modstamp=stamp) for name in ("A", "B"))
    syncer = app_for(empty_org).syncer()

    report = syncer.run_cycle()

    assert report.pushed == 1
    assert charles.upserts[0]["custom_properties"]["salesforce_id"] == ids[0]
    [letter] = syncer.store.dead_letters(syncer.pipeline)
    assert (letter.record_id, letter.reason) == (ids[1], "duplicate_external_reference_id")
    assert ids[0] in (letter.error or "")
    assert phone(7) not in logs.text, "keys are masked in logs"


def test_phone_change_recorded_with_old_key(charles, empty_org, app_for, logs) -> None:
    record_id = empty_org.create_record("Contact", {"LastName": "Mover", "MobilePhone": phone(1)}, modstamp=empty_org.now() - timedelta(seconds=5))
    syncer = app_for(empty_org).syncer()
    syncer.run_cycle()
    empty_org.update_record("Contact", record_id, {"MobilePhone": phone(2)})
    empty_org.advance(2)

    report = syncer.run_cycle()

    assert report.key_changes == 1
    [retired] = syncer.store.retired_keys(syncer.pipeline)
    assert (retired["external_reference_id"], retired["record_id"], retired["replaced_by"]) == (phone(1), record_id, phone(2))
    [line] = logs.events("identity.key_changed")
    assert (line["old_key"], line["new_key"]) == (mask_key(phone(1)), mask_key(phone(2)))


def test_query_timeout_splits_window(charles, salesforce, make_app, logs) -> None:
    salesforce.inject_fault("/query", 400, [{"message": "Your query request was running for too long.", "errorCode": "QUERY_TIMEOUT"}], count=2)

    report = make_app().syncer().run_cycle()

    assert report.status == "succeeded"
    assert report.fetched == 162
    assert len(logs.events("salesforce.query_split")) == 2


def test_query_timeout_everywhere_fails_cycle(charles, salesforce, make_app) -> None:
    salesforce.inject_fault("/query", 400, [{"message": "Your query request was running for too long.", "errorCode": "QUERY_TIMEOUT"}], count=1000)
    syncer = make_app().syncer()

    report = syncer.run_cycle()

    assert report.status == "failed"
    assert "QUERY_TIMEOUT" in (report.error or "")
    assert syncer.store.get_watermark(syncer.pipeline) is None
    assert charles.upserts == []


def test_version_1_store_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE schema_info (key VARCHAR(64) PRIMARY KEY, value VARCHAR(255) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO schema_info VALUES ('schema_version', '1')"))
        conn.execute(sa.text(
            "CREATE TABLE watermarks (pipeline VARCHAR(64) PRIMARY KEY, modstamp VARCHAR(32) NOT NULL, "
            "record_id VARCHAR(18) NOT NULL, updated_at VARCHAR(32) NOT NULL)"
        ))
        conn.execute(sa.text("INSERT INTO watermarks VALUES ('contacts', '2025-01-23T10:26:15.000Z', '003000000000001AAA', 'x')"))
    engine.dispose()

    store = StateStore(url)

    assert store.get_watermark("contacts") == Watermark.from_strings("2025-01-23T10:26:15Z", "003000000000001AAA")
    assert store.dead_letters("contacts") == []
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM schema_info")).scalar() == str(SCHEMA_VERSION)
    store.close()
