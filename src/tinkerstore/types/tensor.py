"""``TensorData``: the SDK's tensor wire type, held as one numpy array.

The SDK's JSON form is ``{"data": [...], "dtype": "int64"|"float32", "shape": [...]|null,
"sparse_crow_indices": [...]|null, "sparse_col_indices": [...]|null}`` (protocol.md §8.1). We keep
the values in a numpy array and only build Python lists at the JSON edge, where pydantic-core's
Rust code formats and parses them: the bytes we write equal the SDK's ``model_dump_json`` by
construction (same serializer, same float formatting, non-finite floats as ``null``), and no
encode or decode step loops over elements in Python.

Two optional accelerators skip the Python lists altogether when installed (the ``server`` extra
has both): ``orjson`` writes a float64/int64 array straight from its buffer with the same
shortest-round-trip float formatting as serde_json (checked byte-identical on every float32 bit
pattern class: tests/types/test_tensor.py), and ``simdjson`` parses a numeric list straight
into a float64/int64 buffer. Anything the fast decoder is unsure of (``null``, booleans,
strings, nesting, huge integers, duplicate keys) falls back to the exact pydantic path, which
also produces every error message.

dtype rules (the SDK's): floating → float32, signed integer → int64, bfloat16 widened to
float32. Everything else (bool, unsigned, complex, strings, objects) is refused with
:class:`~tinkerstore.errors.InvalidTensor` instead of being cast silently.

Sparse tensors are 2-D CSR: ``values`` holds the listed entries, every other entry takes the
``pad_value`` given when densifying. A declared shape is bounded (:data:`MAX_ELEMENTS`) so that a
few bytes of hostile input can never make ``to_numpy`` allocate gigabytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pydantic_core
from pydantic_core import PydanticCustomError, core_schema

from tinkerstore.errors import InvalidTensor

try:
    import orjson
except ImportError:  # optional: the exact pydantic-core path below is used instead
    orjson = None  # type: ignore[assignment]
try:
    import simdjson
except ImportError:
    simdjson = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import torch
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue

__all__ = ["MAX_ELEMENTS", "MAX_NDIM", "TensorData", "TensorDtype", "numpy_dtype_for"]

TensorDtype = Literal["int64", "float32"]
# Dense element count any one tensor may declare: 2**26 elements is 256 MiB of float32, far
# above any per-token loss input (a 128k-token sequence with k=64 is 2**23).
MAX_ELEMENTS = 1 << 26
MAX_NDIM = 32

_NP: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
_JSON_KEYS = frozenset({"data", "dtype", "shape", "sparse_crow_indices", "sparse_col_indices"})
_DTYPE_HINT = "TensorData holds float32 or int64: cast first, e.g. array.astype(np.int64)"

# fail_fast: a list of a million bad items costs one error, not a million error objects.
_INT_LIST = pydantic_core.SchemaValidator(
    core_schema.list_schema(core_schema.int_schema(strict=True), fail_fast=True)
)
# Strict floats accept JSON integers but not booleans; null is how pydantic (and so the SDK)
# writes NaN and ±inf, so it is read back as NaN.
_FLOAT_LIST = pydantic_core.SchemaValidator(
    core_schema.list_schema(
        core_schema.nullable_schema(core_schema.float_schema(strict=True)), fail_fast=True
    )
)


def _invalid(message: str, hint: str | None = None) -> InvalidTensor:
    return InvalidTensor(message, hint=hint)


def numpy_dtype_for(dtype: object) -> TensorDtype:
    """The wire dtype for numpy dtype ``dtype`` under the SDK's rules, or :class:`InvalidTensor`."""
    dt = np.dtype(cast(Any, dtype))
    if dt.kind == "f" or dt.name == "bfloat16":  # bfloat16: ml_dtypes' numpy extension type
        return "float32"
    if dt.kind == "i":
        return "int64"
    raise _invalid(
        f"unsupported tensor dtype {dt.name}: floats become float32, "
        "signed integers int64, anything else is refused",
        _DTYPE_HINT,
    )


