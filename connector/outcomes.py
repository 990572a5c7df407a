"""What happens to each record, decided before anything is sent, and the cycle's counts.

``decide`` is a pure function of the record, its mapping and what the state store holds
for it, so every rule here (lookback de-duplication, change suppression, deletes,
merges, key changes, duplicate keys) is testable without a server.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from connector.cursor import Watermark, describe, format_iso, parse_salesforce_datetime
from connector.field_map import Mapped, Skipped
from connector.settings import Settings
from connector.state import KeyChange, RecordState

Mode = Literal["incremental", "backfill", "replay"]
Status = Literal["succeeded", "partial", "interrupted", "failed"]
Action = Literal["push", "unchanged", "reread", "skip", "set_aside"]

# Marks for a deleted or merged-away contact in Charles, which has no delete.
DELETED_TAG = "salesforce-deleted"
DELETED_PROPERTY = "salesforce_deleted"
MERGED_INTO_PROPERTY = "salesforce_merged_into"


@dataclass(frozen=True)
class Decision:
    """The outcome chosen for one record, and what to store once it is carried out."""

    record_id: str
    modstamp: str
    action: Action
    reason: str | None = None
    detail: str | None = None
    payload: dict[str, Any] | None = None
    key: str | None = None
    payload_hash: str | None = None
    kind: Literal["delivered", "skipped", "deleted"] = "delivered"
    key_changes: tuple[KeyChange, ...] = ()
    merged_into: str | None = None
    notes: tuple[str, ...] = ()


def payload_hash(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def mask_key(key: str | None) -> str | None:
    """Hide the middle digits of a phone-number key for logs: ``+1415*****71``."""
    if not key:
        return key
    if len(key) <= 6:
        return "*" * len(key)
    return key[:5] + "*" * (len(key) - 7) + key[-2:]


def handled_at_version(record: dict[str, Any], state: RecordState | None) -> bool:
    """Return whether the store handled ``record`` at its SystemModstamp or a later one."""
    if state is None:
        return False
    return parse_salesforce_datetime(state.modstamp) >= parse_salesforce_datetime(str(record["SystemModstamp"]))


def decide(
    record: dict[str, Any],
    outcome: Mapped | Skipped,
    state: RecordState | None,
    owners: dict[str, str],
    settings: Settings,
    *,
    active_keys: tuple[str, ...] = (),
    force: bool = False,
    merge_winner_key: str | None = None,
) -> Decision:
    """Choose what to do with one record.

    ``owners`` maps external_reference_id to the record that holds it now, and
    ``active_keys`` are the keys this record holds.
    ``merge_winner_key`` is the current key of the record this one was merged into, or
    None when that record has no valid phone number.
    """
    record_id = str(record["Id"])
    modstamp = parse_salesforce_datetime(str(record["SystemModstamp"]))
    stamp = format_iso(modstamp)

    if not force and handled_at_version(record, state):
        # Already handled at this version: a lookback re-read or a repeat after a crash.
        return Decision(record_id, stamp, "reread", kind=state.outcome)  # type: ignore[arg-type]

    if record.get("IsDeleted") is True:
        return _decide_deleted(record_id, stamp, record, outcome, state, owners, settings, force, merge_winner_key, active_keys)

    if isinstance(outcome, Skipped):
        changes = tuple(KeyChange(record_id, old, "") for old in active_keys)
        return Decision(record_id, stamp, "skip", reason=outcome.reason, detail=outcome.detail, kind="skipped", key_changes=changes)

    payload = outcome.payload
    key = str(payload["external_reference_id"])
    owner = owners.get(key)
    detail = None
    if owner is not None and owner != record_id:
        if settings.duplicate_key_policy == "first_owner":
            return Decision(
                record_id, stamp, "set_aside", reason="duplicate_external_reference_id",
                detail=f"external_reference_id {mask_key(key)} already belongs to Salesforce record {owner}",
                key=key, notes=outcome.notes,
            )
        detail = f"external_reference_id {mask_key(key)} taken over from Salesforce record {owner}"

    changes = tuple(KeyChange(record_id, old, key) for old in active_keys if old != key)
    digest = payload_hash(payload)
    if not force and state is not None and state.outcome == "delivered" and state.payload_hash == digest:
        return Decision(record_id, stamp, "unchanged", key=key, payload_hash=digest)
    return Decision(
        record_id, stamp, "push", detail=detail, payload=payload, key=key, payload_hash=digest,
        key_changes=changes, notes=outcome.notes,
    )


def _decide_deleted(
    record_id: str,
    stamp: str,
    record: dict[str, Any],
    outcome: Mapped | Skipped,
    state: RecordState | None,
    owners: dict[str, str],
    settings: Settings,
    force: bool,
    merge_winner_key: str | None,
    active_keys: tuple[str, ...],
) -> Decision:
    merged_into = str(record.get("MasterRecordId") or "") or None
    # Only a person Charles already has is marked; marking would otherwise create one.
    key = state.external_reference_id if state is not None and state.outcome in ("delivered", "deleted") else None
    mapped_key = str(outcome.payload["external_reference_id"]) if isinstance(outcome, Mapped) else None

    # A deleted record gives up its keys: another record may take them over.
    released = tuple(KeyChange(record_id, old, "") for old in active_keys)

    def skip(reason: str, detail: str) -> Decision:
        return Decision(
            record_id, stamp, "skip", reason=reason, detail=detail, key=key, kind="deleted",
            merged_into=merged_into, key_changes=released,
        )

    if settings.delete_policy == "skip":
        return skip("deleted", "SFCHARLES_DELETE_POLICY is skip")
    if key is None:
        return skip("deleted_never_sent", "deleted before Charles received it")
    owner = owners.get(key)
    if owner is not None and owner != record_id:
        return skip("deleted_key_in_use", f"its key now belongs to Salesforce record {owner}")
    if merged_into is not None and merge_winner_key == key:
        # Marking this key would mark the merge winner's own person as deleted.
        return skip("merged", f"merged into {merged_into}, which is sent again")

    payload: dict[str, Any] = dict(outcome.payload) if mapped_key == key and isinstance(outcome, Mapped) else {
        "external_reference_id": key, "source_type": "salesforce",
    }
    payload["tags"] = list(dict.fromkeys([*payload.get("tags", []), DELETED_TAG]))
    properties = dict(payload.get("custom_properties", {}))
    properties[DELETED_PROPERTY] = "true"
    if merged_into is not None:
        properties[MERGED_INTO_PROPERTY] = merged_into
    payload["custom_properties"] = properties
    digest = payload_hash(payload)
    if not force and state is not None and state.outcome == "deleted" and state.payload_hash == digest:
        return Decision(record_id, stamp, "unchanged", key=key, payload_hash=digest, kind="deleted", key_changes=released)
    return Decision(
        record_id, stamp, "push", payload=payload, key=key, payload_hash=digest, kind="deleted",
        merged_into=merged_into, key_changes=released,
    )


@dataclass
class CycleReport:
    """The counts and positions of one cycle, logged as ``sync.cycle_completed`` and stored in the cycle history."""

    cycle_id: str
    mode: Mode
    status: Status = "succeeded"
    fetched: int = 0
    pushed: int = 0
    unchanged: int = 0
    reread: int = 0
    deleted: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    set_aside_by_reason: Counter[str] = field(default_factory=Counter)
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    key_changes: int = 0
    values_dropped: int = 0
    watermark_before: Watermark | None = None
    watermark_after: Watermark | None = None
    window_end: datetime | None = None
    api_used: int | None = None
    api_limit: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    error_type: str | None = None
    consecutive_failures: int = 0
    caught_up: bool = False  # every change up to window_end was handled

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    @property
    def set_aside(self) -> int:
        return sum(self.set_aside_by_reason.values())

    @property
    def failed(self) -> int:
        """Records not delivered because of an error: set aside, or holding the watermark."""
        return self.set_aside + sum(self.failed_by_reason.values())

    def count(self, decision: Decision) -> None:
        """Count a decision that needs no push; pushes are counted when they finish."""
        if decision.action == "unchanged":
            self.unchanged += 1
        elif decision.action == "reread":
            self.reread += 1
        elif decision.action == "skip":
            self.skipped_by_reason[decision.reason or "unknown"] += 1
        elif decision.action == "set_aside":
            self.set_aside_by_reason[decision.reason or "unknown"] += 1
        if decision.kind != "deleted":
            self.key_changes += len(decision.key_changes)
        self.values_dropped += len(decision.notes)

    def counts(self) -> dict[str, int]:
        return {"fetched": self.fetched, "pushed": self.pushed, "skipped": self.skipped, "failed": self.failed}

    def log_fields(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "fetched": self.fetched,
            "pushed": self.pushed,
            "unchanged": self.unchanged,
            "reread": self.reread,
            "deleted": self.deleted,
            "skipped": self.skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "failed": self.failed,
            "set_aside": self.set_aside,
            "set_aside_by_reason": dict(sorted(self.set_aside_by_reason.items())),
            "failed_by_reason": dict(sorted(self.failed_by_reason.items())),
            "key_changes": self.key_changes,
            "values_dropped": self.values_dropped,
            "watermark_before": describe(self.watermark_before),
            "watermark_after": describe(self.watermark_after),
            "watermark_lag_s": self.watermark_lag_s(),
            "window_end": None if self.window_end is None else format_iso(self.window_end),
            "salesforce_api_used": self.api_used,
            "salesforce_api_limit": self.api_limit,
            "duration_s": round(self.duration_s, 3),
            "error_type": self.error_type,
            "error": self.error,
            "consecutive_failures": self.consecutive_failures,
        }

    def watermark_lag_s(self) -> float | None:
        """Return how far the cycle trails Salesforce's clock at the end of the window, in seconds.

        A cycle that handled every change up to the window's end is 0 behind, however old
        the last change is; otherwise the lag is the time between the watermark and the end.
        """
        if self.caught_up and self.mode == "incremental":
            return 0.0
        if self.watermark_after is None or self.window_end is None:
            return None
        return round(max(0.0, (self.window_end - self.watermark_after.modstamp).total_seconds()), 3)
