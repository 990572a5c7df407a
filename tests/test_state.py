from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.cursor import Watermark
from connector.errors import ConfigurationError, CursorOrderError
from connector.state import SCHEMA_VERSION, Handled, KeyChange, SetAside, StateStore, safe_url, state_url_password

FIRST_ID = "003000000000001AAA"
SECOND_ID = "003000000000002AAA"
STAMP = "2025-01-23T10:26:15.000Z"
EARLY = Watermark.from_strings("2025-01-23T10:26:15Z", "003000000000001AAA")
LATE = Watermark.from_strings("2025-01-23T10:26:15Z", "003000000000002AAA")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty state store, once per supported database."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(state_url: str):
    state = StateStore(state_url)
    yield state
    state.close()


def test_no_watermark_at_first(store: StateStore) -> None:
    assert store.get_watermark("contacts") is None


def test_watermark_survives_reopen(state_url: str) -> None:
    first = StateStore(state_url)
    first.advance_watermark("contacts", EARLY)
    first.close()
    second = StateStore(state_url)
    assert second.get_watermark("contacts") == EARLY
    second.close()


def test_watermarks_are_per_pipeline(store: StateStore) -> None:
    store.advance_watermark("contacts", LATE)
    store.advance_watermark("leads", EARLY)
    assert store.get_watermark("contacts") == LATE
    assert store.get_watermark("leads") == EARLY
    assert store.pipelines() == ["contacts", "leads"]


def test_advance_refuses_backwards(store: StateStore) -> None:
    store.advance_watermark("contacts", LATE)
    with pytest.raises(CursorOrderError) as info:
        store.advance_watermark("contacts", EARLY)
    assert str(LATE) in str(info.value)
    assert str(EARLY) in str(info.value)
    assert store.get_watermark("contacts") == LATE


def test_advance_if_ahead_keeps_later(store: StateStore) -> None:
    store.advance_watermark("contacts", LATE)
    assert store.advance_watermark_if_ahead("contacts", EARLY) is False
    assert store.get_watermark("contacts") == LATE


def test_set_watermark_can_rewind_and_delete(store: StateStore) -> None:
    store.advance_watermark("contacts", LATE)
    store.set_watermark("contacts", EARLY)
    assert store.get_watermark("contacts") == EARLY
    store.set_watermark("contacts", None)
    assert store.get_watermark("contacts") is None


def test_cycle_history_recorded(store: StateStore) -> None:
    store.start_cycle("c1", "contacts", "incremental", None)
    store.finish_cycle("c1", status="succeeded", counts={"fetched": 3, "pushed": 2, "skipped": 1}, watermark_after=LATE)
    [cycle] = store.recent_cycles("contacts")
    assert (cycle.status, cycle.fetched, cycle.pushed, cycle.skipped, cycle.failed) == ("succeeded", 3, 2, 1, 0)
    assert cycle.watermark_after == str(LATE)


def test_newer_schema_refused(state_url: str) -> None:
    StateStore(state_url).close()
    engine = sa.create_engine(state_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_info SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    engine.dispose()
    with pytest.raises(ConfigurationError, match="newer than this connector supports"):
        StateStore(state_url)


def test_bad_url_names_setting() -> None:
    with pytest.raises(ConfigurationError, match="SFCHARLES_STATE_URL"):
        StateStore("nosuchdb://x")


def test_checkpoint_writes_records_and_watermark(store: StateStore) -> None:
    store.checkpoint(
        "contacts",
        watermark=LATE,
        handled=[Handled(FIRST_ID, STAMP, "delivered", "a" * 64, "+15550100001")],
        set_aside=[],
        key_changes=[],
    )
    states = store.record_states("contacts", [FIRST_ID, SECOND_ID])
    assert list(states) == [FIRST_ID]
    assert states[FIRST_ID].outcome == "delivered"
    assert states[FIRST_ID].external_reference_id == "+15550100001"
    assert store.get_watermark("contacts") == LATE


def test_checkpoint_ignores_older_watermark(store: StateStore) -> None:
    store.advance_watermark("contacts", LATE)
    store.checkpoint("contacts", watermark=EARLY, handled=[Handled(FIRST_ID, STAMP, "skipped")], set_aside=[], key_changes=[])
    assert store.get_watermark("contacts") == LATE
    assert store.record_states("contacts", [FIRST_ID])[FIRST_ID].outcome == "skipped"


def test_dead_letter_attempts_counted(store: StateStore) -> None:
    for error in ("first failure", "second failure"):
        store.checkpoint(
            "contacts", watermark=None, handled=[], set_aside=[SetAside(SECOND_ID, STAMP, "rejected", error)], key_changes=[]
        )
    [letter] = store.dead_letters("contacts")
    assert letter.attempts == 2
    assert letter.error == "second failure"
    assert letter.first_failed_at <= letter.last_failed_at
    assert store.dead_letter_count("contacts") == 1

    store.checkpoint("contacts", watermark=None, handled=[Handled(SECOND_ID, STAMP, "delivered")], set_aside=[], key_changes=[])
    assert store.dead_letters("contacts") == []
    assert store.discard_dead_letter("contacts", SECOND_ID) is False


def test_key_change_retires_old_key(store: StateStore) -> None:
    store.claim_keys("contacts", [("+15550100001", FIRST_ID)])
    store.checkpoint(
        "contacts", watermark=None, handled=[], set_aside=[],
        key_changes=[KeyChange(FIRST_ID, "+15550100001", "+15550100002")],
    )
    assert store.key_owners("contacts", ["+15550100001"]) == {}
    [retired] = store.retired_keys("contacts")
    assert retired["external_reference_id"] == "+15550100001"
    assert retired["record_id"] == FIRST_ID
    assert retired["replaced_by"] == "+15550100002"


def test_claim_moves_key_to_new_record(store: StateStore) -> None:
    store.claim_keys("contacts", [("+15550100001", FIRST_ID)])
    store.claim_keys("contacts", [("+15550100001", SECOND_ID)])
    assert store.key_owners("contacts", ["+15550100001"]) == {"+15550100001": SECOND_ID}
    assert store.active_keys("contacts", [FIRST_ID, SECOND_ID]) == {SECOND_ID: ["+15550100001"]}


def test_store_description_masks_query_password() -> None:
    url = sa.engine.make_url("postgresql+psycopg://127.0.0.1:5432/sfc?user=sfc&password=query-pass-value")

    shown = safe_url(url)

    assert "query-pass-value" not in shown
    assert "password=***" in shown
    assert state_url_password(str(url.render_as_string(hide_password=False))) == "query-pass-value"


def test_unsupported_database_named() -> None:
    with pytest.raises(ConfigurationError, match="'mysql://u:\\*\\*\\*@h/db' is not supported; use sqlite:///"):
        StateStore("mysql://u:secret-value@h/db")