def _values_from(data: Any, dtype: TensorDtype) -> npt.NDArray[Any]:
    """Turn ``data`` (ndarray, flat list of numbers, or None) into an array of ``dtype``."""
    target = _NP[dtype]
    if data is None:
        return np.empty(0, dtype=target)
    if isinstance(data, np.ndarray):
        arr = data
        if arr.dtype == target:
            return arr  # zero-copy: the caller's buffer is the tensor
        kind = "f" if arr.dtype.name == "bfloat16" else arr.dtype.kind
        if kind not in "iuf" or (
            kind == "u" and dtype == "int64" and arr.size and int(arr.max()) >= 1 << 63
        ):
            raise _invalid(f"cannot store a {arr.dtype.name} array as {dtype}", _DTYPE_HINT)
    elif isinstance(data, list | tuple):
        arr = _list_values(data, dtype)
    else:
        raise _invalid(
            f"tensor data must be a list of numbers or a numpy array, not {type(data).__name__}"
        )
    if dtype == "int64" and arr.dtype.kind == "f":
        _require_integral(arr)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 → float32 overflow is inf
        return arr.astype(target)


def _list_values(data: Sequence[Any], dtype: TensorDtype) -> npt.NDArray[Any]:
    items = data if isinstance(data, list) else list(data)
    if dtype == "int64":
        try:
            _INT_LIST.validate_python(items)
        except pydantic_core.ValidationError:
            pass  # may still be integral floats such as 2.0; checked by the float path below
        else:
            try:
                return np.asarray(items, dtype=np.int64)
            except OverflowError:
                raise _invalid("int64 tensor value out of range [-2**63, 2**63)") from None
    try:
        _FLOAT_LIST.validate_python(items)
    except pydantic_core.ValidationError as exc:
        err = exc.errors()[0]
        shown = repr(err["input"])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise _invalid(
            f"tensor data[{err['loc'][0]}] is {shown}, not a number",
            "data must be a flat list of numbers",
        ) from None
    return np.asarray(items, dtype=np.float64)


def _require_integral(arr: npt.NDArray[Any]) -> None:
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(arr) & (arr == np.trunc(arr)) & (np.abs(arr) < 2.0**63)
    if not bool(ok.all()):
        bad = arr.reshape(-1)[int(np.argmin(ok.reshape(-1)))]
        raise _invalid(
            f"int64 tensor has the non-integer value {float(bad)!r}",
            'use dtype "float32" for fractional values',
        )


def _shape_from(shape: Any) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if not isinstance(shape, list | tuple | np.ndarray) or len(shape) > MAX_NDIM:
        raise _invalid(f"tensor shape must be a list of at most {MAX_NDIM} ints, got {shape!r}")
    dims: list[int] = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
            raise _invalid(f"tensor shape {list(shape)!r} has a non-integer dimension")
        if not 0 <= int(dim) <= MAX_ELEMENTS:
            raise _invalid(
                f"tensor shape {list(shape)!r} has a dimension outside [0, {MAX_ELEMENTS}]"
            )
        dims.append(int(dim))
    if math.prod(dims) > MAX_ELEMENTS:
        raise _invalid(
            f"tensor shape {dims} has more than {MAX_ELEMENTS} elements",
            "split the input into smaller tensors",
        )
    return tuple(dims)


