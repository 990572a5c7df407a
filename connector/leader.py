"""Leadership: which process runs which pipeline.

On PostgreSQL several replicas share one state store. Each replica opens one dedicated
connection, the lock connection, and holds on it a session-level advisory lock for every
pipeline it runs, plus one lock that announces the replica itself. PostgreSQL releases a
session's locks when the session ends: when the process dies, or its connection is
terminated or lost. Another replica's ``pg_try_advisory_lock`` then succeeds and it takes
the pipeline over. The only mechanisms are PostgreSQL's own: advisory locks, ``pg_locks``
to count live replicas and name holders, and a row lock on the pipeline's lease.

Three rules keep two replicas from running one pipeline at once:

* A holder confirms its lock connection every ``leader_heartbeat_s``. When a heartbeat
  fails, or none has succeeded for ``leader_lease_s``, the holder stops its pipelines: it
  sends no further upsert and aborts those in flight.
* A replica that takes a pipeline which was not handed back cleanly waits
  ``leader_lease_s`` before its first cycle, by which time the old holder has stopped.
* Every state write is fenced. A new holder raises the pipeline's epoch in the ``leases``
  table when it takes the lock. Each write transaction reads that row ``FOR SHARE`` and
  fails with LeadershipLost unless the epoch is still its own. The row lock orders a new
  holder's raise after any write already under way.

With SQLite there is one process per store, held by the store's file lock, and
LocalCoordinator grants it every pipeline at once.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa

from connector.cursor import format_iso
from connector.errors import ConfigurationError, LeadershipLost
from connector.logs import get_logger
from connector.state import Fence, StateStore

log = get_logger("connector.leader")

# First keys of the two-part advisory locks: one class for pipelines, one for replicas.
PIPELINE_LOCK_CLASS = 0x5FC1
REPLICA_LOCK_CLASS = 0x5FC2
APPLICATION_NAME_PREFIX = "sfcharles "


def lock_key(name: str) -> int:
    """Return the second advisory lock key for ``name``: a signed 32-bit CRC of it.

    Two pipelines whose names share a key never run at the same time on different
    replicas. That costs parallelism, not safety.
    """
    value = zlib.crc32(name.encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


def rendezvous_score(replica_id: str, pipeline: str) -> int:
    """Highest random weight: each replica prefers a different, stable order of pipelines."""
    return int.from_bytes(hashlib.blake2b(f"{replica_id}\0{pipeline}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Grant:
    """A pipeline this process leads: the fencing epoch, and how long to wait before its first cycle."""

    pipeline: str
    epoch: int
    wait_s: float


class Coordinator(Protocol):
    replica_id: str

    def heartbeat(self) -> bool: ...
    def valid(self) -> bool: ...
    def try_acquire(self, pipeline: str) -> Grant | None: ...
    def release(self, grant: Grant) -> None: ...
    def live_replicas(self) -> int: ...
    def fence(self, grant: Grant) -> Fence: ...
    def check(self, grant: Grant) -> None: ...
    def close(self) -> None: ...


class LocalCoordinator:
    """SQLite: this process holds the store's file lock and so leads every pipeline."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id

    def heartbeat(self) -> bool:
        return True

    def valid(self) -> bool:
        return True

    def try_acquire(self, pipeline: str) -> Grant | None:
        return Grant(pipeline, 0, 0.0)

    def release(self, grant: Grant) -> None:
        pass

    def live_replicas(self) -> int:
        return 1

    def fence(self, grant: Grant) -> Fence:
        return lambda _conn: None

    def check(self, grant: Grant) -> None:
        pass

    def close(self) -> None:
        pass


