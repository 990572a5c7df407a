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
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from connector.backfill import BackfillProgress, PageListener, count_window, uses_bulk
from connector.cursor import OrderGuard, Watermark, describe, format_iso
from connector.errors import ConfigurationError, ConnectorError, FatalError, LeadershipLost
from connector.field_map import FieldMap, Mapped, Skipped
from connector.logs import get_logger
from connector.outcomes import CycleReport, Decision, Mode, decide, handled_at_version, mask_key
from connector.progress import UNAVAILABLE_AFTER, Entry, Progress
from connector.salesforce import Page, SalesforceSource, record_position
from connector.salesforce_bulk import BulkCountMismatch, BulkReader
from connector.settings import Settings
from connector.state import RecordState, StateStore

log = get_logger("connector.sync")


class CharlesUnavailable(FatalError):
    """Charles failed so many upserts in a row that the cycle stops early."""


# A failed cycle is logged as a warning; from this many failures in a row, as an error.
FAILURES_BEFORE_ERROR = 3

# Records decided and submitted at a time. Pushes start after each slice instead of after
# a whole page, so the in-flight upserts are replaced while the rest of the page is mapped.
DECIDE_SLICE = 200


class _PageContext:
    """Page-level lookups that the slices of one page share: stored states, held keys, mapped records and key owners.

    The states and held keys are read once per page, before anything of the page is
    written. Key owners are read per slice for the keys first seen in it. Changes that
    earlier records of the page made to ownership stay in ``owners`` and ``released``
    until the page's checkpoint writes them.
    """

    def __init__(self, records: list[dict[str, Any]], states: dict[str, RecordState], held: dict[str, list[str]]) -> None:
        self.records_by_id = {str(record.get("Id")): record for record in records}
        self.states = states
        self.held = held
        self.mapped: dict[str, Mapped | Skipped] = {}
        self.winner_keys: dict[str, str] = {}  # keys of merge winners that are not in the page
        self.owners: dict[str, str] = {}
        self.known_keys: set[str] = set()
        self.released: dict[str, str] = {}  # key -> record that released it before the key was read


