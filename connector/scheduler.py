"""The daemon: sync cycles on an interval with APScheduler 3.x, stopped cleanly by signals.

The only module that imports apscheduler. One job per pipeline that this process leads
runs its cycle; ``max_instances=1`` keeps a pipeline's cycles from overlapping and
``coalesce=True`` turns a backlog of missed ticks into one run. SIGTERM and SIGINT set a stop event that the running cycle checks between
records, so it finishes its in-flight upserts, commits the watermark, and the process
exits 0.

The daemon also guards the org's API quota: above a share of the daily limit it polls
less often, above a higher share it pauses, and after REQUEST_LIMIT_EXCEEDED it waits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Literal

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from connector.errors import ConfigurationError, ConnectorError, LeadershipLost
from connector.leader import Coordinator, Grant, rendezvous_score
from connector.logs import get_logger
from connector.metrics import Metrics
from connector.outcomes import CycleReport
from connector.salesforce import ApiUsage
from connector.settings import Settings

log = get_logger("connector.scheduler")

JOB_ID = "sync-cycle"
# In the slowed state, one tick in this many runs a cycle.
SLOW_TICK_FACTOR = 4
# A cycle still running this long after its own time limit is treated as hung.
HUNG_CYCLE_GRACE_S = 300.0
EXIT_HUNG = 70

ThrottleState = Literal["normal", "slowed", "paused"]


class ApiThrottle:
    """Polling pace from the share of the daily API limit used, with hysteresis on resume."""

    def __init__(self, slow_share: float, pause_share: float, resume_share: float) -> None:
        self.slow_share = slow_share
        self.pause_share = pause_share
        self.resume_share = resume_share
        self.state: ThrottleState = "normal"

    def update(self, usage: ApiUsage | None) -> ThrottleState:
        """Move to the state the usage calls for; return it."""
        if usage is None or usage.limit <= 0:
            return self.state
        share = usage.used / usage.limit
        if self.state == "paused" and share >= self.resume_share:
            return self.state
        if share >= self.pause_share:
            self.state = "paused"
        elif share >= self.slow_share:
            self.state = "slowed"
        else:
            self.state = "normal"
        return self.state


class Daemon:
    """Runs ``cycle`` every ``settings.poll_interval_s`` seconds until a stop signal arrives."""

    def __init__(
        self,
        cycle: Callable[[], CycleReport],
        settings: Settings,
        stop_event: threading.Event,
        *,
        usage_probe: Callable[[], ApiUsage | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._cycle = cycle
        self._settings = settings
        self._interval_s = settings.poll_interval_s
        self.stop_event = stop_event
        self._usage_probe = usage_probe
        self._clock = clock
        self.throttle = ApiThrottle(settings.api_usage_slow_share, settings.api_usage_pause_share, settings.api_usage_resume_share)
        self.consecutive_failures = 0
        self._ticks = 0
        self._limit_wait_until: float | None = None
        self._cycle_started: float | None = None

    def tick(self) -> CycleReport | None:
        """One scheduled tick: maybe run a cycle, depending on the quota; return its report."""
        if self.stop_event.is_set() or not self._quota_allows_cycle():
            return None
        self._cycle_started = self._clock()
        try:
            report = self._observed_cycle()
        except ConfigurationError:
            # The cycle already logged sync.cycle_completed with the error; the daemon goes on,
            # because an operator may fix the setting (a rotated key) without a restart.
            self.consecutive_failures += 1
            return None
        except ConnectorError as exc:
            self._record_failure(exc)
            return None
        except Exception as exc:  # the daemon outlives a bug in one cycle; the next tick tries again
            self._record_failure(exc, with_traceback=True)
            return None
        finally:
            self._cycle_started = None
        self.consecutive_failures = self.consecutive_failures + 1 if report.status == "failed" else 0
        self._after_cycle(report)
        return report

    def _observed_cycle(self) -> CycleReport:
        """Run the cycle and record it in the metrics, when the daemon serves them."""
        if self._metrics is None:
            return self._cycle()
        try:
            report = self._cycle()
        except Exception:
            self._metrics.observe_cycle_error(self._settings.pipeline)
            raise
        self._metrics.observe_cycle(report, self._settings.pipeline)
        return report

    def _quota_allows_cycle(self) -> bool:
        self._ticks += 1
        if self._limit_wait_until is not None:
            if self._clock() < self._limit_wait_until:
                return False
            self._limit_wait_until = None
            log.info("daemon.resumed", reason="API limit wait over")
        if self.throttle.state == "paused":
            usage = self._probe_usage()
            if self.throttle.update(usage) == "paused":
                return False
            log.info("daemon.resumed", reason="API usage below the resume share", **_usage_fields(usage))
            return True
        if self.throttle.state == "slowed":
            return self._ticks % SLOW_TICK_FACTOR == 0
        return True

    def _probe_usage(self) -> ApiUsage | None:
        if self._usage_probe is None:
            return None
        try:
            return self._usage_probe()
        except ConnectorError as exc:
            log.warning("daemon.usage_probe_failed", error_type=exc.__class__.__name__, error=str(exc))
            return None

    def _after_cycle(self, report: CycleReport) -> None:
        usage = ApiUsage(report.api_used, report.api_limit) if report.api_used is not None and report.api_limit else None
        if report.error_type == "ApiLimitExceeded":
            self._limit_wait_until = self._clock() + self._settings.api_limit_wait_s
            log.warning("daemon.api_limit_reached", wait_s=self._settings.api_limit_wait_s, **_usage_fields(usage))
            return
        before = self.throttle.state
        after = self.throttle.update(usage)
        if after == before:
            return
        if after == "paused":
            log.warning("daemon.paused", reason="API usage above the pause share", **_usage_fields(usage))
        elif after == "slowed":
            log.warning("daemon.polling_slowed", factor=SLOW_TICK_FACTOR, **_usage_fields(usage))
        else:
            log.info("daemon.resumed", reason="API usage below the slow share", **_usage_fields(usage))

    def _record_failure(self, exc: BaseException, *, with_traceback: bool = False) -> None:
        self.consecutive_failures += 1
        log.error(
            "daemon.cycle_failed",
            error_type=exc.__class__.__name__,
            error=str(exc),
            consecutive_failures=self.consecutive_failures,
            exc_info=exc if with_traceback else None,
        )

    def exit_if_hung(self) -> None:
        """Exit the process if a cycle outlives its time limit by far: only a restart frees it."""
        limit = self._settings.cycle_timeout_s + self._settings.shutdown_grace_s + HUNG_CYCLE_GRACE_S
        started = self._cycle_started
        if started is not None and self._clock() - started > limit:
            log.error("daemon.cycle_hung", running_s=round(self._clock() - started, 1), exit_code=EXIT_HUNG)
            os._exit(EXIT_HUNG)


def _usage_fields(usage: ApiUsage | None) -> dict[str, int | float | None]:
    if usage is None:
        return {"salesforce_api_used": None, "salesforce_api_limit": None}
    return {
        "salesforce_api_used": usage.used,
        "salesforce_api_limit": usage.limit,
        "salesforce_api_share": round(usage.used / usage.limit, 4) if usage.limit else None,
    }


RunnerState = Literal["idle", "held", "releasing", "stopping"]


class PipelineRunner:
    """One pipeline in a running daemon: its parts, its Daemon, and whether this process leads it."""

    def __init__(self, settings: Settings, app: Any, daemon: Daemon) -> None:
        self.name = settings.pipeline
        self.settings = settings
        self.app = app
        self.daemon = daemon
        self.state: RunnerState = "idle"
        self.grant: Grant | None = None
        self.running = False

    @property
    def job_id(self) -> str:
        return f"{JOB_ID}:{self.name}"


class Supervisor:
    """Runs every configured pipeline that this process leads, each on its own interval.

    The main thread is the election loop: every ``leader_heartbeat_s`` it confirms the
    lock connection, counts the live replicas, hands back pipelines beyond its fair share
    between their cycles, and takes free ones up to that share. Each pipeline it leads is
    an APScheduler job that runs that pipeline's Daemon.tick. SIGTERM and SIGINT stop every
    pipeline the way they stop the single daemon, and hand each back cleanly.
    """

    def __init__(
        self,
        runners: list[PipelineRunner],
        coordinator: Coordinator,
        store: Any,
        stop_event: threading.Event,
        *,
        settings: Settings,
        metrics: Metrics | None = None,
        reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.runners = runners
        self.coordinator = coordinator
        self.store = store
        self.stop_event = stop_event
        self._settings = settings
        self._metrics = metrics
        self._reconnect = reconnect
        self._loop_s = min(1.0, settings.leader_heartbeat_s) if reconnect is None else settings.leader_heartbeat_s
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=max(1, len(runners)))},
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    # Election

    def elect(self) -> None:
        """Run one round of the election loop: confirm the locks, hand back or take pipelines."""
        coordinator = self.coordinator
        if not coordinator.heartbeat() or not coordinator.valid():
            for runner in self.runners:
                if runner.state in ("held", "releasing"):
                    self._lose(runner)
        for runner in self.runners:
            if runner.state == "stopping" and not runner.running:
                runner.state = "idle"
                log.info("leader.stopped", pipeline=runner.name, replica=coordinator.replica_id)
        if not coordinator.valid():
            self._try_reconnect()
            return
        share = -(-len(self.runners) // coordinator.live_replicas())
        held = [runner for runner in self.runners if runner.state == "held"]
        for runner in sorted(held, key=self._score)[: max(0, len(held) - share)]:
            runner.state = "releasing"
            log.info("leader.releasing", pipeline=runner.name, replica=coordinator.replica_id, share=share)
        for runner in self.runners:
            if runner.state == "releasing" and not runner.running:
                self._release(runner)
        leading = sum(1 for runner in self.runners if runner.state in ("held", "releasing", "stopping"))
        for runner in sorted(self.runners, key=self._score, reverse=True):
            if leading >= share:
                break
            if runner.state != "idle":
                continue
            grant = coordinator.try_acquire(runner.name)
            if grant is not None:
                self._take(runner, grant)
                leading += 1

    def _score(self, runner: PipelineRunner) -> int:
        return rendezvous_score(self.coordinator.replica_id, runner.name)

    def _try_reconnect(self) -> None:
        if self._reconnect is None or self.stop_event.is_set():
            return
        try:
            self._reconnect()
        except LeadershipLost as exc:
            log.warning("leader.reconnect_failed", replica=self.coordinator.replica_id, error=str(exc))

    def _take(self, runner: PipelineRunner, grant: Grant) -> None:
        """Start running a pipeline whose lock was just taken: fence its writes and schedule its cycles."""
        coordinator = self.coordinator
        if runner.app.sink.aborted:
            runner.app.renew_sink()

        runner.grant = grant
        runner.app.stop_event = threading.Event()
        runner.daemon.stop_event = runner.app.stop_event
        runner.app.sink.guard = lambda: coordinator.check(grant)
        self.store.set_fence(runner.name, coordinator.fence(grant))

        try:
            abandoned = self.store.abandon_running_cycles(runner.name)
        except ConnectorError as exc:
            log.error("leader.take_failed", pipeline=runner.name, error_type=exc.__class__.__name__, error=str(exc))
            self.store.set_fence(runner.name, None)
            coordinator.release(grant)
            runner.grant = None
            return

        runner.state = "held"
        first = datetime.now(UTC) + timedelta(seconds=grant.wait_s)
        self._scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=runner.settings.poll_interval_s, start_date=first, timezone=UTC),
            args=[runner],
            id=runner.job_id,
            next_run_time=first,
            misfire_grace_time=max(1, int(runner.settings.poll_interval_s)),
            replace_existing=True,
        )
        log.info(
            "leader.acquired", pipeline=runner.name, replica=coordinator.replica_id, epoch=grant.epoch,
            first_cycle_in_s=grant.wait_s, abandoned_cycles=abandoned,
        )

    def _remove_job(self, runner: PipelineRunner) -> None:
        try:
            self._scheduler.remove_job(runner.job_id)
        except JobLookupError:
            pass

    def _lose(self, runner: PipelineRunner) -> None:
        """Stop a pipeline whose lock may be gone: nothing more is sent, and in-flight upserts are cut."""
        self._remove_job(runner)
        runner.app.stop_event.set()
        runner.app.sink.abort()
        runner.state = "stopping"
        runner.grant = None
        log.error("leader.lost", pipeline=runner.name, replica=self.coordinator.replica_id, cycle_running=runner.running)

    def _release(self, runner: PipelineRunner) -> None:
        self._remove_job(runner)
        if runner.grant is not None:
            self.store.set_fence(runner.name, None)
            self.coordinator.release(runner.grant)
        runner.grant = None
        runner.app.sink.guard = None
        runner.state = "idle"
        log.info("leader.released", pipeline=runner.name, replica=self.coordinator.replica_id)

    # Cycles

    def _tick(self, runner: PipelineRunner) -> None:
        with structlog.contextvars.bound_contextvars(pipeline=runner.name):
            # Marked running before the checks, so the election loop never hands back a
            # pipeline whose cycle is about to start.
            runner.running = True
            try:
                if runner.state != "held" or self.stop_event.is_set():
                    return
                runner.daemon.tick()
            finally:
                runner.running = False

    def _watch_for_hung_cycles(self) -> None:
        while not self.stop_event.wait(timeout=5.0):
            for runner in self.runners:
                runner.daemon.exit_if_hung()

    # Lifetime

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("daemon.stop_requested", signal=signal.Signals(signum).name)
        self.stop_event.set()
        for runner in self.runners:
            runner.app.stop_event.set()

    def run(self) -> int:
        """Block until SIGTERM or SIGINT; return the process exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        threading.Thread(target=self._watch_for_hung_cycles, name="cycle-watchdog", daemon=True).start()
        log.info(
            "daemon.started", replica=self.coordinator.replica_id, pipelines=[runner.name for runner in self.runners],
            interval_s=self._settings.poll_interval_s if len(self.runners) == 1 else None,
        )
        self._scheduler.start()
        try:
            while not self.stop_event.is_set():
                self.elect()
                if self._metrics is not None and self._scheduler.running:
                    self._metrics.heartbeat()
                    self._metrics.set_leading([runner.name for runner in self.runners if runner.state == "held"])
                self.stop_event.wait(timeout=self._loop_s)
        finally:
            if self._metrics is not None:
                self._metrics.stopping()
            # The running cycles see their stop events and wind down. Meanwhile the locks
            # stay confirmed, or the lease would run out under a long drain.
            self._scheduler.shutdown(wait=False)
            while any(runner.running for runner in self.runners):
                self.coordinator.heartbeat()
                time.sleep(min(0.2, self._settings.leader_heartbeat_s))
            for runner in self.runners:
                if runner.state in ("held", "releasing"):
                    self._release(runner)
            self.coordinator.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failures = {runner.name: runner.daemon.consecutive_failures for runner in self.runners}
        log.info("daemon.stopped", consecutive_failures=max(failures.values(), default=0), by_pipeline=failures)
        return 0
