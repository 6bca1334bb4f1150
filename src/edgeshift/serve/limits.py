"""What one request may ask of the server, checked from the declared shapes and sizes
before anything is allocated. Shared by the HTTP and gRPC front ends.

The checks themselves are in :mod:`edgeshift.serve.protocol` (``parse_tensor_header``,
``TensorBudget``, ``decode_infer_request``); each refusal names the flag that raises its limit.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    # --max-body-mb: HTTP body / gRPC message. 64 MiB holds 16 M FP32 values in binary.
    max_body_bytes: int = 64 * MIB
    # --max-rows: first dimension of any input. The runtimes' working memory grows with rows,
    # not with body bytes (a 64 MiB body of the digits CNN is 258,048 rows and GiBs of arena).
    max_rows: int = 65536
    # --max-tensor-mb: decoded inputs of one request, all together. Twice the body limit: a
    # JSON body of small numbers ("0,") decodes to 2 bytes of FP32 per body byte, so every
    # body under the body limit as FP32 passes, and 8-byte types from JSON cannot reach 4x.
    max_tensor_bytes: int = 128 * MIB
    # --max-dims: rank of one input tensor; no served model needs more, and JSON nesting of
    # `data` is checked against it.
    max_dims: int = 16
    # --json-offload-mb: JSON bodies larger than this decode in a worker thread, so the
    # event loop keeps answering other clients; smaller ones are faster decoded in place.
    json_offload_bytes: int = 1 * MIB
