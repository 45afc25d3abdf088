"""Training routes over HTTP (in-process app, real reference trainer): requests that arrive out of
order run in seq_id order, a repeated seq_id is the same future, creation is request 0, and
nobody can queue work on another user's model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from tests.server.conftest import User
from tinkerstore.types import tinker_public_pb2 as pb

pytestmark = pytest.mark.anyio

SEQS = [[(5 * i + 11 * j) % 200 + 1 for j in range(10)] for i in range(2)]


def fwdbwd_body(model_id: str, seq_id: int, seqs: list[list[int]], forward_only: bool) -> bytes:
    msg = pb.ForwardBackwardRequest(
        model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy", forward_only=forward_only
    )
    for seq in seqs:
        datum = msg.data.add()
        datum.model_input.add().encoded_text.tokens = np.asarray(seq[:-1], "<i4").tobytes()
        inputs: list[tuple[str, list[Any], str, int]] = [
            ("target_tokens", seq[1:], "<i8", pb.DTYPE_INT64),
            ("weights", [1.0] * (len(seq) - 1), "<f4", pb.DTYPE_FLOAT32),
        ]
        for name, values, dtype, proto in inputs:
            tensor = datum.loss_fn_inputs[name]
            tensor.dense = np.asarray(values, dtype).tobytes()
            tensor.dtype = proto
            tensor.shape.append(len(values))
    return bytes(msg.SerializeToString())


async def post(client: httpx.AsyncClient, user: User, path: str, **kwargs: Any) -> Any:
    r = await client.post(f"/api/v1/{path}", headers=user.headers, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


async def result(client: httpx.AsyncClient, user: User, request_id: str) -> Any:
    while True:
        r = await client.post(
            "/api/v1/retrieve_future", headers=user.headers, json={"request_id": request_id}
        )
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("application/x-protobuf"):
            out = pb.ForwardBackwardOutput()
            out.ParseFromString(r.content)
            field = out.loss_fn_outputs[0].fields["logprobs"]
            return np.frombuffer(field.data, "<f4").tolist(), dict(out.metrics)
        body = r.json()
        if body.get("type") != "try_again":
            return body


async def submit_all(
    client: httpx.AsyncClient, user: User, model_id: str, order: list[int]
) -> dict[int, str]:
    """Seq 1, 2: chunks of one forward/backward; 3: optim step; 4: forward of everything."""
    requests: dict[int, tuple[str, dict[str, Any]]] = {
        1: ("forward_backward", {"content": fwdbwd_body(model_id, 1, SEQS[:1], False)}),
        2: ("forward_backward", {"content": fwdbwd_body(model_id, 2, SEQS[1:], False)}),
        3: (
            "optim_step",
            {"json": {"model_id": model_id, "seq_id": 3, "adam_params": {"learning_rate": 0.01}}},
        ),
        4: ("forward_backward", {"content": fwdbwd_body(model_id, 4, SEQS, True)}),
    }
    ids = {}
    for seq in order:  # each POST answers at once; execution waits for the gaps to fill
        path, kwargs = requests[seq]
        ids[seq] = (await post(client, user, path, **kwargs))["request_id"]
    return ids


async def test_out_of_order_requests_run_in_seq_id_order(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    session = (
        await post(client, alice, "create_session", json={"tags": [], "sdk_version": "0.38.0"})
    )["session_id"]
    models = []
    for n in range(2):
        body = {
            "session_id": session,
            "model_seq_id": n,
            "base_model": "tiny-qwen3",
            "lora_config": {"rank": 4, "seed": 1},
        }
        first = await post(client, alice, "create_model", json=body)
        again = await post(client, alice, "create_model", json=body)
        assert again["request_id"] == first["request_id"]  # a retried creation
        done = await result(client, alice, first["request_id"])
        assert done == {"model_id": f"{session}:train:{n}", "type": "create_model"}
        models.append(done["model_id"])
    shuffled, ordered = models

    ids = await submit_all(client, alice, shuffled, [4, 3, 2, 1])
    repeat = await post(client, alice, "optim_step", json={
        "model_id": shuffled, "seq_id": 3, "adam_params": {"learning_rate": 0.5}})  # fmt: skip
    assert repeat["request_id"] == ids[3]
    got = {seq: await result(client, alice, rid) for seq, rid in ids.items()}

    expected = {}
    for seq in (1, 2, 3, 4):
        rid = (await submit_all(client, alice, ordered, [seq]))[seq]
        expected[seq] = await result(client, alice, rid)
    assert got == expected
    assert set(got[3]["metrics"]) == {"grad_norm:mean", "learning_rate:mean"}
    assert got[3]["metrics"]["learning_rate:mean"] == 0.01  # the repeat did not run
    # The forward ran after the step: its logprobs for datum 0 moved.
    before, after = got[1][0], got[4][0][: len(got[1][0])]
    assert not np.allclose(before, after)

    # Bob cannot queue anything on Alice's model, nor read her futures.
    r = await client.post(
        "/api/v1/forward_backward",
        headers=bob.headers,
        content=fwdbwd_body(shuffled, 5, SEQS, True),
    )
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    r = await client.post(
        "/api/v1/retrieve_future", headers=bob.headers, json={"request_id": ids[4]}
    )
    assert r.status_code == 404

    # A model request without a seq_id is refused plainly (it could not be ordered).
    r = await client.post(
        "/api/v1/forward_backward",
        headers=alice.headers,
        content=fwdbwd_body(shuffled, 0, SEQS, True),
    )
    assert r.status_code == 400 and "seq_id" in json.loads(r.text)["detail"]
