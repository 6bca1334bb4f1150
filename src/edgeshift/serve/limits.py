"""What one request may ask of the server, checked from the declared shapes and sizes
before anything is allocated. Shared by the HTTP and gRPC front ends.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 64 * MIB  # HTTP body / gRPC message
    max_rows: int = 65536  # first-dimension rows per input of a batchable model
    max_tensor_bytes: int = 256 * MIB  # decoded tensors of one request, all inputs together
    max_dims: int = 16  # rank of one input tensor
    max_json_depth: int = 64  # nesting of a JSON body
    json_offload_bytes: int = 1 * MIB  # JSON bodies larger than this decode off the event loop
