"""Autoregressive sampling with a KV cache: greedy, temperature, top-k and top-p, seeded.

All ``num_samples`` rows decode together in one batch and keep stepping until every row has
stopped, so a row's tokens never depend on when its neighbours finish. Randomness comes only from
a ``torch.Generator`` seeded from the spec: the same seed, weights and prompt give the same
samples. A row stops at the model's EOS token (as vLLM does), at a stop sequence, or at
``max_tokens``; the stopping tokens are part of the returned sequence.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from tinkerstore.errors import InvalidInput
from tinkerstore.trainer.backend import SampledSequence, SamplingSpec, StopReason

__all__ = ["MAX_SAMPLES", "check_spec", "sample_sequences"]

MAX_SAMPLES = 64
# transformers 5 renamed the KV-cache argument and output field from past_key_values to cache.
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def check_spec(spec: SamplingSpec, num_samples: int) -> None:
    problems = []
    if spec.max_tokens < 0:
        problems.append(f"max_tokens={spec.max_tokens} (needs >= 0)")
    if not (math.isfinite(spec.temperature) and spec.temperature >= 0):
        problems.append(f"temperature={spec.temperature} (needs >= 0; 0 is greedy)")
    if spec.top_k == 0 or spec.top_k < -1:
        problems.append(f"top_k={spec.top_k} (needs -1 for no limit, or >= 1)")
    if not 0 < spec.top_p <= 1:
        problems.append(f"top_p={spec.top_p} (needs 0 < top_p <= 1)")
    if not 1 <= num_samples <= MAX_SAMPLES:
        problems.append(f"num_samples={num_samples} (needs 1..{MAX_SAMPLES})")
    if any(isinstance(s, tuple) and not s for s in spec.stop) or any(s == "" for s in spec.stop):
        problems.append("an empty stop sequence")
    if problems:
        raise InvalidInput("invalid sampling parameters: " + "; ".join(problems))


def _choose(logits: torch.Tensor, spec: SamplingSpec, generator: torch.Generator) -> torch.Tensor:
    """Next token per row from (rows, vocab) logits."""
    if spec.temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / spec.temperature
    if spec.top_k > 0 and spec.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, spec.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if spec.top_p < 1:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p (the first one stays).
        drop = probs.cumsum(dim=-1) - probs > spec.top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        scaled = torch.full_like(scaled, -math.inf).scatter(-1, order, sorted_logits)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _stopped(
    tokens: list[int],
    spec: SamplingSpec,
    eos: int | None,
    tokenizer: PreTrainedTokenizerBase | None,
) -> bool:
    if eos is not None and tokens[-1] == eos:
        return True
    text: str | None = None
    for stop in spec.stop:
        if isinstance(stop, tuple):
            if tuple(tokens[-len(stop) :]) == stop:
                return True
        else:
            if tokenizer is None:
                raise InvalidInput(
                    "string stop sequences need a tokenizer, and this base model has none",
                    hint="pass stop sequences as token ids",
                )
            if text is None:
                text = str(tokenizer.decode(tokens, skip_special_tokens=False))
            if stop in text:
                return True
    return False


def sample_sequences(
    model: torch.nn.Module,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase | None,
    prompt: npt.NDArray[np.int64],
    spec: SamplingSpec,
    num_samples: int,
    prompt_logprobs: bool,
) -> tuple[list[SampledSequence], npt.NDArray[np.float32] | None]:
    check_spec(spec, num_samples)
    vocab = int(config.vocab_size)
    if prompt.ndim != 1 or prompt.shape[0] == 0:
        raise InvalidInput("the prompt must be a non-empty list of tokens")
    if prompt.min() < 0 or prompt.max() >= vocab:
        raise InvalidInput(
            f"prompt has token ids outside [0, {vocab})", hint="use the base model's tokenizer"
        )
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if limit and prompt.shape[0] + spec.max_tokens > limit:
        raise InvalidInput(
            f"prompt ({prompt.shape[0]} tokens) + max_tokens ({spec.max_tokens}) exceeds the "
            f"model's context of {limit} tokens",
            hint="shorten the prompt or lower max_tokens",
        )
    eos_id = config.eos_token_id
    eos = eos_id if isinstance(eos_id, int) else None
    seed = spec.seed if spec.seed is not None else secrets.randbits(63)
    generator = torch.Generator().manual_seed(seed)

    ids = torch.from_numpy(prompt.astype(np.int64)).unsqueeze(0).repeat(num_samples, 1)
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    row_logprobs: list[list[float]] = [[] for _ in range(num_samples)]
    reasons: list[StopReason] = ["length"] * num_samples
    done = [False] * num_samples
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = getattr(out, _CACHE)
        logits = out.logits[:, -1].float()
        prompt_lp: npt.NDArray[np.float32] | None = None
        if prompt_logprobs:
            lp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
            picked = lp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
            prompt_lp = np.concatenate([[np.nan], picked.numpy()]).astype(np.float32)
        for step in range(spec.max_tokens):
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = _choose(logits, spec, generator)
            for r in range(num_samples):
                if done[r]:
                    continue
                token = int(chosen[r])
                rows[r].append(token)
                row_logprobs[r].append(float(logprobs[r, token]))
                if _stopped(rows[r], spec, eos, tokenizer):
                    done[r], reasons[r] = True, "stop"
            if all(done) or step == spec.max_tokens - 1:
                break
            out = model(input_ids=chosen.unsqueeze(-1), use_cache=True, **{_CACHE: cache})
            cache = getattr(out, _CACHE)
            logits = out.logits[:, -1].float()
    samples = [
        SampledSequence(
            tokens=np.asarray(rows[r], dtype=np.int64),
            logprobs=np.asarray(row_logprobs[r], dtype=np.float32),
            stop_reason=reasons[r],
        )
        for r in range(num_samples)
    ]
    return samples, prompt_lp
