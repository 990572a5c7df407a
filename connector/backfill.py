"""Backfill helpers: the resume point of an interrupted backfill, the REST-or-Bulk choice, the dry run and the progress bar.

A backfill stores how far it got in the state store's watermarks table, under the pipeline
name plus ``:backfill``, next to the window start it began with (``:backfill-start``).
Both rows are separate from the daemon's watermark, which keeps its own rules. A later
backfill with the same ``--since`` starts after the stored position, unless ``--restart``
is given, and a backfill that read its whole window deletes both rows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from connector.cursor import Watermark, format_iso
from connector.errors import ConfigurationError
from connector.logs import get_logger
from connector.preview import preview_records
from connector.salesforce import EARLIEST_MODSTAMP, QueryTimeout, SalesforceSource, window_condition
from connector.state import StateStore

if TYPE_CHECKING:
    from connector.app import App

log = get_logger("connector.backfill")

# Records whose payloads `backfill --dry-run` prints.
DRY_RUN_SAMPLES = 5
# Maximum length of a key in the watermarks table (a String(64) column).
MAX_KEY_LENGTH = 64
PROGRESS_SUFFIX = ":backfill"
START_SUFFIX = ":backfill-start"

# Called after every committed page with the records fetched so far and the expected total.
PageListener = Callable[[int, int | None], None]


class BackfillProgress:
    """The stored position of a backfill that has not read its whole window yet."""

    def __init__(self, store: StateStore, pipeline: str) -> None:
        self._store = store
        self._pipeline = pipeline
        self.key = pipeline + PROGRESS_SUFFIX
        self.start_key = pipeline + START_SUFFIX

    def stored(self) -> tuple[Watermark, Watermark] | None:
        """Return the stored window start and position, if a backfill stopped part-way."""
        start = self._store.get_watermark(self.start_key)
        position = self._store.get_watermark(self.key)
        if start is None or position is None:
            return None
        return start, position

    def resume_point(self, since: datetime | None) -> Watermark | None:
        """Return the position to resume after for a backfill starting at ``since``, without changing anything."""
        stored = self.stored()
        if stored is None or stored[0] != _window_start(since):
            return None
        return stored[1]

    def begin(self, since: datetime | None, *, restart: bool) -> Watermark | None:
        """Start or resume a backfill; return the position to resume after, or None to start at ``since``.

        Progress stored for another window start, or with ``restart``, is deleted.
        """
        if len(self.start_key) > MAX_KEY_LENGTH:
            raise ConfigurationError(
                f"SFCHARLES_PIPELINE {self._pipeline!r} is too long to store a backfill's progress; "
                f"use at most {MAX_KEY_LENGTH - len(START_SUFFIX)} characters"
            )
        resume = None if restart else self.resume_point(since)
        if resume is not None:
            log.info("sync.backfill_resumed", since=since and format_iso(since), resume_after=str(resume))
            return resume
        stored = self.stored()
        if stored is not None:
            reason = "restart requested" if restart else "another window start"
            log.info("sync.backfill_progress_discarded", reason=reason, window_start=str(stored[0]), position=str(stored[1]))
        self._store.set_watermark(self.key, None)
        self._store.set_watermark(self.start_key, _window_start(since))
        return None

    def advance(self, position: Watermark) -> None:
        """Store ``position`` as handled; called only after the outcomes before it are committed."""
        self._store.advance_watermark_if_ahead(self.key, position)

    def clear(self) -> None:
        """Forget the backfill, so the next one reads its whole window."""
        self._store.set_watermark(self.key, None)
        self._store.set_watermark(self.start_key, None)


def _window_start(since: datetime | None) -> Watermark:
    return Watermark.start_of(since if since is not None else EARLIEST_MODSTAMP)


def count_window(
    source: SalesforceSource, object_name: str, start: Watermark | None, end: datetime, conditions: tuple[str, ...]
) -> int | None:
    """Count the window's records, or return None when Salesforce times out counting them."""
    try:
        return source.count_changes(object_name, start, end, conditions)
    except QueryTimeout:
        log.warning("sync.backfill_count_timed_out", reason="QUERY_TIMEOUT")
        return None


def uses_bulk(count: int | None, threshold: int) -> bool:
    """Return whether a backfill of ``count`` records reads through Bulk API 2.0; a count that timed out means a large window."""
    if threshold <= 0:
        return False
    return count is None or count > threshold


def plan_backfill(
    app: App, *, since: datetime | None, until: datetime | None, restart: bool, samples: int = DRY_RUN_SAMPLES
) -> dict[str, Any]:
    """Describe what ``backfill`` would do, without sending anything or changing the state store.

    The samples are the first records that a plain ``query`` returns for the window, in no
    particular order and without deleted ones.
    """
    syncer = app.syncer()  # checks the field map against the org's describe
    settings = app.settings
    field_map = app.field_map
    resume = None if restart else BackfillProgress(app.store, settings.pipeline).resume_point(since)
    start = resume
    if start is None and since is not None:
        start = Watermark.start_of(since)
    end = syncer._window_end(until)
    conditions = tuple(field_map.soql_conditions())
    count = count_window(app.source, field_map.object_name, start, end, conditions)
    sample_records: list[dict[str, Any]] = []
    if count != 0 and samples > 0:
        sample_records = app.source.fetch_where(
            field_map.object_name, field_map.source_fields(), window_condition(start, end, conditions), samples
        )
    return {
        "pipeline": settings.pipeline,
        "object": field_map.object_name,
        "window": {
            "since": since and format_iso(since),
            "until": format_iso(end),
            "resume_after": None if resume is None else str(resume),
        },
        "records": count,
        "bulk": uses_bulk(count, settings.bulk_threshold),
        "bulk_threshold": settings.bulk_threshold,
        "samples": preview_records(field_map, sample_records),
    }


@contextmanager
def progress_bar(stream: TextIO | None = None) -> Iterator[PageListener | None]:
    """Show a progress bar on ``stream`` (default stderr) if it is a terminal; yield its page listener or None."""
    stream = sys.stderr if stream is None else stream
    is_terminal = getattr(stream, "isatty", None)
    if is_terminal is None or not is_terminal():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(file=stream, desc="backfill", unit=" records", dynamic_ncols=True)

    def update(fetched: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(fetched - bar.n)

    try:
        yield update
    finally:
        bar.close()
