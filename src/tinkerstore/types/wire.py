"""JSON wire types shared by every part of tinkerstore: bases, literals, sessions and futures.

The official ``tinker`` SDK is the contract. Each model here is named and shaped field for field as
the SDK's model of the same name, in the union of SDK 0.25 and 0.38 (see ``docs/protocol.md`` §8).
Checkpoint and training-run types live in ``wire_checkpoints``; training and sampling requests and
their future results in ``wire_requests``. Everything is re-exported from ``tinkerstore.types``.

Two bases, because the two directions have different duties:

* ``WireResponse`` (what the server sends): ``extra="ignore"`` like the SDK, lax validation (our
  own client reads these back). Datetimes are timezone-aware UTC.
* ``WireRequest`` (what the server receives): tolerant of unknown fields, since a newer SDK may add
  some, but strict about types, so ``"seq_id": "5"`` or ``"optimizer": 1`` is a clear validation
  error rather than a silent coercion.

Both serialize *without* ``None``-valued fields: the SDK omits unset optionals on requests,
and a few SDK response fields reject ``null`` (literal ``type`` fields, ``optimizer_config``), so
omission is the one form every SDK version accepts. Fields listed in ``_wire_keep_none`` keep an
explicit null because it means something there (``{"ttl_seconds": null}`` clears a TTL).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from tinkerstore.errors import Category, TinkerstoreError

__all__ = [
    "TYPE_CREATE_MODEL",
    "TYPE_CREATE_SAMPLING_SESSION",
    "TYPE_CREATE_SESSION",
    "TYPE_GET_INFO",
    "TYPE_LOAD_WEIGHTS",
    "TYPE_OPTIM_STEP",
    "TYPE_SAMPLE",
    "TYPE_SAVE_WEIGHTS",
    "TYPE_SAVE_WEIGHTS_EXTERNAL",
    "TYPE_SAVE_WEIGHTS_FOR_SAMPLER",
    "TYPE_SESSION_HEARTBEAT",
    "TYPE_TRY_AGAIN",
    "ApiKeyDetails",
    "ApiKeyOrgDetails",
    "ApiKeyUserDetails",
    "AuthTokenResponse",
    "ClientConfigRequest",
    "ClientConfigResponse",
    "ClientDynamicConfigResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "FinishReason",
    "FinishReasonType",
    "FinishSessionRequest",
    "FutureRetrieveRequest",
    "GetServerCapabilitiesResponse",
    "GetSessionResponse",
    "HealthResponse",
    "ListSessionsResponse",
    "OptimizerConfig",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "SelfApiKeyResponse",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "SupportedModel",
    "TelemetryResponse",
    "TryAgainResponse",
    "UntypedAPIFuture",
    "UserMetadata",
    "UtcDatetime",
    "WireModel",
    "WireRequest",
    "WireResponse",
    "as_utc",
    "describe_validation_error",
    "stringify_metadata",
]

# The ``type`` discriminators the SDK puts on request bodies (and echoes on some results).
TYPE_CREATE_SESSION: Final = "create_session"
TYPE_SESSION_HEARTBEAT: Final = "session_heartbeat"
TYPE_CREATE_MODEL: Final = "create_model"
TYPE_GET_INFO: Final = "get_info"
TYPE_OPTIM_STEP: Final = "optim_step"
TYPE_SAVE_WEIGHTS: Final = "save_weights"
TYPE_SAVE_WEIGHTS_FOR_SAMPLER: Final = "save_weights_for_sampler"
TYPE_SAVE_WEIGHTS_EXTERNAL: Final = "save_weights_external"
TYPE_LOAD_WEIGHTS: Final = "load_weights"
TYPE_CREATE_SAMPLING_SESSION: Final = "create_sampling_session"
TYPE_SAMPLE: Final = "sample"
TYPE_TRY_AGAIN: Final = "try_again"

RequestErrorCategory = Category
QueueState = Literal["active", "paused_capacity", "paused_rate_limit"]
FinishReasonType = Literal["success", "errored", "interrupted"]


def as_utc(value: datetime) -> datetime:
    """A naive datetime is taken to be UTC; an aware one is converted to UTC.

    0.38 compares ``expires`` with an aware "now", so a naive value on the wire crashes the CLI.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


def stringify_metadata(value: Any) -> Any:
    """Coerce a user-metadata mapping to ``{str: str}``; leave anything else to validation.

    The SDK types request metadata as any JSON, but returns it (``TrainingRun.user_metadata``) as
    strings only and validates that strictly; echoing a number back would break the caller's next
    ``get_training_run``. So non-string values become their compact JSON text.
    """
    if not isinstance(value, dict):
        return value
    return {
        key: item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
        for key, item in value.items()
    }


UserMetadata = Annotated[dict[str, str], BeforeValidator(stringify_metadata)]


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``, for a 400/422 body a person can act on."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class WireModel(BaseModel):
    """Base of every wire model: frozen, unknown fields ignored, ``None`` fields omitted."""

    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    _wire_keep_none: ClassVar[frozenset[str]] = frozenset()

    # No return annotation on purpose: with one, pydantic would describe every model as a bare
    # object in the JSON schema (and so in the server's OpenAPI document).
    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        data = handler(self)
        if not isinstance(data, dict):
            return data
        keep = self._wire_keep_none
        return {k: v for k, v in data.items() if v is not None or k in keep}


class WireResponse(WireModel):
    """A body the server sends. Validation is lax so our client can read anything the SDK could."""


