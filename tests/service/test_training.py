"""Training through the service: saves commit real weights, loads verify them first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tinkerstore.errors import (
    AlreadyExists,
    CheckpointCorrupted,
    IncompatibleCheckpoint,
    InvalidInput,
    ModelNotFound,
    NotFound,
)
from tinkerstore.service import Principal, Store, open_store
from tinkerstore.service.training import Training, weights_summary
from tinkerstore.store.format import file_key
from tinkerstore.trainer import AdamSpec, Datum, SamplingSpec
from tinkerstore.types.paths import CheckpointKind


@pytest.fixture(scope="module")
def backend() -> object:
    from tinkerstore.trainer import reference_backend

    return reference_backend()


@pytest.fixture
def env(tmp_path: Path, backend: object) -> Iterator[tuple[Store, Training, Principal]]:
    store = open_store(tmp_path / "data")
    _, key = store.create_api_key("alice")
    yield store, Training(store, backend, tmp_path / "work"), store.authenticate(key)  # type: ignore[arg-type]
    store.catalog.close()


def batch() -> list[Datum]:
    tokens = np.arange(1, 9, dtype=np.int64)
    return [
        Datum(
            tokens=tokens,
            loss_fn_inputs={
                "target_tokens": np.roll(tokens, -1),
                "weights": np.ones(8, dtype=np.float32),
            },
        )
    ]


def step(training: Training, me: Principal, model_id: str) -> float:
    out = training.forward_backward(
        me, model_id, batch(), "cross_entropy", None, forward_only=False
    )
    training.optim_step(me, model_id, AdamSpec(learning_rate=1e-2))
    return out.metrics["loss:sum"]


def test_save_resume_exactly_and_refuse_wrong_kinds(env: tuple[Store, Training, Principal]) -> None:
    store, training, me = env
    model = training.create_model(
        me,
        session_id="s1",
        model_seq_id=0,
        base_model="tiny-qwen3",
        lora_config={"rank": 4, "seed": 3},
        user_metadata={"renderer_name": "qwen3"},
    )
    assert model == "s1:train:0"
    assert store.get_run(me, model).user_metadata == {"renderer_name": "qwen3"}
    step(training, me, model)
    path = training.save_state(me, model, "ckpt")
    assert path == "tinker://s1:train:0/weights/ckpt"
    with pytest.raises(AlreadyExists):
        training.save_state(me, model, "ckpt")
    after = [step(training, me, model) for _ in range(2)]

    resumed = training.create_from_state(
        me, session_id="s2", model_seq_id=0, tinker_path=path, optimizer=True
    )
    assert [step(training, me, resumed) for _ in range(2)] == after
    info = training.weights_info(me, path)
    assert (info.base_model, info.lora_rank) == ("tiny-qwen3", 4)

    sampler_path = training.save_sampler(me, model, "samp")
    with pytest.raises(IncompatibleCheckpoint, match="sampler"):
        training.load_state(me, model, sampler_path, optimizer=False)
    sid = training.create_sampling_session(
        me, session_id="s1", sampling_session_seq_id=0, model_path=sampler_path, base_model=None
    )
    greedy = SamplingSpec(max_tokens=4, temperature=0.0)
    seqs, _ = training.sample(
        me, sid, np.arange(1, 5, dtype=np.int64), greedy, num_samples=1, prompt_logprobs=False
    )
    live, _ = training.backend.sample(model, np.arange(1, 5, dtype=np.int64), greedy)
    assert seqs[0].tokens.tolist() == live[0].tokens.tolist()


def test_corrupted_checkpoint_never_reaches_the_model(
    env: tuple[Store, Training, Principal],
) -> None:
    store, training, me = env
    model = training.create_model(
        me, session_id="corrupt", model_seq_id=0, base_model="tiny-qwen3", lora_config={"rank": 2}
    )
    path = training.save_state(me, model, "c")
    record = store.resolve(me, path)
    key = file_key(record.blob_prefix, "adapter_model.safetensors")
    target = store.blobs.local_path(key)
    assert target is not None
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupted, match="adapter_model"):
        training.load_state(me, model, path, optimizer=True)


def test_external_export_encrypts_to_age_recipients(env: tuple[Store, Training, Principal]) -> None:
    import pyrage

    store, training, me = env
    model = training.create_model(
        me, session_id="age", model_seq_id=0, base_model="tiny-qwen3", lora_config={"rank": 2}
    )
    identity = pyrage.x25519.Identity.generate()
    path, size = training.save_external(me, model, "exp", recipients=[str(identity.to_public())])
    record = store.resolve(me, path)
    names = [f.path for f in store.manifest(record).files]
    assert names == ["adapter_config.json.age", "adapter_model.safetensors.age"]
    plain = pyrage.decrypt(store.read_file(record, "adapter_config.json.age"), [identity])
    assert b'"r": 2' in plain or b'"r":2' in plain
    assert size == record.size_bytes
    with pytest.raises(InvalidInput, match="recipient"):
        training.save_external(me, model, "bad", recipients=["age1notakey"])


def test_models_lost_on_restart_name_the_checkpoint_to_resume(
    tmp_path: Path, backend: object
) -> None:
    store = open_store(tmp_path / "d")
    _, key = store.create_api_key("a")
    me = store.authenticate(key)
    first = Training(store, backend, tmp_path / "w1")  # type: ignore[arg-type]
    model = first.create_model(
        me, session_id="restart", model_seq_id=0, base_model="tiny-qwen3", lora_config={"rank": 2}
    )
    first.save_state(me, model, "last")
    restarted = Training(store, backend, tmp_path / "w2")  # type: ignore[arg-type]
    with pytest.raises(ModelNotFound, match=r"tinker://restart:train:0/weights/last"):
        restarted.optim_step(me, model, AdamSpec())


def test_weights_summary_defaults_unrecorded_lora_flags_to_true(
    env: tuple[Store, Training, Principal],
) -> None:
    store, _, me = env
    store.create_run(me, "old:train:0", base_model="tiny-qwen3", lora_config={"rank": 8})
    record = store.save_files(me, "old:train:0", CheckpointKind.WEIGHTS, "w", {"a": b"x"})
    summary = weights_summary(store, me, f"tinker://{record.run_id}/weights/w")
    assert (summary.lora_rank, summary.train_attn, summary.train_mlp) == (8, True, True)
    assert summary.train_unembed is True


def test_snapshot_sampler_keeps_its_weights_until_the_session_is_released(
    env: tuple[Store, Training, Principal],
) -> None:
    _, training, me = env
    model = training.create_model(
        me, session_id="snap", model_seq_id=0, base_model="tiny-qwen3", lora_config={"rank": 2}
    )
    step(training, me, model)
    sid = training.snapshot_sampler(me, model, session_id="snap", sampling_session_seq_id=0)
    greedy = SamplingSpec(max_tokens=4, temperature=0.0)
    prompt = np.arange(1, 6, dtype=np.int64)
    before, _ = training.sample(me, sid, prompt, greedy, num_samples=1, prompt_logprobs=False)
    for _ in range(3):
        step(training, me, model)
    after, _ = training.sample(me, sid, prompt, greedy, num_samples=1, prompt_logprobs=False)
    assert before[0].tokens.tolist() == after[0].tokens.tolist()
    assert training.release_session(me, "snap") == [model]
    with pytest.raises(NotFound, match="no longer loaded"):
        training.sample(me, sid, prompt, greedy, num_samples=1, prompt_logprobs=False)
    with pytest.raises(ModelNotFound, match="not loaded on this server"):
        training.optim_step(me, model, AdamSpec())
