"""The reference trainer: exact resume, LoRA flags, AdamParams, losses, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.helpers import (
    adapter_tensors,
    assert_all_equal,
    make_datum,
    max_diff,
    saved_state,
    train,
)
from tinkerstore.errors import (
    AlreadyExists,
    IncompatibleCheckpoint,
    InvalidInput,
    InvalidTensor,
    ModelNotFound,
)
from tinkerstore.trainer import AdamSpec, Backend, Datum, LoraSpec, reference_backend
from tinkerstore.trainer.torch_backend import TorchBackend


def test_reference_backend_implements_the_interface(backend: TorchBackend) -> None:
    assert isinstance(backend, Backend)
    assert isinstance(reference_backend(), Backend)
    assert {"tiny-qwen3", "tiny-llama"} <= set(backend.base_models())


# -- exact resume -------------------------------------------------------------------------------


def test_resume_with_optimizer_is_bitwise_exact(
    backend: TorchBackend, batch: list[Datum], tmp_path: Path
) -> None:
    backend.create_model("orig", "tiny-qwen3", LoraSpec(rank=4, seed=7))
    train(backend, "orig", batch, steps=3)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    backend.save_state("orig", checkpoint)
    losses = train(backend, "orig", batch, steps=3, start=3)
    expected = saved_state(backend, "orig", tmp_path / "orig-after")

    # Two ways in: create-via-load, and load_state into a model created from scratch.
    backend.create_model_from_state("resumed", checkpoint, with_optimizer=True)
    backend.create_model("loaded", "tiny-qwen3", LoraSpec(rank=4, seed=99))
    backend.load_state("loaded", checkpoint, with_optimizer=True)
    assert backend.info("resumed").optimizer_step == backend.info("loaded").optimizer_step == 3
    for name in ("resumed", "loaded"):
        assert train(backend, name, batch, steps=3, start=3) == losses
        assert_all_equal(saved_state(backend, name, tmp_path / f"{name}-after"), expected)

    # Without the optimizer the moments restart from zero: same start, visibly different end.
    backend.create_model_from_state("fresh-adam", checkpoint, with_optimizer=False)
    assert backend.info("fresh-adam").optimizer_step == 0
    fresh_losses = train(backend, "fresh-adam", batch, steps=3, start=3)
    assert fresh_losses[0] == losses[0]
    fresh = adapter_tensors(backend, "fresh-adam", tmp_path / "fresh-after")
    orig = adapter_tensors(backend, "orig", tmp_path / "orig-sampler")
    assert max_diff(fresh, orig) > 1e-3
    for name in ("orig", "resumed", "loaded", "fresh-adam"):
        backend.unload(name)


def test_training_checkpoint_layout(
    backend: TorchBackend, model_id: str, batch: list[Datum], tmp_path: Path
) -> None:
    backend.create_model(model_id, "tiny-llama", LoraSpec(rank=2, seed=3, train_unembed=False))
    train(backend, model_id, batch[:1], steps=2)
    backend.save_state(model_id, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["base_model"] == "tiny-llama"
    assert state["lora"] == {
        "rank": 2,
        "seed": 3,
        "train_attn": True,
        "train_mlp": True,
        "train_unembed": False,
    }
    assert state["optimizer"]["step"] == 2
    assert state["optimizer"]["last_adam_params"]["learning_rate"] == pytest.approx(1e-2 / 2)
    optimizer = load_file(tmp_path / "optimizer.safetensors")
    assert int(optimizer["step"]) == 2
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert {f"exp_avg/{k}" for k in adapter} | {f"exp_avg_sq/{k}" for k in adapter} | {
        "step"
    } == set(optimizer)
    info = backend.weights_info(tmp_path)
    assert (info.kind, info.has_optimizer, info.optimizer_step) == ("training", True, 2)
    assert info.base_model == "tiny-llama" and info.lora == LoraSpec(2, 3, True, True, False)
    backend.unload(model_id)


# -- LoRA configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "modules"),
    [
        ((True, False, False), {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ((False, True, False), {"gate_proj", "up_proj", "down_proj"}),
        ((False, False, True), {"lm_head"}),
    ],
)
def test_lora_flags_choose_the_adapted_modules(
    backend: TorchBackend,
    model_id: str,
    tmp_path: Path,
    flags: tuple[bool, bool, bool],
    modules: set[str],
) -> None:
    attn, mlp, unembed = flags
    info = backend.create_model(
        model_id,
        "tiny-qwen3",
        LoraSpec(rank=3, train_attn=attn, train_mlp=mlp, train_unembed=unembed),
    )
    assert set(info.target_modules) == modules
    tensors = adapter_tensors(backend, model_id, tmp_path / "s")
    adapted = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in tensors}
    assert adapted == modules
    for key, tensor in tensors.items():
        dim = 0 if ".lora_A." in key else 1
        assert tensor.shape[dim] == 3, key
    config = json.loads((tmp_path / "s" / "adapter_config.json").read_text())
    assert (config["r"], set(config["target_modules"])) == (3, modules)
    backend.unload(model_id)


def test_lora_seed_sets_the_init(backend: TorchBackend, tmp_path: Path) -> None:
    tensors = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        backend.create_model(name, "tiny-qwen3", LoraSpec(rank=2, seed=seed))
        tensors[name] = adapter_tensors(backend, name, tmp_path / name)
        backend.unload(name)
    assert_all_equal(tensors["a"], tensors["b"])
    assert max_diff(tensors["a"], tensors["c"]) > 0


def test_invalid_lora_configs(backend: TorchBackend) -> None:
    with pytest.raises(InvalidInput, match="rank"):
        backend.create_model("bad", "tiny-qwen3", LoraSpec(rank=0))
    with pytest.raises(InvalidInput, match="trains nothing"):
        backend.create_model(
            "bad", "tiny-qwen3", LoraSpec(train_attn=False, train_mlp=False, train_unembed=False)
        )


# -- AdamParams ---------------------------------------------------------------------------------


def _one_step(
    backend: TorchBackend,
    tmp_path: Path,
    adam: AdamSpec,
    name: str,
    data: list[Datum],
    with_optimizer: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights before, full state after) for one step from the same trained starting point."""
    backend.create_model_from_state(name, tmp_path / "start", with_optimizer=with_optimizer)
    before = adapter_tensors(backend, name, tmp_path / f"{name}-before")
    backend.forward_backward(name, data, "cross_entropy")
    backend.optim_step(name, adam)
    after = saved_state(backend, name, tmp_path / f"{name}-after")
    backend.unload(name)
    return before, after


