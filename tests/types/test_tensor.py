"""TensorData: the SDK's JSON byte for byte, the SDK's dtype rules, CSR, zero-copy, speed."""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel, ValidationError

from tests.support.sdk import SDK_VERSIONS, run_sdk_script
from tinkerstore.errors import InvalidInput, InvalidTensor
from tinkerstore.types.tensor import MAX_ELEMENTS, TensorData

# --- the official SDK's JSON, both versions ---------------------------------------------------

# The SDK applies its dtype rules in the public (dataclass) TensorData and writes JSON with its
# pydantic model of the same name; `direct` is that model's own from_numpy, for arrays that are
# already float32/int64. `back` is the SDK reading OUR JSON (it refuses null, so arrays with
# NaN/inf come back as an error on its side, which is the SDK's behaviour, not ours).
SDK_JSON_SCRIPT = """
import base64, json, sys
import numpy as np
from tinker import TensorData
from tinker.types._pydantic_types.tensor_data import TensorData as Model

out = []
for case in json.load(sys.stdin):
    raw = base64.b64decode(case["b64"])
    arr = np.frombuffer(raw, dtype=np.dtype(case["np_dtype"])).reshape(case["shape"])
    if case["crow"] is not None:
        td = TensorData(data=arr, dtype=case["dtype"], shape=case["dense_shape"],
                        sparse_crow_indices=case["crow"], sparse_col_indices=case["col"])
    else:
        td = TensorData.from_numpy(arr)
    model = Model(data=td.data, dtype=td.dtype, shape=td.shape,
                  sparse_crow_indices=td.sparse_crow_indices,
                  sparse_col_indices=td.sparse_col_indices)
    item = {"json": model.model_dump_json()}
    if case["np_dtype"] in ("<f4", "<i8") and case["crow"] is None:
        item["direct"] = Model.from_numpy(arr).model_dump_json()
    try:
        back = Model.model_validate_json(case["ours"])
    except Exception as exc:
        item["back_error"] = type(exc).__name__
    else:
        if back.sparse_crow_indices is None:
            a = back.to_numpy()
            item["back"] = [base64.b64encode(a.tobytes()).decode(), a.dtype.str, list(a.shape)]
    out.append(item)
print(json.dumps(out))
"""


def _sdk_cases() -> list[tuple[np.ndarray, TensorData]]:
    rng = np.random.default_rng(20240601)
    specials = [0.0, -0.0, 1.0, 0.1, 1 / 3, 1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38]
    specials += [1e16, 1e-5, 1e-4, 123456.789, 2.0**24 + 1, 1e15, 9.999e15, 5e-8, -2.5e-30]
    bits = rng.integers(0, 2**32, 300, dtype=np.uint64).astype(np.uint32).view(np.float32)
    dense: list[np.ndarray] = [
        np.array(specials, dtype=np.float32),
        np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32),
        bits[np.isfinite(bits)],  # random bit patterns: subnormals, every exponent
        rng.standard_normal((3, 4)).astype(np.float32),
        (rng.standard_normal(64) * 10.0 ** rng.integers(-38, 38, 64)).astype(np.float32),
        rng.standard_normal(10),  # float64 is narrowed to float32
        rng.standard_normal((2, 3)).astype(np.float16),
        np.array([0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, 10**15, 10**16, 10**17]),
        rng.integers(-1000, 1000, (2, 3, 4)).astype(np.int32),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array(3.25, dtype=np.float32),
        np.empty(0, np.float32),
        np.empty((2, 0), np.int64),
    ]
    cases = [(a, TensorData.from_numpy(a)) for a in dense]
    for dense_2d in (
        np.array([[0, 0, 7, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, -2]], dtype=np.int64),
        np.where(rng.random((6, 9)) < 0.1, rng.standard_normal((6, 9)), 0).astype(np.float32),
    ):
        sparse = TensorData.from_numpy_sparse(dense_2d)
        assert sparse.is_sparse
        cases.append((dense_2d, sparse))
    return cases


def _payload(arr: np.ndarray, ours: TensorData) -> dict[str, Any]:
    stored = ours.values if ours.is_sparse else arr
    crow, col = ours.sparse_crow_indices, ours.sparse_col_indices
    return {
        "b64": base64.b64encode(np.ascontiguousarray(stored).tobytes()).decode(),
        "np_dtype": stored.dtype.str,
        "shape": list(stored.shape),
        "dtype": ours.dtype,
        "dense_shape": list(arr.shape),
        "crow": None if crow is None else crow.tolist(),
        "col": None if col is None else col.tolist(),
        "ours": ours.to_json_bytes().decode(),
    }


