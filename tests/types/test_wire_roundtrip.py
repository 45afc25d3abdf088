"""Every wire model against the official SDK's model of the same name, both SDK versions.

For each model, hypothesis draws a batch of our instances (a strategy derived from the field
annotations, so a new field is covered without touching this file). The whole batch goes to the
SDK venv in ONE subprocess per version, which validates each example with the SDK class the way
the SDK itself does (responses: its strict response validation, ``validate_type``; requests:
``model_validate`` plus the SDK's own request serialization) and sends back the SDK's JSON. Then:

1. our JSON validates in the SDK, and the SDK keeps every value we sent (only fields an SDK
   version does not know may be dropped, and those are listed here per version);
2. the SDK's JSON validates in ours, with equal content, and ours loses nothing the SDK said;
3. where nothing was dropped or added on the way, the instance round-trips to an equal one.
"""

from __future__ import annotations

import functools
import types as pytypes
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tests.support.sdk import run_sdk_script
from tinkerstore import types as T
from tinkerstore.errors import AlreadyExists
from tinkerstore.types.wire import WireModel

pytestmark = pytest.mark.sdk

EXAMPLES_PER_MODEL = 25


@dataclass(frozen=True)
class Case:
    ours: type[WireModel]
    sdk: str  # dotted path of the SDK class
    mode: Literal["response", "request"]
    versions: tuple[str, ...] = ("0.25", "0.38")
    # Paths (``a.b[].c``) of fields we send that an SDK version does not know and drops.
    unknown: dict[str, frozenset[str]] = field(default_factory=dict)


def _t(name: str) -> str:
    return f"tinker.types.{name}"