def _index_array(value: Any, name: str) -> npt.NDArray[np.int64]:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise _invalid(f"{name} must hold integers, not {value.dtype.name}")
        arr = value.reshape(-1)
    else:
        try:
            _INT_LIST.validate_python(value if isinstance(value, list) else list(value))
            arr = np.asarray(value, dtype=np.int64)
        except (pydantic_core.ValidationError, OverflowError, TypeError):
            raise _invalid(f"{name} must be a flat list of int64 indices") from None
    # Contiguous, because torch.sparse_csr_tensor refuses strided index views.
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_csr(
    shape: tuple[int, ...], crow: npt.NDArray[np.int64], col: npt.NDArray[np.int64], nnz: int
) -> None:
    """The invariants torch's ``check_invariants=True`` enforces, all vectorised."""
    if len(shape) != 2:
        raise _invalid(f"a sparse CSR tensor must be 2-D, its shape is {list(shape)}")
    nrows, ncols = shape
    if len(crow) != nrows + 1 or len(col) != nnz:
        raise _invalid(
            f"CSR sizes disagree: shape {list(shape)} needs {nrows + 1} row pointers "
            f"and {nnz} values need {nnz} column indices, got {len(crow)} and "
            f"{len(col)}"
        )
    # Bounding every pointer first also keeps np.diff from wrapping around on hostile values.
    if int(crow.min()) < 0 or int(crow.max()) > nnz:
        raise _invalid(f"CSR row pointers must lie in [0, {nnz}]")
    if crow[0] != 0 or crow[-1] != nnz or bool((np.diff(crow) < 0).any()):
        raise _invalid(
            "CSR row pointers must start at 0, never decrease, and end at the number of values"
        )
    if nnz and (int(col.min()) < 0 or int(col.max()) >= ncols):
        raise _invalid(f"CSR column index outside [0, {ncols})")
    # Within a row, columns must strictly increase; a step down is only allowed where a row ends.
    ok = np.diff(col) > 0
    starts = crow[1:-1]
    ok[starts[(starts > 0) & (starts < nnz)] - 1] = True
    if not bool(ok.all()):
        raise _invalid("CSR column indices must be sorted and distinct within each row")


def _check_pad(pad_value: Any) -> int:
    if isinstance(pad_value, bool) or not isinstance(pad_value, int | np.integer):
        raise _invalid(f"pad_value must be an integer, got {pad_value!r}")
    return int(pad_value)