@pytest.mark.sdk
@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_json_is_byte_identical_to_the_sdk(version: str) -> None:
    cases = _sdk_cases()
    results = run_sdk_script(version, SDK_JSON_SCRIPT, stdin=[_payload(a, t) for a, t in cases])
    assert len(results) == len(cases)
    for (arr, ours), got in zip(cases, results, strict=True):
        assert ours.to_json_bytes().decode() == got["json"], arr
        if "direct" in got:
            assert got["direct"] == got["json"]
        # Our JSON parses back to the same tensor, and (when finite) the SDK reads it exactly.
        assert TensorData.from_json_bytes(got["json"]) == _nonfinite_as_nan(ours)
        if "back" in got:
            b64, dtype, shape = got["back"]
            back = np.frombuffer(base64.b64decode(b64), dtype=dtype).reshape(shape)
            assert back.dtype == ours.to_numpy().dtype
            assert np.array_equal(back, ours.to_numpy())
        elif ours.is_sparse:
            assert "back_error" not in got
        else:
            assert not np.isfinite(ours.to_numpy()).all(), got.get("back_error")


def _nonfinite_as_nan(t: TensorData) -> TensorData:
    """JSON (the SDK's and ours) writes NaN and ±inf as null, which reads back as NaN."""
    if t.dtype != "float32":
        return t
    values = np.where(np.isfinite(t.values), t.values, np.float32(np.nan))
    return TensorData(values, t.dtype, t.shape, t.sparse_crow_indices, t.sparse_col_indices)


# --- round trips ----------------------------------------------------------------------------

SUPPORTED = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64]


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(SUPPORTED),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_numpy_json_numpy_round_trip(arr: np.ndarray) -> None:
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in numpy
        expected = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
    ours = TensorData.from_numpy(arr)
    assert ours.shape == arr.shape
    assert ours.dtype == ("float32" if arr.dtype.kind == "f" else "int64")
    back = TensorData.from_json_bytes(ours.to_json_bytes()).to_numpy()
    assert back.dtype == expected.dtype and back.shape == expected.shape
    if expected.dtype.kind == "f":
        expected = np.where(np.isfinite(expected), expected, np.float32(np.nan))
        # Exact float32 equality, bit for bit (so -0.0 stays -0.0).
        nan = np.isnan(expected)
        assert np.array_equal(nan, np.isnan(back))
        assert np.array_equal(expected[~nan].view(np.int32), back[~nan].view(np.int32))
    else:
        assert np.array_equal(back, expected)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.int64, np.float32]),
        shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
        elements=st.sampled_from([0, 0, 0, 0, 3, -1, 2]),
    ),
    st.sampled_from([0, -1, 3]),
)
def test_sparse_csr_round_trip(dense: np.ndarray, pad: int) -> None:
    t = TensorData.from_numpy_sparse(dense, pad_value=pad)
    assert np.array_equal(t.to_numpy(pad_value=pad), dense)
    again = TensorData.from_json_bytes(t.to_json_bytes())
    assert again == t
    assert np.array_equal(again.to_numpy(pad_value=pad), dense)
    if t.is_sparse:
        assert t.values.size == np.count_nonzero(dense != pad)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_densify_agrees_with_torch() -> None:
    torch = pytest.importorskip("torch")
    dense = np.array([[0, 5, 0, 0], [0, 0, 0, 0], [4, 0, 0, 9]], dtype=np.int64)
    t = TensorData.from_torch_sparse(torch.from_numpy(dense), pad_value=0)
    assert t.is_sparse
    crow, col = t.sparse_crow_indices, t.sparse_col_indices
    assert crow is not None and col is not None
    with torch.sparse.check_sparse_tensor_invariants():
        expected = torch.sparse_csr_tensor(
            torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(t.values), (3, 4)
        ).to_dense()
    assert torch.equal(t.to_torch(), expected)
    csr = TensorData.from_torch(torch.from_numpy(dense).to_sparse_csr())
    assert csr == t


