"""Client start-up, sessions, identity and capabilities (protocol §2, §5, §11.4).

The SDK validates every answer strictly, so each handler returns a wire model; ``telemetry``
in particular must answer exactly ``{"status":"accepted"}`` or the SDK resends forever.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response

from tinkerstore.errors import NotFound, SessionGone, SessionNotFound
from tinkerstore.server.auth import Caller, Settings, StoreDep
from tinkerstore.service import Principal, Store
from tinkerstore.service.store import MAX_PAGE
from tinkerstore.store.catalog.base import RunRecord, SessionRecord
from tinkerstore.types import (
    ApiKeyDetails,
    ApiKeyOrgDetails,
    ApiKeyUserDetails,
    ClientConfigRequest,
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    FinishSessionRequest,
    GetSamplerResponse,
    GetServerCapabilitiesResponse,
    GetSessionResponse,
    HealthResponse,
    ListSessionsResponse,
    SelfApiKeyResponse,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
    SupportedModel,
    TelemetryResponse,
)

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["sessions and start-up"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.post("/client/config", response_model=ClientConfigResponse)
def client_config(caller: Caller, body: ClientConfigRequest | None = None) -> ClientConfigResponse:
    """JWT exchange off (the plain ``tml-`` key travels everywhere) and plain httpx."""
    return ClientConfigResponse()


@router.post("/client/dynamic_config", response_model=ClientDynamicConfigResponse)
def client_dynamic_config(
    caller: Caller, body: ClientConfigRequest | None = None
) -> ClientDynamicConfigResponse:
    return ClientDynamicConfigResponse()


@router.post("/telemetry", response_model=TelemetryResponse)
async def telemetry(body: dict[str, Any] | None = Body(default=None)) -> TelemetryResponse:  # noqa: B008
    """Accepted and dropped. No key check on purpose: any non-"accepted" answer makes the SDK
    resend the batch every second forever."""
    return TelemetryResponse()


@router.post("/create_session", response_model=CreateSessionResponse)
def create_session(
    body: CreateSessionRequest, caller: Caller, store: StoreDep
) -> CreateSessionResponse:
    now = store.now()
    session = store.catalog.create_session(
        SessionRecord(
            session_id=str(uuid.uuid4()),
            owner_id=caller.user_id,
            created_at=now,
            last_heartbeat=now,
            sdk_version=body.sdk_version,
            tags=tuple(body.tags),
            user_metadata=dict(body.user_metadata or {}),
        )
    )
    return CreateSessionResponse(session_id=session.session_id)


def owned_session(store: Store, caller: Principal, session_id: str) -> SessionRecord:
    session = store.catalog.get_session(session_id)
    if session is None or session.owner_id != caller.user_id:
        raise SessionNotFound(
            f"session {session_id!r} not found", hint="create a new ServiceClient to start one"
        )
    return session


@router.post("/session_heartbeat", response_model=SessionHeartbeatResponse)
def session_heartbeat(
    body: SessionHeartbeatRequest, caller: Caller, store: StoreDep
) -> SessionHeartbeatResponse:
    session = owned_session(store, caller, body.session_id)
    if session.finished_reason is not None:
        raise SessionGone(f"session {body.session_id!r} finished ({session.finished_reason})")
    store.catalog.heartbeat_session(session.session_id, store.now())
    return SessionHeartbeatResponse()


@router.post("/sessions/{session_id}/finish", status_code=204)
def finish_session(
    session_id: str,
    body: FinishSessionRequest,
    request: Request,
    caller: Caller,
    store: StoreDep,
) -> Response:
    """First reason wins; finishing twice is a 204 too. The session's models and ephemeral
    samplers are released: nothing can reach them any more (0.38's `checkpoint download`
    creates one model per call, so keeping them would grow the server without bound)."""
    owned_session(store, caller, session_id)
    store.catalog.finish_session(session_id, body.reason.type, store.now())
    training = request.app.state.training.peek()
    if training is not None:
        training.release_session(caller, session_id)
    return Response(status_code=204)


def _owned_runs(store: Store, caller: Principal) -> list[RunRecord]:
    runs: list[RunRecord] = []
    while True:
        page = store.list_runs(caller, limit=MAX_PAGE, offset=len(runs))
        runs.extend(page.items)
        if len(page.items) < MAX_PAGE or len(runs) >= page.total_count:
            return runs


@router.get("/sessions", response_model=ListSessionsResponse)
def list_sessions(
    caller: Caller,
    store: StoreDep,
    limit: int = Query(default=20, ge=1, le=MAX_PAGE),
    offset: int = Query(default=0, ge=0, le=10**9),
    access_scope: Literal["owned", "accessible"] = "owned",
) -> ListSessionsResponse:
    """Sessions that created the caller's training runs, newest first."""
    seen: dict[str, None] = {}
    for run in _owned_runs(store, caller):
        if run.session_id is not None:
            seen.setdefault(run.session_id, None)
    return ListSessionsResponse(sessions=list(seen)[offset : offset + limit])


@router.get("/sessions/{session_id}", response_model=GetSessionResponse)
def get_session(
    session_id: str,
    caller: Caller,
    store: StoreDep,
    access_scope: Literal["owned", "accessible"] = "owned",
) -> GetSessionResponse:
    session = owned_session(store, caller, session_id)
    runs = [r.run_id for r in _owned_runs(store, caller) if r.session_id == session_id]
    return GetSessionResponse(
        training_run_ids=runs, sampler_ids=[], user_metadata=dict(session.user_metadata) or None
    )


@router.get("/samplers/{sampler_id}", response_model=GetSamplerResponse)
def get_sampler(sampler_id: str, caller: Caller, store: StoreDep) -> GetSamplerResponse:
    sampler = store.catalog.get_sampler(sampler_id)
    if sampler is None or sampler.owner_id != caller.user_id:
        raise NotFound(f"sampler {sampler_id!r} not found")
    return GetSamplerResponse(
        sampler_id=sampler.sampler_id, base_model=sampler.base_model, model_path=sampler.model_path
    )


@router.get("/get_server_capabilities", response_model=GetServerCapabilitiesResponse)
def get_server_capabilities(caller: Caller, settings: Settings) -> GetServerCapabilitiesResponse:
    return GetServerCapabilitiesResponse(
        supported_models=[SupportedModel(model_name=name) for name in settings.supported_models]
    )


@router.get("/auth/apikey/me", response_model=SelfApiKeyResponse)
def get_own_api_key(caller: Caller, store: StoreDep) -> SelfApiKeyResponse:
    """What ``tinker auth login`` shows: "Logged in as <email> (<org>)"."""
    label = ""
    for key in store.catalog.list_api_keys(caller.user_id):
        if key.key_id == caller.key_id:
            label = key.label
    return SelfApiKeyResponse(
        key_id=caller.key_id or 0,
        name=label or f"key-{caller.key_id}",
        note="",
        details=ApiKeyDetails(
            org_details=ApiKeyOrgDetails(name="tinkerstore"),
            user_details=ApiKeyUserDetails(email=caller.user_name),
        ),
    )


@router.delete("/auth/apikey/me", status_code=204)
def revoke_own_api_key(caller: Caller, store: StoreDep) -> Response:
    """Revokes the presented key, and only that key."""
    if caller.key_id is not None:
        store.catalog.revoke_api_key(caller.key_id, store.now())
    return Response(status_code=204)