class TensorData:
    """One tensor on the wire: float32 or int64, dense or 2-D sparse CSR.

    Dense tensors keep the array they were made from when its dtype already matches, so
    ``TensorData.from_numpy(a).to_numpy() is a``: mutating one mutates the other.
    """

    __slots__ = ("_col", "_crow", "_dtype", "_shape", "_values")

    def __init__(
        self,
        data: npt.NDArray[Any] | Sequence[float] | None = None,
        dtype: TensorDtype | None = None,
        shape: Sequence[int] | None = None,
        sparse_crow_indices: Sequence[int] | npt.NDArray[Any] | None = None,
        sparse_col_indices: Sequence[int] | npt.NDArray[Any] | None = None,
    ) -> None:
        if dtype not in _NP:
            raise _invalid(f'tensor dtype must be "int64" or "float32", got {dtype!r}', _DTYPE_HINT)
        values = _values_from(data, dtype)
        dims = _shape_from(shape)
        if (sparse_crow_indices is None) != (sparse_col_indices is None):
            raise _invalid("sparse_crow_indices and sparse_col_indices come together")
        crow = col = None
        if sparse_crow_indices is not None:
            if dims is None:
                raise _invalid("a sparse CSR tensor needs its dense shape")
            values = values.reshape(-1)
            crow = _index_array(sparse_crow_indices, "sparse_crow_indices")
            col = _index_array(sparse_col_indices, "sparse_col_indices")
            _check_csr(dims, crow, col, values.size)
        elif dims is not None and values.shape != dims:
            if values.size != math.prod(dims):
                raise _invalid(
                    f"tensor has {values.size} values but shape {list(dims)} needs "
                    f"{math.prod(dims)}"
                )
            values = values.reshape(dims)
        elif dims is None and values.size > MAX_ELEMENTS:
            # No declared shape: keep the array's own shape (the SDK does too); JSON says null.
            raise _invalid(f"tensor has more than {MAX_ELEMENTS} elements")
        self._values = values
        self._dtype: TensorDtype = dtype
        self._shape = dims
        self._crow = crow
        self._col = col

    # --- attributes -------------------------------------------------------------------------

    @property
    def dtype(self) -> TensorDtype:
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The declared shape; None means "1-D", as in the SDK (and ``"shape": null``)."""
        return self._shape

    @property
    def is_sparse(self) -> bool:
        return self._crow is not None

    @property
    def values(self) -> npt.NDArray[Any]:
        """The stored array: the dense tensor, or the listed CSR values (1-D). Never copied."""
        return self._values

    @property
    def sparse_crow_indices(self) -> npt.NDArray[np.int64] | None:
        return self._crow

    @property
    def sparse_col_indices(self) -> npt.NDArray[np.int64] | None:
        return self._col

    @property
    def data(self) -> list[Any]:
        """The stored values as a flat list (the SDK's ``data``)."""
        return self._values.reshape(-1).tolist()

    def __repr__(self) -> str:
        kind = "csr " if self.is_sparse else ""
        shape = list(self._shape) if self._shape is not None else None
        return f"TensorData({kind}{self._dtype}, shape={shape}, nnz={self._values.size})"

    def __eq__(self, other: object) -> bool:
        """Same dtype, declared shape, layout and values (NaN equals NaN)."""
        if not isinstance(other, TensorData):
            return NotImplemented
        same_index = (
            self._crow is None
            if other._crow is None
            else (
                self._crow is not None
                and other._col is not None
                and self._col is not None
                and np.array_equal(self._crow, other._crow)
                and np.array_equal(self._col, other._col)
            )
        )
        return (
            self._dtype == other._dtype
            and self._shape == other._shape
            and same_index
            and self._values.shape == other._values.shape
            and np.array_equal(self._values, other._values, equal_nan=self._dtype == "float32")
        )

    __hash__ = None  # type: ignore[assignment]

    # --- numpy ------------------------------------------------------------------------------

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike) -> TensorData:
        """Wrap ``array`` (no copy when it is already float32/int64), keeping its shape."""
        arr = np.asarray(array)
        return cls(arr, numpy_dtype_for(arr.dtype), arr.shape)

    @classmethod
    def from_numpy_sparse(cls, array: npt.ArrayLike, pad_value: int = 0) -> TensorData:
        """A 2-D array as CSR, leaving out entries equal to ``pad_value``; like the SDK's
        ``from_torch_sparse``, it stays dense when CSR would not be smaller (or is not 2-D)."""
        arr = np.asarray(array)
        pad = _check_pad(pad_value)
        dense = cls.from_numpy(arr)
        if arr.ndim != 2:
            return dense
        mask = dense._values != pad
        nnz = int(np.count_nonzero(mask))
        if arr.shape[0] + 1 + 2 * nnz >= arr.size:
            return dense
        crow = np.zeros(arr.shape[0] + 1, dtype=np.int64)
        np.cumsum(mask.sum(axis=1), out=crow[1:])
        cols = np.nonzero(mask)[1]  # row-major: sorted within each row, as CSR needs
        return cls(dense._values[mask], dense._dtype, arr.shape, crow, cols)

    def to_numpy(self, pad_value: int = 0) -> npt.NDArray[Any]:
        """The dense array. Zero-copy for dense tensors; CSR is densified with ``pad_value``."""
        if self._crow is None or self._col is None or self._shape is None:
            return self._values
        out = np.full(self._shape, _check_pad(pad_value), dtype=self._values.dtype)
        rows = np.repeat(np.arange(self._shape[0]), np.diff(self._crow))
        out[rows, self._col] = self._values
        return out

    def tolist(self, pad_value: int = 0) -> list[Any]:
        result: list[Any] = self.to_numpy(pad_value).tolist()
        return result

    # --- torch (optional, imported only when used) -------------------------------------------

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        """From a torch tensor on any device; bfloat16/float16/float64 become float32."""
        import torch

        t = tensor.detach()
        if t.layout == torch.sparse_csr and t.ndim == 2:
            return cls(
                cls._torch_values(t.values()),
                _torch_dtype(t),
                list(t.shape),
                t.crow_indices().cpu().numpy(),
                t.col_indices().cpu().numpy(),
            )
        if t.layout != torch.strided:
            t = t.to_dense()
        return cls.from_numpy(cls._torch_values(t))

    @classmethod
    def from_torch_sparse(cls, tensor: torch.Tensor, pad_value: int = 0) -> TensorData:
        return cls.from_numpy_sparse(cls.from_torch(tensor).to_numpy(), pad_value)

    @staticmethod
    def _torch_values(t: torch.Tensor) -> npt.NDArray[Any]:
        import torch

        target = torch.float32 if _torch_dtype(t) == "float32" else torch.int64
        return t.to(device="cpu", dtype=target).contiguous().numpy()

    def to_torch(self, pad_value: int = 0) -> torch.Tensor:
        """A torch tensor sharing memory with the dense array when it is writable."""
        import torch

        arr = self.to_numpy(pad_value)
        if not arr.flags.writeable:  # torch refuses to alias read-only buffers
            arr = arr.copy()
        return torch.from_numpy(arr)

    # --- JSON -------------------------------------------------------------------------------

    def to_json_dict(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The SDK's JSON object, with Python lists (key order as in the SDK's model)."""
        out: dict[str, Any] = {
            "data": self._values.reshape(-1).tolist(),
            "dtype": self._dtype,
            "shape": list(self._shape) if self._shape is not None else None,
            "sparse_crow_indices": self._crow.tolist() if self._crow is not None else None,
            "sparse_col_indices": self._col.tolist() if self._col is not None else None,
        }
        return {k: v for k, v in out.items() if v is not None} if exclude_none else out

    def to_json_bytes(self, *, exclude_none: bool = False) -> bytes:
        """Byte-for-byte what the SDK's ``TensorData.model_dump_json()`` writes."""
        if orjson is None:
            return pydantic_core.to_json(
                self.to_json_dict(exclude_none=exclude_none), inf_nan_mode="null"
            )
        # The SDK formats Python floats (float64): widen first, or orjson would print float32's
        # own shortest form ("0.1" instead of "0.10000000149011612"). NaN/inf come out as null.
        wide = np.float64 if self._dtype == "float32" else np.int64
        with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
            data = np.ascontiguousarray(self._values.reshape(-1), dtype=wide)
        out: dict[str, Any] = {
            "data": data,
            "dtype": self._dtype,
            "shape": list(self._shape) if self._shape is not None else None,
            "sparse_crow_indices": self._crow,
            "sparse_col_indices": self._col,
        }
        if exclude_none:
            out = {k: v for k, v in out.items() if v is not None}
        encoded: bytes = orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
        return encoded

    @classmethod
    def from_json_dict(cls, obj: Any) -> TensorData:
        """From a parsed JSON object; as strict as the SDK's model (no unknown keys)."""
        if not isinstance(obj, dict):
            raise _invalid(f"a tensor must be a JSON object, not {type(obj).__name__}")
        unknown = sorted(set(obj) - _JSON_KEYS)
        missing = [key for key in ("data", "dtype") if key not in obj]
        if unknown or missing:
            raise _invalid(
                f"tensor object has unknown keys {unknown} / lacks keys {missing}",
                'send "data" and "dtype", optionally "shape", '
                '"sparse_crow_indices", "sparse_col_indices"',
            )
        if not isinstance(obj["data"], list):
            raise _invalid("tensor data must be a flat JSON list of numbers")
        return cls(
            obj["data"],
            obj["dtype"],
            obj.get("shape"),
            obj.get("sparse_crow_indices"),
            obj.get("sparse_col_indices"),
        )

    @classmethod
    def from_json_bytes(cls, raw: bytes | str) -> TensorData:
        fast = _fast_from_json(raw) if simdjson is not None else None
        if fast is not None:
            return fast
        try:
            obj = pydantic_core.from_json(raw)
        except ValueError as exc:
            raise _invalid(f"tensor JSON does not parse: {exc}") from None
        return cls.from_json_dict(obj)

    # --- pydantic ---------------------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate from a TensorData or its JSON object; serialize to the JSON object."""
        return core_schema.no_info_plain_validator_function(
            _pydantic_validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: value.to_json_dict(), when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        ints = {"type": "array", "items": {"type": "integer"}}
        return {
            "title": "TensorData",
            "type": "object",
            "properties": {
                "data": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                },
                "dtype": {"enum": ["int64", "float32"]},
                "shape": {"anyOf": [ints, {"type": "null"}]},
                "sparse_crow_indices": {"anyOf": [ints, {"type": "null"}]},
                "sparse_col_indices": {"anyOf": [ints, {"type": "null"}]},
            },
            "required": ["data", "dtype"],
            "additionalProperties": False,
        }


