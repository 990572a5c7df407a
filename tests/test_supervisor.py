"""Supervisor.elect: how one replica takes, hands back and loses pipelines, with a fake coordinator."""

from __future__ import annotations

import threading
from typing import Any

from connector.leader import Grant
from connector.scheduler import PipelineRunner, Supervisor
from connector.settings import load_settings
from tests.test_settings import BASE


class FakeCoordinator:
    """Grants every free pipeline; the test sets how many replicas are alive and whether the lock connection works."""

    def __init__(self) -> None:
        self.replica_id = "replica-a"
        self.replicas = 1
        self.healthy = True
        self.taken_elsewhere: set[str] = set()
        self.held: dict[str, Grant] = {}
        self.released: list[str] = []
        self.epoch = 0

    def heartbeat(self) -> bool:
        return self.healthy

    def valid(self) -> bool:
        return self.healthy

    def try_acquire(self, pipeline: str) -> Grant | None:
        if pipeline in self.taken_elsewhere or pipeline in self.held:
            return None
        self.epoch += 1
        grant = Grant(pipeline, self.epoch, 0.0)
        self.held[pipeline] = grant
        return grant

    def release(self, grant: Grant) -> None:
        self.held.pop(grant.pipeline, None)
        self.released.append(grant.pipeline)

    def live_replicas(self) -> int:
        return self.replicas

    def fence(self, grant: Grant) -> Any:
        return lambda _conn: None

    def check(self, grant: Grant) -> None:
        pass

    def close(self) -> None:
        pass


class FakeSink:
    def __init__(self) -> None:
        self.guard: Any = None
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class FakeApp:
    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.sink = FakeSink()
        self.renewed = 0

    def renew_sink(self) -> None:
        self.sink = FakeSink()
        self.renewed += 1


class FakeDaemon:
    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.consecutive_failures = 0


class FakeStore:
    def __init__(self) -> None:
        self.fences: dict[str, Any] = {}

    def set_fence(self, pipeline: str, fence: Any) -> None:
        if fence is None:
            self.fences.pop(pipeline, None)
        else:
            self.fences[pipeline] = fence

    def abandon_running_cycles(self, pipeline: str) -> int:
        return 0


def build(names: list[str]) -> tuple[Supervisor, FakeCoordinator, FakeStore]:
    settings = load_settings(BASE)
    runners = [PipelineRunner(settings.model_copy(update={"pipeline": name}), FakeApp(), FakeDaemon()) for name in names]  # type: ignore[arg-type]
    coordinator = FakeCoordinator()
    store = FakeStore()
    supervisor = Supervisor(runners, coordinator, store, threading.Event(), settings=settings)  # type: ignore[arg-type]
    return supervisor, coordinator, store


def states(supervisor: Supervisor) -> dict[str, str]:
    return {runner.name: runner.state for runner in supervisor.runners}


def test_alone_takes_every_pipeline() -> None:
    supervisor, coordinator, store = build(["a", "b", "c", "d"])

    supervisor.elect()

    assert set(states(supervisor).values()) == {"held"}
    assert set(coordinator.held) == {"a", "b", "c", "d"}
    assert set(store.fences) == {"a", "b", "c", "d"}
    assert all(runner.app.sink.guard is not None for runner in supervisor.runners)


def test_second_replica_gets_half() -> None:
    supervisor, coordinator, store = build(["a", "b", "c", "d"])
    supervisor.elect()

    coordinator.replicas = 2
    supervisor.elect()

    assert sorted(states(supervisor).values()) == ["held", "held", "idle", "idle"]
    assert len(coordinator.released) == 2
    assert set(store.fences) == set(coordinator.held)


def test_running_cycle_is_handed_back_after_it_ends() -> None:
    supervisor, coordinator, _store = build(["a", "b"])
    supervisor.elect()
    for runner in supervisor.runners:
        runner.running = True

    coordinator.replicas = 2
    supervisor.elect()

    assert sorted(states(supervisor).values()) == ["held", "releasing"]
    assert coordinator.released == []

    for runner in supervisor.runners:
        runner.running = False
    supervisor.elect()

    assert sorted(states(supervisor).values()) == ["held", "idle"]
    assert len(coordinator.released) == 1


def test_takes_only_free_pipelines_up_to_share() -> None:
    supervisor, coordinator, _store = build(["a", "b", "c"])
    coordinator.replicas = 2
    coordinator.taken_elsewhere = {"a"}

    supervisor.elect()

    held = {name for name, state in states(supervisor).items() if state == "held"}
    assert len(held) == 2
    assert "a" not in held


def test_lost_connection_stops_every_pipeline() -> None:
    supervisor, coordinator, store = build(["a", "b"])
    supervisor.elect()
    first = supervisor.runners[0]
    first.running = True
    old_sink = first.app.sink

    coordinator.healthy = False
    supervisor.elect()

    assert states(supervisor) == {"a": "stopping", "b": "idle"}
    assert first.app.stop_event.is_set()
    assert old_sink.aborted

    # Reconnected: the finished pipeline may be taken again, the running one only once its cycle ends.
    coordinator.healthy = True
    coordinator.held.clear()
    supervisor.elect()
    assert states(supervisor) == {"a": "stopping", "b": "held"}

    first.running = False
    supervisor.elect()
    assert states(supervisor) == {"a": "held", "b": "held"}
    assert first.app.renewed == 1, "an aborted sink is replaced before the pipeline runs again"
    assert not first.app.stop_event.is_set()
    assert set(store.fences) == {"a", "b"}
