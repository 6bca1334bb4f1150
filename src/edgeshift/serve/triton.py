"""Triton's model configuration and statistics extensions, as pure functions of what the
server holds: the JSON forms of ``model_config.proto``'s ``ModelConfig`` and of
``grpc_service.proto``'s ``ModelStatisticsResponse``. The HTTP routes return them as they
are; the gRPC front end parses them into the protobuf messages.
"""

from __future__ import annotations

from typing import Any

from edgeshift.model.shapes import TensorSpec
from edgeshift.serve.protocol import datatype_of, metadata_shape
from edgeshift.serve.repository import ModelRepository, ServedModel, ServeOptions
from edgeshift.serve.stats import statistics_entry


def _config_type(spec: TensorSpec) -> str:
    datatype = datatype_of(spec.dtype)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor_config(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = metadata_shape(spec) if spec.shape is not None else [-1]
    if batched:
        dims = dims[1:]
    # Triton has no scalar dims: a rank-0 tensor is written [1] with reshape to [] .
    entry: dict[str, Any] = {"name": spec.name, "data_type": _config_type(spec)}
    if dims:
        entry["dims"] = dims
    else:
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    return entry


def _version_policy(options: ServeOptions) -> dict[str, Any]:
    policy = options.version_policy
    if policy.kind == "all":
        return {"all": {}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"latest": {"num_versions": 1}}


def model_config(model: ServedModel, options: ServeOptions) -> dict[str, Any]:
    """MODEL's configuration in Triton's JSON form (parses as ``model_config_pb2.ModelConfig``).

    ``max_batch_size`` is 0 when the batcher cannot stack requests (no dynamic first axis on
    every input and output, or ``--max-batch 1``); then dims are the full shapes."""
    batched = model.batcher.batchable
    backend = model.backend.name
    delay_ms = options.max_delay_ms or 0.0  # None (adaptive) waits at most part of one run
    config: dict[str, Any] = {
        "name": model.name,
        "platform": "onnxruntime_onnx" if backend == "onnxruntime" else backend,
        "backend": backend,
        "version_policy": _version_policy(options),
        "max_batch_size": options.max_batch if batched else 0,
        "input": [_tensor_config(spec, batched) for spec in model.inputs],
        "output": [_tensor_config(spec, batched) for spec in model.outputs],
        "instance_group": [
            {"name": f"{model.name}_0", "count": model.batcher.instances, "kind": "KIND_CPU"}
        ],
    }
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": options.max_queue},
        }
    return config


def model_statistics(
    repository: ModelRepository, name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """``{"model_stats": [...]}`` for every loaded model, one model's loaded versions, or one
    version; an unknown or unloaded NAME/VERSION raises the ProtocolError ``get`` does."""
    if name is None:
        models = sorted(repository.models(), key=lambda m: (m.name, int(m.version)))
    elif version:
        models = [repository.get(name, version)]
    else:
        repository.get(name)  # 404 / 503 when it is not loaded
        models = [repository.get(name, v) for v in repository.versions(name)]
    outcomes = repository.metrics.request_stats
    return {
        "model_stats": [
            statistics_entry(m.name, m.version, m.batcher.stats, outcomes.get(m.name, m.version))
            for m in models
        ]
    }
