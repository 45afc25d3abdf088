"""AdamW as Tinker's ``AdamParams`` describe it, written out so its state is ours to save.

Hyper-parameters arrive with every step (schedules live on the client), so the only state is the
two moments per parameter and the step count: exactly what a training checkpoint stores. The
update is the classic decoupled-weight-decay Adam (as ``torch.optim.AdamW``)::

    g  <- g * min(1, clip / ||g||)                   global L2 norm, only when clip > 0
    m  <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2 ;  t <- t + 1
    p  <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

The arithmetic order is fixed, so the same inputs give bit-identical outputs: an exact resume
depends on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tinkerstore.errors import CheckpointCorrupted, IncompatibleCheckpoint, InvalidInput
from tinkerstore.trainer.backend import AdamSpec

__all__ = ["AdamState", "adamw_step", "check_adam"]

EXP_AVG = "exp_avg/"
EXP_AVG_SQ = "exp_avg_sq/"


def check_adam(spec: AdamSpec) -> None:
    problems = []
    if not (math.isfinite(spec.learning_rate) and spec.learning_rate >= 0):
        problems.append(f"learning_rate={spec.learning_rate} (needs >= 0)")
    for name in ("beta1", "beta2"):
        value = getattr(spec, name)
        if not 0 <= value < 1:
            problems.append(f"{name}={value} (needs 0 <= {name} < 1)")
    # eps = 0 would turn a parameter with zero gradient history into 0 / 0 = NaN.
    if not (math.isfinite(spec.eps) and spec.eps > 0):
        problems.append(f"eps={spec.eps} (needs > 0)")
    for name in ("weight_decay", "grad_clip_norm"):
        value = getattr(spec, name)
        if not (math.isfinite(value) and value >= 0):
            problems.append(f"{name}={value} (needs >= 0)")
    if problems:
        raise InvalidInput(
            "invalid adam_params: " + "; ".join(problems), hint="fix these AdamParams fields"
        )


@dataclass
class AdamState:
    """Moments keyed like the adapter tensors, the step count and the last hyper-parameters."""

    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    last: AdamSpec | None = None

    @classmethod
    def zeros(cls, params: dict[str, torch.nn.Parameter]) -> AdamState:
        return cls(
            exp_avg={
                k: torch.zeros_like(p, memory_format=torch.contiguous_format)
                for k, p in params.items()
            },
            exp_avg_sq={
                k: torch.zeros_like(p, memory_format=torch.contiguous_format)
                for k, p in params.items()
            },
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The moments under flat safetensors keys (``exp_avg/<key>``, ``exp_avg_sq/<key>``)."""
        return {
            **{EXP_AVG + k: v for k, v in self.exp_avg.items()},
            **{EXP_AVG_SQ + k: v for k, v in self.exp_avg_sq.items()},
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], step: int, params: dict[str, torch.nn.Parameter]
    ) -> AdamState:
        expected = {EXP_AVG + k for k in params} | {EXP_AVG_SQ + k for k in params}
        if set(tensors) != expected:
            missing = sorted(expected - set(tensors))[:3]
            extra = sorted(set(tensors) - expected)[:3]
            raise IncompatibleCheckpoint(
                f"optimizer state does not match the model's LoRA parameters "
                f"(missing {missing}, unexpected {extra})",
                hint="load a checkpoint saved from the same base model and LoRA config",
            )
        state = cls(step=step)
        for key, param in params.items():
            for prefix, target in ((EXP_AVG, state.exp_avg), (EXP_AVG_SQ, state.exp_avg_sq)):
                tensor = tensors[prefix + key]
                if tensor.shape != param.shape or tensor.dtype != param.dtype:
                    raise CheckpointCorrupted(
                        f"optimizer tensor {prefix + key} has shape {list(tensor.shape)} "
                        f"{tensor.dtype}, expected {list(param.shape)} {param.dtype}"
                    )
                target[key] = tensor.clone()
        return state


def adamw_step(
    params: dict[str, torch.nn.Parameter], state: AdamState, spec: AdamSpec
) -> dict[str, float]:
    """Apply one step with the accumulated gradients (none counts as zero), then clear them."""
    check_adam(spec)
    keys = sorted(params)  # fixed order: the norm's float sum must not depend on dict order
    grads: dict[str, torch.Tensor] = {}
    for k in keys:
        grad = params[k].grad
        grads[k] = grad if grad is not None else torch.zeros_like(params[k])
    norm = (
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grads[k]) for k in keys]))
        if keys
        else torch.tensor(0.0)
    )
    grad_norm = float(norm)
    scale = 1.0
    if spec.grad_clip_norm > 0 and grad_norm > spec.grad_clip_norm:
        scale = spec.grad_clip_norm / (grad_norm + 1e-6)
    state.step += 1
    bias1 = 1 - spec.beta1**state.step
    bias2_sqrt = math.sqrt(1 - spec.beta2**state.step)
    with torch.no_grad():
        for k in keys:
            p, g = params[k], grads[k]
            if scale != 1.0:
                g = g * scale
            m, v = state.exp_avg[k], state.exp_avg_sq[k]
            m.mul_(spec.beta1).add_(g, alpha=1 - spec.beta1)
            v.mul_(spec.beta2).addcmul_(g, g, value=1 - spec.beta2)
            if spec.weight_decay:
                p.mul_(1 - spec.learning_rate * spec.weight_decay)
            denom = (v.sqrt() / bias2_sqrt).add_(spec.eps)
            p.addcdiv_(m, denom, value=-spec.learning_rate / bias1)
            p.grad = None
    state.last = spec
    return {"grad_norm:mean": grad_norm, "learning_rate:mean": spec.learning_rate}
