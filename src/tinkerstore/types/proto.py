"""The protobuf half of the wire (protocol.md §4.3 and §13), as plain functions.

* :func:`decode_forward_backward_request` turns the body of ``POST /api/v1/forward_backward``
  into a :class:`FwdBwdRequest` of numpy arrays and :class:`TensorData`.
* :func:`encode_forward_backward_output` and :func:`encode_sample_response` build the
  ``retrieve_future`` results the SDK insists on receiving as protobuf.

Every byte field is a raw little-endian array, so decoding is ``np.frombuffer`` plus checks that
are all vectorised. The input is untrusted: any malformed body raises
:class:`~tinkerstore.errors.InvalidInput` (or its subclass ``InvalidTensor``), and the element
budget (``max_elements``) bounds what a small body may make us allocate, since a sparse tensor
declares a dense shape far larger than its bytes.

``Content-Encoding: zstd`` bodies are accepted when the ``zstandard`` package is installed (the
SDK only compresses when the server's client config sets ``proto_compress_fwdbwd``, which ours
never does); without it they are refused with a message that says so.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from tinkerstore.errors import InvalidInput, InvalidTensor, PayloadTooLarge, TinkerstoreError
from tinkerstore.types import tinker_public_pb2 as pb
from tinkerstore.types.tensor import MAX_ELEMENTS, TensorData, TensorDtype, numpy_dtype_for

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "MAX_REQUEST_ELEMENTS",
    "FwdBwdDatum",
    "FwdBwdRequest",
    "SampledSequenceOutput",
    "decode_forward_backward_request",
    "encode_forward_backward_output",
    "encode_sample_response",
    "zstd_available",
]

# Elements (tokens plus declared dense tensor elements) one fwd/bwd request may carry: 2**27
# int64 is 1 GiB, far above a real batch, small enough that a hostile request cannot exhaust RAM.
MAX_REQUEST_ELEMENTS = 1 << 27
MAX_DECOMPRESSED_BYTES = 1 << 30

# proto DType → (layout of the bytes, public dtype). INT32 and BFLOAT16 are widened on decode,
# exactly as the SDK's response_conv does.
_FROM_PROTO: dict[int, tuple[str, TensorDtype]] = {
    pb.DTYPE_FLOAT32: ("<f4", "float32"),
    pb.DTYPE_INT64: ("<i8", "int64"),
    pb.DTYPE_INT32: ("<i4", "int64"),
    pb.DTYPE_BFLOAT16: ("<u2", "float32"),
}
_TO_PROTO: dict[TensorDtype, tuple[Any, np.dtype[Any]]] = {
    "float32": (pb.DTYPE_FLOAT32, np.dtype("<f4")),
    "int64": (pb.DTYPE_INT64, np.dtype("<i8")),
}
_STOP_REASONS = {"stop": pb.STOP_REASON_STOP, "length": pb.STOP_REASON_LENGTH}


@dataclass(frozen=True, slots=True)
class FwdBwdDatum:
    model_input: npt.NDArray[np.int32]  # the tokens of all encoded_text chunks, in order
    loss_fn_inputs: dict[str, TensorData]


@dataclass(frozen=True, slots=True)
class FwdBwdRequest:
    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str]  # from loss_fn_config_v2 when the client sent it
    forward_only: bool
    data: list[FwdBwdDatum] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SampledSequenceOutput:
    tokens: npt.ArrayLike
    stop_reason: Literal["stop", "length"] = "stop"
    logprobs: npt.ArrayLike | None = None


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


# --- decoding -------------------------------------------------------------------------------


def decode_forward_backward_request(
    body: bytes,
    *,
    content_encoding: str | None = None,
    max_elements: int = MAX_REQUEST_ELEMENTS,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> FwdBwdRequest:
    """Parse and check a ``ForwardBackwardRequest`` body."""
    raw = _decompress(body, content_encoding, max_decompressed_bytes)
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInput(
            f"the forward_backward body is not a valid ForwardBackwardRequest protobuf: {exc}",
            hint="send the serialized tinker_public.ForwardBackwardRequest the SDK produces",
        ) from None
    budget = _Budget(max_elements)
    data = [_decode_datum(d, i, budget) for i, d in enumerate(msg.data)]
    config: dict[str, float | str] = {}
    if msg.loss_fn_config_v2:
        for key, value in msg.loss_fn_config_v2.items():
            which = value.WhichOneof("value")
            if which is None:
                raise InvalidInput(f"loss_fn_config_v2[{key!r}] has neither a number nor a text")
            config[key] = value.number if which == "number" else value.text
    else:
        config.update(msg.loss_fn_config)
    return FwdBwdRequest(
        model_id=msg.model_id,
        seq_id=msg.seq_id,
        loss_fn=msg.loss_fn,
        loss_fn_config=config,
        forward_only=msg.forward_only,
        data=data,
    )


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc != "zstd":
        raise InvalidInput(
            f"unsupported Content-Encoding {encoding!r}", hint="send the protobuf body uncompressed"
        )
    try:
        import zstandard
    except ImportError:
        raise InvalidInput(
            "zstd request bodies are not enabled on this server",
            hint="send the body uncompressed (proto_compress_fwdbwd is off)",
        ) from None
    try:
        # A streaming read capped at limit+1 bytes: a decompression bomb stops at the cap.
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(body), read_across_frames=True
        )
        out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"the zstd request body does not decompress: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"the request body decompresses to more than {limit} bytes",
            hint="send fewer datums per forward_backward call",
        )
    return bytes(out)


class _Budget:
    """Counts declared elements across a request, so totals stay bounded, not just each part."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise InvalidTensor(
                f"the request declares too many elements (at {what})",
                hint="split the batch into smaller forward_backward calls",
            )


