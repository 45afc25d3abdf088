"""Training runs, checkpoints, weights_info, audit log and storage usage (protocol §5).

Thin handlers: parse and validate the URL, call the service with the caller's principal (which
decides visibility: others' private runs and checkpoints are 404 everywhere), convert the
records. Handlers are sync so FastAPI runs them in worker threads, off the event loop.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from fastapi import APIRouter, Query, Response

from tinkerstore.server import convert
from tinkerstore.server.auth import Caller, Caps, StoreDep
from tinkerstore.service import Principal, Store
from tinkerstore.service.store import MAX_PAGE
from tinkerstore.service.training import weights_summary
from tinkerstore.store.catalog.base import CheckpointRecord
from tinkerstore.types import (
    AuditLogResponse,
    CheckpointsListResponse,
    CurrentCheckpointStorageUsageItem,
    CurrentCheckpointStorageUsageResponse,
    Cursor,
    SetTtlRequest,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoRequest,
    WeightsInfoResponse,
)
from tinkerstore.types.paths import CheckpointKind, format_tinker_path, validate_segment

__all__ = ["checkpoint_path", "router"]

router = APIRouter(prefix="/api/v1", tags=["runs and checkpoints"])

AccessScope = Literal["owned", "accessible"]
Limit = Query(default=20, ge=1, le=MAX_PAGE)
# Bounded so a huge offset is a 400, not an integer overflow in the database.
MAX_OFFSET = 10**9
Offset = Query(default=0, ge=0, le=MAX_OFFSET)


def checkpoint_path(run_id: str, kind: CheckpointKind, name: str) -> str:
    """The canonical tinker path of URL segments; a malformed segment is a 400 JSON."""
    return format_tinker_path(validate_segment(run_id, "run id"), CheckpointKind.parse(kind), name)


@router.get("/training_runs", response_model=TrainingRunsResponse)
def list_training_runs(
    caller: Caller,
    store: StoreDep,
    limit: int = Limit,
    offset: int = Offset,
    access_scope: AccessScope = "owned",
    project_id: str | None = None,  # accepted and ignored: no projects in a self-hosted store
) -> TrainingRunsResponse:
    del project_id
    page = store.list_runs(caller, limit=limit, offset=offset, access_scope=access_scope)
    return TrainingRunsResponse(
        training_runs=[convert.training_run(store, caller, run) for run in page.items],
        cursor=Cursor(offset=page.offset, limit=page.limit, total_count=page.total_count),
    )


@router.get("/training_runs/{run_id}", response_model=TrainingRun)
def get_training_run(
    run_id: str, caller: Caller, store: StoreDep, access_scope: AccessScope = "owned"
) -> TrainingRun:
    run = store.get_run(caller, validate_segment(run_id, "run id"), access_scope=access_scope)
    return convert.training_run(store, caller, run)


def _all_checkpoints(
    store: Store, caller: Principal, run_id: str, kinds: list[CheckpointKind] | None
) -> tuple[list[CheckpointRecord], int]:
    """Every checkpoint of a run: the SDK and CLI treat this list as unpaginated."""
    items: list[CheckpointRecord] = []
    snapshot: int | None = None
    while True:
        page = store.list_checkpoints(
            caller, run_id, limit=MAX_PAGE, offset=len(items), kinds=kinds, snapshot=snapshot
        )
        snapshot = page.snapshot
        items.extend(page.items)
        if len(page.items) < MAX_PAGE or len(items) >= page.total_count:
            return items, page.total_count


@router.get("/training_runs/{run_id}/checkpoints", response_model=CheckpointsListResponse)
def list_run_checkpoints(
    run_id: str,
    caller: Caller,
    caps: Caps,
    store: StoreDep,
    limit: int | None = Query(default=None, ge=1, le=MAX_PAGE),
    offset: int = Offset,
) -> CheckpointsListResponse:
    """All of a run's checkpoints, newest first (one page if ``limit`` is given). Other users
    see only the published ones; a run with none of those is 404 for them."""
    validate_segment(run_id, "run id")
    kinds = convert.visible_kinds(caps)
    if limit is None and offset == 0:
        items, total = _all_checkpoints(store, caller, run_id, kinds)
        cursor = Cursor(offset=0, limit=max(len(items), 1), total_count=total)
    else:
        page = store.list_checkpoints(
            caller, run_id, limit=limit or MAX_PAGE, offset=offset, kinds=kinds
        )
        items = page.items
        cursor = Cursor(offset=page.offset, limit=page.limit, total_count=page.total_count)
    return CheckpointsListResponse(
        checkpoints=[convert.checkpoint(r) for r in items], cursor=cursor
    )


@router.get("/checkpoints", response_model=CheckpointsListResponse)
def list_user_checkpoints(
    caller: Caller,
    caps: Caps,
    store: StoreDep,
    limit: int = Query(default=100, ge=1, le=MAX_PAGE),
    offset: int = Offset,
) -> CheckpointsListResponse:
    """The caller's own checkpoints across runs, newest first, paginated."""
    page = store.list_user_checkpoints(
        caller, limit=limit, offset=offset, kinds=convert.visible_kinds(caps)
    )
    return CheckpointsListResponse(
        checkpoints=[convert.checkpoint(r) for r in page.items],
        cursor=Cursor(offset=page.offset, limit=page.limit, total_count=page.total_count),
    )


