"""The reference backend: LoRA on PyTorch (CPU, float32) with transformers and peft.

Each live model is its own copy of the base model with PEFT LoRA layers; only the LoRA tensors
train. Determinism is a feature here: base weights come from a fixed seed per config
(:mod:`.models`), LoRA init from ``lora.seed``, training runs in float32 with a fixed operation
order, and a training checkpoint stores everything the next step reads, so loading it with its
optimizer continues bit for bit where the saved model would have.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tinkerstore.errors import AlreadyExists, IncompatibleCheckpoint, InvalidInput, ModelNotFound
from tinkerstore.trainer import formats
from tinkerstore.trainer.backend import (
    DEFAULT_LORA_SEED,
    AdamSpec,
    BaseModelRef,
    Datum,
    FwdBwdResult,
    LoraSpec,
    ModelInfo,
    SampledSequence,
    SamplingSpec,
    WeightsInfo,
)
from tinkerstore.trainer.losses import compute_loss
from tinkerstore.trainer.models import BaseModel, available_base_models, load_base_model
from tinkerstore.trainer.optim import AdamState, adamw_step
from tinkerstore.trainer.sampling import sample_sequences

__all__ = ["LoraModel", "TorchBackend", "build_lora_model"]

MAX_RANK = 256
SAMPLER_CACHE_SIZE = 4


@dataclass
class LoraModel:
    """A base model wrapped with LoRA, its trainable tensors under PEFT file keys, its optimizer."""

    base: BaseModel
    peft: PeftModel
    lora: LoraSpec
    target_modules: tuple[str, ...]
    params: dict[str, torch.nn.Parameter]
    adam: AdamState = field(default_factory=AdamState)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def load_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != set(self.params):
            missing = sorted(set(self.params) - set(tensors))[:3]
            extra = sorted(set(tensors) - set(self.params))[:3]
            raise IncompatibleCheckpoint(
                f"checkpoint LoRA tensors do not match this model (missing {missing}, "
                f"unexpected {extra})",
                hint="use a checkpoint with the same base model and LoRA config",
            )
        with torch.no_grad():
            for key, param in self.params.items():
                tensor = tensors[key]
                if tensor.shape != param.shape:
                    raise IncompatibleCheckpoint(
                        f"checkpoint tensor {key} has shape {list(tensor.shape)}, this model "
                        f"expects {list(param.shape)}",
                        hint="use a checkpoint with the same base model and LoRA rank",
                    )
                param.copy_(tensor)
                param.grad = None


def _file_key(param_name: str) -> str:
    """PEFT's file key for a parameter: the adapter name ("default") is dropped on save."""
    return param_name.replace(".default.", ".")


def build_lora_model(base_model: str, lora: LoraSpec) -> LoraModel:
    """A fresh LoRA model: base weights from :mod:`.models`, LoRA init from ``lora.seed``."""
    if not 1 <= lora.rank <= MAX_RANK:
        raise InvalidInput(f"LoRA rank {lora.rank} is out of range", hint=f"use 1..{MAX_RANK}")
    targets = formats.target_modules_for(lora)
    if not targets:
        raise InvalidInput(
            "the LoRA config trains nothing",
            hint="set at least one of train_attn, train_mlp, train_unembed",
        )
    base = load_base_model(base_model)
    present = {name.rsplit(".", 1)[-1] for name, _ in base.model.named_modules()}
    if not set(targets) <= present:
        raise InvalidInput(
            f"base model {base_model!r} has no modules named {sorted(set(targets) - present)}",
            hint="the reference trainer supports Llama/Qwen-style module names",
        )
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=formats.LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # PEFT draws lora_A from the global RNG: fork it so the seed is ours alone.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; not actionable here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        torch.manual_seed(DEFAULT_LORA_SEED if lora.seed is None else lora.seed)
        peft_model = get_peft_model(base.model, config)
    peft_model.eval()  # no dropout anywhere; training is just autograd + our optimizer
    params = {_file_key(name): p for name, p in peft_model.named_parameters() if p.requires_grad}
    model = LoraModel(base=base, peft=peft_model, lora=lora, target_modules=targets, params=params)
    model.adam = AdamState.zeros(params)
    return model


