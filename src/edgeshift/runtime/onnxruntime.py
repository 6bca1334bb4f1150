"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from edgeshift.errors import BackendError, DataError
from edgeshift.model.shapes import TensorSpec
from edgeshift.runtime.base import Backend

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def _spec(arg: Any) -> TensorSpec:
    # A dim ORT reports as a negative int (an exporter's -1) is dynamic, like a None.
    shape = (
        tuple((d if d >= 0 else None) if isinstance(d, int) else (d or None) for d in arg.shape)
        if arg.shape
        else ()
    )
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OnnxRuntimeBackend(Backend):
    """ORT on the CPU. Precision is that of the stored model (fp32, or fp16/int8 graphs as
    written by optimize); nothing is converted at load time."""

    name: ClassVar[str] = "onnxruntime"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    concurrent_runs: ClassVar[bool] = True  # InferenceSession.run is thread-safe

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str,
        threads: int,
        graph_optimization_level: str = "all",
        optimized_model_path: str | None = None,
        allow_spinning: bool = True,
        memory_budget_bytes: int | None = None,
    ) -> None:
        super().__init__(
            model_path,
            precision=precision,
            threads=threads,
            memory_budget_bytes=memory_budget_bytes,
        )
        if graph_optimization_level not in _LEVELS:
            raise BackendError(
                f"unknown graph_optimization_level {graph_optimization_level!r} — use "
                f"{', '.join(_LEVELS)}"
            )
        self.graph_optimization_level = graph_optimization_level
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = _LEVELS[graph_optimization_level]
        so.log_severity_level = 3
        # ORT's workers spin between runs: lowest latency back to back, but a server whose
        # event loop and batcher share the cores with them wants them to sleep instead.
        self.allow_spinning = allow_spinning
        if not allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if optimized_model_path:
            so.optimized_model_filepath = optimized_model_path
        try:
            self.session = ort.InferenceSession(
                str(model_path), so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(
                f"onnxruntime cannot load {model_path.name}: {message[:300]} — try "
                "--backend openvino, or re-export the model at a supported opset"
            ) from exc
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self._plan_memory()
        # The CPU arena keeps every block it grew by; shrinking it at the end of a run frees
        # the unused ones. Only the last chunk of a chunked call asks: small calls keep their
        # blocks (the hot path allocates nothing), chunks reuse the first chunk's.
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def runtime_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "precision": self.precision,
            "graph_optimization_level": self.graph_optimization_level,
        }
        if not self.allow_spinning:
            options["allow_spinning"] = False
        return options

    def _run(
        self,
        feeds: dict[str, np.ndarray],
        output_names: Sequence[str] | None,
        run_options: ort.RunOptions | None = None,
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.outputs]
        try:
            values = self.session.run(names, feeds, run_options)
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"onnxruntime could not run the model: {message[:300]}") from exc
        return dict(zip(names, values, strict=True))

    def _run_last_chunk(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        return self._run(feeds, output_names, self._shrink)