def _lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "/" not in k and k != "step"}


def _moment(state: dict[str, torch.Tensor], which: str) -> dict[str, torch.Tensor]:
    return {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(which + "/")}


def test_adam_params_each_have_their_effect(
    backend: TorchBackend, batch: list[Datum], tmp_path: Path
) -> None:
    backend.create_model("adam-start", "tiny-qwen3", LoraSpec(rank=4))
    train(backend, "adam-start", batch, steps=2)  # B != 0, so every tensor gets a gradient
    (tmp_path / "start").mkdir()
    backend.save_state("adam-start", tmp_path / "start")
    backend.unload("adam-start")
    start_m = _moment(load_file(tmp_path / "start" / "optimizer.safetensors"), "exp_avg")
    start_v = _moment(load_file(tmp_path / "start" / "optimizer.safetensors"), "exp_avg_sq")

    # lr = 0: nothing moves, even with weight decay.
    before, after = _one_step(
        backend, tmp_path, AdamSpec(learning_rate=0.0, weight_decay=0.5), "lr0", batch
    )
    assert_all_equal(before, _lora(after))

    # beta1 / beta2 set how much of the new gradient enters each moment.
    _, b9 = _one_step(backend, tmp_path, AdamSpec(beta1=0.9, beta2=0.95), "b9", batch)
    _, b5 = _one_step(backend, tmp_path, AdamSpec(beta1=0.5, beta2=0.5), "b5", batch)
    for key, m0 in start_m.items():
        grad = (_moment(b9, "exp_avg")[key] - 0.9 * m0) / 0.1
        torch.testing.assert_close(
            _moment(b5, "exp_avg")[key], 0.5 * m0 + 0.5 * grad, rtol=1e-3, atol=1e-6
        )
        torch.testing.assert_close(
            _moment(b5, "exp_avg_sq")[key],
            0.5 * start_v[key] + 0.5 * grad * grad,
            rtol=1e-3,
            atol=1e-6,
        )

    # grad_clip_norm bounds the gradient that enters the (here fresh) moments: m = 0.1 g.
    _, clipped = _one_step(
        backend, tmp_path, AdamSpec(grad_clip_norm=1e-3), "clip", batch, with_optimizer=False
    )
    new_grad = {k: v / 0.1 for k, v in _moment(clipped, "exp_avg").items()}
    norm = math.sqrt(sum(float((g * g).sum()) for g in new_grad.values()))
    assert norm == pytest.approx(1e-3, rel=1e-2)

    # eps: a huge eps shrinks the update.
    base_before, base_after = _one_step(
        backend, tmp_path, AdamSpec(learning_rate=1e-3), "e0", batch
    )
    _, big_eps = _one_step(backend, tmp_path, AdamSpec(learning_rate=1e-3, eps=1e6), "e1", batch)
    assert max_diff(base_before, _lora(big_eps)) < 0.01 * max_diff(base_before, _lora(base_after))

    # weight_decay: with all loss weights zero the gradient is zero, and only decay remains.
    zero = [make_datum("The checkpoint is saved every few steps.", weight=0.0)]
    before, decayed = _one_step(
        backend, tmp_path, AdamSpec(learning_rate=0.1, weight_decay=0.5, beta1=0.0), "wd", zero
    )
    for key, value in before.items():
        torch.testing.assert_close(_lora(decayed)[key], value * (1 - 0.1 * 0.5))


