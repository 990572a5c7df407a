"""Sync cycles end to end, through the real Salesforce and Charles emulators."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.cursor import Watermark, parse_salesforce_datetime
from connector.emulators.salesforce import SalesforceEmulator
from connector.errors import ConfigurationError
from connector.field_map import Mapped, Skipped, load_field_map
from tests.conftest import CHARLES_KEY, CLIENT_SECRET

REQUIRED_SUMMARY_KEYS = {
    "cycle_id", "mode", "fetched", "pushed", "skipped", "skipped_by_reason", "failed",
    "watermark_before", "watermark_after", "duration_s",
}


def expected_outcomes(salesforce: SalesforceEmulator) -> dict[str, Mapped | Skipped]:
    field_map = load_field_map(default_region="US")
    return {record["Id"]: field_map.apply(record) for record in salesforce.records("Contact")}


def bodies_by_key(charles) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for body in charles.upserts:
        grouped.setdefault(body["external_reference_id"], []).append(body)
    return grouped


def test_full_sync_delivers_each_valid_contact_once(salesforce, charles, make_app) -> None:
    expected = expected_outcomes(salesforce)
    mapped = [outcome for outcome in expected.values() if isinstance(outcome, Mapped)]
    assert len(expected) == 162
    assert mapped, "the sample data has contacts with valid numbers"

    report = make_app().syncer().run_cycle()

    assert report.status == "succeeded"
    assert report.fetched == 162
    assert report.pushed == len(mapped)
    received = bodies_by_key(charles)
    assert {key: len(bodies) for key, bodies in received.items()} == {m.payload["external_reference_id"]: 1 for m in mapped}
    for outcome in mapped:
        assert received[outcome.payload["external_reference_id"]] == [outcome.payload]


def test_skipped_contacts_counted_with_reason(salesforce, charles, make_app, logs) -> None:
    expected = expected_outcomes(salesforce)
    skipped = [outcome for outcome in expected.values() if isinstance(outcome, Skipped)]

    report = make_app().syncer().run_cycle()

    assert report.skipped == len(skipped) > 0
    assert dict(report.skipped_by_reason) == {"phone_invalid": len(skipped)}
    logged = {line["record_id"]: line["reason"] for line in logs.events("sync.record_skipped")}
    assert logged == {outcome.record_id: outcome.reason for outcome in skipped}
    sent_ids = {body["custom_properties"]["salesforce_id"] for body in charles.upserts}
    assert sent_ids.isdisjoint(logged)


def test_second_cycle_sends_nothing(salesforce, charles, make_app) -> None:
    syncer = make_app().syncer()
    syncer.run_cycle()
    sent = len(charles.requests)

    second = syncer.run_cycle()

    assert second.pushed == 0
    assert second.fetched == second.reread, "the lookback re-reads records it already handled"
    assert len(charles.requests) == sent
    assert second.watermark_after == second.watermark_before


def test_edited_contact_sent_exactly_once(salesforce, charles, make_app) -> None:
    syncer = make_app().syncer()
    syncer.run_cycle()
    target = next(o for o in expected_outcomes(salesforce).values() if isinstance(o, Mapped))
    salesforce.update_record("Contact", target.record_id, {"LastName": "Renamed"})
    salesforce.advance(2)  # Salesforce's clock moves past the edit's second
    sent = len(charles.upserts)

    report = syncer.run_cycle()
    syncer.run_cycle()

    assert report.fetched - report.reread == 1
    assert report.pushed == 1
    new_bodies = charles.upserts[sent:]
    assert len(new_bodies) == 1
    assert new_bodies[0]["last_name"] == "Renamed"
    assert new_bodies[0]["external_reference_id"] == target.payload["external_reference_id"]


def test_paging_with_shared_timestamp_loses_nothing(charles, env, make_app) -> None:
    with SalesforceEmulator(seed_files=[], page_size=200, client_secret=CLIENT_SECRET) as salesforce:
        stamp = salesforce.now() - timedelta(minutes=5)
        ids = [
            salesforce.create_record("Contact", {"LastName": f"Tie{n}", "MobilePhone": f"+1415555{n:04d}"}, modstamp=stamp)
            for n in range(450)
        ]
        ids.append(salesforce.create_record("Contact", {"LastName": "Later", "MobilePhone": "+14155559999"}, modstamp=stamp + timedelta(seconds=1)))
        app = make_app(salesforce_login_url=salesforce.url, salesforce_ca_file=str(salesforce.ca_file), salesforce_page_size="200")

        report = app.syncer().run_cycle()

        query_pages = [entry for entry in salesforce.request_log if "/query" in entry["path"]]
        assert len(query_pages) >= 3, "450 records at page size 200 take at least three pages"
        assert report.fetched == 451
        assert report.pushed == 451
        sent_ids = sorted(body["custom_properties"]["salesforce_id"] for body in charles.upserts)
        assert sent_ids == sorted(ids)
        assert report.watermark_after == Watermark(stamp + timedelta(seconds=1), ids[-1])


def test_cycle_summary_line_and_cycle_id(salesforce, charles, make_app, logs) -> None:
    report = make_app().syncer().run_cycle()

    [summary] = logs.events("sync.cycle_completed")
    assert REQUIRED_SUMMARY_KEYS <= summary.keys()
    assert summary["cycle_id"] == report.cycle_id
    assert summary["mode"] == "incremental"
    assert summary["fetched"] == 162
    assert summary["watermark_before"] is None
    assert summary["watermark_after"] == str(report.watermark_after)
    cycle_lines = [line for line in logs.lines if line["event"].startswith(("sync.", "charles.", "mapping."))]
    assert cycle_lines and all(line.get("cycle_id") == report.cycle_id for line in cycle_lines)


def test_no_secret_in_any_log_line(salesforce, charles, make_app, logs) -> None:
    app = make_app()
    app.syncer().run_cycle()
    salesforce.expire_all_tokens()
    salesforce.advance(1)
    app.syncer().run_cycle()

    text = logs.text
    assert logs.events("salesforce.session_refreshed")
    assert CHARLES_KEY not in text
    assert CLIENT_SECRET not in text
    assert "Bearer" not in text
    for token in salesforce.issued_tokens():
        assert token not in text


def ordered_mapped(salesforce):
    outcomes = [o for o in expected_outcomes(salesforce).values() if isinstance(o, Mapped)]
    records = {r["Id"]: r for r in salesforce.records("Contact")}

    def position(outcome: Mapped) -> Watermark:
        return Watermark(parse_salesforce_datetime(records[outcome.record_id]["SystemModstamp"]), outcome.record_id)

    return sorted(outcomes, key=position), position


def test_rejected_record_set_aside_then_retried(salesforce, charles, make_app) -> None:
    ordered, position = ordered_mapped(salesforce)
    victim = ordered[len(ordered) // 2]
    charles.reject(victim.payload["external_reference_id"], status=422, message="Invalid contact")
    syncer = make_app().syncer()

    first = syncer.run_cycle()

    assert first.status == "partial"
    assert dict(first.set_aside_by_reason) == {"http_422": 1}
    assert first.watermark_after == position(ordered[-1]) or first.watermark_after > position(victim)
    [letter] = syncer.store.dead_letters(syncer.pipeline)
    assert (letter.record_id, letter.reason, letter.attempts) == (victim.record_id, "http_422", 1)
    assert "Invalid contact" in (letter.error or "")

    charles.accept(victim.payload["external_reference_id"])
    second = syncer.run_cycle()

    assert second.status == "succeeded"
    assert second.pushed == 1
    assert charles.upserts[-1] == victim.payload
    assert syncer.store.dead_letters(syncer.pipeline) == []


def test_transient_failure_holds_watermark(salesforce, charles, make_app) -> None:
    ordered, position = ordered_mapped(salesforce)
    victim = ordered[len(ordered) // 2]
    charles.reject(victim.payload["external_reference_id"], status=503, message="Unavailable")
    syncer = make_app(charles_max_attempts="2").syncer()

    first = syncer.run_cycle()

    assert dict(first.failed_by_reason) == {"http_503": 1}
    assert first.watermark_after is not None and first.watermark_after < position(victim)
    assert syncer.store.dead_letters(syncer.pipeline) == []

    charles.accept(victim.payload["external_reference_id"])
    second = syncer.run_cycle()

    assert second.status == "succeeded"
    assert victim.payload in charles.upserts[-second.pushed:]
    assert second.watermark_after == position(ordered[-1]) or second.watermark_after > position(victim)


def test_backfill_never_moves_watermark_back(salesforce, charles, make_app) -> None:
    syncer = make_app().syncer()
    syncer.run_cycle()
    watermark = syncer.store.get_watermark(syncer.pipeline)
    sent = len(charles.upserts)

    unforced = syncer.run_cycle("backfill", since=salesforce.now() - timedelta(days=30))
    report = syncer.run_cycle("backfill", since=salesforce.now() - timedelta(days=30), force=True)

    assert unforced.pushed == 0
    assert unforced.reread == unforced.fetched == 162
    assert report.pushed == sent
    assert len(charles.upserts) == 2 * sent
    assert syncer.store.get_watermark(syncer.pipeline) == watermark


def test_backfill_until_is_exclusive(salesforce, charles, make_app) -> None:
    records = salesforce.records("Contact")
    stamps = sorted({parse_salesforce_datetime(r["SystemModstamp"]) for r in records})
    until = stamps[len(stamps) // 2]
    inside = {r["Id"] for r in records if parse_salesforce_datetime(r["SystemModstamp"]) < until}

    report = make_app().syncer().run_cycle("backfill", until=until)

    assert report.fetched == len(inside)
    assert {body["custom_properties"]["salesforce_id"] for body in charles.upserts} <= inside


def test_window_ends_at_salesforce_clock(salesforce, charles, make_app) -> None:
    records = salesforce.records("Contact")
    stamps = sorted(parse_salesforce_datetime(r["SystemModstamp"]) for r in records)
    cutoff = stamps[40]
    salesforce.set_now(cutoff)

    report = make_app().syncer().run_cycle()

    assert report.fetched == sum(1 for stamp in stamps if stamp < cutoff)
    assert report.watermark_after is not None and report.watermark_after.modstamp < cutoff


def test_wrong_charles_key_stops_cycle(salesforce, charles, make_app) -> None:
    app = make_app(charles_api_key="not-the-right-key")

    with pytest.raises(ConfigurationError, match="SFCHARLES_CHARLES_API_KEY"):
        app.syncer().run_cycle()

    assert app.store.get_watermark(app.settings.pipeline) is None
    assert len(charles.requests) <= app.settings.charles_max_in_flight, "no retry storm after 401"


def test_in_flight_limit_respected(salesforce, charles, make_app) -> None:
    charles.set_latency(0.05)
    app = make_app(charles_max_in_flight="4")

    report = app.syncer().run_cycle()

    # With at most 4 requests open, each taking 50 ms or more, the pushes cannot finish sooner.
    assert report.duration_s >= report.pushed / 4 * 0.05


def test_jwt_bearer_login(charles, env, make_app, tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "salesforce.key"
    key_file.write_bytes(private_pem)
    with SalesforceEmulator(jwt_public_key_pem=public_pem.decode(), username="jwt-user@example.com") as salesforce:
        base = {k: v for k, v in env.items() if k != "SFCHARLES_SALESFORCE_CLIENT_SECRET"}
        from connector.app import App
        from tests.conftest import settings_from

        settings = settings_from(
            base,
            salesforce_login_url=salesforce.url,
            salesforce_ca_file=str(salesforce.ca_file),
            salesforce_username="jwt-user@example.com",
            salesforce_private_key=private_pem.decode(),
        )
        app = App.build(settings)
        try:
            report = app.syncer().run_cycle()
        finally:
            app.close()
    assert settings.resolved_auth() == "jwt"
    assert report.fetched == 162


def test_bad_client_secret_names_settings(salesforce, charles, make_app) -> None:
    app = make_app(salesforce_client_secret="wrong-secret-value")

    with pytest.raises(ConfigurationError) as info:
        app.syncer()

    assert "SFCHARLES_SALESFORCE_CLIENT_SECRET" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


def test_ca_trusted_despite_requests_ca_bundle(salesforce, charles, make_app, monkeypatch) -> None:
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())

    report = make_app().syncer().run_cycle()

    assert report.fetched == 162
