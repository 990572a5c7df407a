"""The handled prefix of the ordered change stream, and the outcomes waiting to be committed."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import CancelledError, Future, wait
from dataclasses import dataclass, field

from connector.charles import PushResult
from connector.cursor import Watermark
from connector.errors import ConfigurationError, RecordError
from connector.logs import get_logger
from connector.outcomes import CycleReport, Decision
from connector.state import Handled, KeyChange, SetAside

log = get_logger("connector.sync")

# This many upserts in a row that failed after all their retries end the cycle: Charles is
# most likely down, and the records after them would only fail the same way.
UNAVAILABLE_AFTER = 20
# At most this many charles.upsert_failed lines per cycle; the summary counts the rest.
FAILURES_LOGGED_PER_CYCLE = 10


@dataclass
class Entry:
    position: Watermark
    decision: Decision
    future: Future[PushResult] | None = None  # None: nothing was sent for this record


@dataclass
class OutcomeBatch:
    handled: list[Handled] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)
    key_changes: list[KeyChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.handled or self.set_aside or self.key_changes)


class Progress:
    """Collects finished entries in stream order and tracks how far the stream is handled.

    The first record whose push failed transiently blocks the handled prefix for the rest
    of the cycle, so the watermark stays before it and the next cycle reads it again.
    """

    def __init__(self, report: CycleReport) -> None:
        self._report = report
        self._entries: deque[Entry] = deque()
        self._batch = OutcomeBatch()
        self.handled: Watermark | None = None
        self._blocked = False
        self._transient_in_a_row = 0
        self._failures_logged = 0

    @property
    def blocked(self) -> bool:
        """Whether a record failed transiently, so the watermark stays before it."""
        return self._blocked

    @property
    def charles_unavailable(self) -> bool:
        """Whether so many upserts in a row failed transiently that Charles is likely down."""
        return self._transient_in_a_row >= UNAVAILABLE_AFTER

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Entry) -> None:
        self._entries.append(entry)

    def collect(self, *, block: bool = False, until: float | None = None) -> bool:
        """Take finished entries from the head; with ``block``, wait for them.

        ``until`` is a ``time.monotonic()`` deadline for that wait. Returns False if
        entries are left unfinished; they do not count as handled.
        """
        while self._entries:
            head = self._entries[0]
            if head.future is not None and not head.future.done():
                if not block:
                    return False
                timeout = None if until is None else max(0.0, until - time.monotonic())
                wait([head.future], timeout=timeout)
                if not head.future.done():
                    return False
            self._entries.popleft()
            if not self._settle(head):
                self._blocked = True
            if not self._blocked:
                self.handled = head.position
        return True

    def take_outcomes(self) -> OutcomeBatch:
        batch, self._batch = self._batch, OutcomeBatch()
        return batch

    def cancel_pending(self) -> None:
        for entry in self._entries:
            if entry.future is not None:
                entry.future.cancel()

    def _settle(self, entry: Entry) -> bool:
        """Record the entry's outcome; return False if it must hold the watermark."""
        decision = entry.decision
        if entry.future is not None:
            try:
                entry.future.result()
            except ConfigurationError:
                raise
            except RecordError as exc:
                if exc.retryable:
                    self._report.failed_by_reason[exc.reason] += 1
                    self._transient_in_a_row += 1
                    # During an outage every record fails alike; a few lines tell the story.
                    if self._failures_logged < FAILURES_LOGGED_PER_CYCLE:
                        self._failures_logged += 1
                        log.warning("charles.upsert_failed", record_id=exc.record_id, reason=exc.reason, error=str(exc))
                    return False
                self._report.set_aside_by_reason[exc.reason] += 1
                log.warning("charles.upsert_rejected", record_id=exc.record_id, reason=exc.reason, error=str(exc))
                self._batch.set_aside.append(SetAside(decision.record_id, decision.modstamp, exc.reason, str(exc)))
                return True
            except CancelledError:
                # Never sent: the sink was aborted or is shutting down. Read again next cycle.
                self._report.failed_by_reason["cancelled"] += 1
                return False
            except Exception as exc:  # a bug must not lose the record: hold the watermark before it
                self._report.failed_by_reason["internal_error"] += 1
                log.error("sync.push_crashed", record_id=decision.record_id, error_type=exc.__class__.__name__, exc_info=exc)
                return False
            self._report.pushed += 1
            self._transient_in_a_row = 0
            if decision.kind == "deleted":
                self._report.deleted += 1
        self._store_outcome(decision)
        return True

    def _store_outcome(self, decision: Decision) -> None:
        if decision.action == "reread":
            return
        if decision.action == "set_aside":
            self._batch.set_aside.append(SetAside(decision.record_id, decision.modstamp, decision.reason or "set_aside", decision.detail or ""))
            return
        key = decision.key if decision.action != "skip" or decision.kind == "deleted" else None
        self._batch.handled.append(Handled(decision.record_id, decision.modstamp, decision.kind, decision.payload_hash, key))
        self._batch.key_changes.extend(decision.key_changes)
