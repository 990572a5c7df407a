"""Batched writes of the state store: checkpoints, key claims and the stored window end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.cursor import Watermark, parse_salesforce_datetime
from connector.state import BATCH_ROWS, Handled, KeyChange, SetAside, StateStore, identities

PIPELINE = "contacts"
STAMP = "2025-01-23T10:26:15.000Z"


@pytest.fixture
def store(tmp_path: Path):
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield state
    state.close()


def record_id(n: int) -> str:
    return f"003{n:012d}AAA"


def count_statements(store: StateStore) -> list[str]:
    statements: list[str] = []
    sa.event.listen(store._engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return statements


def test_checkpoint_writes_chunks_of_rows(store: StateStore) -> None:
    total = 2 * BATCH_ROWS + 7
    first = [Handled(record_id(n), STAMP, "delivered", f"hash{n}", f"+1415555{n:04d}") for n in range(0, total, 2)]
    store.checkpoint(PIPELINE, watermark=None, handled=first, set_aside=[], key_changes=[])
    statements = count_statements(store)

    # Half of the records exist already, half are new.
    second = [Handled(record_id(n), STAMP, "delivered", f"new{n}", f"+1415555{n:04d}") for n in range(total)]
    store.checkpoint(PIPELINE, watermark=None, handled=second, set_aside=[], key_changes=[])
    written = len(statements)

    states = store.record_states(PIPELINE, [record_id(n) for n in range(total)])
    assert len(states) == total
    assert {state.payload_hash for state in states.values()} == {f"new{n}" for n in range(total)}
    # A SELECT, an UPDATE, an INSERT and a DELETE per chunk.
    assert written == 4 * -(-total // BATCH_ROWS)


def test_checkpoint_later_item_wins(store: StateStore) -> None:
    handled = [
        Handled(record_id(1), STAMP, "delivered", "first", "+14155550001"),
        Handled(record_id(1), "2025-01-23T10:26:16.000Z", "delivered", "second", "+14155550001"),
    ]

    store.checkpoint(PIPELINE, watermark=None, handled=handled, set_aside=[], key_changes=[])

    state = store.record_states(PIPELINE, [record_id(1)])[record_id(1)]
    assert state.payload_hash == "second"
    assert state.modstamp == "2025-01-23T10:26:16.000Z"


def test_checkpoint_keeps_updated_at_when_unchanged(store: StateStore) -> None:
    item = Handled(record_id(1), STAMP, "delivered", "hash", "+14155550001")
    store.checkpoint(PIPELINE, watermark=None, handled=[item], set_aside=[], key_changes=[])
    before = store.record_states(PIPELINE, [record_id(1)])[record_id(1)]
    time.sleep(0.002)  # the next write gets a later millisecond

    newer = Handled(record_id(1), "2025-01-23T10:27:00.000Z", "delivered", "hash", "+14155550001")
    store.checkpoint(PIPELINE, watermark=None, handled=[newer], set_aside=[], key_changes=[])
    unchanged = store.record_states(PIPELINE, [record_id(1)])[record_id(1)]
    changed_item = Handled(record_id(1), "2025-01-23T10:28:00.000Z", "delivered", "other", "+14155550001")
    store.checkpoint(PIPELINE, watermark=None, handled=[changed_item], set_aside=[], key_changes=[])
    changed = store.record_states(PIPELINE, [record_id(1)])[record_id(1)]

    assert unchanged.modstamp == "2025-01-23T10:27:00.000Z"
    assert unchanged.updated_at == before.updated_at
    assert changed.payload_hash == "other"
    assert changed.updated_at is not None and before.updated_at is not None
    assert changed.updated_at >= before.updated_at


def test_checkpoint_counts_set_aside_attempts(store: StateStore) -> None:
    letter = SetAside(record_id(1), STAMP, "rejected", "400 Bad Request")
    store.checkpoint(PIPELINE, watermark=None, handled=[], set_aside=[letter], key_changes=[])
    [first] = store.dead_letters(PIPELINE)

    store.checkpoint(PIPELINE, watermark=None, handled=[], set_aside=[letter, letter], key_changes=[])
    [again] = store.dead_letters(PIPELINE)

    assert first.attempts == 1
    assert again.attempts == 3
    assert again.first_failed_at == first.first_failed_at


def test_checkpoint_handled_clears_dead_letter(store: StateStore) -> None:
    letter = SetAside(record_id(1), STAMP, "rejected", "400 Bad Request")
    store.checkpoint(PIPELINE, watermark=None, handled=[], set_aside=[letter], key_changes=[])

    handled = Handled(record_id(1), STAMP, "delivered", "hash", "+14155550001")
    store.checkpoint(PIPELINE, watermark=None, handled=[handled], set_aside=[], key_changes=[])

    assert store.dead_letters(PIPELINE) == []


def test_checkpoint_retires_changed_keys(store: StateStore) -> None:
    store.claim_keys(PIPELINE, [("+14155550001", record_id(1)), ("+14155550002", record_id(2))])

    store.checkpoint(
        PIPELINE, watermark=Watermark.from_strings(STAMP, record_id(2)), handled=[], set_aside=[],
        key_changes=[KeyChange(record_id(1), "+14155550001", "+14155550009"), KeyChange(record_id(2), "+14155550002", "")],
    )

    retired = {row["external_reference_id"]: row["replaced_by"] for row in store.retired_keys(PIPELINE)}
    assert retired == {"+14155550001": "+14155550009", "+14155550002": None}
    assert store.get_watermark(PIPELINE) == Watermark.from_strings(STAMP, record_id(2))


def test_claim_keys_moves_and_adds(store: StateStore) -> None:
    store.claim_keys(PIPELINE, [("+14155550001", record_id(1))])
    store.checkpoint(PIPELINE, watermark=None, handled=[], set_aside=[], key_changes=[KeyChange(record_id(1), "+14155550001", "")])
    claims = [("+14155550001", record_id(2))] + [(f"+1415556{n:04d}", record_id(n)) for n in range(BATCH_ROWS + 3)]
    claims.append(("+14155560000", record_id(9999)))  # a key claimed twice: the later claim wins

    store.claim_keys(PIPELINE, claims)

    owners = store.key_owners(PIPELINE, ["+14155550001", "+14155560000", f"+1415556{BATCH_ROWS + 2:04d}"])
    assert owners == {"+14155550001": record_id(2), "+14155560000": record_id(9999), f"+1415556{BATCH_ROWS + 2:04d}": record_id(BATCH_ROWS + 2)}
    with store._engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(identities)).scalar_one()
    assert rows == BATCH_ROWS + 4


def test_last_window_end_skips_failed_cycles(store: StateStore) -> None:
    store.start_cycle("c1", PIPELINE, "incremental", None)
    store.finish_cycle("c1", status="succeeded", counts={}, watermark_after=None, summary={"window_end": "2025-01-23T10:00:00.000Z"})
    store.start_cycle("c2", PIPELINE, "incremental", None)
    store.finish_cycle("c2", status="failed", counts={}, watermark_after=None, summary={"window_end": "2025-01-23T11:00:00.000Z"})
    store.start_cycle("c3", PIPELINE, "backfill", None)
    store.finish_cycle("c3", status="succeeded", counts={}, watermark_after=None, summary={"window_end": "2025-01-23T12:00:00.000Z"})

    assert store.last_window_end(PIPELINE, "incremental") == parse_salesforce_datetime("2025-01-23T10:00:00.000Z")
    assert store.last_window_end(PIPELINE, "backfill") == parse_salesforce_datetime("2025-01-23T12:00:00.000Z")
    assert store.last_window_end("leads", "incremental") is None


def test_last_window_end_none_without_field(store: StateStore) -> None:
    store.start_cycle("c1", PIPELINE, "incremental", None)
    store.finish_cycle("c1", status="succeeded", counts={}, watermark_after=None, summary={"fetched": 0})

    assert store.last_window_end(PIPELINE, "incremental") is None