def _decode_datum(msg: Any, index: int, budget: _Budget) -> FwdBwdDatum:
    parts: list[npt.NDArray[np.int32]] = []
    for chunk in msg.model_input:
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            what = f"{kind} chunks are" if kind else "an empty chunk is"
            raise InvalidInput(
                f"data[{index}].model_input: {what} not supported by this server",
                hint="send text only: ModelInput.from_ints(tokens)",
            )
        parts.append(_frombuffer(chunk.encoded_text.tokens, "<i4", f"data[{index}] tokens"))
    tokens = parts[0] if len(parts) == 1 else np.concatenate(parts or [np.empty(0, "<i4")])
    budget.take(tokens.size, f"data[{index}].model_input")
    inputs = {
        name: _decode_tensor(t, f"data[{index}].loss_fn_inputs[{name!r}]", budget)
        for name, t in msg.loss_fn_inputs.items()
    }
    return FwdBwdDatum(model_input=tokens, loss_fn_inputs=inputs)


def _decode_tensor(msg: Any, where: str, budget: _Budget) -> TensorData:
    spec = _FROM_PROTO.get(msg.dtype)
    if spec is None:
        raise InvalidTensor(
            f"{where}: unsupported dtype enum value {msg.dtype}",
            hint="tensors are FLOAT32, INT64, INT32 or BFLOAT16",
        )
    layout, dtype = spec
    shape = list(msg.shape)
    # Checked before anything is allocated from it; TensorData re-checks the finer rules.
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise InvalidTensor(f"{where}: shape {shape} is negative or too large")
    sparse = msg.WhichOneof("encoding") == "sparse_csr"
    raw = msg.sparse_csr.values if sparse else msg.dense
    values = _widen(_frombuffer(raw, layout, where), msg.dtype)
    budget.take(math.prod(shape) if shape else values.size, where)
    try:
        if not sparse:
            # An empty shape is proto3's "unset": the SDK always sends one, so treat it as 1-D.
            return TensorData(values, dtype, shape or [values.size])
        return TensorData(
            values,
            dtype,
            shape,
            _frombuffer(msg.sparse_csr.crow_indices, "<i8", where + " crow"),
            _frombuffer(msg.sparse_csr.col_indices, "<i8", where + " col"),
        )
    except InvalidTensor as exc:
        raise InvalidTensor(f"{where}: {exc.message}", hint=exc.hint) from None