# Stands in for the mapping of a record that ``decide`` finds already handled at its version.
_NOT_MAPPED = Skipped("", "mapping_error", "not mapped: already handled at this SystemModstamp")


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
        cycle_started = format_iso(datetime.now(UTC))
        fields = self.field_map.source_fields()
        conditions = tuple(self.field_map.soql_conditions())
        pages, bulk, total = self._open_changes(report, fields, start, end, conditions)
        try:
            for page in pages:
                context = self._page_context(page.records)
                for first in range(0, len(page.records), DECIDE_SLICE):
                    if self._stop_reason(report):
                        break
                    chunk = page.records[first : first + DECIDE_SLICE]
                    decisions = self._decide_slice(context, chunk, force=force)
                    for record, decision in zip(chunk, decisions, strict=True):
                        if self._stop_reason(report):
                            break
                        position = record_position(record)
                        guard.check(position)
                        report.fetched += 1
                        progress.add(self._start(position, decision, report))
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
            self._resend(report, self._winners_to_resend(merge_winners, cycle_started), reason="merge_winner")
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
        lookback = timedelta(seconds=self.settings.lookback_s)
        previous_end = self.store.last_window_end(self.pipeline, report.mode)
        if previous_end is None:
            return Watermark.start_of(watermark.modstamp - lookback)
        # With the window end E of the last succeeded cycle of this mode, the window starts at
        # min(watermark, E - lookback). A record stamped at t is visible by t + lookback at
        # the latest, because lookback bounds the longest transaction. So every record with
        # t <= E - lookback was visible to that cycle's query, which ran after E. It was in
        # that window and handled, since the cycle succeeded, or it lies before that window's
        # start and was handled earlier by the same argument, or it lies after the watermark.
        # A late commit seen now has t > E - lookback, so this window still contains it. Once
        # the watermark is older than one lookback, an idle cycle reads an empty window
        # instead of the same lookback every time. A failed, partial or interrupted cycle may
        # have left records of its window unhandled, so only a succeeded cycle's end counts.
        return min(watermark, Watermark.start_of(previous_end - lookback))

    def _window_end(self, until: datetime | None) -> datetime:
        end = self.source.server_time() - timedelta(seconds=self.settings.sync_lag_s)
        return end if until is None else min(end, until)

    # Decisions and pushes

    def _decide_page(self, records: list[dict[str, Any]], report: CycleReport, *, force: bool) -> list[Decision]:
        """Decide every record of a page, with one state-store read per kind of lookup."""
        return self._decide_slice(self._page_context(records), records, force=force)

    def _page_context(self, records: list[dict[str, Any]]) -> _PageContext:
        """Read the page's record states and held keys, and map the merge winners that are not in the page."""
        ids = [str(record.get("Id")) for record in records]
        context = _PageContext(records, self.store.record_states(self.pipeline, ids), self.store.active_keys(self.pipeline, ids))
        winners = {str(record["MasterRecordId"]) for record in records if record.get("MasterRecordId")}
        missing_winners = sorted(winners - set(ids))
        if missing_winners:
            for winner_record in self.source.fetch_by_ids(self.field_map.object_name, self.field_map.source_fields(), missing_winners):
                winner_outcome = self.field_map.apply(winner_record)
                if isinstance(winner_outcome, Mapped):
                    context.winner_keys[str(winner_record["Id"])] = str(winner_outcome.payload["external_reference_id"])
        return context

    def _mapped(self, context: _PageContext, record_id: str) -> Mapped | Skipped:
        outcome = context.mapped.get(record_id)
        if outcome is None:
            outcome = context.mapped[record_id] = self.field_map.apply(context.records_by_id[record_id])
        return outcome

    def _winner_key(self, context: _PageContext, record: dict[str, Any]) -> str | None:
        """Return the current key of the record that ``record`` was merged into, if that record has one."""
        winner = str(record.get("MasterRecordId") or "")
        if not winner:
            return None
        if winner in context.records_by_id:
            outcome = self._mapped(context, winner)
            return str(outcome.payload["external_reference_id"]) if isinstance(outcome, Mapped) else None
        return context.winner_keys.get(winner)

    def _read_owners(self, context: _PageContext, keys: set[str]) -> None:
        """Add the stored owners of the keys not read before in this page."""
        new_keys = sorted(keys - context.known_keys)
        if not new_keys:
            return
        for key, owner in self.store.key_owners(self.pipeline, new_keys).items():
            if context.released.get(key) != owner:
                context.owners[key] = owner
        context.known_keys.update(new_keys)

    def _decide_slice(self, context: _PageContext, records: list[dict[str, Any]], *, force: bool) -> list[Decision]:
        """Decide a slice of a page's records and claim the keys they will push.

        A record already handled at its SystemModstamp is not mapped, unless ``force``:
        ``decide`` returns "reread" for it without looking at the mapping.
        """
        ids = [str(record.get("Id")) for record in records]
        outcomes: list[Mapped | Skipped | None] = []
        keys: set[str] = set()
        for record_id, record in zip(ids, records, strict=True):
            state = context.states.get(record_id)
            if not force and handled_at_version(record, state):
                outcomes.append(None)
                continue
            outcome = self._mapped(context, record_id)
            outcomes.append(outcome)
            if isinstance(outcome, Mapped):
                keys.add(str(outcome.payload["external_reference_id"]))
            if record.get("IsDeleted") is True:
                # A deleted record marks the key it was stored under, unless another record owns it now.
                if state is not None and state.external_reference_id:
                    keys.add(state.external_reference_id)
                winner_key = self._winner_key(context, record)
                if winner_key is not None:
                    keys.add(winner_key)
        self._read_owners(context, keys)

        owners = context.owners
        decisions = []
        for record_id, record, outcome in zip(ids, records, outcomes, strict=True):
            if outcome is None:
                outcome = _NOT_MAPPED
            decision = decide(
                record, outcome, context.states.get(record_id), owners, self.settings,
                active_keys=tuple(context.held.get(record_id, ())), force=force,
                merge_winner_key=self._winner_key(context, record) if record.get("IsDeleted") is True else None,
            )
            for change in decision.key_changes:
                if owners.get(change.old_key) == record_id:
                    del owners[change.old_key]  # released keys are free for later records
                elif change.old_key not in context.known_keys:
                    context.released[change.old_key] = record_id
            if decision.key and decision.action in ("push", "unchanged") and decision.kind == "delivered":
                owners[decision.key] = record_id  # later records in this cycle see the new owner
                context.known_keys.add(decision.key)
            decisions.append(decision)

        # Claim keys before anything is sent, so a crash right after a send leaves a trace.
        claims = [(d.key, d.record_id) for d in decisions if d.action == "push" and d.key and d.kind == "delivered"]
        self.store.claim_keys(self.pipeline, claims)
        return decisions

    def _winners_to_resend(self, merge_winners: set[str], cycle_started: str) -> list[str]:
        """Return the merge winners that this cycle did not push with a new payload.

        The store moves a record's ``updated_at`` only when its outcome, payload hash or key
        changes, so a winner found unchanged in this cycle is sent again, as the merge needs.
        A winner pushed again with an equal payload (``force``) is sent once more too.

        NOTE: ``updated_at`` and ``cycle_started`` come from the local clocks of the replicas
        that wrote them, so a clock far ahead on another replica can leave one winner unsent.
        """
        winners = sorted(merge_winners)
        states = self.store.record_states(self.pipeline, winners)
        return [
            winner for winner in winners
            if (state := states.get(winner)) is None or state.updated_at is None or state.updated_at <= cycle_started
        ]

    def _start(self, position: Watermark, decision: Decision, report: CycleReport) -> Entry:
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
            progress.add(self._start(record_position(record), decision, report))
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
