"""Catalog records → wire models: the only place that knows both shapes.

Version gating lives here too (design note §5): a client that does not know
``checkpoint_type: "external"`` never gets one, in lists or in a run's summary fields.
"""

from __future__ import annotations

from tinkerstore.errors import RunNotFound
from tinkerstore.server.client_version import ClientCapabilities
from tinkerstore.service import Principal, Store
from tinkerstore.store.catalog.base import AuditRecord, CheckpointRecord, RunRecord
from tinkerstore.types import (
    AuditLogEntry,
    Checkpoint,
    TrainingRun,
    WeightsInfoResponse,
)
from tinkerstore.types.paths import CheckpointKind, ParsedCheckpointTinkerPath

__all__ = [
    "audit_entry",
    "checkpoint",
    "training_run",
    "visible_kinds",
    "weights_info",
]

_LEGACY_KINDS = (CheckpointKind.WEIGHTS, CheckpointKind.SAMPLER_WEIGHTS)


def visible_kinds(caps: ClientCapabilities) -> list[CheckpointKind] | None:
    """The kinds a client may see in a list (``None``: all of them)."""
    return None if caps.knows_external else list(_LEGACY_KINDS)


def checkpoint(record: CheckpointRecord) -> Checkpoint:
    path = ParsedCheckpointTinkerPath.from_parts(record.run_id, record.kind, record.name)
    return Checkpoint.from_path(
        path,
        time=record.created_at,
        size_bytes=record.size_bytes,
        public=record.public,
        expires_at=record.expires_at,
        user_metadata=dict(record.user_metadata) or None,
    )


def _owner_name(store: Store, owner_id: str) -> str:
    user = store.catalog.get_user(owner_id)
    return user.name if user is not None else owner_id


def _latest_visible(
    store: Store, principal: Principal, run: RunRecord, kind: CheckpointKind
) -> CheckpointRecord | None:
    """The newest checkpoint of ``kind`` the principal may see: for the owner the newest one, for
    others the newest *published* one (not "none" just because the newest is private)."""
    if run.owner_id == principal.user_id:
        return store.latest_checkpoint(principal, run.run_id, kind)
    try:
        page = store.list_checkpoints(principal, run.run_id, limit=1, kinds=[kind])
    except RunNotFound:
        return None
    return page.items[0] if page.items else None


def training_run(store: Store, principal: Principal, run: RunRecord) -> TrainingRun:
    """A run with its newest training and sampler checkpoints (never an external one: those
    fields are typed training/sampler in every SDK)."""
    last = _latest_visible(store, principal, run, CheckpointKind.WEIGHTS)
    last_sampler = _latest_visible(store, principal, run, CheckpointKind.SAMPLER_WEIGHTS)
    return TrainingRun(
        training_run_id=run.run_id,
        base_model=run.base_model,
        model_owner=_owner_name(store, run.owner_id),
        is_lora=run.is_lora,
        corrupted=run.corrupted,
        lora_rank=run.lora_rank,
        last_request_time=run.last_request_time,
        last_checkpoint=checkpoint(last) if last else None,
        last_sampler_checkpoint=checkpoint(last_sampler) if last_sampler else None,
        user_metadata=dict(run.user_metadata),
    )


def weights_info(run: RunRecord) -> WeightsInfoResponse:
    lora = run.lora_config or {}

    def flag(key: str) -> bool | None:
        value = lora.get(key)
        return bool(value) if value is not None else (True if run.is_lora else None)

    return WeightsInfoResponse(
        base_model=run.base_model,
        is_lora=run.is_lora,
        lora_rank=run.lora_rank,
        train_unembed=flag("train_unembed"),
        train_mlp=flag("train_mlp"),
        train_attn=flag("train_attn"),
    )


def audit_entry(record: AuditRecord) -> AuditLogEntry:
    return AuditLogEntry(
        timestamp=record.timestamp,
        event=record.event,
        event_details=dict(record.details),
        model_id=record.model_id,
        tinker_path=record.tinker_path,
    )
