"""The protobuf wire against the real SDK (both versions), plus a fuzzed decoder.

* A ForwardBackwardRequest serialized by the SDK's own request_conv decodes to the right arrays.
* ForwardBackwardOutput / SampleResponse bytes we encode are read by the SDK's own response_conv
  (and its result combiner, as ``.result()`` runs it) into exactly the values we meant.
* Random and mutated bodies only ever raise our InvalidInput family.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.sdk import SDK_VERSIONS, run_sdk_script
from tinkerstore.errors import InvalidInput, InvalidTensor, PayloadTooLarge, TinkerstoreError
from tinkerstore.types import proto
from tinkerstore.types import tinker_public_pb2 as pb
from tinkerstore.types.proto import SampledSequenceOutput
from tinkerstore.types.tensor import TensorData

pytestmark = pytest.mark.timeout(300)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- SDK → us: ForwardBackwardRequest ---------------------------------------------------------

# Built the way TrainingClient does: Datum coercion, request_conv, then forward_only on the
# message, then (when the server asks for it) zstd of the serialized body.
REQUEST_SCRIPT = """
import base64, json
import numpy as np
import zstandard
import tinker
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

v038 = tinker.__version__.startswith("0.38")
chunks = [types.EncodedTextChunk(tokens=[5, 6]), types.EncodedTextChunk(tokens=[2**31 - 1, 0, 7])]
d0 = types.Datum(
    model_input=types.ModelInput(chunks=chunks),
    loss_fn_inputs={
        "target_tokens": np.array([6, 2**31 - 1, 0, 7, 8], dtype=np.int64),
        "weights": [1.0, 0.5, 0.0, 1.0, 0.25],
        "advantages": np.array([0.1, -2.5, 3e-8, 1e30, -0.0]),
    },
)
d1 = types.Datum(
    model_input=types.ModelInput.from_ints([1, 2, 3]),
    loss_fn_inputs={
        "target_tokens": np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int32),
        "logprobs": types.TensorData(data=np.array([9.5, -1.0], dtype=np.float32),
                                     dtype="float32", shape=[3, 4],
                                     sparse_crow_indices=[0, 1, 1, 2], sparse_col_indices=[3, 0]),
    },
)
config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.25}
if v038:
    span = [types.PromptProvenanceSpan(sequence_id="s", length=5)]
    d0 = d0.with_provenance(model_input=span, loss_fn_inputs=span)
    config["mode"] = "token"
req = types.ForwardBackwardRequest(
    forward_backward_input=types.ForwardBackwardInput(data=[d0, d1], loss_fn="ppo",
                                                      loss_fn_config=config),
    model_id="run-1:train:0", seq_id=7)
msg = forward_backward_request_to_proto(req)
msg.forward_only = True
body = msg.SerializeToString()
enc = lambda raw: base64.b64encode(raw).decode()

# Our generated module must import next to the SDK's (same proto file name, and 0.25's copy
# differs): it keeps its descriptors in a private pool.
import importlib.util, os
spec = importlib.util.spec_from_file_location("ours_pb2", os.environ["TINKERSTORE_PB2"])
ours = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ours)
same = ours.ForwardBackwardRequest.FromString(body).SerializeToString(deterministic=True)
assert same == msg.SerializeToString(deterministic=True)

print(json.dumps({"version": tinker.__version__, "body": enc(body),
                  "zstd": enc(zstandard.ZstdCompressor().compress(body))}))
