"""Item 4 (parsers): hypothesis against every decoder of untrusted input. Each either returns a
value that satisfies its own invariants or raises one of our errors (a 4xx ``TinkerstoreError``),
within a deadline: no crash, no hang, no other exception type.

Examples per test: 300 in CI, times ``TINKERSTORE_RELIABILITY_SCALE``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import add_figure, scale
from tinkerstore.errors import (
    CheckpointCorrupted,
    InvalidInput,
    PayloadTooLarge,
    RangeNotSatisfiable,
    TinkerstoreError,
)
from tinkerstore.server.downloads import parse_range
from tinkerstore.store.format import FileEntry, Manifest
from tinkerstore.types import tinker_public_pb2 as pb
from tinkerstore.types.paths import ParsedCheckpointTinkerPath
from tinkerstore.types.proto import decode_forward_backward_request
from tinkerstore.types.tensor import TensorData

EXAMPLES = int(300 * scale())
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per input: a parser that takes longer is a hang to us
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def rejected_clearly(exc: BaseException, *allowed: type[TinkerstoreError]) -> None:
    """A rejection must be ours, client-side (4xx), and say something."""
    assert isinstance(exc, allowed or (TinkerstoreError,)), repr(exc)
    assert isinstance(exc, TinkerstoreError) and 400 <= exc.status < 500, repr(exc)
    assert str(exc).strip(), repr(exc)


# -- tinker paths -----------------------------------------------------------------------------
SEGMENT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["..", ".", "", "a/b", "%2e%2e", "weights", "sampler_weights", "x" * 300]),
    st.from_regex(r"[A-Za-z0-9_:.-]{1,20}", fullmatch=True),
)
PATH = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, k, n: f"tinker://{a}/{k}/{n}", SEGMENT, SEGMENT, SEGMENT),
    st.builds(
        lambda a, k, n: f"tinker://{a}/{k}/{n}",
        SEGMENT,
        st.sampled_from(["weights", "sampler_weights", "external_weights"]),
        SEGMENT,
    ),
)


@FUZZ
@given(PATH)
def test_tinker_path_parser(text: str) -> None:
    add_figure("fuzzed inputs: tinker paths", 1)
    try:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(text)
    except Exception as exc:
        rejected_clearly(exc, InvalidInput)
        return
    again = ParsedCheckpointTinkerPath.from_tinker_path(parsed.tinker_path)
    assert again == parsed
    for segment in (parsed.training_run_id, parsed.name):
        assert segment not in ("", ".", "..") and "/" not in segment and "\\" not in segment


# -- TensorData (JSON) ------------------------------------------------------------------------
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.sampled_from(["float32", "int64", "int32", "bfloat16", "float16", "complex64"]),
)  # fmt: skip
JSON = st.recursive(
    JSON_LEAF,
    lambda kids: (
        st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=30,
)
TENSOR_DICT = st.fixed_dictionaries(
    {},
    optional={
        "data": st.one_of(st.lists(st.one_of(st.integers(), st.floats()), max_size=20), JSON),
        "dtype": st.one_of(st.sampled_from(["float32", "int64", "int32", "bfloat16"]), JSON_LEAF),
        "shape": st.one_of(st.none(), st.lists(st.integers(-3, 25), max_size=4), JSON),
        "sparse_crow_indices": st.one_of(st.none(), st.lists(st.integers(-2, 25), max_size=8)),
        "sparse_col_indices": st.one_of(st.none(), st.lists(st.integers(-2, 25), max_size=8)),
        "pad_value": JSON_LEAF,
    },
)


@FUZZ
@given(st.one_of(TENSOR_DICT, JSON))
def test_tensordata_from_json(obj: Any) -> None:
    add_figure("fuzzed inputs: TensorData JSON", 1)
    try:
        tensor = TensorData.from_json_dict(obj)
    except Exception as exc:
        rejected_clearly(exc, InvalidInput)
        return
    dense = tensor.to_numpy()
    assert isinstance(dense, np.ndarray)
    assert TensorData.from_json_bytes(tensor.to_json_bytes()).to_numpy().tolist() == dense.tolist()


@FUZZ
@given(st.binary(max_size=300))
def test_tensordata_from_json_bytes(raw: bytes) -> None:
    add_figure("fuzzed inputs: TensorData JSON bytes", 1)
    try:
        TensorData.from_json_bytes(raw)
    except Exception as exc:
        rejected_clearly(exc, InvalidInput)


# -- protobuf ---------------------------------------------------------------------------------
def _tensor(draw: st.DrawFn) -> Any:
    t = pb.Tensor()
    t.dtype = draw(st.integers(-1, 6))
    t.shape.extend(draw(st.lists(st.integers(-2, 40), max_size=3)))
    if draw(st.booleans()):
        t.dense = draw(st.binary(max_size=64))
    else:
        t.sparse_csr.values = draw(st.binary(max_size=32))
        t.sparse_csr.crow_indices = draw(st.binary(max_size=32))
        t.sparse_csr.col_indices = draw(st.binary(max_size=32))
    return t


@st.composite
def fwdbwd_bodies(draw: st.DrawFn) -> bytes:
    msg = pb.ForwardBackwardRequest()
    msg.model_id = draw(st.text(max_size=10))
    msg.seq_id = draw(st.integers(-(2**31), 2**31 - 1))
    msg.loss_fn = draw(st.sampled_from(["cross_entropy", "ppo", "", "nope"]))
    for _ in range(draw(st.integers(0, 3))):
        datum = msg.data.add()
        for _ in range(draw(st.integers(0, 2))):
            datum.model_input.add().encoded_text.tokens = draw(st.binary(max_size=40))
        for name in draw(st.lists(st.sampled_from(["target_tokens", "weights", "x"]), max_size=2)):
            datum.loss_fn_inputs[name].CopyFrom(_tensor(draw))
    raw = msg.SerializeToString()
    if raw and draw(st.booleans()):  # byte-level damage on top of a structurally valid body
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        raw = bytes(data)
    return raw


@FUZZ
@given(st.one_of(fwdbwd_bodies(), st.binary(max_size=200)))
def test_forward_backward_protobuf(body: bytes) -> None:
    add_figure("fuzzed inputs: protobuf bodies", 1)
    try:
        request = decode_forward_backward_request(body)
    except Exception as exc:
        rejected_clearly(exc, InvalidInput, PayloadTooLarge)
        return
    for datum in request.data:
        assert datum.model_input.dtype == np.int32
        for tensor in datum.loss_fn_inputs.values():
            tensor.to_numpy()


@settings(max_examples=max(20, EXAMPLES // 10), deadline=5000, database=None)
@given(st.binary(max_size=100), st.sampled_from(["zstd", "gzip", "br", " ZSTD ", "identity"]))
def test_compressed_bodies_and_bombs(garbage: bytes, encoding: str) -> None:
    add_figure("fuzzed inputs: compressed bodies", 1)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (8 * 1024 * 1024))
    for body in (garbage, bomb):
        try:
            decode_forward_backward_request(
                body, content_encoding=encoding, max_decompressed_bytes=1024 * 1024
            )
        except Exception as exc:
            rejected_clearly(exc, InvalidInput, PayloadTooLarge)


# -- manifests --------------------------------------------------------------------------------
VALID = Manifest.build(
    "tinker://r:train:0/weights/w",
    [
        FileEntry(path="a/b.bin", size=3, xxh3_128="0" * 32),
        FileEntry(path="c", size=0, xxh3_128="f" * 32),
    ],
).to_bytes()


@st.composite
def manifest_bytes(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice == 1:
        data = json.loads(VALID)
        field = draw(st.sampled_from([*sorted(data), "extra"]))
        data[field] = draw(JSON)
        files = data.get("files")
        if draw(st.booleans()) and isinstance(files, list) and files and isinstance(files[0], dict):
            data["files"][0][draw(st.sampled_from(["path", "size", "xxh3_128", "x"]))] = draw(
                st.one_of(JSON, st.sampled_from(["../x", "/etc/passwd", "a//b", "a\\b", "."]))
            )
        return json.dumps(data).encode()
    raw = bytearray(VALID)
    raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@FUZZ
@given(manifest_bytes(), st.booleans())
def test_manifest_parser(raw: bytes, with_digest: bool) -> None:
    add_figure("fuzzed inputs: manifests", 1)
    digest = hashlib.sha256(VALID).hexdigest() if with_digest else None
    try:
        manifest = Manifest.parse(raw, expected_digest=digest)
    except CheckpointCorrupted:
        assert with_digest and raw != VALID
        return
    except Exception as exc:
        rejected_clearly(exc, InvalidInput)
        return
    for entry in manifest.files:
        assert not entry.path.startswith("/") and ".." not in entry.path.split("/")
    if with_digest:
        assert raw == VALID


# -- Range headers ----------------------------------------------------------------------------
RANGE = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.builds(
        lambda a, b: f"bytes={a}-{b}",
        st.one_of(st.just(""), st.integers(0, 10**6).map(str)),
        st.one_of(st.just(""), st.integers(0, 10**6).map(str)),
    ),
    st.from_regex(r"\s*bytes\s*=\s*\d{0,25}\s*-\s*\d{0,25}\s*(,\s*\d*-\d*)?", fullmatch=True),
)


@FUZZ
@given(RANGE, st.integers(0, 10**6))
def test_range_header(header: str | None, total: int) -> None:
    add_figure("fuzzed inputs: Range headers", 1)
    try:
        span = parse_range(header, total)
    except Exception as exc:
        rejected_clearly(exc, RangeNotSatisfiable)
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= total, (header, total, span)
