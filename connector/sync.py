"""One sync cycle: fetch changes, map, push, advance the watermark.

The watermark only moves past a record once Charles acknowledged it or the mapping
skipped it on purpose. Pushes run concurrently, so acknowledgements arrive out of order;
``_Progress`` tracks the longest handled prefix of the ordered stream, and that prefix is
what gets committed after every page and at the end.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog

from connector.charles import CharlesSink, PushResult
from connector.cursor import OrderGuard, Watermark, describe, parse_salesforce_datetime
from connector.errors import ConfigurationError, ConnectorError, FatalError, RecordError
from connector.field_map import FieldMap, Mapped, Skipped
from connector.logs import get_logger
from connector.salesforce import SalesforceSource
from connector.settings import Settings
from connector.state import StateStore

log = get_logger("connector.sync")

Mode = Literal["incremental", "backfill"]
Status = Literal["succeeded", "partial", "interrupted", "failed"]


@dataclass
class CycleReport:
    """What one cycle did; logged as ``sync.cycle_completed`` and stored in the cycle history."""

    cycle_id: str
    mode: Mode
    status: Status = "succeeded"
    fetched: int = 0
    pushed: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    values_dropped: int = 0
    watermark_before: Watermark | None = None
    watermark_after: Watermark | None = None
    window_end: datetime | None = None
    duration_s: float = 0.0
    error: str | None = None

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    def counts(self) -> dict[str, int]:
        return {"fetched": self.fetched, "pushed": self.pushed, "skipped": self.skipped, "failed": self.failed}

    def log_fields(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "fetched": self.fetched,
            "pushed": self.pushed,
            "skipped": self.skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "failed": self.failed,
            "failed_by_reason": dict(sorted(self.failed_by_reason.items())),
            "values_dropped": self.values_dropped,
            "watermark_before": describe(self.watermark_before),
            "watermark_after": describe(self.watermark_after),
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class _Entry:
    position: Watermark
    future: Future[PushResult] | None  # None: the record was skipped, nothing to wait for


class _Progress:
    """The handled prefix of the ordered change stream, and the outcome counts."""

    def __init__(self, report: CycleReport) -> None:
        self._report = report
        self._entries: deque[_Entry] = deque()
        self.handled: Watermark | None = None
        self._blocked = False  # set at the first failed record: the watermark stops before it

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: _Entry) -> None:
        self._entries.append(entry)

    def collect(self, *, block: bool = False) -> None:
        """Count finished entries from the head and extend the handled prefix."""
        while self._entries:
            head = self._entries[0]
            if head.future is not None and not head.future.done():
                if not block:
                    return
                wait([head.future])
            self._entries.popleft()
            if head.future is not None and not self._record_push(head):
                self._blocked = True
            if not self._blocked:
                self.handled = head.position

    def _record_push(self, entry: _Entry) -> bool:
        assert entry.future is not None
        try:
            entry.future.result()
        except RecordError as exc:
            self._report.failed_by_reason[exc.reason] += 1
            log.warning("charles.upsert_rejected", record_id=exc.record_id, reason=exc.reason, error=str(exc))
            return False
        except ConfigurationError:
            raise
        except Exception as exc:  # a bug must not lose the record: count it, keep the watermark before it
            self._report.failed_by_reason["internal_error"] += 1
            log.error("sync.push_crashed", record_id=entry.position.record_id, error_type=exc.__class__.__name__, exc_info=exc)
            return False
        self._report.pushed += 1
        return True

    def cancel_pending(self) -> None:
        for entry in self._entries:
            if entry.future is not None:
                entry.future.cancel()


class Syncer:
    """Runs sync cycles for one pipeline: one Salesforce object into one Charles tenant."""

    def __init__(
        self,
        settings: Settings,
        source: SalesforceSource,
        sink: CharlesSink,
        store: StateStore,
        field_map: FieldMap,
        *,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.sink = sink
        self.store = store
        self.field_map = field_map
        self.pipeline = settings.pipeline
        self.stop_event = stop_event or threading.Event()

    def run_cycle(self, mode: Mode = "incremental", *, since: datetime | None = None, until: datetime | None = None) -> CycleReport:
        """Run one cycle and return its report; raises only for configuration errors."""
        report = CycleReport(cycle_id=uuid.uuid4().hex[:16], mode=mode)
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(cycle_id=report.cycle_id, mode=mode, pipeline=self.pipeline):
            report.watermark_before = self.store.get_watermark(self.pipeline)
            self.store.start_cycle(report.cycle_id, self.pipeline, mode, report.watermark_before)
            log.info("sync.cycle_started", watermark=describe(report.watermark_before), since=since and since.isoformat(), until=until and until.isoformat())
            try:
                self._run(report, since=since, until=until)
            except ConnectorError as exc:
                report.status = "failed"
                report.error = f"{exc.__class__.__name__}: {exc}"
                if isinstance(exc, ConfigurationError):
                    self._finish(report, started)
                    raise
            self._finish(report, started)
        return report

    def _finish(self, report: CycleReport, started: float) -> None:
        report.duration_s = time.monotonic() - started
        report.watermark_after = self.store.get_watermark(self.pipeline)
        if report.status == "succeeded" and report.failed:
            report.status = "partial"
        self.store.finish_cycle(report.cycle_id, status=report.status, counts=report.counts(), watermark_after=report.watermark_after, error=report.error)
        fields = report.log_fields()
        if report.error:
            fields["error"] = report.error
        level = log.info if report.status in ("succeeded", "interrupted") else log.warning if report.status == "partial" else log.error
        level("sync.cycle_completed", **fields)

    def _run(self, report: CycleReport, *, since: datetime | None, until: datetime | None) -> None:
        # Window: from the watermark (or the backfill's start) up to Salesforce's clock.
        start = self._window_start(report, since)
        end = self._window_end(until)
        report.window_end = end
        if start is not None and start.modstamp >= end:
            log.debug("sync.window_empty", start=str(start), end=end.isoformat())
            return

        # Fetch, map and push, one page at a time.
        progress = _Progress(report)
        guard = OrderGuard(start)
        try:
            for page in self.source.changes(self.field_map.object_name, self.field_map.source_fields(), start, end):
                for record in page.records:
                    if self.stop_event.is_set():
                        report.status = "interrupted"
                        break
                    report.fetched += 1
                    position = _position(record)
                    guard.check(position)
                    progress.add(_Entry(position, self._map_and_submit(record, report)))
                    if len(progress) > 2 * self.settings.salesforce_page_size:
                        progress.collect(block=True)  # bound memory when Charles is slower than Salesforce
                    else:
                        progress.collect()

                # Checkpoint: commit the handled prefix after every page.
                self._checkpoint(report, progress, since)
                if report.status == "interrupted":
                    log.info("sync.stopping", reason="stop requested; finishing in-flight upserts")
                    break
        except ConfigurationError:
            progress.cancel_pending()
            raise
        except FatalError:
            progress.collect(block=True)
            self._checkpoint(report, progress, since)
            raise

        # Drain the remaining pushes and commit the final position.
        progress.collect(block=True)
        self._checkpoint(report, progress, since)

    def _window_start(self, report: CycleReport, since: datetime | None) -> Watermark | None:
        if report.mode == "incremental":
            return report.watermark_before
        return None if since is None else Watermark.start_of(since)

    def _window_end(self, until: datetime | None) -> datetime:
        end = self.source.server_time() - timedelta(seconds=self.settings.sync_lag_s)
        return end if until is None else min(end, until)

    def _map_and_submit(self, record: dict[str, Any], report: CycleReport) -> Future[PushResult] | None:
        outcome = self.field_map.apply(record)
        if isinstance(outcome, Skipped):
            report.skipped_by_reason[outcome.reason] += 1
            log.debug("sync.record_skipped", record_id=outcome.record_id, reason=outcome.reason, detail=outcome.detail)
            return None
        assert isinstance(outcome, Mapped)
        for note in outcome.notes:
            report.values_dropped += 1
            log.debug("mapping.value_dropped", record_id=outcome.record_id, note=note)
        return self.sink.submit(outcome.record_id, outcome.payload)

    def _checkpoint(self, report: CycleReport, progress: _Progress, since: datetime | None) -> None:
        """Commit the handled prefix, never moving the daemon's watermark backwards.

        A backfill moves the daemon's watermark only when its window joins up with what
        the daemon already covered; otherwise a gap before ``since`` would be skipped.
        """
        handled = progress.handled
        if handled is None:
            return
        if report.mode == "backfill":
            joined = since is None or (report.watermark_before is not None and since <= report.watermark_before.modstamp)
            if not joined:
                return
        self.store.advance_watermark_if_ahead(self.pipeline, handled)


def _position(record: dict[str, Any]) -> Watermark:
    try:
        return Watermark(parse_salesforce_datetime(str(record["SystemModstamp"])), str(record["Id"]))
    except (KeyError, ValueError) as exc:
        raise FatalError(f"Salesforce returned a record without a usable Id and SystemModstamp: {exc}") from None
