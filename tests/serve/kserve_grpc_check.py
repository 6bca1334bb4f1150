"""KServe's InferenceGRPCClient against a running edgeshift gRPC port; run as a script in its
own process (kserve and tritonclient.grpc both register the protobuf package ``inference``
and cannot be imported together). Prints one JSON object of what it saw.

Usage: python kserve_grpc_check.py HOST:PORT MODEL ROWS_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def check(url: str, model: str, rows: np.ndarray) -> dict[str, Any]:
    client = InferenceGRPCClient(url, retries=0, timeout=30)
    seen: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model),
    }
    raw = InferInput("x", list(rows.shape), "FP32")
    raw.set_data_from_numpy(rows, binary_data=True)  # raw_input_contents
    answer = await client.infer(InferRequest(model, [raw], request_id="raw-1"))
    seen["raw"] = {
        "id": answer.id,
        "outputs": {o.name: o.as_numpy().tolist() for o in answer.outputs},
    }
    typed = InferInput("x", list(rows.shape), "FP32", data=rows.ravel().tolist())  # contents
    answer = await client.infer(InferRequest(model, [typed]))
    seen["typed"] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
    try:
        await client.infer(InferRequest("no-such-model", [raw]))
        seen["unknown"] = None
    except grpc.RpcError as exc:
        seen["unknown"] = {"code": exc.code().name, "message": exc.details()}
    await client.close()
    return seen


def main() -> None:
    url, model, rows = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), np.float32)
    print(json.dumps(asyncio.run(check(url, model, rows))))


if __name__ == "__main__":
    main()