class PostgresCoordinator:
    """Advisory locks on one dedicated PostgreSQL connection; see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        replica_id: str,
        *,
        heartbeat_s: float,
        lease_s: float,
        announce: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if store.dialect != "postgresql":
            raise ConfigurationError("leader election needs a PostgreSQL state store (SFCHARLES_STATE_URL=postgresql+psycopg://...)")
        self.replica_id = replica_id
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        # A daemon replica announces itself, so that the others count it when they divide
        # the pipelines. A one-off command only takes the lock of its pipeline.
        self._announce = announce
        self._store = store
        self._clock = clock
        self._conninfo = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self._last_ok: float | None = None
        self._lost_reason: str | None = None
        self._held: dict[str, Grant] = {}

    # The lock connection

    def connect(self) -> None:
        """Open the lock connection and announce this replica; raise ConfigurationError if its id is taken."""
        with self._lock:
            self._close_connection()
            try:
                conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=f"{APPLICATION_NAME_PREFIX}{self.replica_id}"[:63],
                    connect_timeout=max(2, int(self.lease_s)),
                    # A silent network drop is noticed by the kernel within about a lease.
                    keepalives=1,
                    keepalives_idle=max(1, int(self.heartbeat_s)),
                    keepalives_interval=1,
                    keepalives_count=3,
                    tcp_user_timeout=int(self.lease_s * 1000),
                    options=f"-c statement_timeout={int(self.lease_s * 1000)}",
                )
            except psycopg.Error as exc:
                self._lost_reason = f"cannot connect to the state store: {_first_line(exc)}"
                raise LeadershipLost(f"replica {self.replica_id}: {self._lost_reason}") from None
            taken = (True,)
            if self._announce:
                taken = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (REPLICA_LOCK_CLASS, lock_key(self.replica_id))).fetchone()
            if not taken or not taken[0]:
                conn.close()
                raise ConfigurationError(
                    f"SFCHARLES_REPLICA_ID: {self.replica_id!r} is in use by another live replica of this state store; "
                    "give every replica its own id, or leave it unset to use <hostname>-<pid>"
                )
            self._conn = conn
            self._last_ok = self._clock()
            self._lost_reason = None
            self._held.clear()
            log.info("leader.connected", replica=self.replica_id, backend_pid=conn.info.backend_pid)

    def heartbeat(self) -> bool:
        """Confirm the lock connection; on failure every pipeline held is lost. Return whether it is valid."""
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.execute("SELECT 1").fetchone()
            except psycopg.Error as exc:
                self._lose(f"the lock connection failed: {_first_line(exc)}")
                return False
            self._last_ok = self._clock()
            return True

    def valid(self) -> bool:
        """Return whether this replica still has its locks: connected, and confirmed within a lease."""
        last_ok = self._last_ok
        return self._lost_reason is None and last_ok is not None and self._clock() - last_ok <= self.lease_s

    def _lose(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            log.error("leader.connection_lost", replica=self.replica_id, reason=reason, pipelines=sorted(self._held))
        self._held.clear()
        self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def close(self) -> None:
        """Release everything: closing the session frees its locks."""
        with self._lock:
            self._close_connection()
            self._held.clear()

    # Pipelines

    def try_acquire(self, pipeline: str) -> Grant | None:
        """Take the pipeline's lock if it is free, raise its epoch, and return the grant; None if taken."""
        with self._lock:
            conn = self._conn
            if conn is None or not self.valid():
                return None
            key = lock_key(pipeline)
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (PIPELINE_LOCK_CLASS, key)).fetchone()
                if not row or not row[0]:
                    return None
                now = format_iso_now()
                with conn.transaction():
                    previous = conn.execute("SELECT epoch, released_at FROM leases WHERE pipeline = %s FOR UPDATE", (pipeline,)).fetchone()
                    if previous is None:
                        epoch, clean = 1, True
                        conn.execute(
                            "INSERT INTO leases (pipeline, epoch, holder, acquired_at) VALUES (%s, %s, %s, %s)",
                            (pipeline, epoch, self.replica_id, now),
                        )
                    else:
                        epoch, clean = int(previous[0]) + 1, previous[1] is not None
                        conn.execute(
                            "UPDATE leases SET epoch = %s, holder = %s, acquired_at = %s, released_at = NULL WHERE pipeline = %s",
                            (epoch, self.replica_id, now, pipeline),
                        )
            except psycopg.Error as exc:
                self._lose(f"taking pipeline {pipeline!r} failed: {_first_line(exc)}")
                return None
            # A pipeline that was not handed back may still be running on a replica that
            # has not noticed yet; it stops within a lease.
            grant = Grant(pipeline, epoch, 0.0 if clean else self.lease_s)
            self._held[pipeline] = grant
            return grant

    def release(self, grant: Grant) -> None:
        """Hand the pipeline back cleanly, so the next holder need not wait. Call only between cycles."""
        with self._lock:
            if self._held.get(grant.pipeline) != grant:
                return
            del self._held[grant.pipeline]
            conn = self._conn
            if conn is None:
                return
            try:
                conn.execute(
                    "UPDATE leases SET released_at = %s WHERE pipeline = %s AND epoch = %s",
                    (format_iso_now(), grant.pipeline, grant.epoch),
                )
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (PIPELINE_LOCK_CLASS, lock_key(grant.pipeline)))
            except psycopg.Error as exc:
                self._lose(f"releasing pipeline {grant.pipeline!r} failed: {_first_line(exc)}")

    def live_replicas(self) -> int:
        """Count the live replicas of this state store: each has its announcement lock."""
        with self._lock:
            if self._conn is None:
                return 1
            try:
                row = self._conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objsubid = 2 "
                    "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    (REPLICA_LOCK_CLASS,),
                ).fetchone()
            except psycopg.Error as exc:
                self._lose(f"counting replicas failed: {_first_line(exc)}")
                return 1
            return max(1, int(row[0])) if row else 1

    # Fencing

    def check(self, grant: Grant) -> None:
        """Raise LeadershipLost unless this replica still has ``grant``, as far as its heartbeats show."""
        if self._held.get(grant.pipeline) != grant:
            raise LeadershipLost(f"pipeline {grant.pipeline}: this replica ({self.replica_id}) no longer leads it")
        if not self.valid():
            reason = self._lost_reason or f"its lock was not confirmed for over {self.lease_s:g} s"
            raise LeadershipLost(f"pipeline {grant.pipeline}: this replica ({self.replica_id}) stops: {reason}")

    def fence(self, grant: Grant) -> Fence:
        """Return the check for each state write of the pipeline: still leading, and the epoch still ours."""

        def check_write(conn: sa.Connection) -> None:
            self.check(grant)
            row = conn.execute(
                sa.text("SELECT epoch, holder FROM leases WHERE pipeline = :pipeline FOR SHARE"), {"pipeline": grant.pipeline}
            ).first()
            if row is None or int(row.epoch) != grant.epoch:
                holder = "nobody" if row is None else f"replica {row.holder} (epoch {row.epoch})"
                raise LeadershipLost(
                    f"pipeline {grant.pipeline}: {holder} took it over from this replica ({self.replica_id}, epoch {grant.epoch}); "
                    "this replica's write is refused"
                )

        return check_write


def holders(store: StateStore) -> dict[str, str]:
    """Map each pipeline whose lock is held now to the holding replica's id. PostgreSQL only."""
    if store.dialect != "postgresql":
        return {}
    query = sa.text(
        "SELECT l.objid::bigint AS objid, a.application_name AS name FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = CAST(:class AS oid) AND l.objsubid = 2 AND l.granted "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query, {"class": PIPELINE_LOCK_CLASS}).all()
        names = conn.execute(sa.text("SELECT pipeline FROM leases")).scalars().all()
    by_key = {int(row.objid): (row.name or "").removeprefix(APPLICATION_NAME_PREFIX) for row in rows}
    return {name: by_key[lock_key(name) & 0xFFFFFFFF] for name in names if lock_key(name) & 0xFFFFFFFF in by_key}


def format_iso_now() -> str:
    from datetime import UTC, datetime

    return format_iso(datetime.now(UTC))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__
