"""One tensor of an Open Inference Protocol request, from its declared datatype and shape to a
numpy array: the checks against :class:`RequestLimits` that come before any allocation, and
the raw (binary extension, gRPC ``raw_input_contents``) and JSON decoders. Shared by the HTTP
codec (:mod:`edgeshift.serve.protocol`, which re-exports all of it) and the gRPC front end.
Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from edgeshift.errors import ProtocolError
from edgeshift.serve.json_numbers import LiftedNumbers, NumberSyntaxError, parse_numbers
from edgeshift.serve.limits import MIB, RequestLimits

_U32 = struct.Struct("<I")

_loads: Callable[[bytes], Any]
try:  # parses JSON numbers ~10x faster than the stdlib; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, 400)


class _Datatypes(Mapping[str, "np.dtype[Any]"]):
    """OIP datatype -> numpy dtype. A datatype given as a name (BF16: "bfloat16") is
    ml_dtypes' (~2.4 MB of RSS), imported when such a tensor first comes: a server or an edge
    agent that never sees one never pays for it."""

    def __init__(self, table: dict[str, np.dtype[Any] | str]) -> None:
        self._names = list(table)
        self._dtypes = {k: v for k, v in table.items() if not isinstance(v, str)}
        self._lazy = {k: v for k, v in table.items() if isinstance(v, str)}

    def __getitem__(self, datatype: str) -> np.dtype[Any]:
        try:
            return self._dtypes[datatype]
        except KeyError:
            import ml_dtypes

            dtype = np.dtype(getattr(ml_dtypes, self._lazy[datatype]))  # KeyError: unknown
            self._dtypes[datatype] = dtype
            return dtype

    def __contains__(self, datatype: object) -> bool:
        return datatype in self._dtypes or datatype in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# Every fixed-size type is little-endian on the wire.
DATATYPES: Mapping[str, np.dtype[Any]] = _Datatypes(
    {
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
        "BF16": "bfloat16",
        "BYTES": np.dtype(np.object_),
    }
)


DEFAULT_LIMITS = RequestLimits()


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:g} MiB"


def is_integer(value: Any) -> bool:
    """An int that is not a bool (JSON true is not a dimension)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tensor_header(
    name: str, datatype: Any, shape: Any, limits: RequestLimits = DEFAULT_LIMITS
) -> int:
    """Check one input's declared datatype and shape against LIMITS, before anything is
    allocated; its element count. ProtocolError: 400 for a malformed header, 413 for a
    tensor over a limit (the message names the flag that raises it)."""
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        shown = datatype if isinstance(datatype, str) else type(datatype).__name__
        raise _bad(
            f"input {name!r}: unknown datatype {str(shown)[:40]!r} — use one of "
            f"{', '.join(DATATYPES)}"
        )
    if isinstance(shape, (str, bytes, dict)) or not hasattr(shape, "__len__"):
        raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > limits.max_dims:
        raise _bad(
            f"input {name!r} has {len(shape)} dimensions; at most {limits.max_dims} are "
            "accepted (--max-dims)"
        )
    dims = list(shape)
    if not all(is_integer(d) and d >= 0 for d in dims):
        raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if dims and dims[0] > limits.max_rows:
        raise ProtocolError(
            f"input {name!r} has {dims[0]} rows; the limit is {limits.max_rows} per request — "
            "send smaller batches or start the server with a larger --max-rows",
            413,
        )
    itemsize = DATATYPES[datatype].itemsize
    # Dims of 0 make the product 0, but a huge dim beside one is still refused: numpy
    # cannot even describe [0, 2**80].
    if math.prod(max(d, 1) for d in dims) * itemsize > limits.max_tensor_bytes:
        raise ProtocolError(
            f"input {name!r}: shape {dims[:8]}{'…' if len(dims) > 8 else ''} of {datatype} "
            f"is over the {_mib(limits.max_tensor_bytes)} tensor limit — send smaller batches "
            "or start the server with a larger --max-tensor-mb",
            413,
        )
    return math.prod(dims)


