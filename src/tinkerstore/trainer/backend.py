"""The trainer interface: what the service asks of a LoRA training backend.

The service owns ids, records, ordering, commit and paths. A backend only keeps models in memory,
computes, and reads or writes the files of the one directory it is handed. Nothing here knows
about HTTP or the catalog, and no torch type crosses this boundary (arrays are numpy), so a GPU
or remote backend can implement the same :class:`Backend` later.

Call order for one model, as the service drives it (one executor per model, ``seq_id`` order)::

    create_model | create_model_from_state      exactly once, first
    (forward_backward | optim_step | save_state | load_state
     | save_sampler_weights | export_weights | sample | info)*
    unload                                       last; the id may then be reused

Gradients accumulate over ``forward_backward`` calls until ``optim_step`` applies and clears
them, as in Tinker. ``forward_backward(..., forward_only=True)`` never touches gradients.

Directories: ``save_*`` write into an existing, empty directory and never elsewhere; the service
commits it afterwards. ``load_*``, ``weights_info`` and ``sample`` from a directory only read.
A training directory is a PEFT adapter directory plus optimizer state, so every training
checkpoint is also a valid sampler checkpoint (but not the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_LORA_SEED",
    "AdamSpec",
    "Backend",
    "BaseModelRef",
    "CheckpointKind",
    "Datum",
    "FwdBwdResult",
    "LoraSpec",
    "ModelInfo",
    "SampledSequence",
    "SamplingSpec",
    "StopReason",
    "WeightsInfo",
]

# Tinker leaves the LoRA seed optional; a fixed default keeps two runs with the same request
# identical, which is what users of a reference backend expect.
DEFAULT_LORA_SEED = 0

StopReason = Literal["stop", "length"]
CheckpointKind = Literal["training", "sampler"]


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA configuration of a training model (Tinker's ``LoraConfig``)."""

    rank: int = 32
    seed: int | None = None
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True


@dataclass(frozen=True)
class AdamSpec:
    """Tinker's ``AdamParams`` with the SDK's defaults. ``grad_clip_norm=0`` means no clipping."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass(frozen=True)
class Datum:
    """One example: input tokens plus named loss inputs (``target_tokens``, ``weights``, ...)."""

    tokens: npt.NDArray[np.int64]
    loss_fn_inputs: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)


@dataclass(frozen=True)
class FwdBwdResult:
    """One output dict per datum (e.g. ``logprobs``) and ``name:reduction`` metrics."""

    per_datum: list[dict[str, npt.NDArray[np.generic]]]
    metrics: dict[str, float]


@dataclass(frozen=True)
class SamplingSpec:
    """Tinker's ``SamplingParams``.

    ``temperature == 0`` is greedy decoding. ``stop`` holds token-id sequences (matched against
    the end of the generated tokens) and strings (matched against the decoded text, so they work
    whatever tokens the model chose). ``seed=None`` draws a fresh seed.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[tuple[int, ...] | str, ...] = ()


@dataclass(frozen=True)
class BaseModelRef:
    """Sample from a base model itself, without any adapter."""

    base_model: str


@dataclass(frozen=True)
class SampledSequence:
    """One sample: the generated tokens, the model's log-probability of each, and why it ended.

    ``logprobs`` are under the model itself (temperature 1), which is what importance-sampling
    losses compare against.
    """

    tokens: npt.NDArray[np.int64]
    logprobs: npt.NDArray[np.float32]
    stop_reason: StopReason


@dataclass(frozen=True)
class ModelInfo:
    """What ``get_info`` and the training-run records need to know about a live model."""

    model_id: str
    base_model: str
    arch: str
    lora: LoraSpec
    lora_alpha: int
    target_modules: tuple[str, ...]
    vocab_size: int
    trainable_params: int
    optimizer_step: int
    tokenizer_id: str


@dataclass(frozen=True)
class WeightsInfo:
    """What a saved directory says about itself (answers ``weights_info``)."""

    base_model: str
    lora: LoraSpec
    lora_alpha: int
    target_modules: tuple[str, ...]
    kind: CheckpointKind
    has_optimizer: bool
    optimizer_step: int | None


@runtime_checkable
class Backend(Protocol):
    """A LoRA training and sampling backend. Errors come from :mod:`tinkerstore.errors`:

    * unknown base model, bad tensors, unknown loss: ``InvalidInput`` (``InvalidTensor``);
    * unknown ``model_id``: ``ModelNotFound``; an id already live: ``AlreadyExists``;
    * a checkpoint for another base model or LoRA shape, or a sampler directory loaded with
      optimizer: ``IncompatibleCheckpoint``;
    * missing or unreadable files in a handed directory: ``CheckpointCorrupted``.
    """

    def base_models(self) -> list[str]:
        """Names accepted as ``base_model`` besides local model directories."""
        ...

    def create_model(self, model_id: str, base_model: str, lora: LoraSpec) -> ModelInfo:
        """Build a fresh LoRA model on ``base_model`` (a known name or a local HF directory)."""
        ...

    def create_model_from_state(
        self,
        model_id: str,
        directory: Path,
        *,
        with_optimizer: bool,
        base_model: str | None = None,
    ) -> ModelInfo:
        """Create a model configured from a saved directory and load it (create-via-load)."""
        ...

    def forward_backward(
        self,
        model_id: str,
        data: list[Datum],
        loss_fn: str,
        loss_fn_config: dict[str, float] | None = None,
        *,
        forward_only: bool = False,
    ) -> FwdBwdResult:
        """Compute the loss and per-datum outputs; unless ``forward_only``, add to gradients."""
        ...

    def optim_step(self, model_id: str, adam: AdamSpec) -> dict[str, float]:
        """One AdamW step on the accumulated gradients, then clear them."""
        ...

    def save_state(self, model_id: str, directory: Path) -> None:
        """Write LoRA weights, optimizer state and config (a training checkpoint)."""
        ...

    def load_state(self, model_id: str, directory: Path, *, with_optimizer: bool) -> None:
        """Replace the model's weights (and, if asked, optimizer state) from a directory."""
        ...

    def save_sampler_weights(self, model_id: str, directory: Path) -> None:
        """Write a PEFT adapter directory (a sampler checkpoint)."""
        ...

    def export_weights(self, model_id: str, directory: Path) -> None:
        """Write the plain-file export (``save_weights_external``): a PEFT adapter directory."""
        ...

    def weights_info(self, directory: Path) -> WeightsInfo:
        """Read base model and LoRA config from a training or sampler directory."""
        ...

    def sample(
        self,
        weights: str | Path | BaseModelRef,
        prompt: npt.NDArray[np.int64],
        spec: SamplingSpec,
        *,
        num_samples: int = 1,
        prompt_logprobs: bool = False,
    ) -> tuple[list[SampledSequence], npt.NDArray[np.float32] | None]:
        """Sample from a live model (its id), a sampler directory (a ``Path``) or a base model.

        Returns the samples and, if asked, the prompt's log-probabilities: one per prompt token,
        the first ``NaN`` (nothing predicts it).
        """
        ...

    def info(self, model_id: str) -> ModelInfo:
        """Describe a live model."""
        ...

    def unload(self, model_id: str) -> None:
        """Drop a live model and its optimizer state; unknown ids are ignored."""
        ...
