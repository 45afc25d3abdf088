"""Wire types of checkpoints, training runs and the REST endpoints around them (protocol §5, §8.3).

``checkpoint_type`` is the wire twin of the path's kind segment (``CheckpointKind``): ``training``,
``sampler`` and, from SDK 0.38, ``external``. SDK 0.25 rejects a whole response that contains an
``external`` checkpoint, which is why the server hides them from older clients (§7.6).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, cast

from tinkerstore.types.paths import CheckpointKind, ParsedCheckpointTinkerPath
from tinkerstore.types.wire import (
    OptimizerConfig,
    UtcDatetime,
    WireRequest,
    WireResponse,
    as_utc,
)

__all__ = [
    "CHECKPOINT_TYPES_025",
    "AuditLogEntry",
    "AuditLogResponse",
    "Checkpoint",
    "CheckpointArchiveUrlResponse",
    "CheckpointType",
    "CheckpointsListResponse",
    "CopyWeightsRequest",
    "CopyWeightsResponse",
    "CurrentCheckpointStorageUsageItem",
    "CurrentCheckpointStorageUsageResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "SetTtlRequest",
    "TrainingRun",
    "TrainingRunsResponse",
    "WeightsInfoRequest",
    "WeightsInfoResponse",
]

CheckpointType = Literal["training", "sampler", "external"]
# What SDK 0.25's ``Checkpoint.checkpoint_type`` accepts; anything else fails its whole response.
CHECKPOINT_TYPES_025: frozenset[str] = frozenset({"training", "sampler"})


class Checkpoint(WireResponse):
    checkpoint_id: str  # "<kind>/<name>", e.g. "weights/000020"
    checkpoint_type: CheckpointType
    time: UtcDatetime
    tinker_path: str  # the exact canonical string: `tinker checkpoint info` matches on it
    size_bytes: int | None = None
    public: bool = False
    expires_at: UtcDatetime | None = None  # None: never expires
    user_metadata: dict[str, str] | None = None  # 0.38

    @classmethod
    def from_path(
        cls,
        path: ParsedCheckpointTinkerPath,
        *,
        time: datetime,
        size_bytes: int | None = None,
        public: bool = False,
        expires_at: datetime | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> Checkpoint:
        """Build a checkpoint whose id, type and path agree, from an already validated path."""
        return cls(
            checkpoint_id=path.checkpoint_id,
            checkpoint_type=cast(CheckpointType, path.kind.checkpoint_type),
            time=time,
            tinker_path=path.tinker_path,
            size_bytes=size_bytes,
            public=public,
            expires_at=expires_at,
            user_metadata=user_metadata,
        )

    @property
    def kind(self) -> CheckpointKind:
        return CheckpointKind.from_checkpoint_type(self.checkpoint_type)

    def visible_to_025(self) -> bool:
        return self.checkpoint_type in CHECKPOINT_TYPES_025


class Cursor(WireResponse):
    offset: int
    limit: int
    total_count: int

    @property
    def has_more(self) -> bool:
        return self.offset + self.limit < self.total_count

    @property
    def next_offset(self) -> int | None:
        """The ``offset`` of the next page, or None on the last one."""
        return self.offset + self.limit if self.has_more else None


class CheckpointsListResponse(WireResponse):
    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None  # None: unpaginated (the per-run list)


class TrainingRun(WireResponse):
    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    corrupted: bool = False
    lora_rank: int | None = None
    last_request_time: UtcDatetime
    last_checkpoint: Checkpoint | None = None  # newest "training" checkpoint, never "external"
    last_sampler_checkpoint: Checkpoint | None = None  # newest "sampler" checkpoint
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(WireResponse):
    training_runs: list[TrainingRun]
    cursor: Cursor  # required here, unlike CheckpointsListResponse


class _ExpiringUrls(WireResponse):
    expires: UtcDatetime

    def expired(self, now: datetime | None = None, *, margin: timedelta = timedelta(0)) -> bool:
        """True once ``now`` is within ``margin`` of ``expires`` (the SDK re-signs 5 min early)."""
        current = as_utc(now) if now is not None else datetime.now(tz=self.expires.tzinfo)
        return current >= self.expires - margin


class CheckpointArchiveUrlResponse(_ExpiringUrls):
    """The 200 form of the 0.25 archive endpoint; the field is ``expires``, not ``expires_at``."""

    url: str


class ExternalWeightsUrlsResponse(_ExpiringUrls):
    """0.38: one signed URL per file, keyed by its path relative to the export root."""

    urls: dict[str, str]


class WeightsInfoRequest(WireRequest):
    """``POST /api/v1/weights_info``; a plain body in the SDK, with no ``type``."""

    tinker_path: str


class WeightsInfoResponse(WireResponse):
    base_model: str
    is_lora: bool
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None
    optimizer_config: OptimizerConfig = OptimizerConfig()  # 0.38; 0.25 ignores it


class SetTtlRequest(WireRequest):
    """``PUT …/checkpoints/{kind}/{name}/ttl``: ``{"ttl_seconds": null}`` clears the TTL."""

    _wire_keep_none: ClassVar[frozenset[str]] = frozenset({"ttl_seconds"})

    # Required even though nullable: an empty body must not silently make a checkpoint immortal.
    ttl_seconds: int | None


class CopyWeightsRequest(WireRequest):
    """0.38 ``POST /api/v1/copy_weights`` (no ``type``). The SDK always sends the project form."""

    source_path: str
    destination_project_id: str | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    ttl_seconds: int | None = None
    weights_access_token: str | None = None


class CopyWeightsResponse(WireResponse):
    tinker_path: str


class AuditLogEntry(WireResponse):
    timestamp: UtcDatetime
    event: str
    event_details: dict[str, Any] = {}  # 0.38
    model_id: str | None = None
    tinker_path: str | None = None
    purpose: str | None = None


class AuditLogResponse(WireResponse):
    entries: list[AuditLogEntry]


class CurrentCheckpointStorageUsageItem(WireResponse):
    project_id: str | None = None
    org_user_urn: str | None = None
    user_email: str | None = None
    user_name: str | None = None
    checkpoint_count: int
    size_bytes: int
    size_gigabytes: float
    estimated_monthly_cost_usd: float | None = None


class CurrentCheckpointStorageUsageResponse(WireResponse):
    """0.38 ``GET /api/v1/billing/usage/checkpoints/current``."""

    effective_rate_usd_per_gigabyte_month: float | None = None
    data: list[CurrentCheckpointStorageUsageItem]
