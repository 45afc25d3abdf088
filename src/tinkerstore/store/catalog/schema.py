"""The SQL schema of the catalog: one SQLAlchemy ``MetaData`` for SQLite and PostgreSQL.

These tables describe the *latest* schema version (see ``migrations``). Two column types hide the
differences between the databases:

* ``UtcDateTime``: ``timestamptz`` on PostgreSQL; integer microseconds since the epoch on SQLite,
  which has no timestamp type (integers compare and index correctly, ISO strings with mixed
  offsets would not). Both return aware UTC datetimes.
* ``JsonText``: JSON in a TEXT column (metadata maps are small and never queried inside).

The row-to-record functions at the bottom are the only place that knows column names.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from tinkerstore.store.catalog._common import from_micros, to_micros, utc
from tinkerstore.store.catalog.base import (
    ApiKeyRecord,
    AuditRecord,
    CheckpointRecord,
    FutureRecord,
    FutureState,
    RunRecord,
    SamplerRecord,
    SessionRecord,
    UserRecord,
    VersionRecord,
    VersionState,
)
from tinkerstore.types.paths import CheckpointKind

__all__ = [
    "JsonText",
    "UtcDateTime",
    "api_keys",
    "audit",
    "checkpoints",
    "counters",
    "futures",
    "metadata",
    "row_to_api_key",
    "row_to_audit",
    "row_to_checkpoint",
    "row_to_future",
    "row_to_run",
    "row_to_sampler",
    "row_to_session",
    "row_to_user",
    "row_to_version",
    "runs",
    "samplers",
    "schema_version",
    "sequences",
    "sessions",
    "settings",
    "users",
    "versions",
]


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (see the module docstring)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return to_micros(value) if dialect.name == "sqlite" else utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return from_micros(int(value))
        assert isinstance(value, datetime)
        return utc(value)


class JsonText(TypeDecorator[Any]):
    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


# A 64-bit autoincrementing key; on SQLite it must be exactly INTEGER to alias the rowid.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

# Strings carry no length: PostgreSQL would enforce one and SQLite would not, and the two must
# behave the same. Callers bound sizes (e.g. ``paths.MAX_SEGMENT_LENGTH``).
metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(), primary_key=True),
    Column("value", Text, nullable=False),
)

# Named counters handed out inside write transactions. On PostgreSQL the row lock taken by the
# increment is held until commit, so numbers become visible in the order they were handed out:
# that is what makes ``seq`` "strictly increasing at commit" and snapshots stable (a native
# SEQUENCE is not transactional and would let a smaller seq appear after a larger one).
sequences = Table(
    "sequences",
    metadata,
    Column("name", String(), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Row counts (and byte totals) kept in the same transactions as the rows they count, so a page's
# total_count never needs a COUNT(*) over an owner's rows. scope is "ckpt_owner" or "ckpt_run"
# (kind = checkpoint kind) or "runs_owner" / "runs_all" (kind = "").
counters = Table(
    "counters",
    metadata,
    Column("scope", String(), nullable=False),
    Column("subject", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    PrimaryKeyConstraint("scope", "subject", "kind", name="pk_counters"),
)

users = Table(
    "users",
    metadata,
    Column("user_id", String(), primary_key=True),
    Column("name", String(), nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", _AutoId, primary_key=True, autoincrement=True),
    Column("user_id", String(), nullable=False, index=True),
    Column("key_hash", String(), nullable=False, unique=True),
    Column("label", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    sqlite_autoincrement=True,  # never reuse a key id, even after rows are gone
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(), primary_key=True),
    Column("seq", BigInteger, nullable=False, unique=True),  # creation order
    Column("owner_id", String(), nullable=False),
    Column("base_model", Text, nullable=False),
    Column("is_lora", Boolean, nullable=False),
    Column("lora_rank", Integer),
    Column("lora_config", JsonText, nullable=False),
    Column("user_metadata", JsonText, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_request_time", UtcDateTime, nullable=False),
    Column("session_id", String()),
    Column("corrupted", Boolean, nullable=False),
    # How many of the run's checkpoints are public: > 0 puts the run in others' listings.
    Column("public_checkpoints", Integer, nullable=False, default=0),
    Index("ix_runs_owner_seq", "owner_id", "seq"),
    Index("ix_runs_public", "public_checkpoints"),
)

versions = Table(
    "versions",
    metadata,
    Column("version_id", String(), primary_key=True),
    Column("run_id", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("owner_id", String(), nullable=False),
    Column("state", String(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("blob_prefix", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("manifest_digest", String()),
    Column("format_version", Integer, nullable=False),
    Column("error", Text),
    Column("ttl_seconds", BigInteger),
    Column("overwrite", Boolean, nullable=False),
    Column("user_metadata", JsonText),
    # Set when the version turns failed or superseded: the sweeper's grace period starts here.
    Column("garbage_since", UtcDateTime),
    Index("ix_versions_state_created", "state", "created_at"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("owner_id", String(), nullable=False),
    Column("version_id", String(), nullable=False, unique=True),
    Column("blob_prefix", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("manifest_digest", String(), nullable=False),
    Column("format_version", Integer, nullable=False),
    Column("expires_at", UtcDateTime),
    Column("public", Boolean, nullable=False),
    Column("user_metadata", JsonText, nullable=False),
    PrimaryKeyConstraint("run_id", "kind", "name", name="pk_checkpoints"),
    # Pages walk these backwards from the snapshot: cost ~ offset + limit, not the owner's size.
    Index("ix_checkpoints_owner_seq", "owner_id", "seq"),
    Index("ix_checkpoints_run_seq", "run_id", "seq"),
    # The sweeper's scan, and the few expired-but-unswept rows subtracted from totals.
    Index("ix_checkpoints_expires", "expires_at"),
    Index("ix_checkpoints_owner_expires", "owner_id", "expires_at"),
    Index("ix_checkpoints_run_expires", "run_id", "expires_at"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(), primary_key=True),
    Column("owner_id", String(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_heartbeat", UtcDateTime, nullable=False),
    Column("sdk_version", String()),
    Column("tags", JsonText, nullable=False),
    Column("user_metadata", JsonText, nullable=False),
    Column("finished_reason", Text),
    Column("model_seq_ids", JsonText, nullable=False),
)

samplers = Table(
    "samplers",
    metadata,
    Column("sampler_id", String(), primary_key=True),
    Column("owner_id", String(), nullable=False),
    Column("session_id", String(), nullable=False),
    Column("base_model", Text, nullable=False),
    Column("model_path", Text),
    Column("created_at", UtcDateTime, nullable=False),
)

futures = Table(
    "futures",
    metadata,
    Column("request_id", String(), primary_key=True),
    Column("owner_id", String(), nullable=False),
    Column("model_id", String()),
    Column("seq_id", BigInteger),
    Column("request_type", String(), nullable=False),
    Column("state", String(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("result", LargeBinary),
    Column("content_type", String(), nullable=False),
    # NULLs are distinct on both databases: only requests carrying both fields are deduplicated.
    UniqueConstraint("model_id", "seq_id", name="uq_futures_model_seq"),
    Index("ix_futures_state", "state"),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", _AutoId, primary_key=True, autoincrement=True),
    Column("timestamp", UtcDateTime, nullable=False),
    Column("owner_id", String(), nullable=False),
    Column("event", String(), nullable=False),
    Column("tinker_path", Text),
    Column("model_id", String()),
    Column("details", JsonText, nullable=False),
    Index("ix_audit_owner_time", "owner_id", "timestamp"),
)


# -- rows to records -------------------------------------------------------------------------
def row_to_user(r: Row[Any]) -> UserRecord:
    return UserRecord(user_id=r.user_id, name=r.name, created_at=r.created_at)


def row_to_api_key(r: Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=int(r.key_id),
        user_id=r.user_id,
        key_hash=r.key_hash,
        label=r.label,
        created_at=r.created_at,
        revoked_at=r.revoked_at,
    )


def row_to_run(r: Row[Any]) -> RunRecord:
    return RunRecord(
        run_id=r.run_id,
        owner_id=r.owner_id,
        base_model=r.base_model,
        is_lora=bool(r.is_lora),
        lora_rank=r.lora_rank,
        lora_config=r.lora_config,
        user_metadata=r.user_metadata,
        created_at=r.created_at,
        last_request_time=r.last_request_time,
        session_id=r.session_id,
        corrupted=bool(r.corrupted),
    )


def row_to_version(r: Row[Any]) -> VersionRecord:
    return VersionRecord(
        version_id=r.version_id,
        run_id=r.run_id,
        kind=CheckpointKind(r.kind),
        name=r.name,
        owner_id=r.owner_id,
        state=VersionState(r.state),
        created_at=r.created_at,
        blob_prefix=r.blob_prefix,
        size_bytes=int(r.size_bytes),
        manifest_digest=r.manifest_digest,
        format_version=int(r.format_version),
        error=r.error,
        ttl_seconds=r.ttl_seconds,
        overwrite=bool(r.overwrite),
        user_metadata=r.user_metadata,
        garbage_since=r.garbage_since,
    )


def row_to_checkpoint(r: Row[Any]) -> CheckpointRecord:
    return CheckpointRecord(
        run_id=r.run_id,
        kind=CheckpointKind(r.kind),
        name=r.name,
        owner_id=r.owner_id,
        version_id=r.version_id,
        blob_prefix=r.blob_prefix,
        seq=int(r.seq),
        created_at=r.created_at,
        size_bytes=int(r.size_bytes),
        manifest_digest=r.manifest_digest,
        format_version=int(r.format_version),
        expires_at=r.expires_at,
        public=bool(r.public),
        user_metadata=r.user_metadata,
    )


def row_to_session(r: Row[Any]) -> SessionRecord:
    return SessionRecord(
        session_id=r.session_id,
        owner_id=r.owner_id,
        created_at=r.created_at,
        last_heartbeat=r.last_heartbeat,
        sdk_version=r.sdk_version,
        tags=tuple(r.tags),
        user_metadata=r.user_metadata,
        finished_reason=r.finished_reason,
        model_seq_ids=tuple(r.model_seq_ids),
    )


def row_to_sampler(r: Row[Any]) -> SamplerRecord:
    return SamplerRecord(
        sampler_id=r.sampler_id,
        owner_id=r.owner_id,
        session_id=r.session_id,
        base_model=r.base_model,
        model_path=r.model_path,
        created_at=r.created_at,
    )


def row_to_future(r: Row[Any]) -> FutureRecord:
    return FutureRecord(
        request_id=r.request_id,
        owner_id=r.owner_id,
        model_id=r.model_id,
        seq_id=r.seq_id,
        request_type=r.request_type,
        state=FutureState(r.state),
        created_at=r.created_at,
        finished_at=r.finished_at,
        result=None if r.result is None else bytes(r.result),
        content_type=r.content_type,
    )


def row_to_audit(r: Row[Any]) -> AuditRecord:
    return AuditRecord(
        seq=int(r.seq),
        timestamp=r.timestamp,
        owner_id=r.owner_id,
        event=r.event,
        tinker_path=r.tinker_path,
        model_id=r.model_id,
        details=r.details,
    )
