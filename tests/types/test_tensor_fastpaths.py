"""The optional orjson/simdjson fast paths of TensorData give exactly what the plain path gives:
same bytes out, same values or the same error in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinkerstore.errors import InvalidTensor
from tinkerstore.types import tensor
from tinkerstore.types.tensor import TensorData

pytestmark = pytest.mark.skipif(
    tensor.orjson is None or tensor.simdjson is None, reason="fast paths not installed"
)


def plain_parse(raw: bytes) -> TensorData | str:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tensor, "simdjson", None)
        try:
            return TensorData.from_json_bytes(raw)
        except InvalidTensor as exc:
            return f"error: {exc.code}"


def fast_parse(raw: bytes) -> TensorData | str:
    try:
        return TensorData.from_json_bytes(raw)
    except InvalidTensor as exc:
        return f"error: {exc.code}"


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        hnp.arrays(
            np.float32, hnp.array_shapes(max_dims=2, max_side=20), elements=st.floats(width=32)
        ),
        hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=20)),
    )
)
def test_encode_is_byte_identical_to_the_plain_path(array: np.ndarray) -> None:
    td = TensorData.from_numpy(array)
    with pytest.MonkeyPatch.context() as m:
        fast = td.to_json_bytes()
        m.setattr(tensor, "orjson", None)
        assert fast == td.to_json_bytes()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data":[1.5,null,2],"dtype":"float32"}',
        b'{"data":[[1,2],[3,4]],"dtype":"int64"}',
        b'{"data":[1,2],"dtype":"int64","dtype":"float32"}',
        b'{"data":[1.5,2],"dtype":"int64"}',
        b'{"data":[true,2],"dtype":"int64"}',
        b'{"data":["1"],"dtype":"float32"}',
        b'{"data":[99999999999999999999999],"dtype":"int64"}',
        b'{"data":[1e400],"dtype":"float32"}',
        b'{"data":[1,2,3,4],"dtype":"float32","shape":[2,2]}',
        b'{"data":[],"dtype":"int64"}',
        b'{"data":[1,2],"dtype":"int64","extra":1}',
        b'{"data":[1,2',
    ],
)
def test_decode_agrees_with_the_plain_path(raw: bytes) -> None:
    fast, plain = fast_parse(raw), plain_parse(raw)
    if isinstance(plain, str):
        assert fast == plain
    else:
        assert isinstance(fast, TensorData)
        assert fast == plain and fast.to_json_bytes() == plain.to_json_bytes()
