"""The whole training lifecycle through the real ``tinker`` SDK (0.25 and 0.38) against a live
``tinkerstore serve`` with the reference trainer: create, forward/backward in concurrent chunks,
optim steps, save/load state with and without optimizer, from-state clients, samplers (named and
snapshot), sampling, external exports (0.38, plain and age-encrypted) and ``tinker checkpoint
download``. Then, in this process: exact resume is checked on the downloaded safetensors, the
downloaded adapters load with ``peft`` on a rebuilt base model and reproduce the server's
logprobs, and the age export decrypts to the plain export's bytes.

One server for the module; one SDK subprocess per version runs every call (imports cost seconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server.live import LiveServer, live_server
from tests.support.sdk import run_sdk_script
from tinkerstore.service import open_store

pytestmark = pytest.mark.sdk


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    data_dir = tmp_path_factory.mktemp("lifecycle") / "data"
    store = open_store(data_dir)
    _, key = store.create_api_key("alice")
    store.catalog.close()
    with live_server(data_dir) as live:
        yield live, key


SCRIPT = r"""
import contextlib, io, json, os, sys, warnings
warnings.simplefilter("ignore")
import tinker
from tinker import types
from tinker.cli.__main__ import main as cli_main

cfg = json.load(sys.stdin)
v038 = cfg["version"] == "0.38"
out = {}
sc = tinker.ServiceClient()
rc = sc.create_rest_client()

def datum(seq):
    return types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]),
                       loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)})

SEQS = [[(7 * i + 13 * j) % 300 + 1 for j in range(12)] for i in range(3)]
DATA = [datum(s) for s in SEQS]
ADAM = types.AdamParams(learning_rate=5e-3)

def step(tc):
    # Submitted back to back, results awaited afterwards: the server orders them by seq_id.
    fb = tc.forward_backward(DATA, "cross_entropy")
    opt = tc.optim_step(ADAM)
    loss = fb.result().metrics["loss:sum"]
    opt.result()
    return loss

def logprobs(result):
    return [o["logprobs"].tolist() for o in result.loss_fn_outputs]

def failure(fn):
    try:
        fn()
    except tinker.RequestFailedError as exc:
        category = str(getattr(exc.category, "value", exc.category)).lower()
        return {"type": "RequestFailedError", "category": category, "message": str(exc)}
    except Exception as exc:
        return {"type": type(exc).__name__, "category": None, "message": str(exc)}
    return None

def cli(*args):
    err = io.StringIO()
    sys.argv = ["tinker", *args]
    code = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            cli_main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    assert code == 0, (args, err.getvalue()[-3000:])

def download(path):
    cli("checkpoint", "download", path, "-o", cfg["downloads"])

# --- create, get_info, chunked forward --------------------------------------------------------
tc = sc.create_lora_training_client(base_model="tiny-qwen3", rank=4, seed=1,
                                    user_metadata={"renderer_name": "tiny"})
info = tc.get_info()
out["info"] = info.model_dump(mode="json")
tokenizer = tc.get_tokenizer()
out["tokens_hello"] = tokenizer.encode("hello world")
one = tc.forward(DATA, "cross_entropy").result()
# From here on every forward/backward call goes out as 3 concurrent chunks, the first one last.
tc.holder._client_config = tc.holder._client_config.model_copy(update={"fwdbwd_max_chunk_len": 1})
many = tc.forward(DATA, "cross_entropy").result()
out["chunks"] = {"one": [one.metrics, logprobs(one)], "many": [many.metrics, logprobs(many)]}

# --- exact resume -------------------------------------------------------------------------------
out["k"] = [step(tc) for _ in range(2)]
state = tc.save_state("k").result().path
out["a"] = [step(tc) for _ in range(2)]
finals = {"a": tc.save_state("a-final").result().path}
tb = sc.create_training_client_from_state_with_optimizer(state)
out["b"] = [step(tb) for _ in range(2)]
finals["b"] = tb.save_state("b-final").result().path
tcn = sc.create_training_client_from_state(state)
out["c"] = [step(tcn) for _ in range(2)]
finals["c"] = tcn.save_state("c-final").result().path
td = sc.create_lora_training_client(base_model="tiny-qwen3", rank=4, seed=2)
td.load_state_with_optimizer(state).result()
out["d"] = [step(td) for _ in range(2)]
td.load_state(state).result()
out["e"] = [step(td) for _ in range(2)]
out["state"], out["finals"] = state, finals

