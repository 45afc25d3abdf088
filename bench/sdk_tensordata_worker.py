"""The official SDK's side of the TensorData benchmark, run by the SDK venv's own interpreter.

Protocol (JSON lines): the parent writes ``{"op": ..., "size": N, "number": k}`` on stdin; the
worker answers ``{"seconds": per-call seconds}`` (``number`` 0: calibrate and answer
``{"number": k}``). Inputs come from ``DIR/array-N.npy``, ``DIR/json-N.bin`` and
``DIR/proto-N.bin``, written by the parent, so both sides work on the same arrays and bytes.
This file imports nothing from tinkerstore; the timing loop is ``bench/timing.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from timing import calibrate, per_call_seconds
from tinker import types
from tinker.proto import response_conv
from tinker.proto import tinker_public_pb2 as pb
from tinker.types._pydantic_types.tensor_data import TensorData as JsonTensorData


def _fwdbwd_output(arr: Any) -> bytes:
    """The message our server encodes (a ForwardBackwardOutput holding one datum's array),
    built with the SDK's generated classes the way its own codec builds a Tensor
    (``request_conv._tensor_data_to_proto``: ``tobytes()`` into the field, then serialize)."""
    td = types.TensorData.from_numpy(arr)
    flat = td.to_numpy().reshape(-1)
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    record = msg.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=1)
    bt = record.fields["x"]
    bt.data = flat.astype(np.float32, copy=False).tobytes()
    bt.offsets = np.array([0, flat.nbytes], dtype="<i8").tobytes()
    bt.dtype = pb.DTYPE_FLOAT32
    return bytes(msg.SerializeToString())


def _ops(directory: Path, size: int) -> dict[str, Any]:
    arr = np.load(directory / f"array-{size}.npy")
    raw_json = (directory / f"json-{size}.bin").read_bytes()
    raw_proto = (directory / f"proto-{size}.bin").read_bytes()
    return {
        # The JSON wire shape the SDK sends (its pydantic TensorData model).
        "json_encode": lambda: JsonTensorData.from_numpy(arr).model_dump_json(),
        "json_decode": lambda: JsonTensorData.model_validate_json(raw_json).to_numpy(),
        # The same message ours encodes, in the SDK codec's idiom (see _fwdbwd_output); its own
        # Tensor encoder (request_conv._tensor_data_to_proto) makes the same copies.
        "proto_encode": lambda: _fwdbwd_output(arr),
        "proto_digest": lambda: hashlib.sha256(_fwdbwd_output(arr)).hexdigest(),
        "proto_decode": lambda: response_conv._tensor_data_from_proto(
            pb.ForwardBackwardRequest.FromString(raw_proto).data[0].loss_fn_inputs["x"]
        ).to_numpy(),
        "json_digest": lambda: hashlib.sha256(
            JsonTensorData.from_numpy(arr).model_dump_json().encode()
        ).hexdigest(),
    }


def main() -> None:
    directory = Path(sys.argv[1])
    cache: dict[int, dict[str, Any]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        ops = cache.setdefault(req["size"], _ops(directory, req["size"]))
        fn = ops[req["op"]]
        if req["op"] in ("json_digest", "proto_digest"):
            reply: dict[str, Any] = {"digest": fn()}
        elif req["number"] == 0:
            reply = {"number": calibrate(fn)}
        else:
            reply = {"seconds": per_call_seconds(fn, req["number"])}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