class WireRequest(WireModel):
    """A body the server receives: unknown fields ignored, types checked strictly."""

    model_config = ConfigDict(strict=True)


class OptimizerConfig(WireModel):
    """0.38: the optimizer family of a training model, ``{"type": "adamw"}`` by default.

    Other families carry their own fields (``{"type": "dimuon", "version": 1}``), kept as extras
    so a server can refuse what it does not implement with a message that names it.
    """

    model_config = ConfigDict(extra="allow")

    type: str = "adamw"


# --- client start-up -----------------------------------------------------------------------------


class ClientConfigRequest(WireRequest):
    """``POST /api/v1/client/config`` and ``/client/dynamic_config``."""

    sdk_version: str


class ClientConfigResponse(WireResponse):
    """Every field optional in the SDK; defaults here suit a self-hosted server (§2.3)."""

    pjwt_auth_enabled: bool = False
    credential_default_source: str = "api_key"
    # pyqwest worked against plain HTTP/1.1 too, but httpx is the path with fewer surprises.
    use_pyqwest_transport: bool = False
    parallel_fwdbwd_chunks: bool = True
    fwdbwd_max_chunk_len: int = 1024
    fwdbwd_max_chunk_bytes_count: int = 5_000_000
    fwdbwd_dispatch_bytes_semaphore_size: int = 50_000_000
    proto_compress_fwdbwd: bool = False
    sample_dispatch_bytes_semaphore_size: int = 10 * 1024 * 1024
    inflight_response_bytes_semaphore_size: int = 50 * 1024 * 1024
    billing_exception_max_pause_duration_sec: int = 3600
    sample_no_retries: bool = False
    sample_enable_stuck_detection: bool = True
    sample_max_concurrent_requests: int = 2000
    create_model_via_load_weights: bool = False
    sample_use_retrieve_futures: bool = False
    custom_loss_server_side: bool = False
    sample_join_sampling_session: bool = False


class ClientDynamicConfigResponse(WireResponse):
    refresh_interval_sec: int = 300
    sample_cancel_enabled: bool = False
    sample_cancel_max_batch_size: int = 64


class AuthTokenResponse(WireResponse):
    jwt: str


class HealthResponse(WireResponse):
    status: Literal["ok"] = "ok"


class TelemetryResponse(WireResponse):
    """The SDK resends a telemetry batch every second until it gets exactly this."""

    status: Literal["accepted"] = "accepted"


# --- sessions -------------------------------------------------------------------------------------


class CreateSessionRequest(WireRequest):
    tags: list[str] = []
    # Required but nullable in the SDK, which sends {} by default; we read null as {} too.
    user_metadata: UserMetadata = {}
    sdk_version: str
    project_id: str | None = None
    display_name: str | None = None  # 0.38
    type: Literal["create_session"] = "create_session"

    @field_validator("user_metadata", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class CreateSessionResponse(WireResponse):
    session_id: str
    type: Literal["create_session"] = "create_session"
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None


class SessionHeartbeatRequest(WireRequest):
    session_id: str
    type: Literal["session_heartbeat"] = "session_heartbeat"


class SessionHeartbeatResponse(WireResponse):
    type: Literal["session_heartbeat"] = "session_heartbeat"


class FinishReason(WireRequest):
    type: FinishReasonType


class FinishSessionRequest(WireRequest):
    """``POST /api/v1/sessions/{id}/finish`` (0.38); the SDK sends ``detail: null`` explicitly."""

    _wire_keep_none: ClassVar[frozenset[str]] = frozenset({"detail"})

    reason: FinishReason
    detail: str | None = None


class GetSessionResponse(WireResponse):
    training_run_ids: list[str]
    sampler_ids: list[str]
    user_metadata: dict[str, str] | None = None  # 0.38
    display_name: str | None = None  # 0.38


class ListSessionsResponse(WireResponse):
    sessions: list[str]


# --- futures --------------------------------------------------------------------------------------


class FutureRetrieveRequest(WireRequest):
    request_id: str
    allow_metadata_only: bool = False


class UntypedAPIFuture(WireResponse):
    """The immediate answer to every long-running POST."""

    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None  # 0.38, sampling only


class TryAgainResponse(WireResponse):
    request_id: str
    queue_state: QueueState = "active"
    # Not a field of the SDK model; the SDK reads it from the raw JSON to explain a paused queue.
    queue_state_reason: str | None = None
    type: Literal["try_again"] = "try_again"


class RequestFailedResponse(WireResponse):
    """A failed future: HTTP 200 on retrieve_future, with a top-level ``error``."""

    error: str
    category: RequestErrorCategory

    @classmethod
    def from_error(cls, exc: TinkerstoreError) -> RequestFailedResponse:
        return cls(error=str(exc), category=exc.category)


# --- capabilities and identity --------------------------------------------------------------------


class SupportedModel(WireResponse):
    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None  # 0.38
    sampleable: bool | None = None  # 0.38


class GetServerCapabilitiesResponse(WireResponse):
    supported_models: list[SupportedModel]


class ApiKeyOrgDetails(WireResponse):
    name: str


class ApiKeyUserDetails(WireResponse):
    email: str


class ApiKeyDetails(WireResponse):
    org_details: ApiKeyOrgDetails
    user_details: ApiKeyUserDetails


class SelfApiKeyResponse(WireResponse):
    """``GET /api/v1/auth/apikey/me`` (0.38 ``tinker auth login``); every field required."""

    key_id: int
    name: str
    note: str
    details: ApiKeyDetails
