"""State store: the watermark per pipeline and a history of cycles, in SQL.

SQLAlchemy Core keeps the code the same for the embedded SQLite default and for
PostgreSQL (psycopg 3). Every write is one transaction, so a crash leaves either the old or
the new state, never a mix. When replicas share a PostgreSQL store, each pipeline's writes
are fenced: a write transaction first checks that this replica still leads the pipeline
(``set_fence``), and fails with LeadershipLost when it does not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from connector.cursor import Watermark, ensure_forward, format_iso, parse_salesforce_datetime
from connector.errors import ConfigurationError, ConnectorError, FatalError

SCHEMA_VERSION = 4
# Key of the transaction-level advisory lock that serialises migrations on PostgreSQL.
MIGRATION_LOCK_KEY = 0x5FC0_0001

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
    sa.Column("summary", sa.Text),  # the cycle's sync.cycle_completed fields as JSON; added in version 3
)


# Per Salesforce record: the version last handled and what Charles last accepted. Feeds
# the lookback de-duplication, change suppression and key-change detection.
records = sa.Table(
    "records",
    metadata,
    sa.Column("pipeline", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(18), primary_key=True),
    sa.Column("modstamp", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered, skipped, deleted
    sa.Column("payload_hash", sa.String(64)),
    sa.Column("external_reference_id", sa.String(64)),
    sa.Column("updated_at", sa.String(32), nullable=False),  # when outcome, payload_hash or the key last changed
    sa.Index("ix_records_key", "pipeline", "external_reference_id"),
)

# Every external_reference_id ever sent, and the record it belongs to. A key is claimed
# before its first upsert is sent, so even a crash between the send and the checkpoint
# leaves a trace. A key is retired when its record's phone number changes, the record
# stops having a valid number, or the record is deleted; Charles keeps a person under
# every retired key, so the key is recorded instead of being forgotten.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("pipeline", sa.String(64), primary_key=True),
    sa.Column("external_reference_id", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(18), nullable=False),
    sa.Column("claimed_at", sa.String(32), nullable=False),
    sa.Column("retired_at", sa.String(32)),
    sa.Column("replaced_by", sa.String(64)),
    sa.Index("ix_identities_record", "pipeline", "record_id"),
)

# Records set aside: Charles rejected them, or their key belongs to another record.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("pipeline", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(18), primary_key=True),
    sa.Column("modstamp", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_failed_at", sa.String(32), nullable=False),
    sa.Column("last_failed_at", sa.String(32), nullable=False),
)

# Per pipeline: who led it last, and the fencing epoch, raised by every new leader. A
# write checks the epoch it was granted against this row; see connector.leader.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("pipeline", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("acquired_at", sa.String(32), nullable=False),
    sa.Column("released_at", sa.String(32)),  # set when the holder handed it back cleanly
)

_VERSION_1_TABLES = (schema_info, watermarks, cycles)


def _migrate_to_2(conn: sa.Connection) -> None:
    for table in (records, identities, dead_letters):
        table.create(conn, checkfirst=True)


def _migrate_to_3(conn: sa.Connection) -> None:
    # A store created by this version already has the column, from the table definition.
    if "summary" not in {column["name"] for column in sa.inspect(conn).get_columns("cycles")}:
        conn.execute(sa.text("ALTER TABLE cycles ADD COLUMN summary TEXT"))


# The latest cycles of a pipeline, for status and for the start of the next window.
_cycles_recent = sa.Index("ix_cycles_pipeline_started", cycles.c.pipeline, cycles.c.started_at)


def _migrate_to_4(conn: sa.Connection) -> None:
    leases.create(conn, checkfirst=True)
    _cycles_recent.create(conn, checkfirst=True)


# Version N is reached by running MIGRATIONS[N] on a store at version N - 1.
MIGRATIONS: dict[int, Any] = {2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4}

# A fence runs at the start of each write transaction of its pipeline and raises if this
# process may no longer write for it.
Fence = Callable[[sa.Connection], None]


@dataclass(frozen=True)
class RecordState:
    """The stored state of one Salesforce record."""

    modstamp: str
    outcome: str
    payload_hash: str | None
    external_reference_id: str | None
    # When the outcome, payload hash or key last changed, as format_iso text. A new version
    # of a record whose stored payload Charles already has keeps the earlier time.
    updated_at: str | None = None


@dataclass(frozen=True)
class Handled:
    """One record's outcome, written with the watermark in a checkpoint."""

    record_id: str
    modstamp: str
    outcome: str
    payload_hash: str | None = None
    external_reference_id: str | None = None


