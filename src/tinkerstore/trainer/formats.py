"""On-disk formats of the reference trainer: safetensors and JSON only, never pickle.

A **sampler** (and external export) directory is a standard PEFT LoRA adapter that
``peft.PeftModel.from_pretrained`` loads as is::

    adapter_config.json         r, lora_alpha, target_modules, base_model_name_or_path, peft_type
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in) / lora_B (out, r);
                                B unscaled (PEFT applies lora_alpha / r)

A **training** directory is the same adapter plus what an exact resume needs::

    optimizer.safetensors       exp_avg/<key>, exp_avg_sq/<key> (float32) and step (int64)
    trainer_state.json          format, LoRA spec (with seed), optimizer step, last AdamSpec

So every training checkpoint is also a valid sampler checkpoint. Readers refuse pickled files
(``adapter_model.bin``) and cap JSON sizes before parsing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinkerstore.errors import CheckpointCorrupted, IncompatibleCheckpoint
from tinkerstore.trainer.backend import AdamSpec, LoraSpec, WeightsInfo

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "ATTN_MODULES",
    "LORA_ALPHA",
    "MLP_MODULES",
    "OPTIMIZER_STATE",
    "TRAINER_STATE",
    "TRAINING_FORMAT",
    "UNEMBED_MODULES",
    "adapter_config",
    "read_adapter",
    "read_optimizer",
    "read_trainer_state",
    "read_weights_info",
    "target_modules_for",
    "write_adapter",
    "write_training_extras",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_STATE = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
TRAINING_FORMAT = "tinkerstore-lora-training"
TRAINING_FORMAT_VERSION = 1
# A fixed alpha, independent of the rank, like Tinker's own service: the effective LoRA scale is
# alpha / rank, recorded in adapter_config.json for every consumer.
LORA_ALPHA = 32
MAX_JSON_BYTES = 1024 * 1024

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)


def target_modules_for(lora: LoraSpec) -> tuple[str, ...]:
    """The module names a LoRA spec adapts (Llama/Qwen naming), sorted."""
    names: list[str] = []
    if lora.train_attn:
        names += ATTN_MODULES
    if lora.train_mlp:
        names += MLP_MODULES
    if lora.train_unembed:
        names += UNEMBED_MODULES
    return tuple(sorted(names))


def adapter_config(
    base_model: str, lora: LoraSpec, target_modules: tuple[str, ...]
) -> dict[str, Any]:
    """``adapter_config.json`` as ``peft.LoraConfig.save_pretrained`` would write it."""
    from peft import LoraConfig  # local: peft's import is slow and only needed when saving

    config = LoraConfig(
        r=lora.rank,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(target_modules),
        base_model_name_or_path=base_model,
        bias="none",
        task_type="CAUSAL_LM",
    ).to_dict()  # type: ignore[no-untyped-call]
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # PEFT tags its files with format "pt"; contiguous copies because save_file refuses views.
    save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"}
    )
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_adapter(
    directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write a PEFT adapter into an existing directory."""
    _write_tensors(directory / ADAPTER_WEIGHTS, tensors)
    _write_json(directory / ADAPTER_CONFIG, config)