@router.delete("/training_runs/{run_id}/checkpoints/{kind}/{name}", status_code=204)
def delete_checkpoint(
    run_id: str, kind: CheckpointKind, name: str, caller: Caller, store: StoreDep
) -> Response:
    store.delete_checkpoint(caller, checkpoint_path(run_id, kind, name))
    return Response(status_code=204)


@router.post("/training_runs/{run_id}/checkpoints/{kind}/{name}/publish", status_code=204)
def publish_checkpoint(
    run_id: str, kind: CheckpointKind, name: str, caller: Caller, store: StoreDep
) -> Response:
    """Idempotent: publishing a published checkpoint is a 204, never a 409."""
    store.publish(caller, checkpoint_path(run_id, kind, name))
    return Response(status_code=204)


@router.delete("/training_runs/{run_id}/checkpoints/{kind}/{name}/publish", status_code=204)
def unpublish_checkpoint(
    run_id: str, kind: CheckpointKind, name: str, caller: Caller, store: StoreDep
) -> Response:
    store.unpublish(caller, checkpoint_path(run_id, kind, name))
    return Response(status_code=204)


@router.put("/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl", status_code=204)
def set_checkpoint_ttl(
    run_id: str,
    kind: CheckpointKind,
    name: str,
    body: SetTtlRequest,
    caller: Caller,
    store: StoreDep,
) -> Response:
    """``{"ttl_seconds": int}`` (3600 s to 10 years from now) or ``{"ttl_seconds": null}``."""
    store.set_ttl(caller, checkpoint_path(run_id, kind, name), body.ttl_seconds)
    return Response(status_code=204)


@router.post("/weights_info", response_model=WeightsInfoResponse)
def weights_info(body: WeightsInfoRequest, caller: Caller, store: StoreDep) -> WeightsInfoResponse:
    """Base model and LoRA settings of the run a (visible) checkpoint belongs to: the same
    summary the trainer builds a model from (``service.training.weights_summary``)."""
    info = weights_summary(store, caller, body.tinker_path)
    return WeightsInfoResponse(
        base_model=info.base_model,
        is_lora=info.is_lora,
        lora_rank=info.lora_rank,
        train_unembed=info.train_unembed,
        train_mlp=info.train_mlp,
        train_attn=info.train_attn,
    )


_AUDIT_PREFIX = {"all": "", "checkpoints": "checkpoint_"}


@router.get("/audit", response_model=AuditLogResponse)
def audit_log(
    caller: Caller,
    store: StoreDep,
    event_type: Literal["all", "checkpoints", "projects", "teams", "organizations"] = "all",
    day: date | None = None,
) -> AuditLogResponse:
    """The caller's audit events, optionally of one UTC day. A self-hosted store has no
    projects, teams or organizations, so those filters give an empty list."""
    if event_type not in _AUDIT_PREFIX:
        return AuditLogResponse(entries=[])
    since = until = None
    if day is not None:
        since = datetime.combine(day, time(0), tzinfo=UTC)
        until = since + timedelta(days=1)
    records = store.audit_log(caller, since=since, until=until)
    prefix = _AUDIT_PREFIX[event_type]
    return AuditLogResponse(
        entries=[convert.audit_entry(r) for r in records if r.event.startswith(prefix)]
    )


@router.get(
    "/billing/usage/checkpoints/current", response_model=CurrentCheckpointStorageUsageResponse
)
def checkpoint_storage_usage(
    caller: Caller, store: StoreDep, project_id: str | None = None
) -> CurrentCheckpointStorageUsageResponse:
    del project_id
    count, size = store.storage_usage(caller)
    return CurrentCheckpointStorageUsageResponse(
        data=[
            CurrentCheckpointStorageUsageItem(
                user_name=caller.user_name,
                checkpoint_count=count,
                size_bytes=size,
                size_gigabytes=size / 1e9,
            )
        ]
    )
