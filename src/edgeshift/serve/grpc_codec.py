"""Open Inference Protocol v2 gRPC messages <-> edgeshift's requests and answers. Pure:
protobuf messages in, :class:`~edgeshift.serve.protocol.InferRequest` and protobuf out.

Inputs come as ``raw_input_contents`` (one entry per input, all or none; BYTES as 4-byte
length-prefixed elements, as on HTTP) or as typed ``contents`` (the repeated field of the
input's datatype; FP16 and BF16 have none and must be raw). Outputs always go back as
``raw_output_contents``, which tritonclient and KServe's client read.

:class:`GrpcLimits` (what the gRPC port lets a client hold open) lives in the pure
:mod:`edgeshift.serve.limits`, which the server's settings import without loading grpc.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from edgeshift.errors import ProtocolError
from edgeshift.serve.limits import GrpcLimits as GrpcLimits  # re-exported: its old home
from edgeshift.serve.limits import RequestLimits
from edgeshift.serve.protocol import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    TensorBudget,
    datatype_of,
    decode_raw_tensor,
    encode_bytes_elements,
    parse_tensor_header,
)

# HTTP status of a ProtocolError -> the gRPC code that says the same.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(http_status: int) -> grpc.StatusCode:
    code = STATUS_CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


# datatype -> (the typed contents field that carries it, the numpy dtype that field holds)
_TYPED_FIELDS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "bool"),
    "INT8": ("int_contents", "int64"),
    "INT16": ("int_contents", "int64"),
    "INT32": ("int_contents", "int64"),
    "INT64": ("int64_contents", "int64"),
    "UINT8": ("uint_contents", "uint64"),
    "UINT16": ("uint_contents", "uint64"),
    "UINT32": ("uint_contents", "uint64"),
    "UINT64": ("uint64_contents", "uint64"),
    "FP32": ("fp32_contents", "float32"),
    "FP64": ("fp64_contents", "float64"),
    "BYTES": ("bytes_contents", "object"),
}


def _bad(message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(message, status)


def _decode_typed(
    name: str, tensor: Any, limits: RequestLimits, budget: TensorBudget
) -> np.ndarray:
    datatype, shape = tensor.datatype, tuple(tensor.shape)
    count = parse_tensor_header(name, datatype, shape, limits)
    budget.charge(name, datatype, count)
    given = [field.name for field, _ in tensor.contents.ListFields()]
    typed = _TYPED_FIELDS.get(datatype)
    if typed is None:
        raise _bad(f"input {name!r}: {datatype} has no typed contents — send raw_input_contents")
    field_name, held = typed
    if any(g != field_name for g in given):
        raise _bad(
            f"input {name!r}: {datatype} data goes in contents.{field_name}, not "
            f"{', '.join(g for g in given if g != field_name)}"
        )
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        raise _bad(f"input {name!r}: shape {list(shape)} needs {count} elements, got {len(values)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    arr = np.array(values, dtype=held)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _bad(f"input {name!r}: values out of range for {datatype}")
    return arr.astype(dtype, copy=False).reshape(shape)


def decode_model_infer(message: pb.ModelInferRequest, limits: RequestLimits) -> InferRequest:
    """A ModelInferRequest -> InferRequest; ProtocolError (400/413) naming what is wrong."""
    tensors = message.inputs
    if not tensors:
        raise _bad("request needs at least one input")
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(tensors):
        raise _bad(
            f"raw_input_contents has {len(raw_contents)} entries for {len(tensors)} inputs — "
            "send raw contents for every input, in order, or for none"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    budget = TensorBudget(limits)
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise _bad(f"inputs[{index}] needs a name")
        if name in inputs:
            raise _bad(f"input {name!r} is given twice")
        if raw_contents:
            if tensor.HasField("contents"):
                raise _bad(f"input {name!r} has both raw and typed contents; send one")
            inputs[name] = decode_raw_tensor(
                name, tensor.datatype, tensor.shape, raw_contents[index], limits, budget
            )
        else:
            inputs[name] = _decode_typed(name, tensor, limits, budget)
        datatypes[name] = tensor.datatype
    outputs: list[RequestedOutput] | None = None
    if message.outputs:
        outputs = []
        seen: set[str] = set()
        for out in message.outputs:
            if "classification" in out.parameters:
                raise _bad("the classification extension is not supported — ask for raw outputs")
            if out.name in seen:
                raise _bad(f"output {out.name!r} is requested twice")
            seen.add(out.name)
            outputs.append(RequestedOutput(out.name, True))
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=message.id or None,
        outputs=outputs,
        binary_output=True,
    )


def encode_model_infer(
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    request_id: str | None,
    into: pb.ModelInferResponse | None = None,
) -> pb.ModelInferResponse:
    """Outputs (already selected and ordered) as raw_output_contents, written INTO a message
    when given (a stream's answer holds its response in place: no copy of the outputs)."""
    response = pb.ModelInferResponse() if into is None else into
    response.model_name = model_name
    response.model_version = model_version
    response.id = request_id or ""
    for name, value in outputs.items():
        arr = np.asarray(value)
        datatype = datatype_of(arr.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if datatype == "BYTES":
            response.raw_output_contents.append(encode_bytes_elements(arr))
        else:
            raw = np.ascontiguousarray(arr, dtype=DATATYPES[datatype]).tobytes()
            response.raw_output_contents.append(raw)
    return response
