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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeshift.errors import ProtocolError
from edgeshift.model.shapes import TensorSpec
from edgeshift.serve.json_numbers import LiftedNumbers, lift_number_arrays, lifted_of
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.tensors import DATATYPES as DATATYPES
from edgeshift.serve.tensors import DEFAULT_LIMITS as DEFAULT_LIMITS
from edgeshift.serve.tensors import TensorBudget as TensorBudget
from edgeshift.serve.tensors import decode_bytes_elements as decode_bytes_elements
from edgeshift.serve.tensors import decode_json_tensor as decode_json_tensor
from edgeshift.serve.tensors import decode_lifted_tensor, is_integer
from edgeshift.serve.tensors import decode_raw_tensor as decode_raw_tensor
from edgeshift.serve.tensors import encode_bytes_elements as encode_bytes_elements
from edgeshift.serve.tensors import parse_tensor_header as parse_tensor_header

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


_loads: Callable[[bytes], Any]
_dumps: Callable[[Any], bytes]
_Fragment: Callable[[bytes], Any] | None  # pre-encoded JSON that _dumps writes as it is
try:  # parses JSON tensors' floats ~10x faster than the stdlib; optional
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
    _Fragment = getattr(orjson, "Fragment", None)  # orjson >= 3.9
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _Fragment = None

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


# Numbers of one JSON output encoded per piece. ``tolist`` and ``orjson.dumps`` hold the GIL
# for their whole run: a large answer encoded in a worker thread in one piece still stops the
# event loop (measured: 75-190 ms for 655,360 FP32 values); in pieces of this size the loop
# waits at most ~6 ms, and the whole encode is faster (no list of every value at once).
JSON_PIECE_VALUES = 1 << 15


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


_SCALARS = (str, int, float, bool)


def loads_json(body: bytes, what: str = "request body") -> Any:
    """Parse a JSON body; ProtocolError(400) for anything that is not JSON, however deep.

    orjson refuses nesting past 1024 levels itself; the stdlib fallback raises RecursionError.
    """
    try:
        return _loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _bad(f"{what} is not valid JSON ({first})") from None
    except RecursionError:
        raise _bad(f"{what}: JSON is nested too deeply") from None


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be a JSON object")
    for key, value in params.items():
        # OIP parameters are strings, numbers and booleans: nothing nested reaches a model.
        if not isinstance(value, _SCALARS) and value is not None:
            raise _bad(f"{where}: parameter {key[:40]!r} must be a string, number or boolean")
    return params


def parse_header_length(value: bytes | str | None) -> int | None:
    """Inference-Header-Content-Length: plain decimal digits only (not ``+110``, `` 110``,
    ``1_0``, which ``int()`` accepts)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise _bad(f"Inference-Header-Content-Length {text[:40]!r} is not a plain integer")
    return int(text)


def decode_infer_request(
    body: bytes, header_length: int | None = None, limits: RequestLimits = DEFAULT_LIMITS
) -> InferRequest:
    """Decode an inference request body; ``header_length`` is Inference-Header-Content-Length.

    Raises ProtocolError naming the first thing wrong: 400, or 413 for a request over LIMITS.
    """
    size = len(body)
    if header_length is not None and not 0 < header_length <= size:
        raise _bad(
            f"Inference-Header-Content-Length is {header_length} but the body has {size} bytes"
        )
    hlen = size if header_length is None else header_length
    view = memoryview(body)
    text = view[:hlen].tobytes() if hlen != size else body
    lifted: dict[str, LiftedNumbers] = {}
    if hlen > limits.json_offload_bytes:  # decoded in a worker thread: see json_numbers
        text, lifted = lift_number_arrays(text)
    header = loads_json(text, "request body (send an OIP v2 inference request)")
    del text
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
    budget = TensorBudget(limits)
    offset = hlen
    for index, spec in enumerate(raw_inputs):
        if not isinstance(spec, dict):
            raise _bad(f"inputs[{index}] must be an object")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"inputs[{index}] needs a 'name' string")
        if name in inputs:
            raise _bad(f"input {name!r} is given twice")
        datatype, shape = spec.get("datatype"), spec.get("shape")
        if not isinstance(shape, list):
            raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
        in_params = _parameters(spec, f"input {name!r}")
        binary_size = in_params.get("binary_data_size")
        if binary_size is not None:
            if not is_integer(binary_size) or binary_size < 0:
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
            inputs[name] = decode_raw_tensor(
                name, datatype, shape, view[offset : offset + binary_size], limits, budget
            )
            offset += binary_size
        elif "data" in spec:
            data = spec.pop("data")
            numbers = lifted_of(data, lifted) if lifted else None
            if numbers is not None:
                inputs[name] = decode_lifted_tensor(name, datatype, shape, numbers, limits, budget)
            else:
                # pop, and no other name for it: the parsed list (~32 bytes an element) goes
                # as soon as it is an array
                inputs[name] = decode_json_tensor(name, datatype, shape, data, limits, budget)
            del data
        else:
            raise _bad(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        datatypes[name] = str(datatype)
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


def _json_numbers(flat: np.ndarray) -> list[Any]:
    values: list[Any] = flat.tolist()
    if flat.dtype.kind == "f" and not (finite := np.isfinite(flat)).all():
        # Strict JSON has no NaN: write them as the strings numpy (and so tritonclient's
        # as_numpy) reads back as float, keeping the sign of an infinity.
        for i in np.flatnonzero(~finite).tolist():
            v = values[i]
            values[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return values


def _json_data(name: str, datatype: str, arr: np.ndarray) -> Any:
    if datatype == "BF16":
        raise _bad(f"output {name!r} is BF16: ask for it with binary_data true")
    if datatype != "BYTES":
        flat = arr.ravel()
        step = JSON_PIECE_VALUES
        if flat.size <= step or _Fragment is None:
            return _json_numbers(flat)
        pieces = [
            _dumps(_json_numbers(flat[i : i + step]))[1:-1] for i in range(0, flat.size, step)
        ]
        return _Fragment(b"".join([b"[", b",".join(pieces), b"]"]))
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


def json_output_bytes(outputs: Mapping[str, np.ndarray], request: InferRequest) -> int:
    """The array bytes of OUTPUTS that REQUEST gets as JSON: what its encoding costs grows
    with (binary outputs are one copy; JSON is a Python object and some text per element)."""
    binary_of = {o.name: o.binary for o in request.outputs or ()}
    total = 0
    for name, value in outputs.items():
        binary = binary_of.get(name)
        if not (request.binary_output if binary is None else binary):
            total += np.asarray(value).nbytes
    return total


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
    header = _dumps(response)  # non-finite floats are strings by now (see _json_data)
    if not blobs:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *blobs]), len(header))


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