def test_invalid_adam_params(backend: TorchBackend, model_id: str) -> None:
    backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=1))
    for bad in (
        AdamSpec(learning_rate=-1),
        AdamSpec(beta1=1.0),
        AdamSpec(eps=0.0),
        AdamSpec(grad_clip_norm=-1),
        AdamSpec(weight_decay=float("nan")),
    ):
        with pytest.raises(InvalidInput, match="adam_params"):
            backend.optim_step(model_id, bad)
    assert backend.info(model_id).optimizer_step == 0
    backend.unload(model_id)


# -- forward / backward -------------------------------------------------------------------------


def test_cross_entropy_outputs_and_metric(backend: TorchBackend, model_id: str) -> None:
    backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=2))
    data = [make_datum("Hello world!", weight=1.0), make_datum("The lazy dog.", weight=0.5)]
    result = backend.forward_backward(model_id, data, "cross_entropy", forward_only=True)
    assert len(result.per_datum) == 2
    total = 0.0
    for datum, out in zip(data, result.per_datum, strict=True):
        logprobs = out["logprobs"]
        assert logprobs.dtype == np.float32 and logprobs.shape == datum.tokens.shape
        assert (logprobs < 0).all()
        total -= float((datum.loss_fn_inputs["weights"] * logprobs).sum())
    assert set(result.metrics) == {"loss:sum"}
    assert result.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)
    # Batching pads on the right, which must not change a datum's own logprobs.
    alone = backend.forward_backward(model_id, data[:1], "cross_entropy", forward_only=True)
    np.testing.assert_allclose(
        alone.per_datum[0]["logprobs"], result.per_datum[0]["logprobs"], rtol=1e-5, atol=1e-5
    )
    backend.unload(model_id)


def test_gradients_accumulate_and_forward_only_leaves_them(
    backend: TorchBackend, batch: list[Datum], tmp_path: Path
) -> None:
    adam = AdamSpec(learning_rate=1e-2)
    for name in ("split", "whole", "split+fwd"):
        backend.create_model(name, "tiny-qwen3", LoraSpec(rank=2))
        backend.forward_backward(name, batch, "cross_entropy")
        backend.optim_step(name, adam)  # B != 0 from here on
    backend.forward_backward("split", batch[:2], "cross_entropy")
    backend.forward_backward("split", batch[2:], "cross_entropy")
    backend.forward_backward("whole", batch, "cross_entropy")
    backend.forward_backward("split+fwd", batch[:2], "cross_entropy")
    backend.forward_backward("split+fwd", batch, "cross_entropy", forward_only=True)
    backend.forward_backward("split+fwd", batch[2:], "cross_entropy")
    after = {}
    for name in ("split", "whole", "split+fwd"):
        backend.optim_step(name, adam)
        after[name] = adapter_tensors(backend, name, tmp_path / name)
        backend.unload(name)
    assert_all_equal(after["split"], after["split+fwd"])
    for key, value in after["split"].items():
        torch.testing.assert_close(after["whole"][key], value, rtol=1e-4, atol=1e-6)


def test_importance_sampling_and_ppo_at_ratio_one(backend: TorchBackend, model_id: str) -> None:
    backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=2))
    datum = make_datum("The quick brown fox.")
    logprobs = backend.forward_backward(
        model_id, [datum], "cross_entropy", forward_only=True
    ).per_datum[0]["logprobs"]
    advantages = np.linspace(-1, 2, logprobs.shape[0]).astype(np.float32)
    rl = Datum(
        tokens=datum.tokens,
        loss_fn_inputs={
            "target_tokens": datum.loss_fn_inputs["target_tokens"],
            "logprobs": logprobs,
            "advantages": advantages,
        },
    )
    for loss_fn in ("importance_sampling", "ppo"):
        result = backend.forward_backward(model_id, [rl], loss_fn, forward_only=True)
        assert result.metrics["loss:sum"] == pytest.approx(-float(advantages.sum()), abs=1e-4)
    backend.unload(model_id)