@pytest.mark.parametrize(
    ("crow", "col", "why"),
    [
        ([0, 1, 3], [2, 0], "sizes"),
        ([0, 2, 1, 3], [0, 1, 2], "never decrease"),
        ([1, 1, 2, 3], [0, 1, 2], "start at 0"),
        ([0, 1, 1, 4], [0, 1, 2], "lie in"),
        ([0, 1, 1, 3], [0, 3, 1], "sorted and distinct"),
        ([0, 1, 1, 3], [0, 1, 1], "sorted and distinct"),
        ([0, 1, 1, 3], [0, 1, 6], "column index outside"),
        ([0, 2**62, -(2**63), -(2**62), 3], [0, 1, 2], "sizes"),
    ],
)
def test_invalid_csr_is_refused(crow: list[int], col: list[int], why: str) -> None:
    with pytest.raises(InvalidTensor, match=why):
        TensorData([1, 2, 3], "int64", [3, 6], crow, col)


def test_hostile_wraparound_row_pointers_are_refused_before_allocating() -> None:
    crow = [0, 2**62, -(2**63), -(2**62), 0]
    with pytest.raises(InvalidTensor, match="lie in"):
        TensorData.from_json_dict(
            {
                "data": [],
                "dtype": "int64",
                "shape": [4, 4],
                "sparse_crow_indices": crow,
                "sparse_col_indices": [],
            }
        )


# --- dtype rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [(np.float16, "float32"), (np.float64, "float32"), (np.int8, "int64"), (np.int32, "int64")],
)
def test_dtypes_are_widened_or_narrowed_like_the_sdk(dtype: Any, wire: str) -> None:
    t = TensorData.from_numpy(np.arange(6, dtype=dtype).reshape(2, 3))
    assert t.dtype == wire
    assert t.to_numpy().dtype == np.dtype(wire)
    assert t.to_numpy().tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    "arr",
    [
        np.array([True, False]),
        np.array([1, 2], dtype=np.uint8),
        np.array([1, 2], dtype=np.uint64),
        np.array([1 + 2j]),
        np.array(["a"]),
        np.array([object()], dtype=object),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
    ],
)
def test_other_dtypes_are_refused_clearly(arr: np.ndarray) -> None:
    with pytest.raises(InvalidTensor) as info:
        TensorData.from_numpy(arr)
    assert arr.dtype.name in str(info.value)
    assert "float32" in str(info.value) and info.value.hint


def test_torch_dtype_rules() -> None:
    torch = pytest.importorskip("torch")
    bf = torch.tensor([[1.5, -2.25], [3.0e38, 1e-3]], dtype=torch.bfloat16)
    t = TensorData.from_torch(bf)
    assert t.dtype == "float32" and t.shape == (2, 2)
    assert np.array_equal(t.to_numpy(), bf.float().numpy())  # widening is exact
    assert TensorData.from_torch(torch.arange(3, dtype=torch.int32)).dtype == "int64"
    assert TensorData.from_torch(torch.ones(2, dtype=torch.float64)).dtype == "float32"
    grad = torch.ones(3, requires_grad=True) * 2
    assert TensorData.from_torch(grad).tolist() == [2.0, 2.0, 2.0]
    for bad in (torch.bool, torch.uint8, torch.complex64):
        with pytest.raises(InvalidTensor, match=str(bad)):
            TensorData.from_torch(torch.zeros(2, dtype=bad))


def test_invalid_tensor_is_an_invalid_input() -> None:
    assert issubclass(InvalidTensor, InvalidInput)
    assert InvalidTensor.status == 400


# --- zero copy ------------------------------------------------------------------------------


def test_to_numpy_and_to_torch_share_memory() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = TensorData.from_numpy(arr)
    assert t.to_numpy() is arr
    torch = pytest.importorskip("torch")
    tt = t.to_torch()
    tt[0, 0] = 42.0
    assert arr[0, 0] == 42.0
    back = TensorData.from_torch(tt)
    assert np.shares_memory(back.to_numpy(), arr)
    view = arr[:, ::2]  # not contiguous: still no copy
    assert np.shares_memory(TensorData.from_numpy(view).to_numpy(), arr)
    readonly = np.frombuffer(arr.tobytes(), dtype=np.float32)
    assert not readonly.flags.writeable
    assert torch.equal(TensorData.from_numpy(readonly).to_torch(), torch.from_numpy(arr.ravel()))


