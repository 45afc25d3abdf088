"""Helpers for the trainer tests: tiny data built like the Tinker cookbook builds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tinkerstore.trainer import AdamSpec, Backend, Datum
from tinkerstore.trainer.models import build_tokenizer

TEXTS = [
    "The checkpoint is saved every few steps.",
    "A sampler reads the latest weights to answer prompts.",
    "Adam keeps two moments for every parameter.",
    "Hello world! The quick brown fox jumps over the lazy dog.",
]


def encode(text: str) -> np.ndarray:
    return np.asarray(build_tokenizer().encode(text), dtype=np.int64)


def make_datum(text: str, weight: float = 1.0) -> Datum:
    """A next-token datum: inputs, targets shifted by one, one weight per target."""
    tokens = encode(text)
    n = tokens.shape[0] - 1
    return Datum(
        tokens=tokens[:-1],
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": np.full(n, weight, dtype=np.float32),
        },
    )


def train(
    backend: Backend, model_id: str, data: list[Datum], steps: int, start: int = 0
) -> list[float]:
    """``steps`` optimizer steps, the learning rate changing per step; returns the losses."""
    losses = []
    for i in range(start, start + steps):
        result = backend.forward_backward(model_id, data, "cross_entropy")
        losses.append(result.metrics["loss:sum"])
        backend.optim_step(model_id, AdamSpec(learning_rate=1e-2 / (1 + i), weight_decay=0.01))
    return losses


def adapter_tensors(backend: Backend, model_id: str, directory: Path) -> dict[str, torch.Tensor]:
    """The model's LoRA tensors, through the public interface (a sampler save)."""
    directory.mkdir(parents=True)
    backend.save_sampler_weights(model_id, directory)
    return load_file(directory / "adapter_model.safetensors")


def saved_state(backend: Backend, model_id: str, directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a training checkpoint: LoRA weights and optimizer moments and step."""
    directory.mkdir(parents=True)
    backend.save_state(model_id, directory)
    return {
        **load_file(directory / "adapter_model.safetensors"),
        **load_file(directory / "optimizer.safetensors"),
    }


def assert_all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"tensors differ: {unequal[:5]}"


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
