"""Training and sampling endpoints (protocol §4): thin handlers over ``service.training``.

Every state-changing model request becomes a future executed in ``seq_id`` order per model
(``FutureEngine``). Model creation (``create_model`` and create-via-load ``load_weights``) is the
new model's request number 0, so the model's later requests (seq_id 1, 2, …) queue behind it and
a retried creation finds the same future.

Checks made *before* a future is submitted are only the ones that decide whose queue a request
may join: the session or the model must belong to the caller (404 otherwise), so nobody can slip
a seq_id into another user's model. Everything else (name clashes, bad TTLs, incompatible
checkpoints, unknown base models, bad age recipients) fails inside the future, with category
``user``: a request refused before submission would leave a hole in the model's seq_id order.

The trainer (torch) is heavy, so :class:`TrainingHolder` builds it on the first training
request, in a worker thread, once.
"""

from __future__ import annotations

import tempfile
import threading
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request

from tinkerstore.errors import InvalidInput, NotFound, SessionGone
from tinkerstore.server.auth import Caller
from tinkerstore.server.futures import FutureEngine, FutureResult
from tinkerstore.server.routes_session import owned_session
from tinkerstore.service import Principal, Store
from tinkerstore.service.training import Training, missing_model
from tinkerstore.trainer.backend import AdamSpec, Backend, Datum, SamplingSpec
from tinkerstore.types import (
    CreateModelRequest,
    CreateModelResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    GetInfoRequest,
    GetInfoResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    ModelData,
    OptimStepRequest,
    OptimStepResponse,
    SampleRequest,
    SaveWeightsExternalRequest,
    SaveWeightsExternalResponseInternal,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsRequest,
    SaveWeightsResponse,
    UntypedAPIFuture,
)
from tinkerstore.types.proto import (
    SampledSequenceOutput,
    decode_forward_backward_request,
    encode_forward_backward_output,
    encode_sample_response,
)
from tinkerstore.types.wire import OptimizerConfig

__all__ = ["TrainingHolder", "router"]

router = APIRouter(prefix="/api/v1", tags=["training and sampling"])

PROTOBUF = "application/x-protobuf"
DEFAULT_MAX_TOKENS = 16
MAX_SAMPLES = 64  # as the reference trainer's sampler; more fails the future with a message


class TrainingHolder:
    """The process's training service, built on first use, and the models created here.

    ``owners`` maps every model whose creation this process accepted to its owner: the models a
    request may address here (training models live in this process's memory only).
    """

    def __init__(
        self, store: Store, backend: Backend | None = None, work_dir: Path | None = None
    ) -> None:
        self._store = store
        self._backend = backend
        self._work_dir = work_dir
        self._training: Training | None = None
        self._lock = threading.Lock()
        self.owners: dict[str, str] = {}

    def peek(self) -> Training | None:
        return self._training

    def get(self) -> Training:
        """The training service; the first call imports torch (seconds): call it off the loop."""
        with self._lock:
            if self._training is None:
                from tinkerstore.trainer import reference_backend

                backend = self._backend or reference_backend()
                self._training = Training(self._store, backend, self._resolve_work_dir())
            return self._training

    def _resolve_work_dir(self) -> Path:
        if self._work_dir is not None:
            return self._work_dir
        # The embedded layout (DATA_DIR/blobs): keep derived files beside it, so the tokenizer
        # paths get_info hands out stay valid across restarts. Elsewhere (S3), a temp directory
        # removed with this object.
        root = getattr(self._store.blobs, "root", None)
        if isinstance(root, Path) and root.name == "blobs":
            return root.parent / "work"
        work = Path(tempfile.mkdtemp(prefix="tinkerstore-work-"))
        weakref.finalize(self, _remove_tree, work)
        return work


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------


def _holder(request: Request) -> TrainingHolder:
    holder: TrainingHolder = request.app.state.training
    return holder