def test_bad_training_inputs(backend: TorchBackend, model_id: str) -> None:
    backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=2))
    good = make_datum("Hello world!")
    with pytest.raises(InvalidInput, match="not supported"):
        backend.forward_backward(model_id, [good], "dro")
    short = Datum(
        tokens=good.tokens,
        loss_fn_inputs={
            "target_tokens": good.loss_fn_inputs["target_tokens"][:-1],
            "weights": good.loss_fn_inputs["weights"],
        },
    )
    with pytest.raises(InvalidTensor, match="shape"):
        backend.forward_backward(model_id, [short], "cross_entropy")
    no_weights = Datum(
        tokens=good.tokens, loss_fn_inputs={"target_tokens": good.loss_fn_inputs["target_tokens"]}
    )
    with pytest.raises(InvalidInput, match="weights"):
        backend.forward_backward(model_id, [no_weights], "cross_entropy")
    out_of_vocab = Datum(tokens=good.tokens + 5000, loss_fn_inputs=good.loss_fn_inputs)
    with pytest.raises(InvalidTensor, match="outside"):
        backend.forward_backward(model_id, [out_of_vocab], "cross_entropy")
    with pytest.raises(InvalidInput, match="no data"):
        backend.forward_backward(model_id, [], "cross_entropy")
    backend.unload(model_id)


# -- errors -------------------------------------------------------------------------------------


def test_unknown_base_model_lists_the_choices(backend: TorchBackend) -> None:
    with pytest.raises(InvalidInput, match="unknown base model") as caught:
        backend.create_model("x", "Qwen/Qwen3-8B", LoraSpec(rank=2))
    assert caught.value.hint is not None and "tiny-qwen3" in caught.value.hint


def test_model_ids(backend: TorchBackend, model_id: str) -> None:
    with pytest.raises(ModelNotFound):
        backend.info(model_id)
    backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=1))
    with pytest.raises(AlreadyExists):
        backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=1))
    backend.unload(model_id)
    backend.unload(model_id)  # idempotent
    with pytest.raises(ModelNotFound):
        backend.optim_step(model_id, AdamSpec())


def test_incompatible_loads(backend: TorchBackend, tmp_path: Path) -> None:
    backend.create_model("qwen-r4", "tiny-qwen3", LoraSpec(rank=4))
    backend.create_model("qwen-r2", "tiny-qwen3", LoraSpec(rank=2))
    backend.create_model("llama-r4", "tiny-llama", LoraSpec(rank=4))
    backend.create_model("qwen-attn", "tiny-qwen3", LoraSpec(rank=4, train_mlp=False))
    state, sampler = tmp_path / "state", tmp_path / "sampler"
    state.mkdir()
    sampler.mkdir()
    backend.save_state("qwen-r4", state)
    backend.save_sampler_weights("qwen-r4", sampler)

    with pytest.raises(IncompatibleCheckpoint, match="tiny-qwen3"):
        backend.load_state("llama-r4", state, with_optimizer=False)
    with pytest.raises(IncompatibleCheckpoint, match="rank 4"):
        backend.load_state("qwen-r2", state, with_optimizer=True)
    with pytest.raises(IncompatibleCheckpoint, match="rank"):
        backend.load_state("qwen-attn", state, with_optimizer=False)
    with pytest.raises(IncompatibleCheckpoint, match="trained on"):
        backend.create_model_from_state(
            "other", state, with_optimizer=False, base_model="tiny-llama"
        )
    # A sampler checkpoint has weights only: fine without the optimizer, refused with it.
    with pytest.raises(IncompatibleCheckpoint, match="no optimizer state") as caught:
        backend.load_state("qwen-r4", sampler, with_optimizer=True)
    assert caught.value.hint is not None and "without the optimizer" in caught.value.hint
    with pytest.raises(IncompatibleCheckpoint, match="no optimizer state"):
        backend.create_model_from_state("from-sampler", sampler, with_optimizer=True)
    with pytest.raises(ModelNotFound):
        backend.info("from-sampler")
    backend.load_state("qwen-r4", sampler, with_optimizer=False)
    info = backend.create_model_from_state("from-sampler", sampler, with_optimizer=False)
    assert (info.base_model, info.lora.rank) == ("tiny-qwen3", 4)
    assert backend.weights_info(sampler).kind == "sampler"

    # Pickled weights are refused, never read.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_bytes((sampler / "adapter_config.json").read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(IncompatibleCheckpoint, match="pickled"):
        backend.load_state("qwen-r4", pickled, with_optimizer=False)
    for name in ("qwen-r4", "qwen-r2", "llama-r4", "qwen-attn", "from-sampler"):
        backend.unload(name)


def test_save_needs_an_empty_directory(
    backend: TorchBackend, model_id: str, tmp_path: Path
) -> None:
    backend.create_model(model_id, "tiny-qwen3", LoraSpec(rank=1))
    (tmp_path / "other").write_text("x")
    with pytest.raises(InvalidInput, match="empty directory"):
        backend.save_state(model_id, tmp_path)
    backend.unload(model_id)
