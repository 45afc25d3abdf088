"""Sampling: greedy, seeded temperature sampling, stops, logprobs, live model vs saved dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from tests.trainer.helpers import TEXTS, encode, make_datum, train
from tinkerstore.errors import InvalidInput
from tinkerstore.trainer import BaseModelRef, LoraSpec, SamplingSpec
from tinkerstore.trainer.models import build_tokenizer, load_base_model
from tinkerstore.trainer.torch_backend import TorchBackend

PROMPT = encode("The checkpoint is")


@pytest.fixture(scope="module")
def trained(
    backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, torch.nn.Module]:
    """A trained model, its sampler directory, and an independent PEFT copy of it."""
    backend.create_model("sampling-src", "tiny-qwen3", LoraSpec(rank=4, seed=11))
    train(backend, "sampling-src", [make_datum(t) for t in TEXTS], steps=4)
    directory = tmp_path_factory.mktemp("sampler")
    backend.save_sampler_weights("sampling-src", directory)
    reference = PeftModel.from_pretrained(load_base_model("tiny-qwen3").model, directory).eval()
    return "sampling-src", directory, reference


def _log_softmax(model: torch.nn.Module, tokens: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.from_numpy(tokens)[None]).logits[0], -1)


def test_greedy_is_argmax_decoding(backend: TorchBackend, trained: tuple) -> None:
    model_id, _, reference = trained
    spec = SamplingSpec(max_tokens=12, temperature=0.0)
    (first,), _ = backend.sample(model_id, PROMPT, spec)
    (second,), _ = backend.sample(model_id, PROMPT, spec)
    np.testing.assert_array_equal(first.tokens, second.tokens)

    tokens = PROMPT.copy()
    eos = build_tokenizer().eos_token_id
    for _ in range(spec.max_tokens):  # no cache: the whole sequence again at every step
        nxt = int(_log_softmax(reference, tokens)[-1].argmax())
        tokens = np.append(tokens, nxt)
        if nxt == eos:
            break
    np.testing.assert_array_equal(first.tokens, tokens[len(PROMPT) :])
    assert first.stop_reason == ("stop" if tokens[-1] == eos else "length")


def test_logprobs_are_the_models_at_the_sampled_tokens(
    backend: TorchBackend, trained: tuple
) -> None:
    model_id, _, reference = trained
    samples, prompt_lp = backend.sample(
        model_id,
        PROMPT,
        SamplingSpec(max_tokens=10, temperature=1.3, seed=4),
        num_samples=3,
        prompt_logprobs=True,
    )
    assert len(samples) == 3
    for sample in samples:
        full = np.concatenate([PROMPT, sample.tokens])
        lp = _log_softmax(reference, full)
        expected = (
            lp[len(PROMPT) - 1 : -1]
            .gather(-1, torch.from_numpy(sample.tokens)[:, None])[:, 0]
            .numpy()
        )
        assert sample.logprobs.dtype == np.float32
        np.testing.assert_allclose(sample.logprobs, expected, rtol=1e-4, atol=1e-4)
    assert prompt_lp is not None and prompt_lp.shape == PROMPT.shape
    assert np.isnan(prompt_lp[0])
    lp = _log_softmax(reference, PROMPT)
    expected = lp[:-1].gather(-1, torch.from_numpy(PROMPT[1:])[:, None])[:, 0].numpy()
    np.testing.assert_allclose(prompt_lp[1:], expected, rtol=1e-4, atol=1e-4)


def test_seeded_sampling_is_reproducible(backend: TorchBackend, trained: tuple) -> None:
    model_id, _, _ = trained

    def draw(seed: int | None) -> list[list[int]]:
        samples, _ = backend.sample(
            model_id, PROMPT, SamplingSpec(max_tokens=16, temperature=1.5, seed=seed), num_samples=4
        )
        return [s.tokens.tolist() for s in samples]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert len({tuple(s) for s in draw(3)}) > 1  # the rows of one call differ too
    assert draw(None) != draw(None)


def test_top_k_one_and_tiny_top_p_are_greedy(backend: TorchBackend, trained: tuple) -> None:
    model_id, _, _ = trained
    (greedy,), _ = backend.sample(model_id, PROMPT, SamplingSpec(max_tokens=8, temperature=0))
    for spec in (
        SamplingSpec(max_tokens=8, temperature=2.0, top_k=1, seed=9),
        SamplingSpec(max_tokens=8, temperature=2.0, top_p=1e-6, seed=9),
    ):
        (sample,), _ = backend.sample(model_id, PROMPT, spec)
        np.testing.assert_array_equal(sample.tokens, greedy.tokens)


def test_max_tokens_and_stop_sequences(backend: TorchBackend, trained: tuple) -> None:
    model_id, _, _ = trained
    tokenizer = build_tokenizer()
    base = SamplingSpec(max_tokens=10, temperature=1.0, seed=21)
    (free,), _ = backend.sample(model_id, PROMPT, base)
    assert free.stop_reason == "length" and len(free.tokens) == 10
    for n in (1, 3):
        (short,), _ = backend.sample(model_id, PROMPT, SamplingSpec(max_tokens=n, seed=21))
        assert short.stop_reason == "length"
        np.testing.assert_array_equal(short.tokens, free.tokens[:n])

    stop_ids = tuple(int(t) for t in free.tokens[3:5])
    (stopped,), _ = backend.sample(
        model_id, PROMPT, SamplingSpec(max_tokens=10, seed=21, stop=(stop_ids,))
    )
    assert stopped.stop_reason == "stop"
    end = next(i + 2 for i in range(9) if tuple(free.tokens[i : i + 2]) == stop_ids)
    np.testing.assert_array_equal(stopped.tokens, free.tokens[:end])

    # A string stop is matched in the decoded text, whatever tokens spell it.
    stop_text = tokenizer.decode(free.tokens[:6])[-3:]
    (by_text,), _ = backend.sample(
        model_id, PROMPT, SamplingSpec(max_tokens=10, seed=21, stop=(stop_text,))
    )
    assert by_text.stop_reason == "stop"
    np.testing.assert_array_equal(by_text.tokens, free.tokens[: len(by_text.tokens)])
    assert stop_text in tokenizer.decode(by_text.tokens)
    assert stop_text not in tokenizer.decode(by_text.tokens[:-1])

    (none,), _ = backend.sample(model_id, PROMPT, SamplingSpec(max_tokens=0))
    assert none.tokens.shape == (0,) and none.stop_reason == "length"


def test_sampler_dir_samples_like_the_live_model(backend: TorchBackend, trained: tuple) -> None:
    model_id, directory, _ = trained
    spec = SamplingSpec(max_tokens=12, temperature=1.0, seed=5)
    live, live_lp = backend.sample(model_id, PROMPT, spec, num_samples=2, prompt_logprobs=True)
    saved, saved_lp = backend.sample(directory, PROMPT, spec, num_samples=2, prompt_logprobs=True)
    for a, b in zip(live, saved, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
        assert a.stop_reason == b.stop_reason
    np.testing.assert_array_equal(live_lp, saved_lp)
    # The base model alone samples something else (the adapter is really applied).
    bare, _ = backend.sample(BaseModelRef("tiny-qwen3"), PROMPT, spec, num_samples=2)
    assert [s.tokens.tolist() for s in bare] != [s.tokens.tolist() for s in live]


def test_invalid_sampling_requests(backend: TorchBackend, trained: tuple) -> None:
    model_id, _, _ = trained
    for spec, num in (
        (SamplingSpec(temperature=-1), 1),
        (SamplingSpec(top_p=0), 1),
        (SamplingSpec(top_k=0), 1),
        (SamplingSpec(max_tokens=-1), 1),
        (SamplingSpec(stop=("",)), 1),
        (SamplingSpec(), 0),
        (SamplingSpec(max_tokens=5000), 1),
    ):
        with pytest.raises(InvalidInput):
            backend.sample(model_id, PROMPT, spec, num_samples=num)
    with pytest.raises(InvalidInput, match="outside"):
        backend.sample(model_id, PROMPT + 4096, SamplingSpec())