"""


@pytest.fixture(scope="module", params=SDK_VERSIONS)
def sdk_request(request: pytest.FixtureRequest) -> dict[str, Any]:
    got: dict[str, Any] = run_sdk_script(
        request.param, REQUEST_SCRIPT, env={"TINKERSTORE_PB2": pb.__file__}
    )
    assert got["version"].startswith(request.param)
    return got


def _check_sdk_request(req: proto.FwdBwdRequest, version: str) -> None:
    assert (req.model_id, req.seq_id, req.loss_fn, req.forward_only) == (
        "run-1:train:0",
        7,
        "ppo",
        True,
    )
    expected_config: dict[str, float | str] = {
        "clip_low_threshold": 0.8,
        "clip_high_threshold": 1.25,
    }
    if version.startswith("0.38"):
        expected_config["mode"] = "token"  # only in loss_fn_config_v2, which wins
    assert req.loss_fn_config == expected_config
    d0, d1 = req.data
    assert d0.model_input.dtype == np.int32
    assert d0.model_input.tolist() == [5, 6, 2**31 - 1, 0, 7]
    assert d1.model_input.tolist() == [1, 2, 3]
    assert sorted(d0.loss_fn_inputs) == ["advantages", "target_tokens", "weights"]
    tt = d0.loss_fn_inputs["target_tokens"]
    assert tt.dtype == "int64" and tt.to_numpy().tolist() == [6, 2**31 - 1, 0, 7, 8]
    w = d0.loss_fn_inputs["weights"].to_numpy()
    assert w.dtype == np.float32 and w.tolist() == [1.0, 0.5, 0.0, 1.0, 0.25]
    adv = d0.loss_fn_inputs["advantages"].to_numpy()
    expected_adv = np.array([0.1, -2.5, 3e-8, 1e30, -0.0]).astype(np.float32)
    assert np.array_equal(adv.view(np.int32), expected_adv.view(np.int32))  # bit-exact, -0.0
    tt1 = d1.loss_fn_inputs["target_tokens"]
    assert tt1.dtype == "int64" and tt1.to_numpy().tolist() == [[1, 2], [3, 4], [5, 6]]
    lp = d1.loss_fn_inputs["logprobs"]
    assert lp.is_sparse and lp.shape == (3, 4)
    dense = np.zeros((3, 4), np.float32)
    dense[0, 3], dense[2, 0] = 9.5, -1.0
    assert np.array_equal(lp.to_numpy(), dense)


def test_sdk_forward_backward_request_decodes(sdk_request: dict[str, Any]) -> None:
    req = proto.decode_forward_backward_request(base64.b64decode(sdk_request["body"]))
    _check_sdk_request(req, sdk_request["version"])


def test_sdk_zstd_forward_backward_request_decodes(sdk_request: dict[str, Any]) -> None:
    body = base64.b64decode(sdk_request["zstd"])
    if not proto.zstd_available():
        with pytest.raises(InvalidInput, match="zstd request bodies are not enabled"):
            proto.decode_forward_backward_request(body, content_encoding="zstd")
        return
    req = proto.decode_forward_backward_request(body, content_encoding=" ZSTD ")
    _check_sdk_request(req, sdk_request["version"])
    with pytest.raises(PayloadTooLarge):
        proto.decode_forward_backward_request(
            body, content_encoding="zstd", max_decompressed_bytes=100
        )


def test_zstd_bomb_stops_at_the_cap() -> None:
    zstandard = pytest.importorskip("zstandard")
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    assert len(bomb) < 64 << 10
    with pytest.raises(PayloadTooLarge):
        proto.decode_forward_backward_request(
            bomb, content_encoding="zstd", max_decompressed_bytes=1 << 20
        )
    with pytest.raises(InvalidInput, match="does not decompress"):
        proto.decode_forward_backward_request(b"not zstd", content_encoding="zstd")
    with pytest.raises(InvalidInput, match="unsupported Content-Encoding"):
        proto.decode_forward_backward_request(b"", content_encoding="gzip")


# --- us → SDK: ForwardBackwardOutput and SampleResponse --------------------------------------

FWD_OUTPUT_SCRIPT = """
import base64, json, sys
from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results
from tinker.proto.response_conv import deserialize_forward_backward_output

out = []
for raw in json.load(sys.stdin):
    res = combine_fwd_bwd_output_results(
        [deserialize_forward_backward_output(base64.b64decode(raw))])
    outputs = []
    for datum in res.loss_fn_outputs:
        item = {}
        for name, td in datum.items():
            a = td.to_numpy()
            item[name] = [td.dtype, td.shape, base64.b64encode(a.tobytes()).decode(), a.dtype.str]
        outputs.append(item)
    out.append({"type": res.loss_fn_output_type, "metrics": res.metrics, "outputs": outputs})