@dataclass(frozen=True)
class SetAside:
    record_id: str
    modstamp: str
    reason: str
    error: str


@dataclass(frozen=True)
class DeadLetter:
    record_id: str
    modstamp: str
    reason: str
    error: str | None
    attempts: int
    first_failed_at: str
    last_failed_at: str


@dataclass(frozen=True)
class KeyChange:
    """A key that ``record_id`` no longer uses; ``new_key`` is empty when it has none now."""

    record_id: str
    old_key: str
    new_key: str


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
    summary: str | None = None


# Rows per statement when a checkpoint or a key claim writes a batch. It stays below
# SQLite's default limit of 999 bound parameters for the IN lists of older builds.
BATCH_ROWS = 500


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StateLocked(ConnectorError):
    """Another connector process is writing to the same state store."""


# Query parameters of a database URL whose values are secrets, as libpq names them.
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def state_url_password(url: str) -> str | None:
    """Return the password in a state store URL, from its user part or its query, so that logs can redact it."""
    try:
        parsed = sa.engine.make_url(url)
    except (SQLAlchemyError, ValueError):
        return None
    if parsed.password:
        return str(parsed.password)
    for key in _SECRET_QUERY_KEYS:
        value = parsed.query.get(key)
        if value:
            return value if isinstance(value, str) else value[0]
    return None