_CKPT_025 = frozenset({"user_metadata"})
CASES: list[Case] = [
    # --- checkpoints and runs ---
    Case(T.Checkpoint, _t("Checkpoint"), "response", unknown={"0.25": _CKPT_025}),
    Case(T.Cursor, _t("Cursor"), "response"),
    Case(
        T.CheckpointsListResponse,
        _t("CheckpointsListResponse"),
        "response",
        unknown={"0.25": frozenset({"checkpoints[].user_metadata"})},
    ),
    Case(
        T.TrainingRun,
        _t("TrainingRun"),
        "response",
        unknown={
            "0.25": frozenset(
                {"last_checkpoint.user_metadata", "last_sampler_checkpoint.user_metadata"}
            )
        },
    ),
    Case(
        T.TrainingRunsResponse,
        _t("TrainingRunsResponse"),
        "response",
        unknown={
            "0.25": frozenset(
                {
                    "training_runs[].last_checkpoint.user_metadata",
                    "training_runs[].last_sampler_checkpoint.user_metadata",
                }
            )
        },
    ),
    Case(
        T.WeightsInfoResponse,
        _t("WeightsInfoResponse"),
        "response",
        unknown={"0.25": frozenset({"optimizer_config"})},
    ),
    Case(T.CheckpointArchiveUrlResponse, _t("CheckpointArchiveUrlResponse"), "response", ("0.25",)),
    Case(T.ExternalWeightsUrlsResponse, _t("ExternalWeightsUrlsResponse"), "response", ("0.38",)),
    Case(T.CopyWeightsRequest, _t("CopyWeightsRequest"), "request", ("0.38",)),
    Case(T.CopyWeightsResponse, _t("CopyWeightsResponse"), "response", ("0.38",)),
    Case(
        T.AuditLogEntry,
        _t("AuditLogEntry"),
        "response",
        unknown={"0.25": frozenset({"event_details"})},
    ),
    Case(
        T.AuditLogResponse,
        _t("AuditLogResponse"),
        "response",
        unknown={"0.25": frozenset({"entries[].event_details"})},
    ),
    Case(
        T.CurrentCheckpointStorageUsageItem,
        _t("CurrentCheckpointStorageUsageItem"),
        "response",
        ("0.38",),
    ),
    Case(
        T.CurrentCheckpointStorageUsageResponse,
        _t("CurrentCheckpointStorageUsageResponse"),
        "response",
        ("0.38",),
    ),
    # --- start-up, sessions, futures, identity ---
    Case(T.ClientConfigRequest, _t("ClientConfigRequest"), "request"),
    Case(
        T.ClientConfigResponse,
        _t("ClientConfigResponse"),
        "response",
        unknown={
            "0.25": frozenset(
                {
                    "sample_use_retrieve_futures",
                    "custom_loss_server_side",
                    "sample_join_sampling_session",
                }
            ),
            "0.38": frozenset({"create_model_via_load_weights"}),
        },
    ),
    Case(
        T.ClientDynamicConfigResponse,
        _t("ClientDynamicConfigResponse"),
        "response",
        unknown={"0.25": frozenset({"sample_cancel_enabled", "sample_cancel_max_batch_size"})},
    ),
    Case(T.AuthTokenResponse, _t("AuthTokenResponse"), "response"),
    Case(T.HealthResponse, _t("HealthResponse"), "response"),
    Case(T.TelemetryResponse, _t("TelemetryResponse"), "response"),
    Case(T.CreateSessionRequest, _t("CreateSessionRequest"), "request"),
    Case(T.CreateSessionResponse, _t("CreateSessionResponse"), "response"),
    Case(T.SessionHeartbeatRequest, _t("SessionHeartbeatRequest"), "request"),
    Case(T.SessionHeartbeatResponse, _t("SessionHeartbeatResponse"), "response"),
    Case(
        T.GetSessionResponse,
        _t("GetSessionResponse"),
        "response",
        unknown={"0.25": frozenset({"user_metadata", "display_name"})},
    ),
    Case(T.ListSessionsResponse, _t("ListSessionsResponse"), "response"),
    Case(T.FutureRetrieveRequest, _t("FutureRetrieveRequest"), "request"),
    Case(
        T.UntypedAPIFuture,
        _t("UntypedAPIFuture"),
        "response",
        unknown={"0.25": frozenset({"sample_sequence_ids"})},
    ),
    Case(
        T.TryAgainResponse,
        "tinker.types.try_again_response.TryAgainResponse",  # not exported from tinker.types
        "response",
        # Read by the SDK from the raw JSON, not a field of its model.
        unknown={
            "0.25": frozenset({"queue_state_reason"}),
            "0.38": frozenset({"queue_state_reason"}),
        },
    ),
    Case(T.RequestFailedResponse, _t("RequestFailedResponse"), "response"),
    Case(
        T.SupportedModel,
        _t("SupportedModel"),
        "response",
        unknown={"0.25": frozenset({"trainable", "sampleable"})},
    ),
    Case(
        T.GetServerCapabilitiesResponse,
        _t("GetServerCapabilitiesResponse"),
        "response",
        unknown={
            "0.25": frozenset({"supported_models[].trainable", "supported_models[].sampleable"})
        },
    ),
    Case(T.SelfApiKeyResponse, "tinker.cli.auth_api.SelfApiKeyResponse", "response", ("0.38",)),
    Case(T.ApiKeyDetails, "tinker.lib.credentials.ApiKeyDetails", "response", ("0.38",)),
    # --- training ---
    Case(T.LoraConfig, _t("LoraConfig"), "request"),
    Case(T.CreateModelRequest, _t("CreateModelRequest"), "request"),
    Case(T.CreateModelResponse, _t("CreateModelResponse"), "response"),
    Case(T.GetInfoRequest, _t("GetInfoRequest"), "request"),
    Case(T.ModelData, _t("ModelData"), "response"),
    Case(
        T.GetInfoResponse,
        _t("GetInfoResponse"),
        "response",
        unknown={"0.25": frozenset({"optimizer_config"})},
    ),
    Case(T.OptimizerConfig, "tinker.types.optimizer.OptimizerConfigBase", "request", ("0.38",)),
    Case(T.OptimizerParams, "tinker.types.optimizer.OptimParamsBase", "request", ("0.38",)),
    Case(T.AdamParams, _t("AdamParams"), "request"),
    Case(T.OptimStepRequest, _t("OptimStepRequest"), "request"),
    Case(T.OptimStepResponse, _t("OptimStepResponse"), "response"),
    Case(T.SaveWeightsRequest, _t("SaveWeightsRequest"), "request"),
    Case(T.SaveWeightsResponse, _t("SaveWeightsResponse"), "response"),
    Case(T.SaveWeightsForSamplerRequest, _t("SaveWeightsForSamplerRequest"), "request"),
    Case(T.SaveWeightsForSamplerResponse, _t("SaveWeightsForSamplerResponse"), "response"),
    Case(
        T.SaveWeightsForSamplerResponseInternal,
        _t("SaveWeightsForSamplerResponseInternal"),
        "response",
    ),
    Case(T.SaveWeightsExternalRequest, _t("SaveWeightsExternalRequest"), "request", ("0.38",)),
    Case(T.SaveWeightsExternalResponse, _t("SaveWeightsExternalResponse"), "response", ("0.38",)),
    Case(
        T.SaveWeightsExternalResponseInternal,
        _t("SaveWeightsExternalResponseInternal"),
        "response",
        ("0.38",),
    ),
    Case(T.LoadWeightsRequest, _t("LoadWeightsRequest"), "request"),
    Case(T.LoadWeightsResponse, _t("LoadWeightsResponse"), "response"),
    # --- sampling ---
    Case(T.CreateSamplingSessionRequest, _t("CreateSamplingSessionRequest"), "request"),
    Case(T.CreateSamplingSessionResponse, _t("CreateSamplingSessionResponse"), "response"),
    Case(T.GetSamplerResponse, _t("GetSamplerResponse"), "response"),
    Case(T.EncodedTextChunk, _t("EncodedTextChunk"), "request"),
    Case(T.ImageChunk, _t("ImageChunk"), "request"),
    Case(T.ImageAssetPointerChunk, _t("ImageAssetPointerChunk"), "request"),
    Case(T.DmelChunk, _t("DmelChunk"), "request"),
    Case(T.ModelInput, _t("ModelInput"), "request"),
    Case(T.SamplingParams, _t("SamplingParams"), "request"),
    Case(T.SampleRequest, _t("SampleRequest"), "request"),
]