print(json.dumps(out))
"""


def _fwd_cases() -> list[tuple[list[dict[str, Any]], dict[str, float]]]:
    rng = np.random.default_rng(7)
    ce = [{"logprobs": rng.standard_normal(n).astype(np.float32)} for n in (5, 0, 3)]
    ragged: list[dict[str, Any]] = [
        {"logprobs": np.float64(-0.5), "topk": np.arange(8).reshape(2, 4)},
        {"logprobs": np.array([1.0, 2.0]), "topk": np.arange(12, dtype=np.int32).reshape(3, 4)},
        {"logprobs": np.array([3.0]), "topk": np.array([[7, 8]])},  # new trailing shape
        {
            "logprobs": TensorData([4.0, np.nan], "float32"),
            "topk": TensorData.from_numpy_sparse(np.array([[0, 0], [0, 5], [0, 0]])),
        },
    ]
    return [
        (ce, {"loss:sum": 1.25, "acc:mean": 0.5, "tokens:max": 8.0}),
        (ragged, {"loss:sum": -3.5}),
        ([], {"loss:sum": 0.0}),
    ]


@pytest.mark.sdk
@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_forward_backward_output_reads_back_in_the_sdk(version: str) -> None:
    cases = _fwd_cases()
    encoded = [b64(proto.encode_forward_backward_output(o, m)) for o, m in cases]
    results = run_sdk_script(version, FWD_OUTPUT_SCRIPT, stdin=encoded)
    for (outputs, metrics), got in zip(cases, results, strict=True):
        assert got["type"] == "ArrayRecord"
        assert got["metrics"] == metrics
        assert len(got["outputs"]) == len(outputs)
        for ours, theirs in zip(outputs, got["outputs"], strict=True):
            assert sorted(theirs) == sorted(ours)
            for name, value in ours.items():
                arr = value.to_numpy() if isinstance(value, TensorData) else np.asarray(value)
                arr = arr.reshape(-1) if arr.ndim == 0 else arr
                wire = "float32" if arr.dtype.kind == "f" else "int64"
                dtype, shape, raw, np_dtype = theirs[name]
                assert (dtype, shape, np.dtype(np_dtype)) == (wire, list(arr.shape), wire)
                back = np.frombuffer(base64.b64decode(raw), dtype=np_dtype).reshape(shape)
                assert np.array_equal(back, arr.astype(wire), equal_nan=True)


SAMPLE_SCRIPT = """
import base64, json, sys
from tinker.proto.response_conv import deserialize_sample_response

out = []
for raw in json.load(sys.stdin):
    r = deserialize_sample_response(base64.b64decode(raw))
    out.append({
        "sequences": [[s.stop_reason, s.tokens, s.logprobs] for s in r.sequences],
        "prompt_logprobs": r.prompt_logprobs,
        "topk": r.topk_prompt_logprobs,
        "cache": r.prompt_cache_hit_tokens,
    })