def safe_url(url: sa.engine.URL) -> str:
    """Render a database URL with its password masked, also where it is a query parameter."""
    masked = {key: "***" for key in url.query if key in _SECRET_QUERY_KEYS}
    return url.update_query_dict(masked).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def base_pipeline(name: str) -> str:
    """Return the pipeline that a state key belongs to: ``contacts:backfill`` belongs to ``contacts``."""
    return name.split(":", 1)[0]


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
        self._fences: dict[str, Fence] = {}
        try:
            parsed = sa.engine.make_url(url)
        except (SQLAlchemyError, ValueError) as exc:
            raise ConfigurationError(
                f"SFCHARLES_STATE_URL: not a database URL ({exc.__class__.__name__}); use sqlite:///path/to/state.db "
                "or postgresql+psycopg://user:password@host:5432/database"
            ) from None
        if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
            raise ConfigurationError(
                f"SFCHARLES_STATE_URL: {safe_url(parsed)!r} is not supported; use sqlite:///path/to/state.db, "
                "or postgresql+psycopg://user:password@host:5432/database for replicas"
            )
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
            raise ConfigurationError(
                f"SFCHARLES_STATE_URL: {safe_url(parsed)!r} uses the driver "
                f"{parsed.get_driver_name()!r}; write postgresql+psycopg:// (psycopg 3 is the driver installed)"
            )
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            # Connections are checked before use, so a restarted server costs one retry, not a cycle.
            options = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10, "connect_args": {"connect_timeout": 10}}
        try:
            self._engine: Engine = sa.create_engine(parsed, future=True, **options)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            raise ConfigurationError(f"SFCHARLES_STATE_URL: cannot use {safe_url(parsed)!r}: {exc}") from None
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._migrate()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @property
    def engine(self) -> Engine:
        return self._engine

    def set_fence(self, pipeline: str, fence: Fence | None) -> None:
        """Check every later write of ``pipeline`` with ``fence``, or stop checking (None)."""
        if fence is None:
            self._fences.pop(pipeline, None)
        else:
            self._fences[pipeline] = fence

    @contextmanager
    def _write(self, pipeline: str) -> Iterator[sa.Connection]:
        """Open a write transaction for ``pipeline`` and run its fence first."""
        with self._engine.begin() as conn:
            fence = self._fences.get(base_pipeline(pipeline))
            if fence is not None:
                fence(conn)
            yield conn

    def _migrate(self) -> None:
        """Create a new store at version 1, then run every migration up to SCHEMA_VERSION."""
        try:
            with self._engine.begin() as conn:
                if self._engine.dialect.name == "postgresql":
                    # Replicas starting together must not run the same migration twice.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                for table in _VERSION_1_TABLES:
                    table.create(conn, checkfirst=True)
                row = conn.execute(sa.select(schema_info.c.value).where(schema_info.c.key == "schema_version")).first()
                if row is None:
                    conn.execute(schema_info.insert().values(key="schema_version", value="1"))
                    version = 1
                else:
                    version = int(row.value)
                if version > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"state store schema version {version} is newer than this connector supports "
                        f"({SCHEMA_VERSION}); upgrade the connector or point SFCHARLES_STATE_URL at another store"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[target](conn)
                    conn.execute(schema_info.update().where(schema_info.c.key == "schema_version").values(value=str(target)))
        except sa.exc.OperationalError as exc:
            # The database cannot be reached or opened: a wrong path, host or credentials.
            if self._engine.dialect.name == "sqlite":
                fix = "check that the file's folder exists and is writable"
            else:
                fix = "check the host, port, database name, user and password, and that the server accepts connections from here"
            raise ConfigurationError(f"SFCHARLES_STATE_URL: cannot open the state store {self.describe()}: {exc.orig}; {fix}") from None
        except SQLAlchemyError as exc:
            raise FatalError(f"state store {self.describe()}: cannot open or migrate it: {exc.__class__.__name__}: {exc}") from exc

    def describe(self) -> str:
        return safe_url(self._engine.url)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's writer lock for the duration; raise StateLocked if it is taken.

        For SQLite this is an flock on ``<database>.lock``: the kernel releases it when the
        holder exits, SIGKILL included. Like SQLite itself it only works between processes
        on one host.
        """
        database = self._engine.url.database if self._engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            # PostgreSQL stores are shared by replicas: connector.leader takes a lock per pipeline instead.
            yield
            return
        import fcntl

        lock_path = Path(f"{database}.lock")
        handle = lock_path.open("a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise StateLocked(
                    f"state store {self.describe()} is in use by another sfcharles process (pid {holder}); "
                    "stop it first, or give this one its own SFCHARLES_STATE_URL"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()

    def close(self) -> None:
        self._engine.dispose()

    # Watermarks

    def get_watermark(self, pipeline: str) -> Watermark | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
        return None if row is None else Watermark.from_strings(row.modstamp, row.record_id)

    def advance_watermark(self, pipeline: str, position: Watermark) -> None:
        """Move the watermark forward; raise CursorOrderError if it would move back."""
        with self._write(pipeline) as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
            current = None if row is None else Watermark.from_strings(row.modstamp, row.record_id)
            ensure_forward(current, position)
            self._write_watermark(conn, pipeline, position, exists=row is not None)

    def advance_watermark_if_ahead(self, pipeline: str, position: Watermark) -> bool:
        """Move the watermark to ``position`` only if that is further on; return whether it moved."""
        with self._write(pipeline) as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
            current = None if row is None else Watermark.from_strings(row.modstamp, row.record_id)
            if current is not None and position <= current:
                return False
            self._write_watermark(conn, pipeline, position, exists=row is not None)
            return True

    def set_watermark(self, pipeline: str, position: Watermark | None) -> None:
        """Set the watermark to any position, backwards included, or delete it (operator rewind)."""
        with self._write(pipeline) as conn:
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

    # Records, checkpoints and dead letters

    def record_states(self, pipeline: str, record_ids: list[str]) -> dict[str, RecordState]:
        """Return the stored state of each of ``record_ids``; records never seen are absent."""
        found: dict[str, RecordState] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(record_ids), 500):
                chunk = record_ids[start : start + 500]
                rows = conn.execute(
                    sa.select(records).where(records.c.pipeline == pipeline, records.c.record_id.in_(chunk))
                ).all()
                for row in rows:
                    found[row.record_id] = RecordState(
                        row.modstamp, row.outcome, row.payload_hash, row.external_reference_id, row.updated_at
                    )
        return found

    def key_owners(self, pipeline: str, keys: list[str]) -> dict[str, str]:
        """Return the record that owns each active external_reference_id in ``keys``."""
        owners: dict[str, str] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(
                    sa.select(identities.c.external_reference_id, identities.c.record_id).where(
                        identities.c.pipeline == pipeline,
                        identities.c.external_reference_id.in_(keys[start : start + 500]),
                        identities.c.retired_at.is_(None),
                    )
                ).all()
                owners.update((row.external_reference_id, row.record_id) for row in rows)
        return owners

    def active_keys(self, pipeline: str, record_ids: list[str]) -> dict[str, list[str]]:
        """Return the active keys of each record in ``record_ids``: usually one, none if never sent."""
        found: dict[str, list[str]] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(record_ids), 500):
                rows = conn.execute(
                    sa.select(identities.c.record_id, identities.c.external_reference_id).where(
                        identities.c.pipeline == pipeline,
                        identities.c.record_id.in_(record_ids[start : start + 500]),
                        identities.c.retired_at.is_(None),
                    ).order_by(identities.c.claimed_at)
                ).all()
                for row in rows:
                    found.setdefault(row.record_id, []).append(row.external_reference_id)
        return found

    def claim_keys(self, pipeline: str, claims: list[tuple[str, str]]) -> None:
        """Record ``(key, record_id)`` pairs before their upserts are sent.

        A key that is retired, or active for another record, moves to the claiming record:
        the caller only claims a key another record holds when the duplicate-key policy is
        ``reassign``. When one key is claimed twice, the later claim wins.
        """
        if not claims:
            return
        now = _now()
        owners = dict(claims)  # one row per key, the last claim's record
        with self._write(pipeline) as conn:
            for chunk in _chunks(list(owners), BATCH_ROWS):
                existing = set(conn.execute(
                    sa.select(identities.c.external_reference_id).where(
                        identities.c.pipeline == pipeline, identities.c.external_reference_id.in_(chunk)
                    )
                ).scalars())
                inserts = [
                    {"pipeline": pipeline, "external_reference_id": key, "record_id": owners[key], "claimed_at": now}
                    for key in chunk if key not in existing
                ]
                updates = [{"b_key": key, "b_record_id": owners[key]} for key in chunk if key in existing]
                if inserts:
                    conn.execute(identities.insert(), inserts)
                if updates:
                    conn.execute(
                        identities.update()
                        .where(identities.c.pipeline == pipeline, identities.c.external_reference_id == sa.bindparam("b_key"))
                        .values(record_id=sa.bindparam("b_record_id"), retired_at=None, replaced_by=None),
                        updates,
                    )

    def checkpoint(
        self,
        pipeline: str,
        *,
        watermark: Watermark | None,
        handled: list[Handled],
        set_aside: list[SetAside],
        key_changes: list[KeyChange],
    ) -> None:
        """Write a batch of outcomes and move the watermark, all in one transaction.

        The watermark only moves forward here. A position at or behind the stored one is
        ignored, because lookback re-reads and merge winners are handled out of order.
        The rows are written a chunk of up to BATCH_ROWS records at a time, with a few
        statements per chunk. When a batch contains one record twice, its later item wins.
        """
        now = _now()
        with self._write(pipeline) as conn:
            self._write_handled(conn, pipeline, handled, now)
            if key_changes:
                conn.execute(
                    identities.update()
                    .where(
                        identities.c.pipeline == pipeline,
                        identities.c.external_reference_id == sa.bindparam("b_old_key"),
                        identities.c.record_id == sa.bindparam("b_record_id"),
                    )
                    .values(retired_at=now, replaced_by=sa.bindparam("b_new_key")),
                    [
                        {"b_old_key": change.old_key, "b_record_id": change.record_id, "b_new_key": change.new_key or None}
                        for change in key_changes
                    ],
                )
            self._write_set_aside(conn, pipeline, set_aside, now)
            if watermark is not None:
                row = conn.execute(sa.select(watermarks).where(watermarks.c.pipeline == pipeline)).first()
                current = None if row is None else Watermark.from_strings(row.modstamp, row.record_id)
                if current is None or watermark > current:
                    self._write_watermark(conn, pipeline, watermark, exists=row is not None)

    @staticmethod
    def _write_handled(conn: sa.Connection, pipeline: str, handled: list[Handled], now: str) -> None:
        """Upsert the ``records`` rows of ``handled`` and delete their dead letters."""
        latest = {item.record_id: item for item in handled}
        for chunk in _chunks(list(latest), BATCH_ROWS):
            existing = {
                row.record_id: row
                for row in conn.execute(
                    sa.select(records.c.record_id, records.c.outcome, records.c.payload_hash, records.c.external_reference_id, records.c.updated_at)
                    .where(records.c.pipeline == pipeline, records.c.record_id.in_(chunk))
                )
            }
            rows = []
            for record_id in chunk:
                item, stored = latest[record_id], existing.get(record_id)
                same = stored is not None and (stored.outcome, stored.payload_hash, stored.external_reference_id) == (
                    item.outcome, item.payload_hash, item.external_reference_id
                )
                rows.append({
                    "b_record_id": record_id, "modstamp": item.modstamp, "outcome": item.outcome, "payload_hash": item.payload_hash,
                    "external_reference_id": item.external_reference_id, "updated_at": stored.updated_at if same else now,
                })
            updates = [row for row in rows if row["b_record_id"] in existing]
            inserts = [
                {"pipeline": pipeline, "record_id": row["b_record_id"], **{k: v for k, v in row.items() if k != "b_record_id"}}
                for row in rows if row["b_record_id"] not in existing
            ]
            if updates:
                conn.execute(
                    records.update()
                    .where(records.c.pipeline == pipeline, records.c.record_id == sa.bindparam("b_record_id"))
                    .values({name: sa.bindparam(name) for name in ("modstamp", "outcome", "payload_hash", "external_reference_id", "updated_at")}),
                    updates,
                )
            if inserts:
                conn.execute(records.insert(), inserts)
            conn.execute(dead_letters.delete().where(dead_letters.c.pipeline == pipeline, dead_letters.c.record_id.in_(chunk)))

    @staticmethod
    def _write_set_aside(conn: sa.Connection, pipeline: str, set_aside: list[SetAside], now: str) -> None:
        """Upsert the dead letters of ``set_aside``, counting one attempt per item."""
        ids = list(dict.fromkeys(item.record_id for item in set_aside))
        for chunk in _chunks(ids, BATCH_ROWS):
            chunk_ids = set(chunk)
            stored = {
                row.record_id: (row.attempts, row.first_failed_at)
                for row in conn.execute(
                    sa.select(dead_letters.c.record_id, dead_letters.c.attempts, dead_letters.c.first_failed_at).where(
                        dead_letters.c.pipeline == pipeline, dead_letters.c.record_id.in_(chunk)
                    )
                )
            }
            letters: dict[str, dict[str, Any]] = {}
            for item in set_aside:
                if item.record_id not in chunk_ids:
                    continue
                previous = letters.get(item.record_id)
                if previous is not None:
                    attempts, first_failed_at = previous["attempts"] + 1, previous["first_failed_at"]
                elif item.record_id in stored:
                    attempts, first_failed_at = stored[item.record_id][0] + 1, stored[item.record_id][1]
                else:
                    attempts, first_failed_at = 1, now
                letters[item.record_id] = {
                    "b_record_id": item.record_id, "modstamp": item.modstamp, "reason": item.reason, "error": item.error[:1000],
                    "attempts": attempts, "first_failed_at": first_failed_at, "last_failed_at": now,
                }
            updates = [letter for record_id, letter in letters.items() if record_id in stored]
            inserts = [
                {"pipeline": pipeline, "record_id": letter["b_record_id"], **{k: v for k, v in letter.items() if k != "b_record_id"}}
                for record_id, letter in letters.items() if record_id not in stored
            ]
            if updates:
                columns = ("modstamp", "reason", "error", "attempts", "first_failed_at", "last_failed_at")
                conn.execute(
                    dead_letters.update()
                    .where(dead_letters.c.pipeline == pipeline, dead_letters.c.record_id == sa.bindparam("b_record_id"))
                    .values({name: sa.bindparam(name) for name in columns}),
                    updates,
                )
            if inserts:
                conn.execute(dead_letters.insert(), inserts)

    def dead_letters(self, pipeline: str) -> list[DeadLetter]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(dead_letters).where(dead_letters.c.pipeline == pipeline).order_by(dead_letters.c.first_failed_at, dead_letters.c.record_id)
            ).all()
        return [
            DeadLetter(row.record_id, row.modstamp, row.reason, row.error, row.attempts, row.first_failed_at, row.last_failed_at)
            for row in rows
        ]

    def discard_dead_letter(self, pipeline: str, record_id: str) -> bool:
        with self._write(pipeline) as conn:
            deleted = conn.execute(dead_letters.delete().where(dead_letters.c.pipeline == pipeline, dead_letters.c.record_id == record_id))
        return deleted.rowcount > 0

    def retired_keys(self, pipeline: str) -> list[dict[str, str]]:
        """Keys no record uses any more, each with the record that used it and its replacement."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(identities.c.external_reference_id, identities.c.record_id, identities.c.replaced_by, identities.c.retired_at)
                .where(identities.c.pipeline == pipeline, identities.c.retired_at.is_not(None))
                .order_by(identities.c.retired_at)
            ).all()
        return [dict(row._mapping) for row in rows]

    # Cycle history

    def start_cycle(self, cycle_id: str, pipeline: str, mode: str, watermark_before: Watermark | None) -> None:
        with self._write(pipeline) as conn:
            conn.execute(
                cycles.insert().values(
                    cycle_id=cycle_id, pipeline=pipeline, mode=mode, started_at=_now(), status="running",
                    fetched=0, pushed=0, skipped=0, failed=0,
                    watermark_before=None if watermark_before is None else str(watermark_before),
                )
            )

    def finish_cycle(
        self,
        cycle_id: str,
        *,
        status: str,
        counts: dict[str, int],
        watermark_after: Watermark | None,
        error: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        pipeline = self._cycle_pipeline(cycle_id) if self._fences else ""
        with self._write(pipeline) as conn:
            conn.execute(
                cycles.update().where(cycles.c.cycle_id == cycle_id).values(
                    finished_at=_now(), status=status,
                    fetched=counts.get("fetched", 0), pushed=counts.get("pushed", 0),
                    skipped=counts.get("skipped", 0), failed=counts.get("failed", 0),
                    watermark_after=None if watermark_after is None else str(watermark_after),
                    error=error,
                    summary=None if summary is None else json.dumps(summary, sort_keys=True),
                )
            )

    def _cycle_pipeline(self, cycle_id: str) -> str:
        with self._engine.connect() as conn:
            pipeline = conn.execute(sa.select(cycles.c.pipeline).where(cycles.c.cycle_id == cycle_id)).scalar()
        return pipeline or ""

    def abandon_running_cycles(self, pipeline: str) -> int:
        """Mark cycles of ``pipeline`` still shown as running as abandoned; return how many.

        Called when a process starts to lead the pipeline: no other process runs one then,
        so a running row is left over from a process that died.
        """
        with self._write(pipeline) as conn:
            result = conn.execute(
                cycles.update().where(cycles.c.pipeline == pipeline, cycles.c.status == "running")
                .values(status="abandoned", finished_at=_now(), error="the process running this cycle stopped before it finished")
            )
        return result.rowcount

    def lease(self, pipeline: str) -> dict[str, Any] | None:
        """Return the pipeline's lease row: last holder, epoch, when acquired and released."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.pipeline == pipeline)).first()
        return None if row is None else dict(row._mapping)

    def last_window_end(self, pipeline: str, mode: str) -> datetime | None:
        """Return the window end stored with the latest succeeded cycle of ``mode``, if it has one.

        The end is the ``window_end`` field of the cycle's summary JSON. A cycle written by
        a connector version without that field gives None. The index on (pipeline,
        started_at) lets the database read the pipeline's cycles from the newest back.
        """
        with self._engine.connect() as conn:
            summary = conn.execute(
                sa.select(cycles.c.summary)
                .where(cycles.c.pipeline == pipeline, cycles.c.mode == mode, cycles.c.status == "succeeded")
                .order_by(cycles.c.started_at.desc())
                .limit(1)
            ).scalar()
        if not summary:
            return None
        window_end = json.loads(summary).get("window_end")
        return None if not window_end else parse_salesforce_datetime(window_end)

    def recent_cycles(self, pipeline: str, limit: int = 10) -> list[CycleRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(cycles).where(cycles.c.pipeline == pipeline).order_by(cycles.c.started_at.desc()).limit(limit)
            ).all()
        return [CycleRecord(**row._mapping) for row in rows]

    def dead_letter_count(self, pipeline: str) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(dead_letters).where(dead_letters.c.pipeline == pipeline)).scalar_one())

    def pipelines(self) -> list[str]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(watermarks.c.pipeline).order_by(watermarks.c.pipeline)).all()
        return [row.pipeline for row in rows]