class TensorBudget:
    """The decoded-tensor bytes of one request, all inputs together, against
    ``limits.max_tensor_bytes``: charge each input before decoding it."""

    def __init__(self, limits: RequestLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.used_bytes = 0

    def charge(self, name: str, datatype: str, count: int) -> None:
        """Count COUNT elements of DATATYPE (checked by parse_tensor_header) for input NAME."""
        self.used_bytes += count * DATATYPES[datatype].itemsize
        if self.used_bytes > self.limits.max_tensor_bytes:
            raise ProtocolError(
                f"the request's inputs (at {name!r}) decode to more than the "
                f"{_mib(self.limits.max_tensor_bytes)} tensor limit — send smaller batches "
                "or start the server with a larger --max-tensor-mb",
                413,
            )


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


def decode_raw_tensor(
    name: str,
    datatype: Any,
    shape: Any,
    raw: memoryview | bytes,
    limits: RequestLimits = DEFAULT_LIMITS,
    budget: TensorBudget | None = None,
) -> np.ndarray:
    """One input's raw bytes (Triton's binary extension, gRPC ``raw_input_contents``) -> an
    array of SHAPE, zero-copy for fixed-size types. Checks the header (parse_tensor_header)
    and charges BUDGET before anything is allocated."""
    count = parse_tensor_header(name, datatype, shape, limits)
    if budget is not None:
        budget.charge(name, datatype, count)
    dims = tuple(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(raw, count, name).reshape(dims)
    dtype = DATATYPES[datatype]
    want = count * dtype.itemsize
    if len(raw) != want:
        raise _bad(
            f"input {name!r}: binary_data_size is {len(raw)} bytes but shape {list(dims)} "
            f"of {datatype} needs {want}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


# What JSON numbers may become: a float never silently becomes an int, nor a number a bool.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_FLAT_TYPES: dict[str, set[type]] = {"i": {int}, "f": {int, float}}


def decode_json_tensor(
    name: str,
    datatype: Any,
    shape: Any,
    data: Any,
    limits: RequestLimits = DEFAULT_LIMITS,
    budget: TensorBudget | None = None,
) -> np.ndarray:
    """One input's JSON ``data`` -> an array of SHAPE. ``data`` is flat (row-major) or nested
    exactly as SHAPE; checks the header and charges BUDGET before converting."""
    count = parse_tensor_header(name, datatype, shape, limits)
    if budget is not None:
        budget.charge(name, datatype, count)
    dims = tuple(shape)
    if datatype == "BF16":
        raise _bad(f"input {name!r}: BF16 data must be sent as binary (Triton's binary extension)")
    if not isinstance(data, list):
        data = [data]
    nested = bool(data) and isinstance(data[0], list)
    if nested and len(data) != (dims[0] if dims else 1):
        raise _bad(
            f"input {name!r}: data is nested as [{len(data)}, …] but the shape is {list(dims)}"
            " — nest it exactly as the shape, or send it flat"
        )
    if not nested and len(data) != count:
        raise _bad(f"input {name!r}: shape {list(dims)} needs {count} elements, got {len(data)}")
    try:
        if datatype == "BYTES":
            arr = np.asarray(data, dtype=object)
            if arr.shape != (dims if nested else (count,)):
                raise ValueError(f"data is nested as {list(arr.shape)}")
            out = np.empty(count, dtype=object)
            for i, item in enumerate(arr.ravel()):
                if not isinstance(item, str):
                    raise _bad(f"input {name!r}: BYTES elements in JSON must be strings")
                out[i] = item.encode("utf-8")
            return out.reshape(dims)
        dtype = DATATYPES[datatype]
        if not nested and dtype.kind in "if" and set(map(type, data)) <= _FLAT_TYPES[dtype.kind]:
            # The common flat list of numbers: straight to the dtype, no float64 copy between,
            # and the list (~32 bytes an element) goes before the array is returned.
            if dtype.kind == "i":
                info = np.iinfo(dtype)
                if min(data, default=0) < info.min or max(data, default=0) > info.max:
                    raise ValueError(f"values outside [{info.min}, {info.max}]")
            with np.errstate(over="raise", invalid="raise"):
                flat = np.asarray(data, dtype=dtype)
            del data
            return flat.reshape(dims)
        parsed = np.asarray(data)  # numpy's own type: strings and floats-for-ints show here
        if dtype.kind in "iu" and parsed.dtype.kind in "fO":
            # ints past 2**63 beside smaller ones come out float64 (or object): look again
            items = parsed.ravel().tolist() if parsed.dtype.kind == "O" else _flatten(data)
            if all(is_integer(v) for v in items):
                parsed = np.asarray(items, dtype=object)
                info = np.iinfo(dtype)
                if min(items, default=0) < info.min or max(items, default=0) > info.max:
                    raise ValueError(f"values outside [{info.min}, {info.max}]")
                parsed = parsed.astype(dtype).reshape(np.shape(data) if nested else -1)
        del data
        if parsed.size and parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
            want = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}
            raise ValueError(f"{datatype} data must be {want[dtype.kind]}, not {parsed.dtype}")
        if parsed.size and dtype.kind in "iu" and parsed.dtype != dtype:
            info = np.iinfo(dtype)
            if parsed.min() < info.min or parsed.max() > info.max:
                raise ValueError(f"values outside [{info.min}, {info.max}]")
        with np.errstate(over="raise", invalid="raise"):  # 1e9 as FP16 is an error, not inf
            arr = parsed.astype(dtype, copy=False)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _bad(f"input {name!r}: data is not a valid {datatype} array ({first})") from None
    if nested and arr.shape != dims:
        raise _bad(
            f"input {name!r}: data is nested as {list(arr.shape)} but the shape is {list(dims)}"
            " — nest it exactly as the shape, or send it flat"
        )
    if arr.size != count:
        raise _bad(f"input {name!r}: shape {list(dims)} needs {count} elements, got {arr.size}")
    return arr.reshape(dims)


def decode_lifted_tensor(
    name: str,
    datatype: Any,
    shape: Any,
    numbers: LiftedNumbers,
    limits: RequestLimits,
    budget: TensorBudget,
) -> np.ndarray:
    """A large flat array of numbers, taken out of the JSON text before it was parsed."""
    count = parse_tensor_header(name, datatype, shape, limits)
    budget.charge(name, datatype, count)
    dtype = DATATYPES[datatype]
    if dtype.kind not in "iuf":
        want = {"BOOL": "true/false", "BYTES": "strings"}.get(datatype, "binary")
        raise _bad(f"input {name!r}: {datatype} data must be {want}, not numbers")
    try:
        flat = parse_numbers(numbers, dtype, count, _loads)
    except NumberSyntaxError as exc:
        raise _bad(f"request body is not valid JSON ({exc})") from None
    except (ValueError, OverflowError, FloatingPointError) as exc:
        raise _bad(f"input {name!r}: data is not a valid {datatype} array ({exc})") from None
    return flat.reshape(tuple(shape))


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out
