"""Open Inference Protocol v2 (KServe) types and codecs: JSON tensors and Triton's binary
tensor data extension. Pure: bytes and dicts in, numpy and bytes out; no I/O.

A request body is a JSON header, optionally followed by raw tensor bytes. With the binary
extension the ``Inference-Header-Content-Length`` HTTP header gives the JSON header's size,
and each binary input carries ``parameters.binary_data_size``; the raw data of those inputs
follows the header in the order the inputs are listed. Responses use the same layout when an
output is asked for in binary (``outputs[i].parameters.binary_data`` or the request-wide
``parameters.binary_data_output``). BYTES elements travel as JSON strings, or in binary as
4-byte little-endian length prefixes each followed by the element's bytes. BF16 (numpy has
none; ``ml_dtypes.bfloat16`` stands in) travels in binary only, as Triton does.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from edgeshift.errors import ProtocolError
from edgeshift.model.shapes import TensorSpec

# OIP datatype -> numpy dtype; every fixed-size type is little-endian on the wire.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}

# numpy dtype names as TensorSpec writes them -> OIP datatype.
_DTYPE_NAMES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
    "object": "BYTES",
    "str": "BYTES",
}

_U32 = struct.Struct("<I")

_loads: Callable[[bytes], Any]
_dumps: Callable[[Any], bytes]
try:  # parses JSON tensors' floats ~10x faster than the stdlib; optional
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=64)  # called for every output of every response
def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The OIP datatype of a numpy dtype (or a TensorSpec dtype name)."""
    if isinstance(dtype, str):
        name = dtype
    else:
        if dtype.kind in "OSU":
            return "BYTES"
        name = dtype.name
    try:
        return _DTYPE_NAMES[name]
    except KeyError:
        raise ProtocolError(f"dtype {name} has no Open Inference Protocol datatype", 500) from None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request-wide binary_data_output