# Models with no SDK class: the SDK sends these bodies as plain dicts (checked further down).
NO_SDK_MODEL = {
    T.SetTtlRequest,
    T.WeightsInfoRequest,
    T.FinishSessionRequest,
    T.FinishReason,
    T.ApiKeyOrgDetails,
    T.ApiKeyUserDetails,
}

# Request fields only 0.38 sends: 0.25's request models forbid them, so they stay unset there.
ONLY_038_REQUEST_FIELDS: dict[type[BaseModel], frozenset[str]] = {
    T.CreateSessionRequest: frozenset({"display_name"}),
    T.CreateModelRequest: frozenset({"optimizer_config"}),
    T.OptimStepRequest: frozenset({"optimizer_params"}),
    T.SaveWeightsRequest: frozenset({"user_metadata"}),
    T.SaveWeightsForSamplerRequest: frozenset({"kind", "user_metadata"}),
    T.LoadWeightsRequest: frozenset({"optimizer_config"}),
    T.SampleRequest: frozenset(
        {
            "topk_sample_logprobs",
            "target_prompt_logprobs",
            "prompt_alt_tokens_k",
            "prompt_logprobs_last_n",
            "record_stability_info",
        }
    ),
}


# --- strategies derived from annotations ----------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
JSON_SCALAR = st.none() | st.booleans() | st.integers(-1000, 1000) | TEXT
JSON_ANY = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=4,
)
DATETIMES = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)
TENSOR_JSON = st.builds(
    lambda n, dtype: {"data": list(range(n)), "dtype": dtype, "shape": [n]},
    st.integers(0, 4),
    st.sampled_from(["int64", "float32"]),
)


def field_overrides(version: str) -> dict[tuple[type[BaseModel], str], st.SearchStrategy[Any]]:
    """Values that must stay inside what an SDK version accepts."""
    out: dict[tuple[type[BaseModel], str], st.SearchStrategy[Any]] = {
        # A TensorData in JSON form, which 0.38's SampleRequest validates strictly.
        (T.SampleRequest, "target_prompt_logprobs"): st.none() | TENSOR_JSON,
        # Non-ASCII digits would be ints in Python but are irrelevant to the wire.
        (T.ImageChunk, "data"): st.binary(max_size=12),
    }
    if version == "0.25":
        out[(T.Checkpoint, "checkpoint_type")] = st.sampled_from(["training", "sampler"])
        for model, names in ONLY_038_REQUEST_FIELDS.items():
            for name in names:
                out[(model, name)] = st.none()
    return out


def strategy_for(annotation: Any, overrides: dict[Any, Any]) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return strategy_for(args[0], overrides)
    if origin in (typing.Union, pytypes.UnionType):
        return st.one_of([strategy_for(a, overrides) for a in args])
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(strategy_for(args[0], overrides), max_size=3)
    if origin is dict:
        return st.dictionaries(TEXT, strategy_for(args[1], overrides), max_size=3)
    if annotation is type(None):
        return st.none()
    if annotation is Any or annotation is object:
        return JSON_ANY
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_strategy(annotation, overrides)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: TEXT,
        int: st.integers(-(2**40), 2**40),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        bytes: st.binary(max_size=12),
        datetime: DATETIMES,
    }
    if annotation in simple:
        return simple[annotation]
    raise NotImplementedError(f"no strategy for {annotation!r}")