def _frombuffer(raw: bytes, layout: str, where: str) -> npt.NDArray[Any]:
    dt = np.dtype(layout)
    if len(raw) % dt.itemsize:
        raise InvalidTensor(
            f"{where}: {len(raw)} bytes is not a whole number of {dt.itemsize}-byte values"
        )
    # Read-only and zero-copy over the message's bytes; native order on little-endian hosts.
    return np.frombuffer(raw, dtype=dt)


def _widen(values: npt.NDArray[Any], proto_dtype: int) -> npt.NDArray[Any]:
    if proto_dtype == pb.DTYPE_BFLOAT16:  # bfloat16 is the upper half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    if proto_dtype == pb.DTYPE_INT32:
        return values.astype(np.int64)
    return values


# --- encoding -------------------------------------------------------------------------------


def encode_forward_backward_output(
    outputs: Sequence[Mapping[str, npt.ArrayLike | TensorData]],
    metrics: Mapping[str, float],
    *,
    loss_fn_output_type: str = "ArrayRecord",
) -> bytes:
    """One ``{field: array}`` per datum, plus ``name:reduction`` metrics → protobuf bytes.

    Every datum must have the same fields. Consecutive datums whose fields share dtype and
    trailing shape go into one ArrayRecord (usually the whole batch); the SDK concatenates
    records, so ragged trailing shapes still arrive intact.
    """
    for key in metrics:
        if key.count(":") != 1:
            # The SDK's result combiner splits on ":" and raises on anything else.
            raise TinkerstoreError(f"metric key {key!r} is not of the form 'name:reduction'")
        if not outputs and key.endswith((":mean", ":slack")):
            # The SDK weights these by datum count and divides by zero without any datum.
            raise TinkerstoreError(f"metric {key!r} needs at least one loss_fn_output")
    msg = pb.ForwardBackwardOutput(loss_fn_output_type=loss_fn_output_type)
    for key, value in metrics.items():
        msg.metrics[key] = float(value)
    datums = [{name: _output_array(v) for name, v in d.items()} for d in outputs]
    names = sorted(datums[0]) if datums else []
    for i, datum in enumerate(datums):
        if sorted(datum) != names:
            raise TinkerstoreError(
                f"loss_fn_outputs[{i}] has fields {sorted(datum)}, "
                f"datum 0 has {names}; every datum needs the same fields"
            )
    # Hand-stitched around the payload: every array's bytes are copied exactly once, by the
    # final join, where building the message would copy them three times (tobytes, the field
    # assignment, SerializeToString). Small fields still go through the generated classes;
    # protobuf parsers accept a message's fields in any order and merge repeated occurrences.
    parts: list[bytes | memoryview] = [
        pb.ForwardBackwardOutput(loss_fn_output_type=loss_fn_output_type).SerializeToString()
    ]
    start = 0
    while start < len(datums):
        sig = _signature(datums[start])
        end = start + 1
        while end < len(datums) and _signature(datums[end]) == sig:
            end += 1
        record: list[bytes | memoryview] = [
            pb.ArrayRecord(type_tag=loss_fn_output_type).SerializeToString()
        ]
        for name in names:
            entry = _batched_entry(name, [d[name] for d in datums[start:end]])
            record += [_len_key(2, _size(entry)), *entry]
        record.append(pb.ArrayRecord(num_datums=end - start).SerializeToString())
        parts += [_len_key(2, _size(record)), *record]
        start = end
    tail = pb.ForwardBackwardOutput()
    for key, value in metrics.items():
        tail.metrics[key] = float(value)
    parts.append(tail.SerializeToString())
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_key(field_number: int, size: int) -> bytes:
    """The key and length of a length-delimited field (wire type 2)."""
    return _varint(field_number << 3 | 2) + _varint(size)


def _size(parts: Sequence[bytes | memoryview]) -> int:
    return sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)