@dataclass
class InferRequest:
    """A decoded inference request: input arrays already shaped and typed."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]  # input name -> OIP datatype as sent
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    binary_output: bool = False  # request-wide parameters.binary_data_output
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    header_length: int | None  # set when binary tensors follow the JSON header

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, 400)


def _parse_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _element_count(name: str, shape: tuple[int, ...]) -> int:
    count = math.prod(shape)
    if count > 1 << 32:  # far past any body limit; stops absurd shapes before allocation
        raise _bad(f"input {name!r}: shape {list(shape)} has too many elements")
    return count


def decode_bytes_elements(buf: memoryview | bytes, count: int, name: str) -> np.ndarray:
    """Length-prefixed BYTES elements -> a flat object array of ``bytes``; exact size."""
    offset, size = 0, len(buf)
    if count * 4 > size:  # every element has a 4-byte prefix: refuse before allocating
        raise _bad(f"input {name!r}: {size} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    for i in range(count):
        if offset + 4 > size:
            raise _bad(f"input {name!r}: BYTES data ends after {i} of {count} elements")
        (length,) = _U32.unpack_from(buf, offset)
        offset += 4
        if offset + length > size:
            raise _bad(f"input {name!r}: BYTES element {i} claims {length} bytes past the end")
        out[i] = bytes(buf[offset : offset + length])
        offset += length
    if offset != size:
        raise _bad(
            f"input {name!r}: {size - offset} bytes left after {count} BYTES elements — "
            "binary_data_size does not match the shape"
        )
    return out


def encode_bytes_elements(arr: np.ndarray) -> bytes:
    """A BYTES tensor (str or bytes elements) -> 4-byte little-endian length-prefixed bytes."""
    parts: list[bytes] = []
    for item in arr.ravel():
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_U32.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _decode_binary(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    count = _element_count(name, shape)
    if datatype == "BYTES":
        return decode_bytes_elements(raw, count, name).reshape(shape)
    dtype = DATATYPES[datatype]
    want = count * dtype.itemsize
    if len(raw) != want:
        raise _bad(
            f"input {name!r}: binary_data_size is {len(raw)} bytes but shape {list(shape)} "
            f"of {datatype} needs {want}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = _element_count(name, shape)
    if datatype == "BF16":
        raise _bad(f"input {name!r}: BF16 data must be sent as binary (Triton's binary extension)")
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).ravel()
            if flat.size != count:
                raise _bad(
                    f"input {name!r}: shape {list(shape)} needs {count} elements, got {flat.size}"
                )
            out = np.empty(count, dtype=object)
            for i, item in enumerate(flat):
                if not isinstance(item, str):
                    raise _bad(f"input {name!r}: BYTES elements in JSON must be strings")
                out[i] = item.encode("utf-8")
            return out.reshape(shape)
        if datatype == "BOOL" and not all(
            isinstance(v, bool) for v in np.asarray(data, dtype=object).ravel()
        ):
            raise _bad(f"input {name!r}: BOOL data must be true/false")
        with np.errstate(over="raise", invalid="raise"):  # 1e9 as FP16 is an error, not inf
            arr = np.asarray(data, dtype=DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise _bad(f"input {name!r}: data is not a valid {datatype} array ({exc})") from None
    if arr.size != count:
        raise _bad(f"input {name!r}: shape {list(shape)} needs {count} elements, got {arr.size}")
    return arr.reshape(shape)


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be a JSON object")
    return params


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body; ``header_length`` is Inference-Header-Content-Length.

    Raises ProtocolError(400) naming the first thing wrong.
    """
    size = len(body)
    if header_length is not None and not 0 < header_length <= size:
        raise _bad(
            f"Inference-Header-Content-Length is {header_length} but the body has {size} bytes"
        )
    hlen = size if header_length is None else header_length
    view = memoryview(body)
    try:
        header = _loads(view[:hlen].tobytes() if hlen != size else body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(
            f"request body is not valid JSON ({exc}) — send an OIP v2 inference request"
        ) from None
    except RecursionError:
        raise _bad("request JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise _bad("request JSON must be an object with an 'inputs' list")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    params = _parameters(header, "request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise _bad("parameters.binary_data_output must be true or false")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("request needs a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = hlen
    for index, spec in enumerate(raw_inputs):
        if not isinstance(spec, dict):
            raise _bad(f"inputs[{index}] must be an object")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"inputs[{index}] needs a 'name' string")
        if name in inputs:
            raise _bad(f"input {name!r} is given twice")
        datatype = spec.get("datatype")
        if datatype not in DATATYPES:
            raise _bad(
                f"input {name!r}: unknown datatype {datatype!r} — use one of {', '.join(DATATYPES)}"
            )
        shape = _parse_shape(name, spec.get("shape"))
        in_params = _parameters(spec, f"input {name!r}")
        binary_size = in_params.get("binary_data_size")
        if binary_size is not None:
            if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
            if header_length is None:
                raise _bad(
                    f"input {name!r} has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if "data" in spec:
                raise _bad(f"input {name!r} has both 'data' and binary_data_size; send one")
            if offset + binary_size > size:
                raise _bad(
                    f"input {name!r}: binary data is truncated — binary_data_size says "
                    f"{binary_size} bytes, {size - offset} remain in the body"
                )
            inputs[name] = _decode_binary(
                name, datatype, shape, view[offset : offset + binary_size]
            )
            offset += binary_size
        elif "data" in spec:
            inputs[name] = _decode_json_data(name, datatype, shape, spec["data"])
        else:
            raise _bad(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        datatypes[name] = datatype
    if offset != size:
        raise _bad(
            f"{size - offset} bytes after the JSON header are not claimed by any input's "
            "binary_data_size — check Inference-Header-Content-Length"
        )

    outputs: list[RequestedOutput] | None = None
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _bad("'outputs' must be a list")
        outputs = []
        seen: set[str] = set()
        for index, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise _bad(f"outputs[{index}] needs a 'name' string")
            out_params = _parameters(out, f"output {out['name']!r}")
            if out_params.get("classification"):
                raise _bad("the classification extension is not supported — ask for raw outputs")
            binary = out_params.get("binary_data")
            if binary is not None and not isinstance(binary, bool):
                raise _bad(f"output {out['name']!r}: binary_data must be true or false")
            if out["name"] in seen:
                raise _bad(f"output {out['name']!r} is requested twice")
            seen.add(out["name"])
            outputs.append(RequestedOutput(out["name"], binary))
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=request_id,
        outputs=outputs,
        binary_output=binary_output,
        parameters=params,
    )


def check_request(
    request: InferRequest, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> None:
    """Check a request against a model's signature: names, datatypes, ranks, fixed dims."""
    expected = {spec.name: spec for spec in inputs}
    for name in request.inputs:
        if name not in expected:
            raise _bad(f"unknown input {name!r} — this model's inputs: {', '.join(expected)}")
    for name, spec in expected.items():
        if name not in request.inputs:
            raise _bad(f"missing input {name!r} — this model needs {', '.join(expected)}")
        want = datatype_of(spec.dtype)
        have = request.datatypes[name]
        if have != want:
            raise _bad(f"input {name!r} has datatype {have}; the model wants {want}")
        arr = request.inputs[name]
        if spec.shape is None:
            continue
        if arr.ndim != len(spec.shape) or any(
            isinstance(d, int) and d != n for d, n in zip(spec.shape, arr.shape, strict=False)
        ):
            raise _bad(
                f"input {name!r} has shape {list(arr.shape)}; the model wants "
                f"{metadata_shape(spec)} (-1: any size)"
            )
    if request.outputs is not None:
        known = [spec.name for spec in outputs]
        for out in request.outputs:
            if out.name not in known:
                raise _bad(
                    f"unknown output {out.name!r} — this model's outputs: {', '.join(known)}"
                )


def metadata_shape(spec: TensorSpec) -> list[int]:
    """A spec's shape as OIP metadata writes it: -1 for every dynamic dim."""
    return [d if isinstance(d, int) else -1 for d in (spec.shape or ())]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": metadata_shape(spec)}


def _json_data(name: str, datatype: str, arr: np.ndarray) -> list[Any]:
    if datatype == "BF16":
        raise _bad(f"output {name!r} is BF16: ask for it with binary_data true")
    if datatype != "BYTES":
        return arr.ravel().tolist()
    items: list[str] = []
    for item in arr.ravel():
        if isinstance(item, str):
            items.append(item)
            continue
        try:
            items.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(
                f"output {name!r} holds non-UTF-8 bytes: ask for it with binary_data true"
            ) from None
    return items


def encode_infer_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
) -> EncodedResponse:
    """Encode ``outputs`` (already filtered and ordered) as the request asked: JSON or binary."""
    binary_of = {o.name: o.binary for o in request.outputs or ()}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in outputs.items():
        arr = np.asarray(value)
        datatype = datatype_of(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        binary = binary_of.get(name)
        if binary is None:
            binary = request.binary_output
        if binary:
            if datatype == "BYTES":
                raw = encode_bytes_elements(arr)
            else:
                raw = np.ascontiguousarray(arr, dtype=DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(name, datatype, arr)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    if len(blobs) == len(entries):  # no JSON data: nothing orjson writes differently (NaN)
        header = _dumps(response)
    else:
        header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *blobs]), len(header))


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
