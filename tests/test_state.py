from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.cursor import Watermark
from connector.errors import ConfigurationError, CursorOrderError
from connector.state import SCHEMA_VERSION, StateStore

EARLY = Watermark.from_strings("2025-01-23T10:26:15Z", "003000000000001AAA")
LATE = Watermark.from_strings("2025-01-23T10:26:15Z", "003000000000002AAA")


@pytest.fixture
def store(tmp_path: Path):
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield state
    state.close()


def test_no_watermark_at_first(store: StateStore) -> None:
    assert store.get_watermark("contacts") is None


def test_watermark_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = StateStore(url)
    first.advance_watermark("contacts", EARLY)
    first.close()
    second = StateStore(url)
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


def test_newer_schema_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_info SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    engine.dispose()
    with pytest.raises(ConfigurationError, match="newer than this connector supports"):
        StateStore(url)


def test_bad_url_names_setting() -> None:
    with pytest.raises(ConfigurationError, match="SFCHARLES_STATE_URL"):
        StateStore("nosuchdb://x")