def _torch_dtype(t: torch.Tensor) -> TensorDtype:
    dt = t.dtype
    if dt.is_floating_point:
        return "float32"
    if not dt.is_complex and dt.is_signed and str(dt) != "torch.bool":
        return "int64"
    raise _invalid(
        f"unsupported tensor dtype {dt}: floats become float32, signed integers "
        "int64, anything else is refused",
        _DTYPE_HINT,
    )


def _fast_from_json(raw: bytes | str) -> TensorData | None:
    """The common case (a flat list of plain numbers) parsed without Python objects per
    element; ``None`` sends anything else to the exact path, which also words the errors."""
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        # A parser per call: it is cheap, and one parser's documents must not outlive the
        # next parse (threads, re-entrancy).
        doc = simdjson.Parser().parse(data)
        if not isinstance(doc, simdjson.Object):
            return None
        keys = list(doc.keys())
        dtype = doc.get("dtype")
        values = doc.get("data")
        if (
            len(keys) != len(set(keys))  # duplicates: pydantic keeps the last, simdjson the first
            or not _JSON_KEYS.issuperset(keys)
            or dtype not in _NP
            or not isinstance(values, simdjson.Array)
        ):
            return None
        # as_buffer flattens nested lists; a valid tensor has exactly one '[' per list field.
        lists = [k for k in keys if isinstance(doc[k], simdjson.Array)]
        if data.count(b"[") != len(lists):
            return None
        arr: npt.NDArray[Any]
        if dtype == "float32":
            flat = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64)
            with np.errstate(over="ignore"):  # as the exact path: beyond float32 is inf
                arr = flat.astype(np.float32)
        else:  # "i": int64; a float such as 2.0 raises, and the exact path accepts it
            arr = np.frombuffer(values.as_buffer(of_type="i"), dtype=np.int64).copy()
        others: dict[str, Any] = {}
        for k in keys:
            if k not in ("data", "dtype"):  # shape and CSR indices: short lists or null
                item = doc[k]
                others[k] = item.as_list() if isinstance(item, simdjson.Array) else item
    except (ValueError, TypeError, RuntimeError, KeyError, UnicodeDecodeError):
        return None  # not valid JSON, floats in an int64 list, ... : the exact path decides
    return TensorData(
        arr,
        cast(TensorDtype, dtype),
        others.get("shape"),
        others.get("sparse_crow_indices"),
        others.get("sparse_col_indices"),
    )


def _pydantic_validate(value: Any) -> TensorData:
    if isinstance(value, TensorData):
        return value
    try:
        return TensorData.from_json_dict(value)
    except InvalidTensor as exc:
        # A pydantic error keeps the field's location; the message is ours.
        raise PydanticCustomError("invalid_tensor", "{detail}", {"detail": str(exc)}) from None