def write_training_extras(
    directory: Path,
    *,
    base_model: str,
    lora: LoraSpec,
    optimizer: dict[str, torch.Tensor],
    step: int,
    last_adam: AdamSpec | None,
) -> None:
    """Write what a training checkpoint adds to the adapter: optimizer moments and trainer state."""
    _write_tensors(
        directory / OPTIMIZER_STATE, {**optimizer, "step": torch.tensor(step, dtype=torch.int64)}
    )
    _write_json(
        directory / TRAINER_STATE,
        {
            "format": TRAINING_FORMAT,
            "format_version": TRAINING_FORMAT_VERSION,
            "base_model": base_model,
            "lora": asdict(lora),
            "optimizer": {
                "type": "adamw",
                "step": step,
                "last_adam_params": asdict(last_adam) if last_adam else None,
            },
        },
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError as exc:
        raise CheckpointCorrupted(
            f"{path.name} is missing from {path.parent}",
            hint="the checkpoint is incomplete; save it again",
        ) from exc
    if len(raw) > MAX_JSON_BYTES:
        raise CheckpointCorrupted(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointCorrupted(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointCorrupted(f"{path} is not a JSON object")
    return value


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError as exc:
        raise CheckpointCorrupted(
            f"{path.name} is missing from {path.parent}",
            hint="the checkpoint is incomplete; save it again",
        ) from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointCorrupted(f"{path} is not a readable safetensors file: {exc}") from exc


def read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter config and its tensors (PEFT key names)."""
    if not (directory / ADAPTER_WEIGHTS).exists() and any(
        (directory / name).exists() for name in ("adapter_model.bin", "adapter_model.pt")
    ):
        raise IncompatibleCheckpoint(
            f"{directory} holds pickled adapter weights, which are never loaded",
            hint="convert the adapter to adapter_model.safetensors",
        )
    config = _read_json(directory / ADAPTER_CONFIG)
    return config, _read_tensors(directory / ADAPTER_WEIGHTS)


def read_trainer_state(directory: Path) -> dict[str, Any] | None:
    """The trainer state of a training directory; ``None`` for a plain PEFT (sampler) directory."""
    if not (directory / TRAINER_STATE).exists():
        return None
    state = _read_json(directory / TRAINER_STATE)
    if state.get("format") != TRAINING_FORMAT:
        raise IncompatibleCheckpoint(f"{directory / TRAINER_STATE} is not a {TRAINING_FORMAT} file")
    if state.get("format_version") != TRAINING_FORMAT_VERSION:
        raise IncompatibleCheckpoint(
            f"training state format_version {state.get('format_version')!r} is not supported",
            hint=f"this server reads format_version {TRAINING_FORMAT_VERSION}; upgrade it",
        )
    return state


def read_optimizer(directory: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The optimizer moments (``exp_avg/<key>``, ``exp_avg_sq/<key>``) and the step count."""
    tensors = _read_tensors(directory / OPTIMIZER_STATE)
    step = tensors.pop("step", None)
    if step is None or step.dtype != torch.int64 or step.numel() != 1:
        raise CheckpointCorrupted(f"{directory / OPTIMIZER_STATE} has no int64 'step' tensor")
    return tensors, int(step.item())


def _lora_from_config(config: dict[str, Any], state: dict[str, Any] | None) -> LoraSpec:
    targets = config.get("target_modules")
    if isinstance(targets, str) or not isinstance(targets, list):
        raise IncompatibleCheckpoint(
            f"adapter target_modules {targets!r} is not a list of module names",
            hint="only adapters on q/k/v/o_proj, gate/up/down_proj and lm_head are supported",
        )
    rank = config.get("r")
    if not isinstance(rank, int) or rank <= 0:
        raise CheckpointCorrupted(f"adapter_config.json has no positive integer 'r': {rank!r}")
    seed = (state or {}).get("lora", {}).get("seed")
    names = set(targets)
    return LoraSpec(
        rank=rank,
        seed=seed if isinstance(seed, int) else None,
        train_attn=bool(names & set(ATTN_MODULES)),
        train_mlp=bool(names & set(MLP_MODULES)),
        train_unembed=bool(names & set(UNEMBED_MODULES)),
    )


def read_weights_info(directory: Path) -> WeightsInfo:
    """Base model and LoRA configuration of a training or sampler directory."""
    if not directory.is_dir():
        raise CheckpointCorrupted(f"checkpoint directory {directory} does not exist")
    state = read_trainer_state(directory)
    config = _read_json(directory / ADAPTER_CONFIG)
    base = (state or {}).get("base_model") or config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise IncompatibleCheckpoint(
            f"{directory / ADAPTER_CONFIG} does not name its base model",
            hint="set base_model_name_or_path in adapter_config.json",
        )
    alpha = config.get("lora_alpha", LORA_ALPHA)
    has_optimizer = state is not None and (directory / OPTIMIZER_STATE).exists()
    return WeightsInfo(
        base_model=base,
        lora=_lora_from_config(config, state),
        lora_alpha=int(alpha),
        target_modules=tuple(sorted(config["target_modules"])),
        kind="training" if state is not None else "sampler",
        has_optimizer=has_optimizer,
        optimizer_step=int(state["optimizer"]["step"]) if state is not None else None,
    )