# --- samplers and sampling at the weights of a-final ---------------------------------------------
out["fwd_logprobs"] = logprobs(tc.forward(DATA, "cross_entropy").result())
samp = tc.save_weights_for_sampler("samp").result().path
out["samp"] = samp
if v038:
    out["exp"] = tc.save_weights_external("exp").result().path
    recipients = [cfg["age_recipient"]]
    out["enc"] = tc.save_weights_external("enc", age_encryption_recipients=recipients).result().path
snap = tc.save_weights_and_get_sampling_client()
named = sc.create_sampling_client(model_path=samp)
prompt = types.ModelInput.from_ints(SEQS[0])
greedy = types.SamplingParams(max_tokens=6, temperature=0.0)
r_named = named.sample(prompt, 1, greedy, include_prompt_logprobs=True).result()
r_snap = snap.sample(prompt, 1, greedy).result()
g = list(r_named.sequences[0].tokens)
out["greedy"] = {"named": g, "snap": list(r_snap.sequences[0].tokens),
                 "reason": r_named.sequences[0].stop_reason,
                 "logprobs": list(r_named.sequences[0].logprobs or [])}
out["prompt_logprobs"] = r_named.prompt_logprobs
def greedy_until(stop):
    params = types.SamplingParams(max_tokens=6, temperature=0.0, stop=stop)
    return named.sample(prompt, 1, params).result()

r = greedy_until([g[2]])
out["stop_tokens"] = [list(r.sequences[0].tokens), r.sequences[0].stop_reason]
stop_text = tokenizer.decode(g[2:4])
k = next(n for n in range(1, 7) if stop_text in tokenizer.decode(g[:n]))
r = greedy_until([stop_text])
out["stop_string"] = [list(r.sequences[0].tokens), r.sequences[0].stop_reason, g[:k]]
hot = types.SamplingParams(max_tokens=5, temperature=1.0, seed=11)
out["seeded"] = [[list(s.tokens) for s in named.sample(prompt, 3, hot).result().sequences]
                 for _ in range(2)]
step(tc)  # the snapshot must not follow later training
out["snap_after_step"] = list(snap.sample(prompt, 1, greedy).result().sequences[0].tokens)

# --- user errors come back as failed futures with category "user" ------------------------------
out["errors"] = {
    "duplicate_name": failure(lambda: tc.save_state("k").result()),
    "sampler_as_state": failure(lambda: tc.load_state(samp).result()),
    "bad_ttl": failure(lambda: tc.save_state("short", ttl_seconds=60).result()),
    # 0.38 creates the client lazily (a future); using it surfaces the failure.
    "unknown_base": failure(
        lambda: sc.create_lora_training_client(base_model="no-such-model", rank=4).get_info()),
}
if v038:
    out["errors"]["bad_recipient"] = failure(
        lambda: tc.save_weights_external("bad", age_encryption_recipients=["age1nope"]).result())
out["still_trains"] = step(tc)

# --- REST view of what was made ------------------------------------------------------------------
run = state.split("/")[2]
out["run_metadata"] = rc.get_training_run(run).result().user_metadata
out["weights_info"] = rc.get_weights_info_by_tinker_path(state).result().model_dump(mode="json")
out["checkpoints"] = sorted(c.checkpoint_id for c in rc.list_checkpoints(run).result().checkpoints)

# --- downloads through the CLI (0.25: tar archive; 0.38: export flow) ----------------------------
for path in finals.values():
    download(path)
download(samp if not v038 else out["exp"])
if v038:
    download(out["enc"])
print(json.dumps(out))
"""


def _target(root: Path, tinker_path: str) -> Path:
    return root / tinker_path.removeprefix("tinker://").replace("/", "_")


def _tensors(directory: Path) -> dict[str, np.ndarray[Any, Any]]:
    from safetensors.numpy import load_file

    return load_file(directory / "adapter_model.safetensors")


def _peft_logprobs(adapter: Path, base_dir: Path, seqs: list[list[int]]) -> list[list[float]]:
    """Load the downloaded adapter with peft on the rebuilt base model: target logprobs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter).eval()
    result = []
    with torch.no_grad():
        for seq in seqs:
            ids = torch.tensor([seq[:-1]])
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            result.append(lp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0].tolist())
    return result


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinkerstore.trainer.models import write_model_dir

    return write_model_dir("tiny-qwen3", tmp_path_factory.mktemp("base") / "tiny-qwen3")


SEQS = [[(7 * i + 13 * j) % 300 + 1 for j in range(12)] for i in range(3)]


