"""State store: the watermark per pipeline and a history of cycles, in SQL.

SQLAlchemy Core keeps the code the same for the embedded SQLite default and for
PostgreSQL. Every write is one transaction, so a crash leaves either the old or the new
state, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from connector.cursor import Watermark, ensure_forward, format_iso
from connector.errors import ConfigurationError, FatalError

SCHEMA_VERSION = 1

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("pipeline", sa.String(64), primary_key=True),
    sa.Column("modstamp", sa.String(32), nullable=False),
    sa.Column("record_id", sa.String(18), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)

cycles = sa.Table(
    "cycles",
    metadata,
    sa.Column("cycle_id", sa.String(64), primary_key=True),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("fetched", sa.Integer, nullable=False, default=0),
    sa.Column("pushed", sa.Integer, nullable=False, default=0),
    sa.Column("skipped", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("watermark_before", sa.String(64)),
    sa.Column("watermark_after", sa.String(64)),
    sa.Column("error", sa.Text),
)


@dataclass(frozen=True)
class CycleRecord:
    cycle_id: str
    pipeline: str
    mode: str
    started_at: str
    finished_at: str | None
    status: str
    fetched: int
    pushed: int
    skipped: int
    failed: int
    watermark_before: str | None
    watermark_after: str | None
    error: str | None


def _now() -> str:
    return format_iso(datetime.now(UTC))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets `state show` read while the daemon writes; NORMAL sync never corrupts and
    # can only lose the last commits on power loss, which the at-least-once design absorbs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class StateStore:
    """Watermarks and cycle history behind one SQLAlchemy engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine: Engine = sa.create_engine(url, future=True)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            raise ConfigurationError(f"SFCHARLES_STATE_URL: cannot use {sa.engine.make_url(url).render_as_string(hide_password=True)!r}: {exc}") from None
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._migrate()

    def _migrate(self) -> None:
        try:
            with self._engine.begin() as conn:
                metadata.create_all(conn)
                row = conn.execute(sa.select(schema_info.c.value).where(schema_info.c.key == "schema_version")).first()
                if row is None:
                    conn.execute(schema_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(row.value) > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"state store schema version {row.value} is newer than this connector supports "
                        f"({SCHEMA_VERSION}); upgrade the connector or point SFCHARLES_STATE_URL at another store"
                    )
        except SQLAlchemyError as exc:
            raise FatalError(f"state store {self.describe()}: cannot open or migrate it: {exc.__class__.__name__}: {exc}") from exc

    def describe(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    # Watermarks

    def get_watermark(self, pipeline: str) -> Watermark | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
        return None if row is None else Watermark.from_strings(row.modstamp, row.record_id)

    def advance_watermark(self, pipeline: str, position: Watermark) -> None:
        """Move the watermark forward; raise CursorOrderError if it would move back."""
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
            current = None if row is None else Watermark.from_strings(row.modstamp, row.record_id)
            ensure_forward(current, position)
            self._write_watermark(conn, pipeline, position, exists=row is not None)

    def advance_watermark_if_ahead(self, pipeline: str, position: Watermark) -> bool:
        """Move the watermark to ``position`` only if that is further on; return whether it moved."""
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
            current = None if row is None else Watermark.from_strings(row.modstamp, row.record_id)
            if current is not None and position <= current:
                return False
            self._write_watermark(conn, pipeline, position, exists=row is not None)
            return True

    def set_watermark(self, pipeline: str, position: Watermark | None) -> None:
        """Set the watermark to any position, backwards included, or delete it (operator rewind)."""
        with self._engine.begin() as conn:
            if position is None:
                conn.execute(watermarks.delete().where(watermarks.c.pipeline == pipeline))
                return
            exists = conn.execute(sa.select(watermarks.c.pipeline).where(watermarks.c.pipeline == pipeline)).first()
            self._write_watermark(conn, pipeline, position, exists=exists is not None)

    @staticmethod
    def _write_watermark(conn: sa.Connection, pipeline: str, position: Watermark, *, exists: bool) -> None:
        values = {"modstamp": format_iso(position.modstamp), "record_id": position.record_id, "updated_at": _now()}
        if exists:
            conn.execute(watermarks.update().where(watermarks.c.pipeline == pipeline).values(**values))
        else:
            conn.execute(watermarks.insert().values(pipeline=pipeline, **values))

    # Cycle history

    def start_cycle(self, cycle_id: str, pipeline: str, mode: str, watermark_before: Watermark | None) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                cycles.insert().values(
                    cycle_id=cycle_id, pipeline=pipeline, mode=mode, started_at=_now(), status="running",
                    fetched=0, pushed=0, skipped=0, failed=0,
                    watermark_before=None if watermark_before is None else str(watermark_before),
                )
            )

    def finish_cycle(self, cycle_id: str, *, status: str, counts: dict[str, int], watermark_after: Watermark | None, error: str | None = None) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                cycles.update().where(cycles.c.cycle_id == cycle_id).values(
                    finished_at=_now(), status=status,
                    fetched=counts.get("fetched", 0), pushed=counts.get("pushed", 0),
                    skipped=counts.get("skipped", 0), failed=counts.get("failed", 0),
                    watermark_after=None if watermark_after is None else str(watermark_after),
                    error=error,
                )
            )

    def recent_cycles(self, pipeline: str, limit: int = 10) -> list[CycleRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(cycles).where(cycles.c.pipeline == pipeline).order_by(cycles.c.started_at.desc()).limit(limit)
            ).all()
        return [CycleRecord(**row._mapping) for row in rows]

    def pipelines(self) -> list[str]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(watermarks.c.pipeline).order_by(watermarks.c.pipeline)).all()
        return [row.pipeline for row in rows]