print(json.dumps(out))
"""


@pytest.mark.sdk
@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_sample_response_reads_back_in_the_sdk(version: str) -> None:
    logprobs = np.array([-0.1, -2.5e-7, -30.25], dtype=np.float32)
    seqs = [
        SampledSequenceOutput(tokens=[1, 2, 2**31 - 1], stop_reason="stop", logprobs=logprobs),
        SampledSequenceOutput(tokens=np.array([], np.int64), stop_reason="length"),
    ]
    ids = np.array([[0, 0], [11, 12], [13, 14]])
    topk_lp = np.array([[-99999.0, -99999.0], [-0.5, -1.5], [-0.25, -3.0]])
    encoded = [
        proto.encode_sample_response(
            seqs,
            prompt_logprobs=[None, -1.5, -0.75],
            topk_prompt_logprobs=(ids, topk_lp),
            prompt_cache_hit_tokens=3,
        ),
        proto.encode_sample_response([]),
    ]
    full, empty = run_sdk_script(version, SAMPLE_SCRIPT, stdin=[b64(e) for e in encoded])
    assert full["sequences"] == [
        ["stop", [1, 2, 2**31 - 1], logprobs.tolist()],
        ["length", [], None],
    ]
    assert full["prompt_logprobs"] == [None, -1.5, -0.75]
    assert full["topk"] == [None, [[11, -0.5], [12, -1.5]], [[13, -0.25], [14, -3.0]]]
    assert full["cache"] == 3
    assert empty == {"sequences": [], "prompt_logprobs": None, "topk": None, "cache": 0}


def test_encoders_refuse_what_the_sdk_would_choke_on() -> None:
    with pytest.raises(TinkerstoreError, match="name:reduction"):
        proto.encode_forward_backward_output([], {"loss": 1.0})
    with pytest.raises(TinkerstoreError, match="at least one"):
        proto.encode_forward_backward_output([], {"acc:mean": 1.0})
    with pytest.raises(TinkerstoreError, match="same fields"):
        proto.encode_forward_backward_output([{"a": [1.0]}, {"b": [1.0]}], {})
    with pytest.raises(InvalidTensor, match="bool"):
        proto.encode_forward_backward_output([{"a": np.array([True])}], {})
    with pytest.raises(InvalidTensor, match="int32"):
        proto.encode_sample_response([SampledSequenceOutput(tokens=[2**31])])
    with pytest.raises(TinkerstoreError, match="stop_reason"):
        proto.encode_sample_response([SampledSequenceOutput(tokens=[1], stop_reason="eos")])  # type: ignore[arg-type]


def test_byte_offsets_are_int64_and_cumulative() -> None:
    raw = proto.encode_forward_backward_output(
        [{"logprobs": np.ones(3, np.float32)}, {"logprobs": np.ones(2, np.float32)}],
        {"loss:sum": 1.0},
    )
    msg = pb.ForwardBackwardOutput.FromString(raw)
    (record,) = msg.loss_fn_outputs
    assert record.num_datums == 2
    bt = record.fields["logprobs"]
    assert np.frombuffer(bt.offsets, "<i8").tolist() == [0, 12, 20]
    assert bt.dtype == pb.DTYPE_FLOAT32 and list(bt.trailing_shape) == []


# --- decoder checks on hand-built messages ---------------------------------------------------


def _request(**tensors: pb.Tensor) -> pb.ForwardBackwardRequest:
    msg = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    datum = msg.data.add()
    datum.model_input.add().encoded_text.tokens = np.array([1, 2], "<i4").tobytes()
    for name, tensor in tensors.items():
        datum.loss_fn_inputs[name].CopyFrom(tensor)
    return msg


def _decode(msg: pb.ForwardBackwardRequest, **kw: Any) -> proto.FwdBwdRequest:
    return proto.decode_forward_backward_request(msg.SerializeToString(), **kw)


def test_bfloat16_and_int32_are_widened() -> None:
    values = np.array([1.5, -2.0, 3.0e38], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    got = (
        _decode(
            _request(
                w=pb.Tensor(dense=bf16.tobytes(), dtype=pb.DTYPE_BFLOAT16, shape=[3]),
                t=pb.Tensor(dense=np.array([-5, 9], "<i4").tobytes(), dtype=pb.DTYPE_INT32),
            )
        )
        .data[0]
        .loss_fn_inputs
    )
    expected = (bf16.astype(np.uint32) << 16).view(np.float32)
    assert got["w"].dtype == "float32" and np.array_equal(got["w"].to_numpy(), expected)
    assert got["t"].dtype == "int64" and got["t"].to_numpy().tolist() == [-5, 9]
    assert got["t"].shape == (2,)  # no shape on the wire: 1-D


def test_legacy_loss_fn_config_is_used_without_v2() -> None:
    msg = _request()
    msg.loss_fn_config["beta"] = 0.25
    assert _decode(msg).loss_fn_config == {"beta": 0.25}
    msg.loss_fn_config_v2["beta"].number = 0.5
    msg.loss_fn_config_v2["kind"].text = "x"
    assert _decode(msg).loss_fn_config == {"beta": 0.5, "kind": "x"}


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (pb.Tensor(dense=b"\0" * 4, dtype=pb.DTYPE_UNSPECIFIED), "unsupported dtype"),
        (pb.Tensor(dense=b"\0" * 4, dtype=77), "unsupported dtype"),  # type: ignore[arg-type]
        (pb.Tensor(dense=b"\0" * 5, dtype=pb.DTYPE_FLOAT32), "whole number"),
        (pb.Tensor(dense=b"\0" * 8, dtype=pb.DTYPE_FLOAT32, shape=[3]), "needs 3"),
        (pb.Tensor(dense=b"", dtype=pb.DTYPE_FLOAT32, shape=[-1]), "negative or too large"),
        (
            pb.Tensor(
                sparse_csr=pb.SparseCsr(crow_indices=np.zeros(2, "<i8").tobytes()),
                dtype=pb.DTYPE_INT64,
                shape=[1, 2**40],
            ),
            "negative or too large",
        ),
        (pb.Tensor(sparse_csr=pb.SparseCsr(), dtype=pb.DTYPE_INT64), "must be 2-D"),
    ],
)
def test_bad_tensors_are_refused(tensor: pb.Tensor, match: str) -> None:
    with pytest.raises(InvalidTensor, match=match) as info:
        _decode(_request(bad=tensor))
    assert "loss_fn_inputs['bad']" in str(info.value)


def test_sparse_shapes_count_against_the_request_budget() -> None:
    # Ten bytes of CSR declaring 2**20 elements each: fine once, refused past the budget.
    csr = pb.Tensor(
        sparse_csr=pb.SparseCsr(crow_indices=np.zeros(1025, "<i8").tobytes()),
        dtype=pb.DTYPE_FLOAT32,
        shape=[1024, 1024],
    )
    assert _decode(_request(a=csr)).data[0].loss_fn_inputs["a"].shape == (1024, 1024)
    with pytest.raises(InvalidTensor, match="too many elements"):
        _decode(_request(a=csr, b=csr), max_elements=(1 << 20) + 100)


@pytest.mark.parametrize("kind", ["image", "dmel", None])
def test_non_text_chunks_are_refused(kind: str | None) -> None:
    msg = _request()
    chunk = msg.data[0].model_input.add()
    if kind == "image":
        chunk.image.data, chunk.image.format = b"\x89PNG", "png"
    elif kind == "dmel":
        chunk.dmel.dmel = b"x"
    with pytest.raises(InvalidInput, match="not supported by this server") as info:
        _decode(msg)
    assert info.value.hint


def test_tokens_from_several_chunks_are_joined() -> None:
    msg = _request()
    msg.data[0].model_input.add().encoded_text.tokens = np.array([3], "<i4").tobytes()
    assert _decode(msg).data[0].model_input.tolist() == [1, 2, 3]
    msg.data[0].model_input[1].encoded_text.tokens = b"\0" * 3
    with pytest.raises(InvalidTensor, match="tokens"):
        _decode(msg)


# --- fuzz -----------------------------------------------------------------------------------


def _assert_decodes_or_refuses(body: bytes) -> None:
    try:
        req = proto.decode_forward_backward_request(body, max_elements=1 << 22)
    except InvalidInput:
        return
    for datum in req.data:  # whatever decoded must be usable without surprises
        for tensor in datum.loss_fn_inputs.values():
            assert math.prod(tensor.to_numpy().shape) <= 1 << 22


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(body: bytes) -> None:
    _assert_decodes_or_refuses(body)


def _seed_body() -> bytes:
    csr = pb.Tensor(
        sparse_csr=pb.SparseCsr(
            values=np.ones(2, "<f4").tobytes(),
            crow_indices=np.array([0, 1, 2], "<i8").tobytes(),
            col_indices=np.array([1, 0], "<i8").tobytes(),
        ),
        dtype=pb.DTYPE_FLOAT32,
        shape=[2, 3],
    )
    dense = pb.Tensor(dense=np.arange(4, dtype="<i8").tobytes(), dtype=pb.DTYPE_INT64, shape=[4])
    msg = _request(a=csr, b=dense)
    msg.loss_fn_config_v2["x"].text = "y"
    body: bytes = msg.SerializeToString()
    return body


SEED = _seed_body()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_valid_bodies_never_crash_the_decoder(edits: list[tuple[int, int]]) -> None:
    body = bytearray(SEED)
    for pos, value in edits:
        body[pos] = value
    _assert_decodes_or_refuses(bytes(body))


def test_the_seed_body_decodes() -> None:
    req = proto.decode_forward_backward_request(SEED)
    assert req.data[0].loss_fn_inputs["a"].to_numpy().tolist() == [[0, 1, 0], [1, 0, 0]]
    assert json.loads(req.data[0].loss_fn_inputs["b"].to_json_bytes())["data"] == [0, 1, 2, 3]
