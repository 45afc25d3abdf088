"""Training and sampling requests the server receives, and the future results it answers with.

Field for field as the SDK's models (protocol §4, §8.2). A request model accepts what *either* SDK
version sends: fields that only 0.38 sends (``user_metadata`` on saves, ``kind``,
``optimizer_config``, the newer sampling knobs, …) default to ``None``, meaning "not sent", so a
server can tell a 0.25 client's silence from an explicit value.

Forward/backward travels as protobuf (``tinker_public.proto``), not JSON, so it has no model here.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from tinkerstore.types.wire import (
    OptimizerConfig,
    UserMetadata,
    WireModel,
    WireRequest,
    WireResponse,
)

__all__ = [
    "AdamParams",
    "Base64Bytes",
    "CreateModelRequest",
    "CreateModelResponse",
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "DmelChunk",
    "EncodedTextChunk",
    "GetInfoRequest",
    "GetInfoResponse",
    "GetSamplerResponse",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "LoraConfig",
    "ModelData",
    "ModelInput",
    "ModelInputChunk",
    "OptimStepRequest",
    "OptimStepResponse",
    "OptimizerParams",
    "SampleRequest",
    "SamplingClientKind",
    "SamplingParams",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsExternalResponseInternal",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsForSamplerResponseInternal",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
]

SamplingClientKind = Literal["snapshot", "inflight"]


def _b64decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not valid base64: {exc}") from None
    return value


# Bytes that travel as standard base64 text, as the SDK's image and dmel chunks do.
Base64Bytes = Annotated[
    bytes,
    BeforeValidator(_b64decode),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str),
]


# --- model creation and info ----------------------------------------------------------------------


class LoraConfig(WireRequest):
    rank: int  # the SDK method defaults it to 32
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateModelRequest(WireRequest):
    session_id: str
    model_seq_id: int
    base_model: str
    # Any JSON in the SDK; stored and returned as strings (see ``stringify_metadata``).
    user_metadata: UserMetadata | None = None
    lora_config: LoraConfig | None = None
    optimizer_config: OptimizerConfig | None = None  # 0.38 always sends it; None means adamw
    type: Literal["create_model"] = "create_model"


class CreateModelResponse(WireResponse):
    model_id: str  # by convention "<session_id>:train:<model_seq_id>"; 0.38 assumes it
    type: Literal["create_model"] = "create_model"


class GetInfoRequest(WireRequest):
    model_id: str
    type: Literal["get_info"] = "get_info"


class ModelData(WireResponse):
    arch: str | None = None
    model_name: str | None = None  # get_tokenizer() needs it
    tokenizer_id: str | None = None  # the client cuts it at the first ':'


class GetInfoResponse(WireResponse):
    model_data: ModelData
    model_id: str
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None
    optimizer_config: OptimizerConfig = OptimizerConfig()  # 0.38; 0.25 ignores it
    type: Literal["get_info"] | None = "get_info"


# --- optimizer step -------------------------------------------------------------------------------


class AdamParams(WireRequest):
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0 means no clipping


class OptimizerParams(WireModel):
    """0.38: per-step parameters of a non-Adam family, ``{"type": "dimuon", ...}``."""

    model_config = ConfigDict(extra="allow")

    type: str


class OptimStepRequest(WireRequest):
    """Exactly one of ``adam_params`` (both versions) and ``optimizer_params`` (0.38) is sent."""

    model_id: str
    adam_params: AdamParams | None = None
    optimizer_params: OptimizerParams | None = None
    seq_id: int | None = None
    type: Literal["optim_step"] = "optim_step"

    @model_validator(mode="after")
    def _one_kind_of_params(self) -> OptimStepRequest:
        if (self.adam_params is None) == (self.optimizer_params is None):
            raise ValueError("send exactly one of adam_params and optimizer_params")
        return self


class OptimStepResponse(WireResponse):
    metrics: dict[str, float] | None = None  # keys are "name:reduction"


# --- saving ---------------------------------------------------------------------------------------


class SaveWeightsRequest(WireRequest):
    """``save_state``: a training checkpoint at ``tinker://<model_id>/weights/<path>``."""

    model_id: str
    path: str | None = None  # the checkpoint *name*, not a URI
    seq_id: int | None = None
    ttl_seconds: int | None = None  # None: never expires
    overwrite: bool = False
    user_metadata: UserMetadata | None = None  # 0.38
    type: Literal["save_weights"] = "save_weights"


class SaveWeightsResponse(WireResponse):
    path: str  # the tinker:// URI of the new checkpoint
    type: Literal["save_weights"] | None = "save_weights"


class SaveWeightsForSamplerRequest(WireRequest):
    """Named form (``path``: a sampler checkpoint) or unnamed (``sampling_session_seq_id``: an
    ephemeral sampler bound to the current weights)."""

    model_id: str
    path: str | None = None
    sampling_session_seq_id: int | None = None
    seq_id: int | None = None
    ttl_seconds: int | None = None
    kind: SamplingClientKind | None = None  # 0.38 always sends it; None means "snapshot"
    user_metadata: UserMetadata | None = None  # 0.38
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"

    @model_validator(mode="after")
    def _named_or_session(self) -> SaveWeightsForSamplerRequest:
        if self.path is None and self.sampling_session_seq_id is None:
            raise ValueError("send a checkpoint name in path, or a sampling_session_seq_id")
        return self