def _batched_entry(name: str, arrays: list[npt.NDArray[Any]]) -> list[bytes | memoryview]:
    """One ``fields`` map entry (key = ``name``, value = a BatchedTensor of ``arrays``), with
    the arrays' own buffers as the payload (no concatenate, no tobytes)."""
    offsets = np.zeros(len(arrays) + 1, dtype="<i8")
    np.cumsum([a.nbytes for a in arrays], out=offsets[1:])  # BYTE offsets, as the SDK reads
    rest = pb.BatchedTensor(
        offsets=offsets.tobytes(),
        dtype=_TO_PROTO["float32" if arrays[0].dtype.kind == "f" else "int64"][0],
        trailing_shape=arrays[0].shape[1:],
    ).SerializeToString()
    payload = [np.ascontiguousarray(a).data.cast("B") for a in arrays if a.size]
    nbytes = int(offsets[-1])
    value: list[bytes | memoryview] = [_len_key(1, nbytes), *payload] if nbytes else []
    value.append(rest)
    key = name.encode()
    return [_len_key(1, len(key)), key, _len_key(2, _size(value)), *value]


def _output_array(value: npt.ArrayLike | TensorData) -> npt.NDArray[Any]:
    arr = value.to_numpy() if isinstance(value, TensorData) else np.asarray(value)
    target = _TO_PROTO[numpy_dtype_for(arr.dtype)][1]
    return arr.reshape(-1 if arr.ndim == 0 else arr.shape).astype(target, copy=False)


def _signature(datum: Mapping[str, npt.NDArray[Any]]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, arr.dtype.str, arr.shape[1:]) for name, arr in sorted(datum.items())]


def encode_sample_response(
    sequences: Sequence[SampledSequenceOutput],
    *,
    prompt_logprobs: npt.ArrayLike | Sequence[float | None] | None = None,
    topk_prompt_logprobs: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    prompt_cache_hit_tokens: int = 0,
) -> bytes:
    """A ``SampleResponse``: tokens as int32, logprobs as float32.

    ``prompt_logprobs`` may hold None (or NaN) where no logprob exists, e.g. the first prompt
    token; the SDK shows NaN as None. ``topk_prompt_logprobs`` is ``(token_ids, logprobs)``,
    two ``[prompt_length, k]`` matrices.
    """
    msg = pb.SampleResponse(prompt_cache_hit_tokens=prompt_cache_hit_tokens)
    for seq in sequences:
        if seq.stop_reason not in _STOP_REASONS:
            raise TinkerstoreError(
                f"stop_reason must be 'stop' or 'length', not {seq.stop_reason!r}"
            )
        out = msg.sequences.add(
            stop_reason=_STOP_REASONS[seq.stop_reason], tokens=_int32_bytes(seq.tokens)
        )
        if seq.logprobs is not None:
            out.logprobs = _float32(seq.logprobs).tobytes()
    if prompt_logprobs is not None:
        msg.prompt_logprobs = _float32(prompt_logprobs).tobytes()
    if topk_prompt_logprobs is not None:
        ids = np.asarray(topk_prompt_logprobs[0])
        logprobs = np.asarray(topk_prompt_logprobs[1], dtype="<f4")
        if ids.ndim != 2 or ids.shape != logprobs.shape:
            raise TinkerstoreError(
                f"top-k token ids {ids.shape} and logprobs "
                f"{logprobs.shape} must be matching [length, k] matrices"
            )
        topk = msg.topk_prompt_logprobs
        topk.token_ids = _int32_bytes(ids)
        topk.logprobs = logprobs.tobytes()
        topk.length, topk.k = ids.shape
    encoded: bytes = msg.SerializeToString()
    return encoded


def _int32_bytes(values: npt.ArrayLike) -> bytes:
    arr = np.asarray(values)
    if arr.size and (
        arr.dtype.kind not in "iu" or int(arr.min()) < -(1 << 31) or int(arr.max()) >= 1 << 31
    ):
        raise InvalidTensor(f"token ids must be int32 integers (got {arr.dtype.name})")
    return arr.astype("<i4", copy=False).tobytes()


def _float32(values: npt.ArrayLike | Sequence[float | None]) -> npt.NDArray[np.float32]:
    # None → NaN: numpy does this for float dtypes, which is how "no logprob here" travels.
    return np.asarray(values, dtype="<f4").reshape(-1)
