"""Leader election on a real PostgreSQL: advisory locks, epochs and fenced writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from connector.cursor import Watermark
from connector.errors import ConfigurationError, LeadershipLost
from connector.leader import Grant, LocalCoordinator, PostgresCoordinator, holders, lock_key, rendezvous_score
from connector.state import StateStore
from tests.postgres import PostgresServer

WATERMARK = Watermark.from_strings("2025-01-01T00:00:00.000Z", "003000000000001AAA")


@pytest.fixture
def store(postgres_url: str) -> Iterator[StateStore]:
    store = StateStore(postgres_url)
    yield store
    store.close()


@pytest.fixture
def coordinator(store: StateStore) -> Iterator[Callable[..., PostgresCoordinator]]:
    made: list[PostgresCoordinator] = []

    def make(replica_id: str, *, lease_s: float = 5.0, clock: Callable[[], float] | None = None) -> PostgresCoordinator:
        kwargs = {} if clock is None else {"clock": clock}
        coordinator = PostgresCoordinator(store, replica_id, heartbeat_s=0.5, lease_s=lease_s, **kwargs)
        coordinator.connect()
        made.append(coordinator)
        return coordinator

    yield make
    for made_one in made:
        made_one.close()


def acquire_eventually(coordinator: PostgresCoordinator, pipeline: str) -> Grant | None:
    """Take the pipeline once the server has ended the previous holder's closed session."""
    deadline = time.monotonic() + 10
    while (grant := coordinator.try_acquire(pipeline)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return grant


def test_one_holder_per_pipeline_and_a_clean_handover(coordinator: Callable[..., PostgresCoordinator]) -> None:
    a, b = coordinator("replica-a"), coordinator("replica-b")
    grant = a.try_acquire("contacts")
    assert grant is not None
    assert grant.epoch == 1
    assert grant.wait_s == 0
    assert b.try_acquire("contacts") is None
    a.release(grant)
    taken = b.try_acquire("contacts")
    # Handed back cleanly: the new holder need not wait, and the epoch moved on.
    assert taken is not None
    assert taken.epoch == 2
    assert taken.wait_s == 0


def test_dead_holder_replaced_after_lease(coordinator: Callable[..., PostgresCoordinator]) -> None:
    a, b = coordinator("replica-a"), coordinator("replica-b", lease_s=3.0)
    assert a.try_acquire("contacts") is not None
    a.close()  # the session ends without handing the pipeline back, as when the process dies
    taken = acquire_eventually(b, "contacts")
    assert taken is not None
    assert taken.epoch == 2
    assert taken.wait_s == 3.0


def test_writes_of_a_replaced_holder_are_refused(store: StateStore, coordinator: Callable[..., PostgresCoordinator], postgres_url: str) -> None:
    a, b = coordinator("replica-a"), coordinator("replica-b")
    old = a.try_acquire("contacts")
    assert old is not None
    store.set_fence("contacts", a.fence(old))
    store.advance_watermark("contacts", WATERMARK)

    # A second process takes the freed lock while the first still believes it leads.
    a._conn.close()  # type: ignore[union-attr]
    new = acquire_eventually(b, "contacts")
    assert new is not None
    a._last_ok = a._clock()  # as if its last heartbeat had just succeeded
    a._held["contacts"] = old
    with pytest.raises(LeadershipLost, match="took it over"):
        store.checkpoint("contacts:backfill", watermark=WATERMARK, handled=[], set_aside=[], key_changes=[])

    other = StateStore(postgres_url)
    try:
        other.set_fence("contacts", b.fence(new))
        other.set_watermark("contacts", None)  # the new holder writes freely
    finally:
        other.close()


def test_terminated_lock_connection_stops_the_holder(
    store: StateStore, coordinator: Callable[..., PostgresCoordinator], postgres_server: PostgresServer
) -> None:
    a = coordinator("replica-a")
    grant = a.try_acquire("contacts")
    assert grant is not None
    a.check(grant)
    assert postgres_server.terminate_backends("sfcharles replica-a") == 1
    assert a.heartbeat() is False
    assert not a.valid()
    with pytest.raises(LeadershipLost, match="replica-a"):
        a.check(grant)
    store.set_fence("contacts", a.fence(grant))
    with pytest.raises(LeadershipLost):
        store.advance_watermark("contacts", WATERMARK)
    # After reconnecting it may lead again, under a new epoch; the old grant stays void.
    a.connect()
    again = a.try_acquire("contacts")
    assert again is not None
    assert again.epoch == grant.epoch + 1
    with pytest.raises(LeadershipLost):
        a.check(grant)


def test_unconfirmed_lock_expires_after_a_lease(coordinator: Callable[..., PostgresCoordinator]) -> None:
    now = [100.0]
    a = coordinator("replica-a", lease_s=2.0, clock=lambda: now[0])
    grant = a.try_acquire("contacts")
    assert grant is not None
    now[0] += 1.9
    a.check(grant)
    now[0] += 0.2  # no heartbeat succeeded for more than a lease: a hung connection
    assert not a.valid()
    with pytest.raises(LeadershipLost, match="not confirmed"):
        a.check(grant)
    assert a.heartbeat() is True
    a.check(grant)


def test_replicas_are_counted_and_holders_named(store: StateStore, coordinator: Callable[..., PostgresCoordinator]) -> None:
    a = coordinator("replica-a")
    assert a.live_replicas() == 1
    b = coordinator("replica-b")
    assert a.live_replicas() == b.live_replicas() == 2
    assert a.try_acquire("eu") is not None
    assert b.try_acquire("us") is not None
    assert holders(store) == {"eu": "replica-a", "us": "replica-b"}
    b.close()
    # The server ends the closed session a moment later, and its locks with it.
    deadline = time.monotonic() + 10
    while a.live_replicas() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.live_replicas() == 1
    assert holders(store) == {"eu": "replica-a"}


def test_replica_id_in_use_rejected(coordinator: Callable[..., PostgresCoordinator]) -> None:
    coordinator("replica-a")
    with pytest.raises(ConfigurationError, match="SFCHARLES_REPLICA_ID: 'replica-a' is in use"):
        coordinator("replica-a")


def test_leader_election_needs_postgresql(tmp_path: object) -> None:
    sqlite = StateStore(f"sqlite:///{tmp_path}/state.db")
    try:
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            PostgresCoordinator(sqlite, "replica-a", heartbeat_s=1, lease_s=5)
    finally:
        sqlite.close()


def test_local_coordinator_grants_everything_at_once() -> None:
    local = LocalCoordinator("host-1")
    grant = local.try_acquire("contacts")
    assert grant is not None
    assert grant.wait_s == 0
    local.check(grant)


def test_lock_keys_are_stable_signed_32_bit() -> None:
    assert lock_key("contacts") == lock_key("contacts")
    assert lock_key("contacts") != lock_key("leads")
    for name in ("contacts", "leads", "eu-contacts", "x" * 63):
        assert -(2**31) <= lock_key(name) < 2**31


def test_replicas_prefer_different_pipelines() -> None:
    pipelines = [f"pipeline-{n}" for n in range(8)]
    first_choices = {max(pipelines, key=lambda name: rendezvous_score(replica, name)) for replica in ("a", "b", "c", "d")}
    assert len(first_choices) > 1
