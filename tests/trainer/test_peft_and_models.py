"""Sampler/export directories are standard PEFT adapters; tiny base models are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.helpers import TEXTS, encode, make_datum, train
from tinkerstore.errors import InvalidInput
from tinkerstore.trainer import Datum, LoraSpec
from tinkerstore.trainer.models import (
    _pristine_tiny,
    build_tokenizer,
    load_base_model,
    write_model_dir,
)
from tinkerstore.trainer.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def trained(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny-qwen3 model trained a few steps (so every B != 0) and its sampler directory."""
    batch = [make_datum(t) for t in TEXTS]
    backend.create_model("peft-src", "tiny-qwen3", LoraSpec(rank=4, seed=5))
    train(backend, "peft-src", batch, steps=3)
    directory = tmp_path_factory.mktemp("sampler")
    backend.save_sampler_weights("peft-src", directory)
    return "peft-src", directory


def _peft_logprobs(model: torch.nn.Module, datum: Datum) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(datum.tokens)[None]).logits[0]
    targets = torch.from_numpy(datum.loss_fn_inputs["target_tokens"])
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0].numpy()


def test_sampler_dir_is_a_peft_adapter(
    backend: TorchBackend, trained: tuple[str, Path], tmp_path: Path
) -> None:
    model_id, directory = trained
    assert sorted(p.name for p in directory.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (4, 32)
    assert config["base_model_name_or_path"] == "tiny-qwen3"
    assert sorted(config["target_modules"]) == sorted(backend.info(model_id).target_modules)
    tensors = load_file(directory / "adapter_model.safetensors")
    assert all(
        k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
        for k in tensors
    )
    assert all(float(v.abs().max()) > 0 for k, v in tensors.items() if ".lora_B." in k)

    # Load it the way any consumer would: a base model directory on disk + PeftModel.
    base_dir = write_model_dir("tiny-qwen3", tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager"
    )
    peft_model = PeftModel.from_pretrained(base, directory).eval()
    reloaded = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    assert reloaded.keys() == tensors.keys()
    assert all(torch.equal(reloaded[k], tensors[k]) for k in tensors)

    data = [make_datum(t) for t in TEXTS]
    ours = backend.forward_backward(model_id, data, "cross_entropy", forward_only=True)
    for datum, out in zip(data, ours.per_datum, strict=True):
        np.testing.assert_allclose(
            _peft_logprobs(peft_model, datum), out["logprobs"], rtol=1e-5, atol=1e-5
        )
    # ...and the adapter matters: the bare base model disagrees.
    bare = load_base_model("tiny-qwen3").model
    assert not np.allclose(_peft_logprobs(bare, data[0]), ours.per_datum[0]["logprobs"], atol=1e-3)


def test_export_equals_sampler_weights(
    backend: TorchBackend, trained: tuple[str, Path], tmp_path: Path
) -> None:
    model_id, directory = trained
    backend.export_weights(model_id, tmp_path)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / name).read_bytes() == (directory / name).read_bytes()


def test_model_dir_by_path_matches_the_named_model(backend: TorchBackend, tmp_path: Path) -> None:
    model_dir = write_model_dir("tiny-llama", tmp_path / "tiny-llama")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "Hello world! Unseen words still round-trip: zebra 42."
    assert tokenizer.encode(text) == build_tokenizer().encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text

    datum = make_datum(TEXTS[0])
    out = {}
    for name, base in (("by-name", "tiny-llama"), ("by-path", str(model_dir))):
        info = backend.create_model(name, base, LoraSpec(rank=2, seed=1))
        assert info.arch == "llama" and info.vocab_size == 1024
        out[name] = backend.forward_backward(
            name, [datum], "cross_entropy", forward_only=True
        ).per_datum[0]["logprobs"]
        backend.unload(name)
    np.testing.assert_array_equal(out["by-name"], out["by-path"])


def test_tiny_models_are_built_deterministically() -> None:
    torch.manual_seed(12345)  # the caller's RNG state must not matter
    fresh = _pristine_tiny.__wrapped__("tiny-qwen3").state_dict()
    torch.manual_seed(54321)
    again = _pristine_tiny.__wrapped__("tiny-qwen3").state_dict()
    cached = load_base_model("tiny-qwen3").model.state_dict()
    assert all(torch.equal(fresh[k], again[k]) and torch.equal(fresh[k], cached[k]) for k in fresh)
    qwen, llama = load_base_model("tiny-qwen3"), load_base_model("tiny-llama")
    assert (qwen.arch, llama.arch) == ("qwen3", "llama")
    assert qwen.model.config.eos_token_id == build_tokenizer().eos_token_id


def test_tokenizer_is_byte_level_and_covers_the_vocab() -> None:
    tokenizer = build_tokenizer()
    assert len(tokenizer) == 1024
    for text in ("plain ascii", "ünïcödé ✓ 日本", "  spaces\n\tand tabs"):
        assert tokenizer.decode(encode(text)) == text
    assert len(encode("The checkpoint is saved")) < len("The checkpoint is saved") / 2


def test_pickled_or_unknown_model_dirs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(InvalidInput, match="safetensors"):
        load_base_model(str(tmp_path))
    with pytest.raises(InvalidInput, match="unknown base model"):
        load_base_model("relative/dir")
