"""Benchmark 5: TensorData to and from its JSON and protobuf wire forms, ours vs the SDK's.

Same float32 arrays (1k and 1M elements), same bytes to decode, same timing loop
(``bench/timing.py``) on both sides; the SDK side runs in the SDK's own virtualenv
(``bench/sdk_tensordata_worker.py``) and the two are interleaved run by run over a pipe.

* JSON encode: ``TensorData.from_numpy(a).to_json_bytes()`` vs the SDK's pydantic model
  ``from_numpy(a).model_dump_json()`` (checked to give the same bytes).
* JSON decode: ``from_json_bytes(raw).to_numpy()`` vs ``model_validate_json(raw).to_numpy()``.
* protobuf encode: the same message on both sides, a ``ForwardBackwardOutput`` holding one
  datum's array (what our server sends back): ours is ``encode_forward_backward_output``, the
  SDK side builds it with the SDK's generated classes the way the SDK's own codec builds a
  ``Tensor`` (``tobytes()`` into the field, serialize), and the bytes are checked identical.
  (Before, the SDK side encoded a ``Tensor`` instead: same payload, different message.)
* protobuf decode: one ``ForwardBackwardRequest`` body with the array as a loss input, decoded
  by ``decode_forward_backward_request`` vs the SDK's ``Tensor`` decoder
  (``response_conv._tensor_data_from_proto``) on the same message.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, Config, Skip, case, interleave, row, sdk_python
from bench.timing import calibrate, per_call_seconds
from tinkerstore.types import tinker_public_pb2 as pb
from tinkerstore.types.proto import decode_forward_backward_request, encode_forward_backward_output
from tinkerstore.types.tensor import TensorData

__all__ = ["run"]

OPS = ("json_encode", "json_decode", "proto_encode", "proto_decode")
OURS, SDK = "tinkerstore TensorData", "official SDK 0.38 TensorData"


def _request_body(arr: np.ndarray[Any, Any]) -> bytes:
    tensor = pb.Tensor(dense=arr.tobytes(), dtype=pb.DTYPE_FLOAT32, shape=[arr.size])
    datum = pb.Datum(
        model_input=[
            pb.Chunk(encoded_text=pb.EncodedTextChunk(tokens=np.arange(8, dtype="<i4").tobytes()))
        ],
        loss_fn_inputs={"x": tensor},
    )
    msg = pb.ForwardBackwardRequest(
        model_id="bench", seq_id=1, loss_fn="cross_entropy", data=[datum]
    )
    return bytes(msg.SerializeToString())


def _ours(
    arr: np.ndarray[Any, Any], raw_json: bytes, raw_proto: bytes
) -> dict[str, Callable[[], Any]]:
    return {
        "json_encode": lambda: TensorData.from_numpy(arr).to_json_bytes(),
        "json_decode": lambda: TensorData.from_json_bytes(raw_json).to_numpy(),
        "proto_encode": lambda: encode_forward_backward_output(
            [{"x": TensorData.from_numpy(arr)}], {}
        ),
        "proto_decode": lambda: (
            decode_forward_backward_request(raw_proto).data[0].loss_fn_inputs["x"].to_numpy()
        ),
    }


class _Worker:
    def __init__(self, python: Path, directory: Path) -> None:
        script = REPO / "bench" / "sdk_tensordata_worker.py"
        self.proc = subprocess.Popen(
            [str(python), str(script), str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the SDK worker exited ({self.proc.wait()}); see its stderr above")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _op_case(
    worker: _Worker, mine: Callable[[], Any], op: str, n: int, runs: int
) -> dict[str, Any]:
    k_mine = calibrate(mine)
    k_theirs = worker.ask(op=op, size=n, number=0)["number"]
    results = interleave(
        {
            OURS: lambda: per_call_seconds(mine, k_mine),
            SDK: lambda: worker.ask(op=op, size=n, number=k_theirs)["seconds"],
        },
        runs,
    )
    label = f"{n:,} elements" if n < 1_000_000 else f"{n // 1_000_000}M elements"
    rows = [row(k, v) for k, v in results.items()]
    c = case(f"{op.replace('_', ' ')}, {label}", "s", rows, reference=OURS, lower_is_better=True)
    if n >= 1_000_000:
        ratio = c["rows"][1]["ratio"]
        c["target"] = {
            "text": ">= 5x faster than the SDK on 1M",
            "value": ratio,
            "met": ratio is not None and ratio >= 5,
        }
    c["extra"] = {"calls_per_run": {OURS: k_mine, SDK: k_theirs}}
    return c


def run(cfg: Config) -> dict[str, Any]:
    try:
        python = sdk_python()
    except Skip as exc:
        raise Skip(f"the official SDK is needed for this comparison: {exc}") from None
    directory = cfg.workdir / "inputs"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    inputs = {}
    for n in cfg.tensor_sizes:
        arr = rng.standard_normal(n, dtype=np.float32)
        raw_json = TensorData.from_numpy(arr).to_json_bytes()
        raw_proto = _request_body(arr)
        np.save(directory / f"array-{n}.npy", arr)
        (directory / f"json-{n}.bin").write_bytes(raw_json)
        (directory / f"proto-{n}.bin").write_bytes(raw_proto)
        inputs[n] = (arr, raw_json, raw_proto)

    worker = _Worker(python, directory)
    cases, notes = [], []
    try:
        for n, (arr, raw_json, raw_proto) in inputs.items():
            same = worker.ask(op="json_digest", size=n, number=1)["digest"]
            if same != hashlib.sha256(raw_json).hexdigest():
                notes.append(f"{n} elements: our JSON bytes differ from the SDK's")
            theirs = worker.ask(op="proto_digest", size=n, number=1)["digest"]
            mine = encode_forward_backward_output([{"x": TensorData.from_numpy(arr)}], {})
            if theirs != hashlib.sha256(mine).hexdigest():
                notes.append(f"{n} elements: our protobuf bytes differ from the SDK side's")
            ours = _ours(arr, raw_json, raw_proto)
            cases += [_op_case(worker, ours[op], op, n, cfg.runs) for op in OPS]
    finally:
        worker.close()
    notes.append(
        "float32 arrays; JSON and protobuf bytes are checked identical to the SDK side's "
        "before timing; proto encode = the same ForwardBackwardOutput message on both sides"
    )
    return {"cases": cases, "notes": notes}