@pytest.mark.parametrize("version", ["0.25", "0.38"])
def test_lifecycle(
    server: tuple[LiveServer, str], base_dir: Path, version: str, tmp_path: Path
) -> None:
    import pyrage

    live, key = server
    identity = pyrage.x25519.Identity.generate()
    downloads = tmp_path / "dl"
    out = run_sdk_script(
        version,
        SCRIPT,
        stdin={
            "version": version,
            "downloads": str(downloads),
            "age_recipient": str(identity.to_public()),
        },
        env={"TINKER_BASE_URL": live.url, "TINKER_API_KEY": key, "HOME": str(tmp_path)},
    )

    # get_info: the tokenizer id is a local directory the SDK loaded offline.
    data = out["info"]["model_data"]
    assert data["model_name"] == "tiny-qwen3" and data["arch"] == "qwen3"
    assert Path(data["tokenizer_id"]).is_dir() and out["info"]["lora_rank"] == 4
    assert len(out["tokens_hello"]) > 1

    # Chunks sent concurrently combine to the single-request result.
    one, many = out["chunks"]["one"], out["chunks"]["many"]
    assert set(one[0]) == {"loss:sum"} and len(one[1]) == 3 and len(one[1][0]) == 11
    assert math.isclose(one[0]["loss:sum"], many[0]["loss:sum"], rel_tol=1e-6)
    np.testing.assert_allclose(np.array(many[1]), np.array(one[1]), rtol=1e-6)

    # Exact resume: with the optimizer, identical losses; without it, visibly different.
    assert out["k"][1] < out["k"][0]
    assert out["b"] == out["a"] and out["d"] == out["a"]
    assert out["c"] != out["a"] and out["e"] == out["c"]
    a, b, c = (_tensors(_target(downloads, out["finals"][n])) for n in "abc")
    assert a.keys() == b.keys() == c.keys() and len(a) > 0
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert any(not np.array_equal(a[name], c[name]) for name in a)

    # Samplers: named checkpoint and snapshot agree; the snapshot ignores later training.
    greedy = out["greedy"]
    assert greedy["named"] == greedy["snap"] == out["snap_after_step"]
    assert len(greedy["named"]) == 6 and greedy["reason"] == "length"
    assert len(greedy["logprobs"]) == 6
    prompt_lp = out["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == len(SEQS[0])
    np.testing.assert_allclose(prompt_lp[1:], out["fwd_logprobs"][0], rtol=1e-4, atol=1e-5)
    g = greedy["named"]
    assert out["stop_tokens"] == [g[: g.index(g[2]) + 1], "stop"]
    tokens, reason, expected = out["stop_string"]
    assert tokens == expected and reason == "stop"
    first, second = out["seeded"]
    assert first == second and len(first) == 3

    # User errors: failed futures, category user, messages that say what to do.
    errors = out["errors"]
    for name, err in errors.items():
        assert err is not None and err["type"] == "RequestFailedError", (name, err)
        assert err["category"] == "user", (name, err)
    assert "overwrite" in errors["duplicate_name"]["message"]
    assert "sampler" in errors["sampler_as_state"]["message"]
    assert "ttl_seconds" in errors["bad_ttl"]["message"]
    assert "no-such-model" in errors["unknown_base"]["message"]
    assert isinstance(out["still_trains"], float)

    assert out["run_metadata"] == {"renderer_name": "tiny"}
    info = out["weights_info"]
    assert (info["base_model"], info["lora_rank"], info["is_lora"]) == ("tiny-qwen3", 4, True)
    assert info["train_attn"] is info["train_mlp"] is info["train_unembed"] is True
    assert {"weights/k", "weights/a-final", "sampler_weights/samp"} <= set(out["checkpoints"])

    # PEFT interop: the downloaded adapter reproduces the server's logprobs.
    adapter = _target(downloads, out["exp"] if version == "0.38" else out["samp"])
    got = _peft_logprobs(adapter, base_dir, SEQS)
    np.testing.assert_allclose(np.array(got), np.array(out["fwd_logprobs"]), rtol=1e-4, atol=1e-5)

    if version == "0.38":
        assert "recipient" in errors["bad_recipient"]["message"]
        plain, enc = adapter, _target(downloads, out["enc"])
        names = sorted(p.name for p in enc.iterdir())
        assert names == ["adapter_config.json.age", "adapter_model.safetensors.age"]
        for name in names:
            decrypted = pyrage.decrypt((enc / name).read_bytes(), [identity])
            assert decrypted == (plain / name.removesuffix(".age")).read_bytes()
