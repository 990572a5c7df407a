"""The daemon: sync cycles on an interval with APScheduler 3.x, stopped cleanly by signals.

The only module that imports apscheduler. One job runs the cycle; ``max_instances=1``
keeps cycles from overlapping and ``coalesce=True`` turns a backlog of missed ticks into
one run. SIGTERM and SIGINT set a stop event that the running cycle checks between
records, so it finishes its in-flight upserts, commits the watermark, and the process
exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from connector.errors import ConfigurationError, ConnectorError
from connector.logs import get_logger
from connector.sync import CycleReport

log = get_logger("connector.scheduler")

JOB_ID = "sync-cycle"


class Daemon:
    """Runs ``cycle`` every ``interval_s`` seconds until a stop signal arrives."""

    def __init__(self, cycle: Callable[[], CycleReport], interval_s: float, stop_event: threading.Event) -> None:
        self._cycle = cycle
        self._interval_s = interval_s
        self.stop_event = stop_event
        self.consecutive_failures = 0

    def _tick(self) -> None:
        if self.stop_event.is_set():
            return
        try:
            report = self._cycle()
        except ConfigurationError as exc:
            self._record_failure("configuration", exc)
            return
        except ConnectorError as exc:
            self._record_failure("connector", exc)
            return
        except Exception as exc:  # the daemon outlives a bug in one cycle; the next tick tries again
            self._record_failure("unexpected", exc, with_traceback=True)
            return
        if report.status == "failed":
            self.consecutive_failures += 1
        else:
            self.consecutive_failures = 0

    def _record_failure(self, kind: str, exc: BaseException, *, with_traceback: bool = False) -> None:
        self.consecutive_failures += 1
        log.error(
            "daemon.cycle_failed",
            failure_kind=kind,
            error_type=exc.__class__.__name__,
            error=str(exc),
            consecutive_failures=self.consecutive_failures,
            exc_info=exc if with_traceback else None,
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("daemon.stop_requested", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def run(self) -> int:
        """Block until SIGTERM or SIGINT; return the process exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(self._interval_s))},
        )
        scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=self._interval_s, timezone=UTC),
            id=JOB_ID,
            next_run_time=datetime.now(UTC),  # the first cycle runs at start, not one interval later
            replace_existing=True,
        )
        log.info("daemon.started", interval_s=self._interval_s)
        scheduler.start()
        try:
            while not self.stop_event.wait(timeout=1.0):
                pass
        finally:
            # Waits for the running cycle, which sees the stop event and winds down.
            scheduler.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("daemon.stopped", consecutive_failures=self.consecutive_failures)
        return 0
