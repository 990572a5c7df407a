"""The daemon: sync cycles on an interval with APScheduler 3.x, stopped cleanly by signals.

The only module that imports apscheduler. One job runs the cycle; ``max_instances=1``
keeps cycles from overlapping and ``coalesce=True`` turns a backlog of missed ticks into
one run. SIGTERM and SIGINT set a stop event that the running cycle checks between
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
from datetime import UTC, datetime
from types import FrameType
from typing import Literal

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from connector.errors import ConfigurationError, ConnectorError
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
            self._metrics.observe_cycle_error()
            raise
        self._metrics.observe_cycle(report)
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

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("daemon.stop_requested", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def _watch_for_hung_cycle(self) -> None:
        """Exit the process if a cycle outlives its time limit by far: only a restart frees it."""
        limit = self._settings.cycle_timeout_s + self._settings.shutdown_grace_s + HUNG_CYCLE_GRACE_S
        while not self.stop_event.wait(timeout=5.0):
            started = self._cycle_started
            if started is not None and self._clock() - started > limit:
                log.error("daemon.cycle_hung", running_s=round(self._clock() - started, 1), exit_code=EXIT_HUNG)
                os._exit(EXIT_HUNG)

    def run(self) -> int:
        """Block until SIGTERM or SIGINT; return the process exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(self._interval_s))},
        )
        scheduler.add_job(
            self.tick,
            IntervalTrigger(seconds=self._interval_s, timezone=UTC),
            id=JOB_ID,
            next_run_time=datetime.now(UTC),  # the first cycle runs at start, not one interval later
            replace_existing=True,
        )
        threading.Thread(target=self._watch_for_hung_cycle, name="cycle-watchdog", daemon=True).start()
        log.info("daemon.started", interval_s=self._interval_s)
        scheduler.start()
        try:
            while not self.stop_event.wait(timeout=1.0):
                if self._metrics is not None and scheduler.running:
                    self._metrics.heartbeat()
        finally:
            if self._metrics is not None:
                self._metrics.stopping()
            # Waits for the running cycle, which sees the stop event and winds down.
            scheduler.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("daemon.stopped", consecutive_failures=self.consecutive_failures)
        return 0


def _usage_fields(usage: ApiUsage | None) -> dict[str, int | float | None]:
    if usage is None:
        return {"salesforce_api_used": None, "salesforce_api_limit": None}
    return {
        "salesforce_api_used": usage.used,
        "salesforce_api_limit": usage.limit,
        "salesforce_api_share": round(usage.used / usage.limit, 4) if usage.limit else None,
    }