def _build(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError:
        return None  # a cross-field rule (e.g. LoadWeightsRequest addressing); drawn again


def model_strategy(model: type[BaseModel], overrides: dict[Any, Any]) -> st.SearchStrategy[Any]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        strat = overrides.get((model, name))
        if strat is None:
            strat = strategy_for(info.annotation, overrides)
        (required if info.is_required() else optional)[name] = strat
    return (
        st.fixed_dictionaries(required, optional=optional)
        .map(functools.partial(_build, model))
        .filter(lambda x: x is not None)
    )


# Cross-field rules are easier to satisfy by construction than by filtering.
def special_strategies(version: str, overrides: dict[Any, Any]) -> dict[type, Any]:
    load_common = st.fixed_dictionaries(
        {"path": TEXT, "optimizer": st.booleans()},
        optional={
            "weights_access_token": TEXT,
            "optimizer_config": overrides.get(
                (T.LoadWeightsRequest, "optimizer_config"),
                strategy_for(T.OptimizerConfig, overrides),
            ),
        },
    )
    legacy = st.fixed_dictionaries({"model_id": TEXT}, optional={"seq_id": st.integers(0, 99)})
    create = st.fixed_dictionaries(
        {"session_id": TEXT, "model_seq_id": st.integers(0, 99)},
        optional={"base_model": TEXT, "user_metadata": st.dictionaries(TEXT, TEXT, max_size=2)},
    )
    optim = st.fixed_dictionaries(
        {"model_id": TEXT},
        optional={"seq_id": st.integers(0, 99)},
    )
    params = (
        st.fixed_dictionaries({"adam_params": strategy_for(T.AdamParams, overrides)})
        if version == "0.25"
        else st.fixed_dictionaries({"adam_params": strategy_for(T.AdamParams, overrides)})
        | st.fixed_dictionaries({"optimizer_params": strategy_for(T.OptimizerParams, overrides)})
    )
    return {
        T.LoadWeightsRequest: st.builds(
            lambda a, b: T.LoadWeightsRequest.model_validate({**a, **b}),
            load_common,
            legacy | create,
        ),
        T.OptimStepRequest: st.builds(
            lambda a, b: T.OptimStepRequest.model_validate({**a, **b}), optim, params
        ),
    }


def draw_examples(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """Run hypothesis once, collecting up to ``n`` examples for one batched SDK call."""
    found: list[Any] = []

    @settings(
        max_examples=n,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


# --- the batched SDK run --------------------------------------------------------------------------

SDK_DRIVER = """
import importlib, json, sys
from tinker._compat import model_dump
from tinker._models import validate_type

out = []
for item in json.load(sys.stdin):
    module, _, name = item["cls"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    try:
        if item["mode"] == "response":
            obj = validate_type(type_=cls, value=item["data"])  # the SDK's strict response check
            dump = obj.model_dump(mode="json")
        else:
            obj = cls.model_validate(item["data"])
            dump = model_dump(obj, exclude_unset=False, exclude_none=True, mode="json")
        out.append({"ok": True, "dump": dump})
    except Exception as exc:
        out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(out))
"""

# Hand-written inputs, each validated by the SDK and then by ours: SDK-only shapes that our
# generated examples never produce. (label, version, sdk class, mode, data)
EXTRA_ITEMS: list[tuple[str, str, str, str, Any]] = [
    (
        "external_025",
        "0.25",
        _t("Checkpoint"),
        "response",
        {
            "checkpoint_id": "external_weights/x",
            "checkpoint_type": "external",
            "time": "2026-01-01T12:00:00Z",
            "tinker_path": "tinker://r/external_weights/x",
        },
    ),
    (
        "external_038",
        "0.38",
        _t("Checkpoint"),
        "response",
        {
            "checkpoint_id": "external_weights/x",
            "checkpoint_type": "external",
            "time": "2026-01-01T12:00:00Z",
            "tinker_path": "tinker://r/external_weights/x",
        },
    ),
]
for _v in ("0.25", "0.38"):
    EXTRA_ITEMS.append(
        (
            f"any_metadata_{_v}",
            _v,
            _t("CreateModelRequest"),
            "request",
            {
                "session_id": "s",
                "model_seq_id": 0,
                "base_model": "Qwen/Qwen3-8B",
                "user_metadata": {
                    "step": 5,
                    "ok": True,
                    "nested": {"a": [1, 2]},
                    "none": None,
                    "s": "x",
                },
            },
        )
    )
EXTRA_ITEMS += [
    (
        "dimuon_038",
        "0.38",
        _t("OptimStepRequest"),
        "request",
        {
            "model_id": "m",
            "seq_id": 3,
            "optimizer_params": {"type": "dimuon", "learning_rate": 0.01, "grad_clip_norm": 1.0},
        },
    ),
    (
        "create_model_038",
        "0.38",
        _t("CreateModelRequest"),
        "request",
        {
            "session_id": "s",
            "model_seq_id": 1,
            "base_model": "b",
            "optimizer_config": {"type": "dimuon", "version": 1},
            "lora_config": {"rank": 8},
        },
    ),
    (
        "via_load_038",
        "0.38",
        _t("LoadWeightsRequest"),
        "request",
        {
            "session_id": "sess2",
            "model_seq_id": 0,
            "path": "tinker://sess1:train:0/weights/000020",
            "optimizer": False,
            "user_metadata": {"created_by": "tinker checkpoint download"},
        },
    ),
    (
        "sampler_defaults_038",
        "0.38",
        _t("SaveWeightsForSamplerRequest"),
        "request",
        {"model_id": "m", "sampling_session_seq_id": 0, "seq_id": 8},
    ),
]


@dataclass
class Batch:
    examples: dict[str, list[Any]]  # case name -> our instances
    results: dict[str, list[dict[str, Any]]]  # case name -> SDK answers, same order
    extras: dict[str, dict[str, Any]]


def models_within(annotation: Any, seen: set[type] | None = None) -> set[type]:
    """Every model class reachable from an annotation (itself included)."""
    seen = set() if seen is None else seen
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in seen:
            seen.add(annotation)
            for info in annotation.model_fields.values():
                models_within(info.annotation, seen)
    else:
        for arg in typing.get_args(annotation):
            models_within(arg, seen)
    return seen


# Models whose 0.25 examples are drawn under extra constraints (fields 0.25 does not know).
VERSION_SENSITIVE = {
    model for model, _ in set(field_overrides("0.25")) - set(field_overrides("0.38"))
} | {T.OptimStepRequest}


@functools.cache
def examples_for(model: type[BaseModel], version: str) -> list[Any]:
    """Drawn once per model, or once per version where the versions need different values."""
    if version != "0.25" and not models_within(model) & VERSION_SENSITIVE:
        return examples_for(model, "0.25")
    overrides = field_overrides(version)
    strat = special_strategies(version, overrides).get(model)
    if strat is None:
        strat = model_strategy(model, overrides)
    return draw_examples(strat, EXAMPLES_PER_MODEL)


@functools.cache
def sdk_batch(version: str) -> Batch:
    items: list[dict[str, Any]] = []
    examples: dict[str, list[Any]] = {}
    for case in CASES:
        if version not in case.versions:
            continue
        drawn = examples_for(case.ours, version)
        examples[case.ours.__name__] = drawn
        items += [
            {"cls": case.sdk, "mode": case.mode, "data": x.model_dump(mode="json")} for x in drawn
        ]
    extra = [e for e in EXTRA_ITEMS if e[1] == version]
    items += [{"cls": cls, "mode": mode, "data": data} for _, _, cls, mode, data in extra]
    answers = run_sdk_script(version, SDK_DRIVER, stdin=items, timeout=120)
    assert len(answers) == len(items)
    results: dict[str, list[dict[str, Any]]] = {}
    pos = 0
    for name, drawn in examples.items():
        results[name] = answers[pos : pos + len(drawn)]
        pos += len(drawn)
    extras = {label: answers[pos + i] for i, (label, *_rest) in enumerate(extra)}
    return Batch(examples, results, extras)


# --- JSON comparison ------------------------------------------------------------------------------


@dataclass
class Diff:
    mismatched: list[str] = field(default_factory=list)
    only_left: set[str] = field(default_factory=set)  # paths with a value on the left only
    only_right: set[str] = field(default_factory=set)


def _same_scalar(a: Any, b: Any) -> bool:
    # bool is an int in Python: keep True from equalling 1.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def json_diff(left: Any, right: Any, path: str = "", out: Diff | None = None) -> Diff:
    """Compare two JSON documents, reading a missing key as null."""
    out = out if out is not None else Diff()
    if isinstance(left, dict) and isinstance(right, dict):
        for key in left.keys() | right.keys():
            sub = f"{path}.{key}" if path else key
            a, b = left.get(key), right.get(key)
            if a is not None and key not in right:
                out.only_left.add(sub)
            elif b is not None and key not in left:
                out.only_right.add(sub)
            else:
                json_diff(a, b, sub, out)
    elif isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for a, b in zip(left, right, strict=True):
            json_diff(a, b, f"{path}[]", out)
    elif not _same_scalar(left, right):
        out.mismatched.append(f"{path or '<root>'}: ours {left!r} != sdk {right!r}")
    return out


def _is_unknown(path: str, unknown: frozenset[str]) -> bool:
    return any(path == u or path.startswith(u + ".") for u in unknown)


def case_id(case_version: tuple[Case, str]) -> str:
    return f"{case_version[1]}-{case_version[0].ours.__name__}"


PAIRS = [(c, v) for c in CASES for v in c.versions]


@pytest.mark.parametrize("case,version", PAIRS, ids=[case_id(p) for p in PAIRS])
def test_roundtrip_with_sdk(case: Case, version: str) -> None:
    batch = sdk_batch(version)
    name = case.ours.__name__
    drawn, answers = batch.examples[name], batch.results[name]
    assert drawn, f"no examples drawn for {name}"
    unknown = case.unknown.get(version, frozenset())
    for ours, answer in zip(drawn, answers, strict=True):
        wire = ours.model_dump(mode="json")
        context = f"{name} on SDK {version}, our JSON {wire!r}"
        # 1. ours -> SDK: accepted, and nothing the SDK knows was changed or lost.
        assert answer["ok"], f"SDK rejected {context}: {answer.get('error')}"
        sdk_json = answer["dump"]
        sent = json_diff(wire, sdk_json)
        assert not sent.mismatched, f"{context}: {sent.mismatched}"
        lost = {p for p in sent.only_left if not _is_unknown(p, unknown)}
        assert not lost, f"{context}: the SDK dropped {sorted(lost)}"
        # 2. SDK -> ours: validates, equal content, nothing the SDK said is lost.
        back = case.ours.model_validate(sdk_json)
        back_json = back.model_dump(mode="json")
        returned = json_diff(back_json, sdk_json)
        assert not returned.mismatched, f"{context}: {returned.mismatched}"
        assert not returned.only_right, f"{context}: ours lost {sorted(returned.only_right)}"
        extra = {p for p in returned.only_left if not _is_unknown(p, unknown)}
        assert not extra, f"{context}: ours invented {sorted(extra)}"
        # 3. A full round trip gives an equal instance when the SDK knew every field.
        if not sent.only_left and not sent.only_right:
            assert back == ours, f"{context}: came back as {back!r}"


def test_every_wire_model_is_covered() -> None:
    """A new model without an SDK case (or an explicit reason not to have one) fails here."""
    covered = {c.ours for c in CASES} | NO_SDK_MODEL
    wire_models = {
        obj
        for name in T.__all__
        if isinstance(obj := getattr(T, name), type)
        and issubclass(obj, WireModel)
        and not name.startswith("Wire")
    }
    assert wire_models - covered == set()


# --- version gating and SDK-only shapes -----------------------------------------------------------


def test_025_rejects_external_checkpoints_and_038_accepts_them() -> None:
    """Why the server hides external checkpoints from 0.25 clients (protocol §7.6)."""
    old = sdk_batch("0.25").extras["external_025"]
    assert not old["ok"] and "checkpoint_type" in old["error"]
    new = sdk_batch("0.38").extras["external_038"]
    assert new["ok"], new
    ours = T.Checkpoint.model_validate(new["dump"])
    assert ours.kind is T.CheckpointKind.EXTERNAL_WEIGHTS and not ours.visible_to_025()


@pytest.mark.parametrize("version", ["0.25", "0.38"])
def test_any_json_metadata_from_the_sdk_becomes_strings(version: str) -> None:
    answer = sdk_batch(version).extras[f"any_metadata_{version}"]
    assert answer["ok"], answer
    ours = T.CreateModelRequest.model_validate(answer["dump"])
    assert ours.user_metadata == {
        "step": "5",
        "ok": "true",
        "nested": '{"a":[1,2]}',
        "none": "null",
        "s": "x",
    }


def test_038_only_request_shapes_validate_in_ours() -> None:
    extras = sdk_batch("0.38").extras
    for label in ("dimuon_038", "create_model_038", "via_load_038", "sampler_defaults_038"):
        assert extras[label]["ok"], (label, extras[label])
    step = T.OptimStepRequest.model_validate(extras["dimuon_038"]["dump"])
    assert step.adam_params is None and step.optimizer_params is not None
    assert step.optimizer_params.type == "dimuon"
    assert step.optimizer_params.model_dump()["learning_rate"] == 0.01
    model = T.CreateModelRequest.model_validate(extras["create_model_038"]["dump"])
    assert model.optimizer_config is not None
    assert model.optimizer_config.model_dump() == {"type": "dimuon", "version": 1}
    assert model.lora_config == T.LoraConfig(rank=8)
    load = T.LoadWeightsRequest.model_validate(extras["via_load_038"]["dump"])
    assert load.creates_model and load.target_model_id == "sess2:train:0"
    sampler = T.SaveWeightsForSamplerRequest.model_validate(extras["sampler_defaults_038"]["dump"])
    assert sampler.kind == "snapshot"  # 0.38 always sends its default


# --- bodies the SDK sends as plain dicts, and our own rules ---------------------------------------


def test_plain_dict_bodies_the_sdk_sends() -> None:
    assert T.SetTtlRequest.model_validate({"ttl_seconds": 3600}).ttl_seconds == 3600
    cleared = T.SetTtlRequest.model_validate({"ttl_seconds": None})
    assert cleared.ttl_seconds is None
    assert cleared.model_dump(mode="json") == {"ttl_seconds": None}  # null means "clear"
    with pytest.raises(ValidationError, match="ttl_seconds"):
        T.SetTtlRequest.model_validate({})
    path = "tinker://sess1:train:0/weights/ckpt1"
    assert T.WeightsInfoRequest.model_validate({"tinker_path": path}).tinker_path == path
    finish = T.FinishSessionRequest.model_validate(
        {"reason": {"type": "interrupted"}, "detail": None}
    )
    assert finish.reason.type == "interrupted"
    assert finish.model_dump(mode="json") == {"reason": {"type": "interrupted"}, "detail": None}
    with pytest.raises(ValidationError, match=r"reason\.type"):
        T.FinishSessionRequest.model_validate({"reason": {"type": "exploded"}})
    auth = T.SelfApiKeyResponse(
        key_id=42,
        name="cli",
        note="",
        details=T.ApiKeyDetails(
            org_details=T.ApiKeyOrgDetails(name="Self-hosted"),
            user_details=T.ApiKeyUserDetails(email="a@example.com"),
        ),
    )
    assert auth.model_dump(mode="json")["details"]["user_details"] == {"email": "a@example.com"}


@pytest.mark.parametrize(
    ("model", "body", "where"),
    [
        (T.SaveWeightsRequest, {"model_id": "m", "seq_id": "5"}, "seq_id"),
        (T.SaveWeightsRequest, {"model_id": "m", "overwrite": 1}, "overwrite"),
        (T.SaveWeightsRequest, {"model_id": 7}, "model_id"),
        (T.LoadWeightsRequest, {"model_id": "m", "path": "p", "optimizer": "yes"}, "optimizer"),
        (
            T.CreateModelRequest,
            {"session_id": "s", "model_seq_id": 1.5, "base_model": "b"},
            "model_seq_id",
        ),
        (T.CreateSessionRequest, {"tags": "a,b"}, "tags"),
        (T.SaveWeightsExternalRequest, {"model_id": "m"}, "path"),
        (
            T.OptimStepRequest,
            {"model_id": "m", "adam_params": {"learning_rate": "fast"}},
            "adam_params.learning_rate",
        ),
    ],
)
def test_wrong_types_are_named_in_the_error(model: type[BaseModel], body: Any, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    assert where in T.describe_validation_error(info.value)


def test_requests_ignore_unknown_fields_from_a_newer_sdk() -> None:
    body = {"model_id": "m", "path": "a", "seq_id": 2, "some_future_field": {"x": 1}}
    request = T.SaveWeightsRequest.model_validate(body)
    assert request.model_dump(mode="json") == {
        "model_id": "m",
        "path": "a",
        "seq_id": 2,
        "overwrite": False,
        "type": "save_weights",
    }


def test_cross_field_rules_of_requests() -> None:
    base = {"path": "tinker://r/weights/a", "optimizer": True}
    with pytest.raises(ValidationError, match="either model_id"):
        T.LoadWeightsRequest.model_validate(base)
    with pytest.raises(ValidationError, match="either model_id"):
        T.LoadWeightsRequest.model_validate({**base, "model_id": "m", "session_id": "s"})
    with pytest.raises(ValidationError, match="model_seq_id is required"):
        T.LoadWeightsRequest.model_validate({**base, "session_id": "s"})
    legacy = T.LoadWeightsRequest.model_validate({**base, "model_id": "m", "seq_id": 6})
    assert not legacy.creates_model and legacy.target_model_id == "m"
    with pytest.raises(ValidationError, match="exactly one of adam_params"):
        T.OptimStepRequest.model_validate({"model_id": "m"})
    with pytest.raises(ValidationError, match="exactly one of adam_params"):
        T.OptimStepRequest.model_validate(
            {"model_id": "m", "adam_params": {}, "optimizer_params": {"type": "dimuon"}}
        )
    with pytest.raises(ValidationError, match="sampling_session_seq_id"):
        T.SaveWeightsForSamplerRequest.model_validate({"model_id": "m", "seq_id": 1})


@given(DATETIMES)
@settings(max_examples=50, deadline=None)
def test_datetimes_go_out_as_utc_with_zone(value: datetime) -> None:
    ckpt = T.Checkpoint(
        checkpoint_id="weights/a",
        checkpoint_type="training",
        time=value,
        tinker_path="tinker://r/weights/a",
        expires_at=value,
    )
    out = ckpt.model_dump(mode="json")
    assert out["time"].endswith("Z") and out["expires_at"].endswith("Z")
    expected = value if value.tzinfo else value.replace(tzinfo=UTC)
    assert ckpt.time == expected and ckpt.time.utcoffset() == timedelta(0)
    assert datetime.fromisoformat(out["time"]) == expected


def test_none_fields_are_omitted_from_responses() -> None:
    ckpt = T.Checkpoint(
        checkpoint_id="weights/a",
        checkpoint_type="training",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        tinker_path="tinker://r/weights/a",
    )
    assert ckpt.model_dump(mode="json") == {
        "checkpoint_id": "weights/a",
        "checkpoint_type": "training",
        "time": "2026-01-01T00:00:00Z",
        "tinker_path": "tinker://r/weights/a",
        "public": False,
    }
    assert ckpt.model_dump_json() == (
        '{"checkpoint_id":"weights/a","checkpoint_type":"training",'
        '"time":"2026-01-01T00:00:00Z","tinker_path":"tinker://r/weights/a","public":false}'
    )
    run = T.TrainingRun(
        training_run_id="r",
        base_model="b",
        model_owner="u",
        is_lora=True,
        last_request_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert "last_checkpoint" not in run.model_dump(mode="json")
    # GetInfoResponse.type must never be null for 0.38's optimizer_config and literal fields.
    info = T.GetInfoResponse(model_data=T.ModelData(), model_id="m").model_dump(mode="json")
    assert info == {
        "model_data": {},
        "model_id": "m",
        "optimizer_config": {"type": "adamw"},
        "type": "get_info",
    }


def test_type_constants_match_the_models() -> None:
    pairs = {
        T.TYPE_CREATE_SESSION: T.CreateSessionRequest,
        T.TYPE_SESSION_HEARTBEAT: T.SessionHeartbeatRequest,
        T.TYPE_CREATE_MODEL: T.CreateModelRequest,
        T.TYPE_GET_INFO: T.GetInfoRequest,
        T.TYPE_OPTIM_STEP: T.OptimStepRequest,
        T.TYPE_SAVE_WEIGHTS: T.SaveWeightsRequest,
        T.TYPE_SAVE_WEIGHTS_FOR_SAMPLER: T.SaveWeightsForSamplerRequest,
        T.TYPE_SAVE_WEIGHTS_EXTERNAL: T.SaveWeightsExternalRequest,
        T.TYPE_LOAD_WEIGHTS: T.LoadWeightsRequest,
        T.TYPE_CREATE_SAMPLING_SESSION: T.CreateSamplingSessionRequest,
        T.TYPE_SAMPLE: T.SampleRequest,
        T.TYPE_TRY_AGAIN: T.TryAgainResponse,
    }
    for constant, model in pairs.items():
        assert model.model_fields["type"].default == constant, model.__name__


@given(st.integers(0, 500), st.integers(1, 100), st.integers(0, 500))
def test_cursor_paging(offset: int, limit: int, total: int) -> None:
    cursor = T.Cursor(offset=offset, limit=limit, total_count=total)
    assert cursor.has_more == (offset + limit < total)
    assert cursor.next_offset == (offset + limit if cursor.has_more else None)


def test_signed_urls_expire() -> None:
    expires = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    urls = T.ExternalWeightsUrlsResponse(urls={"a": "http://x"}, expires=expires)
    archive = T.CheckpointArchiveUrlResponse(url="http://x", expires=expires)
    for resp in (urls, archive):
        assert not resp.expired(expires - timedelta(seconds=1))
        assert resp.expired(expires)
        assert resp.expired(expires - timedelta(minutes=4), margin=timedelta(minutes=5))
        assert not resp.expired(datetime(2026, 1, 1, 11, 59))  # naive "now" is UTC
    assert T.CheckpointArchiveUrlResponse(url="u", expires=datetime(2000, 1, 1)).expired()


def test_checkpoint_from_path_and_failed_futures() -> None:
    parsed = T.parse_tinker_path("tinker://sess1:train:0/external_weights/final")
    ckpt = T.Checkpoint.from_path(parsed, time=datetime(2026, 1, 1), size_bytes=10)
    assert (ckpt.checkpoint_id, ckpt.checkpoint_type, ckpt.tinker_path) == (
        "external_weights/final",
        "external",
        parsed.tinker_path,
    )
    assert ckpt.kind is T.CheckpointKind.EXTERNAL_WEIGHTS
    failed = T.RequestFailedResponse.from_error(AlreadyExists("checkpoint 'x' exists", hint="h"))
    assert failed.model_dump(mode="json") == {
        "error": "checkpoint 'x' exists (h)",
        "category": "user",
    }