class SaveWeightsForSamplerResponse(WireResponse):
    path: str
    type: Literal["save_weights_for_sampler"] | None = "save_weights_for_sampler"


class SaveWeightsForSamplerResponseInternal(WireResponse):
    """The future result: ``path`` for the named form, ``sampling_session_id`` for the other."""

    path: str | None = None
    sampling_session_id: str | None = None
    type: Literal["save_weights_for_sampler"] | None = "save_weights_for_sampler"


class SaveWeightsExternalRequest(WireRequest):
    """0.38: export the current weights as plain files, a checkpoint of kind external_weights."""

    model_id: str
    path: str  # required: the export's name
    seq_id: int | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None  # each file encrypted to all, + ".age"
    type: Literal["save_weights_external"] = "save_weights_external"


class SaveWeightsExternalResponse(WireResponse):
    path: str
    type: Literal["save_weights_external"] | None = "save_weights_external"


class SaveWeightsExternalResponseInternal(WireResponse):
    """The future result. The client asserts ``path``: always send it."""

    path: str | None = None
    size_bytes: int | None = None
    type: Literal["save_weights_external"] | None = "save_weights_external"


# --- loading --------------------------------------------------------------------------------------


class LoadWeightsRequest(WireRequest):
    """Two addressings: ``model_id`` (+ ``seq_id``) loads into an existing model; ``session_id`` +
    ``model_seq_id`` creates the model ``"<session_id>:train:<model_seq_id>"`` from the checkpoint
    ("create via load", 0.38 always, 0.25 behind a config flag)."""

    path: str
    optimizer: bool
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    base_model: str | None = None  # create-via-load only: a compatible override
    user_metadata: UserMetadata | None = None  # create-via-load only: the new run's metadata
    weights_access_token: str | None = None
    optimizer_config: OptimizerConfig | None = None  # 0.38, with optimizer=false only
    type: Literal["load_weights"] = "load_weights"

    @model_validator(mode="after")
    def _one_addressing(self) -> LoadWeightsRequest:
        if (self.model_id is None) == (self.session_id is None):
            raise ValueError(
                "send either model_id (load into an existing model) or session_id with "
                "model_seq_id (create a model from the checkpoint), not both or neither"
            )
        if self.session_id is not None and self.model_seq_id is None:
            raise ValueError("model_seq_id is required with session_id")
        if self.model_id is not None and self.model_seq_id is not None:
            raise ValueError("model_seq_id goes with session_id, not with model_id")
        return self

    @property
    def creates_model(self) -> bool:
        return self.session_id is not None

    @property
    def target_model_id(self) -> str:
        """The model the weights land in, by the "<session>:train:<n>" convention for a create."""
        if self.model_id is not None:
            return self.model_id
        return f"{self.session_id}:train:{self.model_seq_id}"


class LoadWeightsResponse(WireResponse):
    """Every field optional: ``{}`` is a valid result."""

    path: str | None = None
    model_id: str | None = None
    type: Literal["load_weights"] | None = "load_weights"


# --- sampling -------------------------------------------------------------------------------------


class CreateSamplingSessionRequest(WireRequest):
    session_id: str
    sampling_session_seq_id: int
    base_model: str | None = None
    model_path: str | None = None  # a tinker:// path (the client checks the scheme)
    type: Literal["create_sampling_session"] = "create_sampling_session"


class CreateSamplingSessionResponse(WireResponse):
    sampling_session_id: str  # by convention "<session_id>:sample:<n>"
    type: Literal["create_sampling_session"] = "create_sampling_session"


class GetSamplerResponse(WireResponse):
    sampler_id: str
    base_model: str
    model_path: str | None = None


class EncodedTextChunk(WireRequest):
    tokens: list[int]
    type: Literal["encoded_text"] = "encoded_text"


class ImageChunk(WireRequest):
    data: Base64Bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int | None = None
    type: Literal["image"] = "image"


class ImageAssetPointerChunk(WireRequest):
    format: Literal["png", "jpeg"]
    location: str
    expected_tokens: int | None = None
    type: Literal["image_asset_pointer"] = "image_asset_pointer"


class DmelChunk(WireRequest):
    dmel: Base64Bytes  # serialized TensorContainer bytes
    type: Literal["dmel"] = "dmel"


ModelInputChunk = Annotated[
    EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk,
    Field(discriminator="type"),
]


class ModelInput(WireRequest):
    chunks: list[ModelInputChunk]


class SamplingParams(WireRequest):
    max_tokens: int | None = None
    seed: int | None = None
    # None keeps the implicit EOS stop; [] (0.38) disables every stop token.
    stop: str | list[str] | list[int] | None = None
    temperature: float = 1.0
    top_k: int = -1  # -1: no limit
    top_p: float = 1.0


class SampleRequest(WireRequest):
    """``POST /api/v1/asample`` (JSON in, protobuf ``SampleResponse`` out)."""

    prompt: ModelInput
    sampling_params: SamplingParams
    num_samples: int = 1
    base_model: str | None = None
    model_path: str | None = None
    sampling_session_id: str | None = None
    seq_id: int | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0
    # 0.38 additions; None means "not sent" (0 / off).
    topk_sample_logprobs: int | None = None
    # A TensorData in JSON form; tinkerstore.types.tensor converts it when sampling needs it.
    target_prompt_logprobs: dict[str, Any] | None = None
    prompt_alt_tokens_k: int | None = None
    prompt_logprobs_last_n: int | None = None
    record_stability_info: bool | None = None
    type: Literal["sample"] = "sample"