# --- JSON validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"data": [1, True], "dtype": "float32"}, r"data\[1\] is True"),
        ({"data": [1, "2"], "dtype": "int64"}, r"data\[1\] is '2'"),
        ({"data": [[1, 2]], "dtype": "int64"}, "not a number"),
        ({"data": [1.5], "dtype": "int64"}, "non-integer value 1.5"),
        ({"data": [None], "dtype": "int64"}, "non-integer"),
        ({"data": [2**63], "dtype": "int64"}, "out of range"),
        ({"data": [1], "dtype": "int32"}, "dtype must be"),
        ({"data": [1], "dtype": "int64", "extra": 1}, "unknown keys"),
        ({"dtype": "int64"}, "lacks keys"),
        ({"data": "abc", "dtype": "int64"}, "JSON list"),
        ({"data": [1, 2, 3], "dtype": "int64", "shape": [2, 2]}, "needs 4"),
        ({"data": [1], "dtype": "int64", "shape": [-1]}, "outside"),
        ({"data": [1], "dtype": "int64", "shape": [True]}, "non-integer dimension"),
        (
            {
                "data": [],
                "dtype": "int64",
                "shape": [MAX_ELEMENTS, 2],
                "sparse_crow_indices": [0],
                "sparse_col_indices": [],
            },
            "more than",
        ),
        (
            {
                "data": [1],
                "dtype": "int64",
                "sparse_crow_indices": [0, 1],
                "sparse_col_indices": [0],
            },
            "needs its dense shape",
        ),
        (
            {"data": [1], "dtype": "int64", "shape": [1, 1], "sparse_crow_indices": [0, 1]},
            "come together",
        ),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_json_is_refused_with_a_reason(obj: Any, match: str) -> None:
    with pytest.raises(InvalidTensor, match=match):
        TensorData.from_json_bytes(json.dumps(obj))


def test_json_null_reads_as_nan_and_integral_floats_as_int64() -> None:
    t = TensorData.from_json_bytes(b'{"data":[1,null,2.5],"dtype":"float32"}')
    assert t.shape is None and np.isnan(t.to_numpy()[1])
    assert TensorData.from_json_bytes(b'{"data":[1.0,-2.0],"dtype":"int64"}').tolist() == [1, -2]
    with pytest.raises(InvalidTensor, match="does not parse"):
        TensorData.from_json_bytes(b'{"data": [1,')


def test_a_million_elements_bad_at_the_end_fail_fast() -> None:
    obj = {"data": [0.5] * 1_000_000 + ["x"], "dtype": "float32"}
    start = time.perf_counter()
    with pytest.raises(InvalidTensor, match=r"data\[1000000\]"):
        TensorData.from_json_dict(obj)
    assert time.perf_counter() - start < 2.0


def test_exclude_none_drops_only_absent_fields() -> None:
    t = TensorData([1, 2], "int64")
    assert t.to_json_bytes(exclude_none=True) == b'{"data":[1,2],"dtype":"int64"}'
    assert json.loads(t.to_json_bytes())["shape"] is None


# --- pydantic -------------------------------------------------------------------------------


class _Holder(BaseModel):
    name: str
    tensor: TensorData
    extra: dict[str, TensorData] = {}


def test_tensor_data_is_a_pydantic_field() -> None:
    arr = np.array([[1.5, -0.0], [np.nan, 7.0]], dtype=np.float32)
    h = _Holder(name="x", tensor=TensorData.from_numpy(arr))
    dumped = h.model_dump_json()
    inner = TensorData.from_numpy(arr).to_json_bytes().decode()
    assert dumped == '{"name":"x","tensor":' + inner + ',"extra":{}}'
    back = _Holder.model_validate_json(dumped)
    assert back.tensor == _nonfinite_as_nan(h.tensor)
    from_dict = _Holder.model_validate({"name": "y", "tensor": {"data": [1], "dtype": "int64"}})
    assert from_dict.tensor.tolist() == [1]
    with pytest.raises(ValidationError) as info:
        _Holder.model_validate_json('{"name":"z","tensor":{"data":[true],"dtype":"int64"}}')
    err = info.value.errors()[0]
    assert err["loc"] == ("tensor",) and err["type"] == "invalid_tensor"
    schema = _Holder.model_json_schema()
    assert "TensorData" in json.dumps(schema)


# --- speed ----------------------------------------------------------------------------------


def test_a_million_float32_encode_and_decode_in_well_under_a_second() -> None:
    arr = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    t = TensorData.from_numpy(arr)
    start = time.perf_counter()
    raw = t.to_json_bytes()
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    back = TensorData.from_json_bytes(raw)
    decode_s = time.perf_counter() - start
    assert np.array_equal(back.to_numpy(), arr)
    # About 0.2 s each on a CI core; the margin absorbs a loaded machine.
    assert encode_s < 1.0 and decode_s < 1.5, (encode_s, decode_s)
    assert math.isclose(len(raw) / arr.size, 19.6, rel_tol=0.1)
