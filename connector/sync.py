"""One sync cycle: fetch changes, map, drop what Charles already has, push, advance the watermark.

The watermark only moves past a record once Charles acknowledged it, the record was set
aside in the dead-letter table, or it needed no push (skipped by the map, unchanged, or
already handled at this version). Pushes run concurrently, so acknowledgements arrive
out of order. ``_Progress`` tracks the longest handled prefix of the ordered stream, and
that prefix is committed, with every outcome behind it, after each page.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import structlog

from connector.backfill import BackfillProgress, PageListener, count_window, uses_bulk
from connector.cursor import OrderGuard, Watermark, describe, format_iso
from connector.errors import ConfigurationError, ConnectorError, FatalError, LeadershipLost
from connector.field_map import FieldMap, Mapped
from connector.logs import get_logger
from connector.outcomes import CycleReport, Decision, Mode, decide, mask_key
from connector.progress import UNAVAILABLE_AFTER, Entry, Progress
from connector.salesforce import Page, SalesforceSource, record_position
from connector.salesforce_bulk import BulkCountMismatch, BulkReader
from connector.settings import Settings
from connector.state import StateStore

log = get_logger("connector.sync")


class CharlesUnavailable(FatalError):
    """Charles failed so many upserts in a row that the cycle stops early."""


# A failed cycle is logged as a warning; from this many failures in a row, as an error.
FAILURES_BEFORE_ERROR = 3


class Syncer:
    """Runs sync cycles for one pipeline: one Salesforce object into one Charles tenant."""

    def __init__(
        self,
        settings: Settings,
        source: SalesforceSource,
        sink: Any,
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
        self.consecutive_failures = 0
        self._deadline: float | None = None

    def run_cycle(
        self,
        mode: Mode = "incremental",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        force: bool = False,
        restart: bool = False,
        on_page: PageListener | None = None,
    ) -> CycleReport:
        """Run one cycle and return its report; raises only for configuration errors.

        A cycle that runs longer than SFCHARLES_CYCLE_TIMEOUT_S stops fetching as if a
        stop was requested, and commits what it finished. A backfill resumes after the
        position where an earlier one with the same ``since`` stopped, unless ``restart``.
        ``on_page`` is called after every committed page.
        """
        report = CycleReport(cycle_id=uuid.uuid4().hex[:16], mode=mode)
        started = time.monotonic()
        if hasattr(self.sink, "begin_cycle"):
            self.sink.begin_cycle()
        self._deadline = started + self.settings.cycle_timeout_s
        with structlog.contextvars.bound_contextvars(cycle_id=report.cycle_id, mode=mode, pipeline=self.pipeline):
            report.watermark_before = self.store.get_watermark(self.pipeline)
            self.store.start_cycle(report.cycle_id, self.pipeline, mode, report.watermark_before)
            log.info(
                "sync.cycle_started",
                watermark=describe(report.watermark_before),
                since=since and format_iso(since),
                until=until and format_iso(until),
                force=force,
            )
            try:
                self._run(report, since=since, until=until, force=force, restart=restart, on_page=on_page)
            except ConnectorError as exc:
                report.status = "failed"
                report.error = str(exc)
                report.error_type = exc.__class__.__name__
                if isinstance(exc, ConfigurationError):
                    self._finish(report, started)
                    raise
            self._finish(report, started)
        return report

    def replay_dead_letters(self, record_ids: list[str] | None = None) -> CycleReport:
        """Send set-aside records again now, all or the given ones, whatever their attempt count."""
        report = CycleReport(cycle_id=uuid.uuid4().hex[:16], mode="replay")
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(cycle_id=report.cycle_id, mode="replay", pipeline=self.pipeline):
            report.watermark_before = self.store.get_watermark(self.pipeline)
            self.store.start_cycle(report.cycle_id, self.pipeline, "replay", report.watermark_before)
            letters = [letter.record_id for letter in self.store.dead_letters(self.pipeline)]
            chosen = letters if record_ids is None else [record_id for record_id in letters if record_id in record_ids]
            unknown = sorted(set(record_ids or ()) - set(letters))
            if unknown:
                log.warning("sync.dead_letters_not_found", record_ids=unknown)
            log.info("sync.cycle_started", dead_letters=len(chosen))
            try:
                self._resend(report, chosen, reason="replay", force=True)
            except ConnectorError as exc:
                report.status = "failed"
                report.error = str(exc)
                report.error_type = exc.__class__.__name__
                if isinstance(exc, ConfigurationError):
                    self._finish(report, started)
                    raise
            self._finish(report, started)
        return report

    def _run(
        self,
        report: CycleReport,
        *,
        since: datetime | None,
        until: datetime | None,
        force: bool,
        restart: bool = False,
        on_page: PageListener | None = None,
    ) -> None:
        # Window: from the watermark, less the lookback, up to Salesforce's clock. A
        # backfill starts at ``since``, or after where an earlier one stopped.
        start = self._window_start(report, since)
        end = self._window_end(until)
        report.window_end = end
        backfill = BackfillProgress(self.store, self.pipeline) if report.mode == "backfill" else None
        if backfill is not None:
            start = backfill.begin(since, restart=restart) or start
        if start is not None and start.modstamp >= end:
            log.debug("sync.window_empty", start=str(start), end=format_iso(end))
            if backfill is not None:
                backfill.clear()
            report.caught_up = True
            return

        # Records set aside in earlier cycles go first, by Id.
        if report.mode == "incremental":
            self._retry_dead_letters(report)

        # The ordered stream of changes, committed page by page.
        progress = Progress(report)
        guard = OrderGuard(start)
        merge_winners: set[str] = set()
        pushed_ids: set[str] = set()
        fields = self.field_map.source_fields()
        conditions = tuple(self.field_map.soql_conditions())
        pages, bulk, total = self._open_changes(report, fields, start, end, conditions)
        try:
            for page in pages:
                decisions = self._decide_page(page.records, report, force=force)
                for record, decision in zip(page.records, decisions, strict=True):
                    if self._stop_reason(report):
                        break
                    position = record_position(record)
                    guard.check(position)
                    report.fetched += 1
                    progress.add(self._start(position, decision, report, pushed_ids))
                    if decision.merged_into:
                        merge_winners.add(decision.merged_into)
                    progress.collect(block=len(progress) > 2 * self.settings.salesforce_page_size)
                    if progress.charles_unavailable:
                        raise CharlesUnavailable(
                            f"Charles at {self.settings.charles_base_url} failed {UNAVAILABLE_AFTER} upserts in a row "
                            "after all retries; the cycle stops, and the next one resumes from the watermark"
                        )
                self._checkpoint(report, progress, since, backfill=backfill, hold_watermark=bulk)
                if on_page is not None:
                    on_page(report.fetched, total if total is not None else page.total_size)
                if report.status == "interrupted":
                    break
        except (ConfigurationError, LeadershipLost):
            # Another replica leads the pipeline now: nothing more is written or waited for.
            progress.cancel_pending()
            raise
        except FatalError as exc:
            progress.collect(block=True)
            self._checkpoint(report, progress, since, backfill=backfill, hold_watermark=bulk)
            if backfill is not None and isinstance(exc, BulkCountMismatch):
                # Records may be missing anywhere before the stored position, so the next
                # backfill reads the whole window again. Unchanged records are not sent
                # again, unless it runs with --force.
                backfill.clear()
            raise

        # Drain the remaining pushes and commit; then send merge winners again. After a stop
        # request the wait is bounded, and unfinished upserts are read again next cycle.
        until = time.monotonic() + self.settings.shutdown_grace_s if report.status == "interrupted" else None
        if getattr(self.sink, "aborted", False):
            until = time.monotonic()  # leadership lost: the cut upserts are not waited for
        if not progress.collect(block=True, until=until):
            log.warning("sync.upserts_abandoned", count=len(progress), reason="shutdown grace period over")
            progress.cancel_pending()
        self._checkpoint(report, progress, since, backfill=backfill, hold_watermark=bulk and report.status == "interrupted")
        if backfill is not None and report.status == "succeeded" and not sum(report.failed_by_reason.values()):
            backfill.clear()
        if merge_winners and report.status != "interrupted":
            self._resend(report, sorted(merge_winners - pushed_ids), reason="merge_winner")
        # Everything up to the window's end is handled: an idle org is not "behind".
        report.caught_up = report.status == "succeeded" and not progress.blocked

    def _open_changes(
        self, report: CycleReport, fields: list[str], start: Watermark | None, end: datetime, conditions: tuple[str, ...]
    ) -> tuple[Iterator[Page], bool, int | None]:
        """Open the window's pages, and return them, whether they come from Bulk API 2.0, and the count if known.

        A backfill counts its window first and reads more than SFCHARLES_BULK_THRESHOLD
        records through a Bulk API 2.0 query job; everything else reads through REST.
        """
        object_name = self.field_map.object_name
        if report.mode != "backfill":
            return self.source.changes(object_name, fields, start, end, conditions), False, None
        count = count_window(self.source, object_name, start, end, conditions)
        threshold = self.settings.bulk_threshold
        if not uses_bulk(count, threshold):
            log.info("sync.backfill_counted", count=count, bulk_threshold=threshold)
            return self.source.changes(object_name, fields, start, end, conditions), False, count
        log.info("sync.bulk_selected", count=count, bulk_threshold=threshold)
        reader = BulkReader(
            self.source, page_size=self.settings.salesforce_page_size, should_stop=lambda: self._stop_reason(report) is not None
        )
        return reader.changes(object_name, fields, start, end, conditions), True, count

    def _stop_reason(self, report: CycleReport) -> str | None:
        """Why fetching must stop now, if it must; marks the report interrupted."""
        if self.stop_event.is_set():
            reason = "stop requested"
        elif self._deadline is not None and time.monotonic() > self._deadline:
            reason = "cycle time limit reached (SFCHARLES_CYCLE_TIMEOUT_S)"
        else:
            return None
        if report.status != "interrupted":
            report.status = "interrupted"
            report.error = reason
            log.info("sync.stopping", reason=reason)
        return reason

    # Window

    def _window_start(self, report: CycleReport, since: datetime | None) -> Watermark | None:
        if report.mode == "backfill":
            return None if since is None else Watermark.start_of(since)
        watermark = report.watermark_before
        if watermark is None or self.settings.lookback_s <= 0:
            return watermark
        # Re-read a window behind the watermark: a long transaction can commit a record
        # whose SystemModstamp the watermark has already passed.
        return Watermark.start_of(watermark.modstamp - timedelta(seconds=self.settings.lookback_s))

    def _window_end(self, until: datetime | None) -> datetime:
        end = self.source.server_time() - timedelta(seconds=self.settings.sync_lag_s)
        return end if until is None else min(end, until)

    # Decisions and pushes

    def _decide_page(self, records: list[dict[str, Any]], report: CycleReport, *, force: bool) -> list[Decision]:
        """Decide every record of a page, with one state-store read per kind of lookup."""
        ids = [str(record.get("Id")) for record in records]
        winners = [str(record["MasterRecordId"]) for record in records if record.get("MasterRecordId")]
        states = self.store.record_states(self.pipeline, ids)
        mapped = [self.field_map.apply(record) for record in records]
        mapped_keys = {
            record_id: str(outcome.payload["external_reference_id"])
            for record_id, outcome in zip(ids, mapped, strict=True)
            if isinstance(outcome, Mapped)
        }
        missing_winners = sorted(set(winners) - set(ids))
        if missing_winners:
            # A merged-away record is marked only if its key is not the winner's own.
            for winner_record in self.source.fetch_by_ids(self.field_map.object_name, self.field_map.source_fields(), missing_winners):
                winner_outcome = self.field_map.apply(winner_record)
                if isinstance(winner_outcome, Mapped):
                    mapped_keys[str(winner_record["Id"])] = str(winner_outcome.payload["external_reference_id"])
        owners = self.store.key_owners(self.pipeline, sorted(set(mapped_keys.values())))
        held = self.store.active_keys(self.pipeline, ids)
        decisions = []
        for record_id, record, outcome in zip(ids, records, mapped, strict=True):
            winner_key = mapped_keys.get(str(record.get("MasterRecordId") or ""))
            decision = decide(
                record, outcome, states.get(record_id), owners, self.settings,
                active_keys=tuple(held.get(record_id, ())), force=force, merge_winner_key=winner_key,
            )
            for change in decision.key_changes:
                if owners.get(change.old_key) == record_id:
                    del owners[change.old_key]  # released keys are free for later records
            if decision.key and decision.action in ("push", "unchanged") and decision.kind == "delivered":
                owners[decision.key] = record_id  # later records in this cycle see the new owner
            decisions.append(decision)

        # Claim keys before anything is sent, so a crash right after a send leaves a trace.
        claims = [(d.key, d.record_id) for d in decisions if d.action == "push" and d.key and d.kind == "delivered"]
        self.store.claim_keys(self.pipeline, claims)
        return decisions

    def _start(self, position: Watermark, decision: Decision, report: CycleReport, pushed_ids: set[str]) -> Entry:
        """Count an immediate outcome or submit the upsert; return the entry to track."""
        report.count(decision)
        for change in decision.key_changes if decision.kind != "deleted" else ():
            log.warning(
                "identity.key_changed", record_id=change.record_id,
                old_key=mask_key(change.old_key), new_key=mask_key(change.new_key) if change.new_key else None,
            )
        for note in decision.notes:
            log.debug("mapping.value_dropped", record_id=decision.record_id, note=note)
        if decision.action == "skip":
            log.debug("sync.record_skipped", record_id=decision.record_id, reason=decision.reason, detail=decision.detail)
        if decision.action == "set_aside":
            log.warning("sync.record_set_aside", record_id=decision.record_id, reason=decision.reason, error=decision.detail)
        future = None
        if decision.action == "push":
            assert decision.payload is not None
            future = self.sink.submit(decision.record_id, decision.payload)
            pushed_ids.add(decision.record_id)
        return Entry(position, decision, future)

    def _checkpoint(
        self,
        report: CycleReport,
        progress: Progress,
        since: datetime | None,
        *,
        backfill: BackfillProgress | None = None,
        hold_watermark: bool = False,
    ) -> None:
        """Commit collected outcomes and the handled prefix, never moving the watermark back.

        A backfill moves the daemon's watermark only when its window joins up with what
        the daemon already covered. Otherwise a gap before ``since`` would be skipped.
        With ``hold_watermark`` (a Bulk API read whose record count is not checked yet) it
        does not move it at all. The backfill's own position moves after the outcomes are
        committed, so a crash between the two makes the next backfill re-read one page.
        """
        handled = progress.handled
        watermark = handled
        if report.mode == "backfill":
            joined = since is None or (report.watermark_before is not None and since <= report.watermark_before.modstamp)
            if not joined or hold_watermark:
                watermark = None
        batch = progress.take_outcomes()
        if watermark is not None or not batch.empty:
            self.store.checkpoint(self.pipeline, watermark=watermark, handled=batch.handled, set_aside=batch.set_aside, key_changes=batch.key_changes)
        if backfill is not None and handled is not None:
            backfill.advance(handled)

    def _retry_dead_letters(self, report: CycleReport) -> None:
        limit = self.settings.dead_letter_max_attempts
        due = [letter.record_id for letter in self.store.dead_letters(self.pipeline) if letter.attempts < limit]
        if due:
            log.info("sync.dead_letters_retrying", count=len(due))
            self._resend(report, due, reason="dead_letter", force=False)

    def _resend(self, report: CycleReport, record_ids: Iterable[str], *, reason: str, force: bool = True) -> None:
        """Process records by Id outside the ordered stream; the watermark is not touched."""
        ids = list(record_ids)
        if not ids:
            return
        records = list(self.source.fetch_by_ids(self.field_map.object_name, self.field_map.source_fields(), ids))
        report.fetched += len(records)
        log.debug("sync.resending", reason=reason, requested=len(ids), found=len(records))
        progress = Progress(report)
        for record, decision in zip(records, self._decide_page(records, report, force=force), strict=True):
            progress.add(self._start(record_position(record), decision, report, set()))
        progress.collect(block=True)
        batch = progress.take_outcomes()
        self.store.checkpoint(self.pipeline, watermark=None, handled=batch.handled, set_aside=batch.set_aside, key_changes=batch.key_changes)

    # Report

    def _finish(self, report: CycleReport, started: float) -> None:
        report.duration_s = time.monotonic() - started
        usage = self.source.api_usage
        if usage is not None:
            report.api_used, report.api_limit = usage.used, usage.limit
        report.watermark_after = self.store.get_watermark(self.pipeline)
        if report.status == "succeeded" and report.failed:
            report.status = "partial"
        self.consecutive_failures = self.consecutive_failures + 1 if report.status == "failed" else 0
        report.consecutive_failures = self.consecutive_failures
        try:
            self.store.finish_cycle(
                report.cycle_id, status=report.status, counts=report.counts(), watermark_after=report.watermark_after,
                error=report.error, summary=report.log_fields(),
            )
        except LeadershipLost as exc:
            # Another replica runs the pipeline now and owns its history; this cycle's
            # summary still reaches the log.
            report.status, report.error, report.error_type = "failed", str(exc), exc.__class__.__name__
        fields = report.log_fields()
        if report.status in ("succeeded", "interrupted"):
            log.info("sync.cycle_completed", **fields)
        elif report.status == "partial" or self.consecutive_failures < FAILURES_BEFORE_ERROR:
            log.warning("sync.cycle_completed", **fields)
        else:
            log.error("sync.cycle_completed", **fields)
