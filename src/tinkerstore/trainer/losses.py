"""Forward pass and Tinker's built-in losses, on a batch of :class:`Datum`.

Every loss is a **sum** over tokens and datums (never a mean), as in Tinker: callers normalise
through the weights or advantages they send. Each returns the per-datum ``logprobs`` of the target
tokens and the metric ``loss:sum`` (the SDK requires ``name:reduction`` metric keys).

* ``cross_entropy``: ``loss = -sum(weights * logprob(target))``;
* ``importance_sampling``: ``loss = -sum(exp(logprob - sampling_logprobs) * advantages)``;
* ``ppo``: the clipped surrogate, ratio clipped to ``[clip_low_threshold, clip_high_threshold]``
  (``loss_fn_config``, default 0.8 and 1.2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tinkerstore.errors import InvalidInput, InvalidTensor
from tinkerstore.trainer.backend import Datum

__all__ = ["LOSS_FUNCTIONS", "compute_loss", "target_logprobs"]

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor], dict[str, float]], torch.Tensor]


def _input(datum: Datum, index: int, name: str, dtype: torch.dtype) -> torch.Tensor:
    value = datum.loss_fn_inputs.get(name)
    if value is None:
        raise InvalidInput(
            f"datum {index} has no loss_fn_inputs[{name!r}]",
            hint=f"send {name} with one value per input token",
        )
    array = np.asarray(value)
    if array.shape != datum.tokens.shape:
        raise InvalidTensor(
            f"datum {index}: loss_fn_inputs[{name!r}] has shape {list(array.shape)}, "
            f"but model_input has {datum.tokens.shape[0]} tokens",
            hint="send one value per input token (targets are the inputs shifted by one)",
        )
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def target_logprobs(
    model: torch.nn.Module, data: list[Datum], vocab_size: int
) -> list[torch.Tensor]:
    """Log-probability of each datum's ``target_tokens`` (one per input token), in one batch.

    Right padding keeps every real token's position (and so its output) as it would be alone:
    the causal mask never lets a real token see the padding after it.
    """
    if not data:
        raise InvalidInput("forward_backward got no data", hint="send at least one datum")
    targets: list[torch.Tensor] = []
    for i, datum in enumerate(data):
        if datum.tokens.ndim != 1 or datum.tokens.shape[0] == 0:
            raise InvalidTensor(f"datum {i}: model_input must be a non-empty list of tokens")
        target = _input(datum, i, "target_tokens", torch.int64)
        for name, tokens in (("model_input", datum.tokens), ("target_tokens", target.numpy())):
            if tokens.min() < 0 or tokens.max() >= vocab_size:
                raise InvalidTensor(
                    f"datum {i}: {name} has token ids outside [0, {vocab_size})",
                    hint="use the base model's tokenizer",
                )
        targets.append(target)
    length = max(d.tokens.shape[0] for d in data)
    input_ids = torch.zeros((len(data), length), dtype=torch.int64)
    mask = torch.zeros((len(data), length), dtype=torch.int64)
    for i, datum in enumerate(data):
        n = datum.tokens.shape[0]
        input_ids[i, :n] = torch.from_numpy(datum.tokens.astype(np.int64))
        mask[i, :n] = 1
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [
        logprobs[i, : t.shape[0]].gather(-1, t.unsqueeze(-1)).squeeze(-1)
        for i, t in enumerate(targets)
    ]


def _cross_entropy(
    lp: torch.Tensor, inputs: dict[str, torch.Tensor], _: dict[str, float]
) -> torch.Tensor:
    return -(inputs["weights"] * lp).sum()


def _ratio(lp: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.exp(lp - inputs["logprobs"])


def _importance_sampling(
    lp: torch.Tensor, inputs: dict[str, torch.Tensor], _: dict[str, float]
) -> torch.Tensor:
    return -(_ratio(lp, inputs) * inputs["advantages"]).sum()


def _ppo(
    lp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float]
) -> torch.Tensor:
    low = float(config.get("clip_low_threshold", 0.8))
    high = float(config.get("clip_high_threshold", 1.2))
    if not 0 < low <= high:
        raise InvalidInput(f"ppo clip thresholds must satisfy 0 < low <= high, got {low}, {high}")
    ratio = _ratio(lp, inputs)
    adv = inputs["advantages"]
    return -torch.minimum(ratio * adv, ratio.clamp(low, high) * adv).sum()


# loss name -> (function, the float32 loss_fn_inputs it reads besides target_tokens)
LOSS_FUNCTIONS: dict[str, tuple[LossFn, tuple[str, ...]]] = {
    "cross_entropy": (_cross_entropy, ("weights",)),
    "importance_sampling": (_importance_sampling, ("logprobs", "advantages")),
    "ppo": (_ppo, ("logprobs", "advantages")),
}


def compute_loss(
    model: torch.nn.Module,
    data: list[Datum],
    loss_fn: str,
    loss_fn_config: dict[str, float],
    vocab_size: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The summed loss over all datums (a graph to backpropagate) and each datum's logprobs."""
    if loss_fn not in LOSS_FUNCTIONS:
        raise InvalidInput(
            f"loss function {loss_fn!r} is not supported by the reference trainer",
            hint=f"use one of {', '.join(sorted(LOSS_FUNCTIONS))}",
        )
    fn, names = LOSS_FUNCTIONS[loss_fn]
    inputs = [{n: _input(d, i, n, torch.float32) for n in names} for i, d in enumerate(data)]
    logprobs = target_logprobs(model, data, vocab_size)
    losses = [fn(lp, inp, loss_fn_config) for lp, inp in zip(logprobs, inputs, strict=True)]
    return torch.stack(losses).sum(), logprobs
