"""The LoRA trainer behind the service: an interface (:mod:`.backend`) and a reference backend.

Importing this package stays light (numpy only): the service and type checkers see the interface
without pulling in torch. :func:`reference_backend` imports the PyTorch implementation on demand
(``pip install tinkerstore[trainer]``).
"""

from __future__ import annotations

from tinkerstore.trainer.backend import (
    DEFAULT_LORA_SEED,
    AdamSpec,
    Backend,
    BaseModelRef,
    CheckpointKind,
    Datum,
    FwdBwdResult,
    LoraSpec,
    ModelInfo,
    SampledSequence,
    SamplingSpec,
    StopReason,
    WeightsInfo,
)

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
    "reference_backend",
]


def reference_backend(*, num_threads: int = 1) -> Backend:
    """The PyTorch CPU backend (imports torch, transformers and peft: a few seconds)."""
    from tinkerstore.trainer.torch_backend import TorchBackend

    return TorchBackend(num_threads=num_threads)
