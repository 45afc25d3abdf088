"""The catalog: every record tinkerstore keeps, behind one small interface.

The catalog is the truth. Blobs are immutable and are only reachable through a *completed*
checkpoint version that a catalog row points at (see ``tinkerstore.store.blobs``).

Implementations: ``MemoryCatalog`` (the in-memory twin for tests), ``SqlCatalog`` (SQLite in WAL
mode with one writer, or PostgreSQL; both from the same SQLAlchemy schema and migrations).
All of them pass ``tests/store/catalog/test_catalog_contract.py``.

Call order of a save (the commit protocol)::

    begin_version(...)          -> VersionRecord(state=pending)      # row exists, invisible
    ... blobs written under VersionRecord.blob_prefix, manifest last ...
    commit_version(...)         -> CheckpointRecord                  # ONE transaction: the commit
      or fail_version(...)                                           # state=failed, never visible

``commit_version`` marks the version completed and points ``(run_id, kind, name)`` at it in one
transaction. An overwrite swaps the pointer in that same transaction, so there is never a moment
with neither the old nor the new checkpoint. The previous version becomes garbage
(``superseded``) and the sweeper removes its blobs once its grace period, counted from
``garbage_since`` (the moment it turned superseded or failed), is over.

Pagination: lists are newest first by ``seq`` (a strictly increasing number assigned at commit).
Passing the ``snapshot`` of the first page to later pages hides rows committed after it, so pages
do not shift under concurrent inserts. ``total_count`` comes from counters maintained in the
commit transaction, so a page costs the same with 10k or 1M rows.

Times are timezone-aware UTC ``datetime``s everywhere; a naive one raises ``ValueError``.
An expiry is reached at ``now >= expires_at`` (then the checkpoint is expired).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from tinkerstore.types.paths import CheckpointKind

__all__ = [
    "ApiKeyRecord",
    "AuditRecord",
    "Catalog",
    "CheckpointRecord",
    "FutureRecord",
    "FutureState",
    "Page",
    "RunRecord",
    "SamplerRecord",
    "SessionRecord",
    "UserRecord",
    "VersionRecord",
    "VersionState",
]

T = TypeVar("T")


class VersionState(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    SUPERSEDED = (
        "superseded"  # was completed, replaced by an overwrite or deleted: blobs are garbage
    )


class FutureState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: int
    user_id: str
    key_hash: str  # hex sha256 of the full key; the plaintext is never stored
    label: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    owner_id: str
    base_model: str
    is_lora: bool
    lora_rank: int | None
    lora_config: dict[str, Any]  # rank, seed, train_attn, train_mlp, train_unembed
    user_metadata: dict[str, str]
    created_at: datetime
    last_request_time: datetime
    session_id: str | None = None
    corrupted: bool = False


@dataclass(frozen=True)
class VersionRecord:
    version_id: str
    run_id: str
    kind: CheckpointKind
    name: str
    owner_id: str
    state: VersionState
    created_at: datetime
    blob_prefix: str  # "v/<version_id>/": the only place this version's bytes live
    size_bytes: int = 0
    manifest_digest: str | None = None  # sha256 of the manifest bytes, set at commit
    format_version: int = 1
    error: str | None = None
    # Requested at begin, applied at commit:
    ttl_seconds: int | None = None
    overwrite: bool = False
    user_metadata: dict[str, str] | None = None
    # When the version turned failed or superseded: the sweeper's grace period runs from here,
    # not from ``created_at`` (a day-old checkpoint deleted now is still being downloaded).
    garbage_since: datetime | None = None


@dataclass(frozen=True)
class CheckpointRecord:
    """A visible (committed) checkpoint: ``(run_id, kind, name)`` pointing at a version."""

    run_id: str
    kind: CheckpointKind
    name: str
    owner_id: str
    version_id: str
    blob_prefix: str
    seq: int
    created_at: datetime  # commit time; the wire ``Checkpoint.time``
    size_bytes: int
    manifest_digest: str
    format_version: int
    expires_at: datetime | None
    public: bool
    user_metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FutureRecord:
    request_id: str
    owner_id: str
    model_id: str | None
    seq_id: int | None
    request_type: str  # "CreateModel", "SaveWeights", ...
    state: FutureState
    created_at: datetime
    finished_at: datetime | None = None
    result: bytes | None = None  # JSON or protobuf bytes, as sent on the wire
    content_type: str = "application/json"


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    owner_id: str
    created_at: datetime
    last_heartbeat: datetime
    sdk_version: str | None = None
    tags: Sequence[str] = ()
    user_metadata: dict[str, str] = field(default_factory=dict)
    finished_reason: str | None = None
    model_seq_ids: Sequence[int] = ()


@dataclass(frozen=True)
class SamplerRecord:
    sampler_id: str
    owner_id: str
    session_id: str
    base_model: str
    model_path: str | None
    created_at: datetime


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    timestamp: datetime
    owner_id: str
    event: str  # "checkpoint_saved", "checkpoint_deleted", "checkpoint_published", ...
    tinker_path: str | None = None
    model_id: str | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    offset: int
    limit: int
    total_count: int
    snapshot: int  # highest seq visible to this listing; pass it back for stable pages


class Catalog(Protocol):
    """Metadata store. Every method is one transaction; none of them touches blobs."""

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create or upgrade the schema (idempotent)."""

    def close(self) -> None: ...

    # -- settings (e.g. the URL-signing secret shared by replicas) ---------------------------
    def get_or_create_setting(self, key: str, default: str) -> str:
        """Return the stored value, storing ``default`` first if absent (race-safe)."""

    # -- coordination between replicas -------------------------------------------------------
    def try_lock(self, name: str) -> AbstractContextManager[bool]:
        """A context manager yielding whether this caller now holds the lock ``name``; it never
        waits. Exactly one holder at a time among every process sharing the catalog (a
        PostgreSQL advisory lock, on a connection of its own that dies with the process), or
        among this process's callers on SQLite and in memory (which serve one process). Used so
        that exactly one sweeper acts at a time. Released when the block ends."""

    # -- users and keys ----------------------------------------------------------------------
    def create_user(self, name: str, now: datetime) -> UserRecord:
        """Raises ``AlreadyExists`` if a user of that name exists."""

    def get_user_by_name(self, name: str) -> UserRecord | None: ...

    def get_user(self, user_id: str) -> UserRecord | None: ...

    def count_users(self) -> int: ...

    def add_api_key(self, user_id: str, key_hash: str, label: str, now: datetime) -> ApiKeyRecord:
        """Store a key hash; ``key_id`` is a small integer assigned by the catalog."""

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """Active or revoked key with that hash (callers check ``revoked_at``)."""

    def list_api_keys(self, user_id: str | None = None) -> list[ApiKeyRecord]: ...

    def revoke_api_key(self, key_id: int, now: datetime) -> ApiKeyRecord:
        """Raises ``ApiKeyNotFound``; revoking twice keeps the first time."""

    # -- training runs -----------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> RunRecord:
        """Raises ``AlreadyExists`` if the run id is taken."""

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def touch_run(self, run_id: str, now: datetime) -> None:
        """Update ``last_request_time``. Raises ``RunNotFound``."""

    def list_runs(
        self, owner_id: str | None, *, limit: int, offset: int, include_public_of_others: bool
    ) -> Page[RunRecord]:
        """Runs newest first. ``owner_id=None`` lists every run (admin use).
        ``include_public_of_others`` adds other owners' runs that have at least one public
        checkpoint (an expired one counts until the sweeper removes it). ``snapshot`` of the
        page is the newest run's sequence number (informational)."""

    # -- checkpoint versions and the commit ---------------------------------------------------
    def begin_version(self, version: VersionRecord) -> VersionRecord:
        """Insert a pending version. Raises ``AlreadyExists`` when a completed, unexpired (at
        ``version.created_at``) checkpoint of that (run, kind, name) exists and
        ``version.overwrite`` is false (checked again at commit, which is what counts), or when
        the version id is taken. An expired checkpoint does not hold its name: committing
        over it replaces it like an overwrite."""

    def commit_version(
        self,
        version_id: str,
        *,
        size_bytes: int,
        manifest_digest: str,
        now: datetime,
        expires_at: datetime | None,
    ) -> CheckpointRecord:
        """The commit: one transaction (see module docstring). Raises ``AlreadyExists`` if the
        name was taken meanwhile and overwrite is false (the version is then marked failed),
        ``NotFound`` if the version is not pending (e.g. failed by the sweeper). Versions that
        turn garbage here (the overwritten one, or this one when the name was taken) get
        ``garbage_since=now``.
        The new checkpoint is private (``public=False``, also after an overwrite: new content
        is never published implicitly) and carries the version's ``user_metadata`` (an
        overwrite replaces the old mapping)."""

    def fail_version(self, version_id: str, error: str, now: datetime) -> None:
        """Mark a pending version failed at ``now`` (no-op if it is no longer pending)."""

    def get_version(self, version_id: str) -> VersionRecord | None: ...

    def fail_stale_pending(self, older_than: datetime, now: datetime) -> list[VersionRecord]:
        """Turn pending versions created before ``older_than`` into failed (``garbage_since``
        is ``now``); return them."""

    def garbage_versions(self, older_than: datetime, limit: int) -> list[VersionRecord]:
        """Failed or superseded versions that became garbage at or before ``older_than`` (by
        ``garbage_since``, or ``created_at`` where that is unset), whose blobs may be removed;
        the longest-dead first. Inclusive, so that a sweep with no grace period (start-up
        recovery) also takes the versions it has just failed at that same ``now``."""

    def forget_versions(self, version_ids: Sequence[str]) -> None:
        """Drop garbage version rows after their blobs were removed (ids of pending or
        completed versions, or unknown ids, are ignored)."""

    def live_blob_prefixes(self) -> set[str]:
        """Prefixes of every pending or completed version (the sweeper keeps these)."""

    # -- visible checkpoints ------------------------------------------------------------------
    def get_checkpoint(
        self, run_id: str, kind: CheckpointKind, name: str
    ) -> CheckpointRecord | None:
        """The committed checkpoint, expired or not (callers decide)."""

    def list_checkpoints(
        self,
        *,
        run_id: str | None = None,
        owner_id: str | None = None,
        kinds: Sequence[CheckpointKind] | None = None,
        limit: int,
        offset: int,
        snapshot: int | None = None,
        now: datetime,
        public_only: bool = False,
    ) -> Page[CheckpointRecord]:
        """Newest first, unexpired only. Exactly one of ``run_id`` / ``owner_id`` is given
        (else ``InvalidInput``, as for a negative ``limit`` or ``offset``).
        ``public_only`` keeps published checkpoints only (what other users may see of a run);
        its ``total_count`` may be computed with a plain COUNT (rare, small listings)."""

    def latest_checkpoint(
        self, run_id: str, kind: CheckpointKind, now: datetime
    ) -> CheckpointRecord | None: ...

    def delete_checkpoint(
        self, run_id: str, kind: CheckpointKind, name: str, *, now: datetime
    ) -> CheckpointRecord:
        """Remove the pointer (its version becomes superseded at ``now``, which starts its
        grace period). Raises ``CheckpointNotFound``."""

    def set_public(
        self, run_id: str, kind: CheckpointKind, name: str, public: bool
    ) -> CheckpointRecord: ...

    def set_expiry(
        self, run_id: str, kind: CheckpointKind, name: str, expires_at: datetime | None
    ) -> CheckpointRecord: ...

    def expired_checkpoints(self, now: datetime, limit: int) -> list[CheckpointRecord]:
        """Checkpoints with ``expires_at <= now``, soonest expiry first."""

    def delete_if_expired(
        self, run_id: str, kind: CheckpointKind, name: str, now: datetime
    ) -> bool:
        """Delete only if still expired at ``now`` (a TTL cleared meanwhile wins); its version
        becomes superseded at ``now``. Returns whether this call deleted it, so two racing
        sweepers delete exactly once."""

    def storage_usage(self, owner_id: str, now: datetime) -> tuple[int, int]:
        """(checkpoint count, total bytes) of an owner's visible checkpoints."""

    # -- sessions, samplers, futures, audit ---------------------------------------------------
    def create_session(self, session: SessionRecord) -> SessionRecord:
        """Raises ``AlreadyExists`` if the session id is taken."""

    def get_session(self, session_id: str) -> SessionRecord | None: ...

    def heartbeat_session(self, session_id: str, now: datetime) -> None:
        """Raises ``SessionNotFound``."""

    def finish_session(self, session_id: str, reason: str, now: datetime) -> SessionRecord:
        """First reason wins. Raises ``SessionNotFound``."""

    def create_sampler(self, sampler: SamplerRecord) -> SamplerRecord:
        """Idempotent on ``sampler_id`` (returns the existing record)."""

    def get_sampler(self, sampler_id: str) -> SamplerRecord | None: ...

    def create_future(self, future: FutureRecord) -> tuple[FutureRecord, bool]:
        """Insert a pending future. If ``(model_id, seq_id)`` already has one, return that one
        and ``False`` (a retried request gets the same future)."""

    def finish_future(
        self, request_id: str, state: FutureState, result: bytes, content_type: str, now: datetime
    ) -> None:
        """The first outcome wins (no-op once the future is done or failed). Raises
        ``FutureNotFound``; ``ValueError`` for ``state=PENDING``."""

    def get_future(self, request_id: str) -> FutureRecord | None: ...

    def fail_pending_futures(self, error_body: bytes, now: datetime) -> int:
        """At start-up: futures whose work died with a previous process become failed."""

    def add_audit(
        self,
        owner_id: str,
        event: str,
        now: datetime,
        *,
        tinker_path: str | None = None,
        model_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None: ...

    def list_audit(
        self, owner_id: str, *, since: datetime | None, until: datetime | None, limit: int
    ) -> list[AuditRecord]:
        """Newest first; ``since`` inclusive, ``until`` exclusive."""