def _engine(request: Request) -> FutureEngine:
    engine: FutureEngine = request.app.state.futures
    return engine


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _open_session(store: Store, caller: Principal, session_id: str) -> None:
    session = owned_session(store, caller, session_id)
    if session.finished_reason is not None:
        raise SessionGone(
            f"session {session_id!r} finished ({session.finished_reason})",
            hint="create a new ServiceClient",
        )


async def _training(request: Request) -> Training:
    return await anyio.to_thread.run_sync(_holder(request).get)


async def _check_model(request: Request, caller: Principal, model_id: str) -> None:
    """404 unless the caller's model was created in this process."""
    if _holder(request).owners.get(model_id) != caller.user_id:
        raise await anyio.to_thread.run_sync(missing_model, _store(request), caller, model_id)


def _seq(seq_id: int | None) -> int:
    if seq_id is None or seq_id < 1:
        raise InvalidInput(
            f"seq_id={seq_id} is missing or below 1",
            hint="model requests carry seq_id 1, 2, … in the order the client issued them",
        )
    return seq_id


async def _submit(
    request: Request,
    caller: Principal,
    model_id: str | None,
    seq_id: int | None,
    request_type: str,
    fn: Callable[[], Any],
) -> UntypedAPIFuture:
    record = await _engine(request).submit(caller.user_id, model_id, seq_id, request_type, fn)
    return UntypedAPIFuture(request_id=record.request_id, model_id=model_id)


async def _submit_creation(
    request: Request, caller: Principal, model_id: str, request_type: str, fn: Callable[[], Any]
) -> UntypedAPIFuture:
    holder = _holder(request)
    # No await between the check and the registration: a retry racing the first request cannot
    # reset the queue of a model whose creation already ran.
    if model_id not in holder.owners:
        holder.owners[model_id] = caller.user_id
        _engine(request).register_model(model_id, next_seq=0)
    return await _submit(request, caller, model_id, 0, request_type, fn)


def _check_optimizer(config: OptimizerConfig | None) -> None:
    if config is not None and config.type != "adamw":
        raise InvalidInput(
            f"optimizer {config.type!r} is not supported by this server",
            hint='use the default optimizer, {"type": "adamw"}',
        )


# -- models ----------------------------------------------------------------------------------


@router.post("/create_model", response_model=UntypedAPIFuture)
async def create_model(
    body: CreateModelRequest, request: Request, caller: Caller
) -> UntypedAPIFuture:
    await anyio.to_thread.run_sync(_open_session, _store(request), caller, body.session_id)
    holder = _holder(request)
    lora = body.lora_config.model_dump() if body.lora_config else None

    def work() -> CreateModelResponse:
        _check_optimizer(body.optimizer_config)
        model_id = holder.get().create_model(
            caller,
            session_id=body.session_id,
            model_seq_id=body.model_seq_id,
            base_model=body.base_model,
            lora_config=lora,
            user_metadata=body.user_metadata,
        )
        return CreateModelResponse(model_id=model_id)

    model_id = f"{body.session_id}:train:{body.model_seq_id}"
    return await _submit_creation(request, caller, model_id, "CreateModel", work)


@router.post("/get_info", response_model=GetInfoResponse)
async def get_info(body: GetInfoRequest, request: Request, caller: Caller) -> GetInfoResponse:
    await _check_model(request, caller, body.model_id)
    training = await _training(request)
    info = await anyio.to_thread.run_sync(training.info, caller, body.model_id)
    tokenizer = await anyio.to_thread.run_sync(training.tokenizer_id, info.base_model)
    return GetInfoResponse(
        model_data=ModelData(arch=info.arch, model_name=info.base_model, tokenizer_id=tokenizer),
        model_id=body.model_id,
        is_lora=True,
        lora_rank=info.lora.rank,
        model_name=info.base_model,
    )


# -- training --------------------------------------------------------------------------------