class TorchBackend:
    """:class:`~tinkerstore.trainer.backend.Backend` on CPU PyTorch. Thread-safe per model."""

    def __init__(self, *, num_threads: int = 1, deterministic: bool = True) -> None:
        # Process-wide settings: this backend is meant to own the process's torch. One thread by
        # default: tiny models gain nothing from more, and on a busy 2-core machine OpenMP's
        # spin-waiting made 2 threads about 10x slower (measured). Raise it for real models.
        torch.set_num_threads(num_threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._models: dict[str, LoraModel] = {}
        self._samplers: OrderedDict[tuple[str, int, int], LoraModel] = OrderedDict()
        self._bases: OrderedDict[str, BaseModel] = OrderedDict()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def base_models(self) -> list[str]:
        return available_base_models()

    def _get(self, model_id: str) -> LoraModel:
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(
                f"model {model_id!r} is not loaded",
                hint="create a training client, or one from the last saved state",
            )
        return model

    def _register(self, model_id: str, model: LoraModel) -> None:
        with self._lock:
            if model_id in self._models:
                raise AlreadyExists(
                    f"model {model_id!r} already exists", hint="unload it first or use a new id"
                )
            self._models[model_id] = model

    def create_model(self, model_id: str, base_model: str, lora: LoraSpec) -> ModelInfo:
        with self._lock:
            if model_id in self._models:
                raise AlreadyExists(
                    f"model {model_id!r} already exists", hint="unload it first or use a new id"
                )
        model = build_lora_model(base_model, lora)
        self._register(model_id, model)
        return self._info(model_id, model)

    def create_model_from_state(
        self,
        model_id: str,
        directory: Path,
        *,
        with_optimizer: bool,
        base_model: str | None = None,
    ) -> ModelInfo:
        info = self.weights_info(directory)
        if base_model is not None and base_model != info.base_model:
            raise IncompatibleCheckpoint(
                f"checkpoint was trained on {info.base_model!r}, not {base_model!r}",
                hint="omit base_model or pass the checkpoint's own base model",
            )
        self._check_optimizer_present(info, directory, with_optimizer)
        model = build_lora_model(info.base_model, info.lora)
        self._load_into(model, directory, with_optimizer=with_optimizer)
        self._register(model_id, model)
        return self._info(model_id, model)

    def unload(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)

    def info(self, model_id: str) -> ModelInfo:
        return self._info(model_id, self._get(model_id))

    def _info(self, model_id: str, model: LoraModel) -> ModelInfo:
        return ModelInfo(
            model_id=model_id,
            base_model=model.base.name,
            arch=model.base.arch,
            lora=model.lora,
            lora_alpha=formats.LORA_ALPHA,
            target_modules=model.target_modules,
            vocab_size=int(model.base.model.config.vocab_size),
            trainable_params=sum(p.numel() for p in model.params.values()),
            optimizer_step=model.adam.step,
            tokenizer_id=model.base.name,
        )

    # -- training ----------------------------------------------------------------------------

    def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: dict[str, float] | None = None,
        *,
        forward_only: bool = False,
    ) -> FwdBwdResult:
        model = self._get(model_id)
        vocab = int(model.base.model.config.vocab_size)
        with model.lock, torch.set_grad_enabled(not forward_only):
            loss, logprobs = compute_loss(model.peft, data, loss_fn, loss_fn_config or {}, vocab)
            if not forward_only:
                torch.autograd.backward(loss)  # .grad accumulates until optim_step, as in Tinker
        return FwdBwdResult(
            per_datum=[{"logprobs": lp.detach().numpy().astype(np.float32)} for lp in logprobs],
            metrics={"loss:sum": float(loss.detach())},
        )

    def optim_step(self, model_id: str, adam: AdamSpec) -> dict[str, float]:
        model = self._get(model_id)
        with model.lock:
            return adamw_step(model.params, model.adam, adam)

    # -- files -------------------------------------------------------------------------------

    def save_state(self, model_id: str, directory: Path) -> None:
        model = self._get(model_id)
        with model.lock:
            self._write_adapter(model, directory)
            formats.write_training_extras(
                directory,
                base_model=model.base.name,
                lora=model.lora,
                optimizer=model.adam.tensors(),
                step=model.adam.step,
                last_adam=model.adam.last,
            )

    def save_sampler_weights(self, model_id: str, directory: Path) -> None:
        model = self._get(model_id)
        with model.lock:
            self._write_adapter(model, directory)

    def export_weights(self, model_id: str, directory: Path) -> None:
        # The external export is the same standard PEFT adapter the cookbook and push-hf expect.
        self.save_sampler_weights(model_id, directory)

    def _write_adapter(self, model: LoraModel, directory: Path) -> None:
        if not directory.is_dir() or any(directory.iterdir()):
            raise InvalidInput(f"{directory} must be an existing, empty directory")
        config = formats.adapter_config(model.base.name, model.lora, model.target_modules)
        formats.write_adapter(directory, config, model.adapter_tensors())

    def weights_info(self, directory: Path) -> WeightsInfo:
        return formats.read_weights_info(directory)

    def load_state(self, model_id: str, directory: Path, *, with_optimizer: bool) -> None:
        model = self._get(model_id)
        info = self.weights_info(directory)
        self._check_optimizer_present(info, directory, with_optimizer)
        if info.base_model != model.base.name:
            raise IncompatibleCheckpoint(
                f"checkpoint was trained on {info.base_model!r}, this model is on "
                f"{model.base.name!r}",
                hint="create a training client from the checkpoint instead",
            )
        if info.lora.rank != model.lora.rank or info.target_modules != model.target_modules:
            raise IncompatibleCheckpoint(
                f"checkpoint has LoRA rank {info.lora.rank} on {list(info.target_modules)}, "
                f"this model has rank {model.lora.rank} on {list(model.target_modules)}",
                hint="create a training client from the checkpoint instead",
            )
        with model.lock:
            self._load_into(model, directory, with_optimizer=with_optimizer)

    @staticmethod
    def _check_optimizer_present(info: WeightsInfo, directory: Path, with_optimizer: bool) -> None:
        if with_optimizer and not info.has_optimizer:
            raise IncompatibleCheckpoint(
                f"{directory.name} is a {info.kind} checkpoint with weights only, "
                "so there is no optimizer state to load",
                hint="load it without the optimizer, or use a training checkpoint (save_state)",
            )

    @staticmethod
    def _load_into(model: LoraModel, directory: Path, *, with_optimizer: bool) -> None:
        _, tensors = formats.read_adapter(directory)
        # Read everything before changing anything: a bad file leaves the model as it was.
        adam = AdamState.zeros(model.params)
        if with_optimizer:
            moments, step = formats.read_optimizer(directory)
            adam = AdamState.from_tensors(moments, step, model.params)
            state = formats.read_trainer_state(directory) or {}
            last = (state.get("optimizer") or {}).get("last_adam_params")
            adam.last = AdamSpec(**last) if isinstance(last, dict) else None
        model.load_adapter(tensors)
        model.adam = adam

    # -- sampling ----------------------------------------------------------------------------

    def _sampler_for(self, directory: Path) -> LoraModel:
        """A LoRA model for a sampler directory; kept in a small LRU (saved dirs never change)."""
        weights = directory.resolve() / formats.ADAPTER_WEIGHTS
        stat = weights.stat() if weights.exists() else None
        key = (str(weights), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        with self._lock:
            if key in self._samplers:
                self._samplers.move_to_end(key)
                return self._samplers[key]
        info = self.weights_info(directory)
        model = build_lora_model(info.base_model, info.lora)
        self._load_into(model, directory, with_optimizer=False)
        with self._lock:
            self._samplers[key] = model
            while len(self._samplers) > SAMPLER_CACHE_SIZE:
                self._samplers.popitem(last=False)
        return model

    def _base_for(self, base_model: str) -> BaseModel:
        """A bare base model to sample from, kept in a small LRU (it is never trained)."""
        with self._lock:
            if base_model in self._bases:
                self._bases.move_to_end(base_model)
                return self._bases[base_model]
        base = load_base_model(base_model)
        with self._lock:
            self._bases[base_model] = base
            while len(self._bases) > SAMPLER_CACHE_SIZE:
                self._bases.popitem(last=False)
        return base

    def sample(
        self,
        weights: str | Path | BaseModelRef,
        prompt: npt.NDArray[np.int64],
        spec: SamplingSpec,
        *,
        num_samples: int = 1,
        prompt_logprobs: bool = False,
    ) -> tuple[list[SampledSequence], npt.NDArray[np.float32] | None]:
        if isinstance(weights, BaseModelRef):
            base = self._base_for(weights.base_model)
            return sample_sequences(
                base.model,
                base.model.config,
                base.tokenizer,
                np.asarray(prompt),
                spec,
                num_samples,
                prompt_logprobs,
            )
        model = self._sampler_for(weights) if isinstance(weights, Path) else self._get(weights)
        with model.lock:
            return sample_sequences(
                model.peft,
                model.base.model.config,
                model.base.tokenizer,
                np.asarray(prompt),
                spec,
                num_samples,
                prompt_logprobs,
            )