# Documented as raw bytes: the SDK sends Content-Type application/x-protobuf, which generic
# OpenAPI tooling cannot produce; the server reads the bytes whatever the declared type.
_PROTOBUF_BODY = {
    "requestBody": {
        "required": True,
        "description": "a serialized tinker_public.ForwardBackwardRequest",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/forward_backward", response_model=UntypedAPIFuture, openapi_extra=_PROTOBUF_BODY)
async def forward_backward(request: Request, caller: Caller) -> UntypedAPIFuture:
    """Body: a ``tinker_public.ForwardBackwardRequest``; result: a protobuf
    ``ForwardBackwardOutput`` (per-datum ``logprobs``, metric ``loss:sum``)."""
    raw = await request.body()
    decode = partial(
        decode_forward_backward_request,
        content_encoding=request.headers.get("content-encoding"),
    )
    msg = await anyio.to_thread.run_sync(decode, raw)
    await _check_model(request, caller, msg.model_id)
    data = [
        Datum(
            tokens=d.model_input.astype(np.int64),
            # Copies: the decoded arrays are read-only views of the request bytes.
            loss_fn_inputs={k: np.array(v.to_numpy()) for k, v in d.loss_fn_inputs.items()},
        )
        for d in msg.data
    ]
    holder = _holder(request)

    def work() -> FutureResult:
        result = holder.get().forward_backward(
            caller, msg.model_id, data, msg.loss_fn, msg.loss_fn_config,
            forward_only=msg.forward_only,
        )  # fmt: skip
        body = encode_forward_backward_output(result.per_datum, result.metrics)
        return FutureResult(body, PROTOBUF)

    kind = "Forward" if msg.forward_only else "ForwardBackward"
    return await _submit(request, caller, msg.model_id, _seq(msg.seq_id), kind, work)


@router.post("/optim_step", response_model=UntypedAPIFuture)
async def optim_step(body: OptimStepRequest, request: Request, caller: Caller) -> UntypedAPIFuture:
    await _check_model(request, caller, body.model_id)
    holder = _holder(request)

    def work() -> OptimStepResponse:
        if body.adam_params is None:
            kind = body.optimizer_params.type if body.optimizer_params else "?"
            raise InvalidInput(
                f"optimizer {kind!r} is not supported by this server", hint="send adam_params"
            )
        adam = AdamSpec(**body.adam_params.model_dump())
        metrics = holder.get().optim_step(caller, body.model_id, adam)
        return OptimStepResponse(metrics=metrics)

    return await _submit(request, caller, body.model_id, _seq(body.seq_id), "OptimStep", work)


# -- saving ----------------------------------------------------------------------------------


def _name(path: str | None, what: str) -> str:
    if not path:
        raise InvalidInput(f"{what} needs a checkpoint name in path", hint="pass a name")
    return path


@router.post("/save_weights", response_model=UntypedAPIFuture)
async def save_weights(
    body: SaveWeightsRequest, request: Request, caller: Caller
) -> UntypedAPIFuture:
    """``save_state``: a training checkpoint (weights + optimizer) at
    ``tinker://<model_id>/weights/<path>``."""
    await _check_model(request, caller, body.model_id)
    holder = _holder(request)

    def work() -> SaveWeightsResponse:
        path = holder.get().save_state(
            caller,
            body.model_id,
            _name(body.path, "save_weights"),
            overwrite=body.overwrite,
            ttl_seconds=body.ttl_seconds,
            user_metadata=body.user_metadata,
        )
        return SaveWeightsResponse(path=path)

    return await _submit(request, caller, body.model_id, _seq(body.seq_id), "SaveWeights", work)


@router.post("/save_weights_for_sampler", response_model=UntypedAPIFuture)
async def save_weights_for_sampler(
    body: SaveWeightsForSamplerRequest, request: Request, caller: Caller
) -> UntypedAPIFuture:
    """Named: a sampler checkpoint. Unnamed (``sampling_session_seq_id``): an ephemeral sampler
    holding a copy of the current weights. 0.38's ``kind`` ("snapshot"/"inflight") is accepted;
    both are served as a snapshot."""
    await _check_model(request, caller, body.model_id)
    holder = _holder(request)
    session_id = body.model_id.split(":train:")[0]

    def work() -> SaveWeightsForSamplerResponseInternal:
        training = holder.get()
        if body.path is not None:
            path = training.save_sampler(
                caller,
                body.model_id,
                body.path,
                ttl_seconds=body.ttl_seconds,
                user_metadata=body.user_metadata,
            )
            return SaveWeightsForSamplerResponseInternal(path=path)
        assert body.sampling_session_seq_id is not None  # the request model checks it
        sampler_id = training.snapshot_sampler(
            caller,
            body.model_id,
            session_id=session_id,
            sampling_session_seq_id=body.sampling_session_seq_id,
        )
        return SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id)

    seq = _seq(body.seq_id)
    return await _submit(request, caller, body.model_id, seq, "SaveWeightsForSampler", work)


@router.post("/save_weights_external", response_model=UntypedAPIFuture)
async def save_weights_external(
    body: SaveWeightsExternalRequest, request: Request, caller: Caller
) -> UntypedAPIFuture:
    """0.38: export the current weights as a PEFT adapter directory (``external_weights``),
    every file encrypted to ``age_encryption_recipients`` (+ ``.age``) when given."""
    await _check_model(request, caller, body.model_id)
    holder = _holder(request)

    def work() -> SaveWeightsExternalResponseInternal:
        path, size = holder.get().save_external(
            caller,
            body.model_id,
            body.path,
            ttl_seconds=body.ttl_seconds,
            recipients=body.age_encryption_recipients,
        )
        return SaveWeightsExternalResponseInternal(path=path, size_bytes=size)

    seq = _seq(body.seq_id)
    return await _submit(request, caller, body.model_id, seq, "SaveWeightsExternal", work)


# -- loading ---------------------------------------------------------------------------------


@router.post("/load_weights", response_model=UntypedAPIFuture)
async def load_weights(
    body: LoadWeightsRequest, request: Request, caller: Caller
) -> UntypedAPIFuture:
    """Into an existing model (``model_id`` + ``seq_id``), or create-via-load (``session_id`` +
    ``model_seq_id``): a new model configured from the checkpoint, as its request 0."""
    holder = _holder(request)
    model_id = body.target_model_id
    if not body.creates_model:
        await _check_model(request, caller, model_id)

        def load() -> LoadWeightsResponse:
            holder.get().load_state(caller, model_id, body.path, optimizer=body.optimizer)
            return LoadWeightsResponse(path=body.path, model_id=model_id)

        return await _submit(request, caller, model_id, _seq(body.seq_id), "LoadWeights", load)

    assert body.session_id is not None and body.model_seq_id is not None
    session_id, model_seq_id = body.session_id, body.model_seq_id
    await anyio.to_thread.run_sync(_open_session, _store(request), caller, session_id)

    def create() -> LoadWeightsResponse:
        if body.optimizer_config is not None:
            _check_optimizer(body.optimizer_config)
        holder.get().create_from_state(
            caller,
            session_id=session_id,
            model_seq_id=model_seq_id,
            tinker_path=body.path,
            optimizer=body.optimizer,
            base_model=body.base_model,
            user_metadata=body.user_metadata,
        )
        return LoadWeightsResponse(path=body.path, model_id=model_id)

    return await _submit_creation(request, caller, model_id, "LoadWeights", create)


# -- sampling --------------------------------------------------------------------------------


@router.post("/create_sampling_session", response_model=CreateSamplingSessionResponse)
def create_sampling_session(
    body: CreateSamplingSessionRequest, request: Request, caller: Caller
) -> CreateSamplingSessionResponse:
    """Synchronous (sync handler, so it runs in a worker thread): the checkpoint is fetched and
    verified here, so a bad path fails now rather than at the first sample."""
    _open_session(_store(request), caller, body.session_id)
    sampler_id = (
        _holder(request)
        .get()
        .create_sampling_session(
            caller,
            session_id=body.session_id,
            sampling_session_seq_id=body.sampling_session_seq_id,
            model_path=body.model_path,
            base_model=body.base_model,
        )
    )
    return CreateSamplingSessionResponse(sampling_session_id=sampler_id)


def _sampling_spec(body: SampleRequest) -> SamplingSpec:
    unsupported = {
        "topk_prompt_logprobs": body.topk_prompt_logprobs,
        "topk_sample_logprobs": body.topk_sample_logprobs or 0,
        "prompt_alt_tokens_k": body.prompt_alt_tokens_k or 0,
        "target_prompt_logprobs": 1 if body.target_prompt_logprobs is not None else 0,
    }
    asked = [name for name, value in unsupported.items() if value]
    if asked:
        raise InvalidInput(
            f"{', '.join(asked)} is not supported by the reference trainer",
            hint="sample without it; prompt_logprobs=True is supported",
        )
    params = body.sampling_params
    stop: tuple[tuple[int, ...] | str, ...] = ()
    if isinstance(params.stop, str):
        stop = (params.stop,)
    elif params.stop:
        # A list of strings is several stop strings; a list of ints, several stop tokens.
        stop = tuple(s if isinstance(s, str) else (s,) for s in params.stop)
    return SamplingSpec(
        max_tokens=DEFAULT_MAX_TOKENS if params.max_tokens is None else params.max_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop=stop,
    )


def _prompt_tokens(body: SampleRequest) -> np.ndarray[Any, np.dtype[np.int64]]:
    tokens: list[int] = []
    for chunk in body.prompt.chunks:
        if chunk.type != "encoded_text":
            raise InvalidInput(
                f"{chunk.type} prompt chunks are not supported by the reference trainer",
                hint="send text only: ModelInput.from_ints(tokens)",
            )
        tokens.extend(chunk.tokens)
    return np.asarray(tokens, dtype=np.int64)


@router.post("/asample", response_model=UntypedAPIFuture)
async def asample(body: SampleRequest, request: Request, caller: Caller) -> UntypedAPIFuture:
    """JSON ``SampleRequest`` in; the future's result is a protobuf ``SampleResponse``. Samples
    are independent of each other, so they are not queued in seq_id order."""
    sampler_id = body.sampling_session_id
    if sampler_id is None:
        raise InvalidInput(
            "sampling_session_id is required",
            hint="create a sampling client first (create_sampling_client)",
        )
    store = _store(request)
    sampler = await anyio.to_thread.run_sync(store.catalog.get_sampler, sampler_id)
    if sampler is None or sampler.owner_id != caller.user_id:
        raise NotFound(f"sampler {sampler_id!r} not found", hint="create a sampling client first")
    holder = _holder(request)

    def work() -> FutureResult:
        spec = _sampling_spec(body)
        want_prompt = bool(body.prompt_logprobs)
        seqs, prompt_lp = holder.get().sample(
            caller, sampler_id, _prompt_tokens(body), spec,
            num_samples=body.num_samples, prompt_logprobs=want_prompt,
        )  # fmt: skip
        out = [SampledSequenceOutput(s.tokens, s.stop_reason, s.logprobs) for s in seqs]
        encoded = encode_sample_response(out, prompt_logprobs=prompt_lp if want_prompt else None)
        return FutureResult(encoded, PROTOBUF)

    record = await _engine(request).submit(caller.user_id, None, None, "Sample", work)
    # 0.38 asserts one id per sample on the promise (it stamps them onto the sequences).
    count = body.num_samples if 1 <= body.num_samples <= MAX_SAMPLES else 0
    ids = [f"{record.request_id}:{i}" for i in range(count)]
    return UntypedAPIFuture(request_id=record.request_id, sample_sequence_ids=ids)
