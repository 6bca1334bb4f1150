"""OpenVINO, CPU plugin. The inference precision is always set explicitly: on CPUs with
bf16 OpenVINO's default is bf16, which silently changes numerics."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import openvino as ov

from edgeshift.errors import BackendError, DataError, ShapeError
from edgeshift.model.shapes import TensorSpec
from edgeshift.runtime.base import Backend

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}
# An input is shared with the infer request (not copied) when sharing keeps at most this many
# bytes, or twice its own, alive until the request's next call.
SHARE_KEEPS_BYTES = 1 << 20


@lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def cpu_capabilities() -> tuple[str, ...]:
    return tuple(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _spec(port: Any) -> TensorSpec:
    pshape = port.get_partial_shape()
    shape: tuple[int | None, ...] | None = None
    if pshape.rank.is_static:
        shape = tuple(d.get_length() if d.is_static else None for d in pshape)
    names = port.get_names()
    name = port.get_any_name() if names else f"output_{port.get_index()}"
    return TensorSpec(name, str(np.dtype(port.get_element_type().to_dtype())), shape)


def _reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # The last line that is not a "file:line:" location is the reason itself.
    detail = next(
        (ln.lstrip("- ") for ln in reversed(lines) if not ln.endswith(":")),
        lines[0] if lines else "",
    )
    return detail[:300]


def _kept_bytes(arr: np.ndarray) -> int:
    """Bytes that a reference to ARR keeps alive: its base array's or buffer's, for a view."""
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, np.ndarray):
        return int(base.nbytes)
    try:
        return memoryview(base).nbytes
    except TypeError:  # a base without the buffer protocol: assume the worst
        return 1 << 62


class OpenVINOBackend(Backend):
    """OpenVINO on the CPU with INFERENCE_PRECISION_HINT set from ``precision``."""

    name: ClassVar[str] = "openvino"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16", "fp16")

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str,
        threads: int,
        performance_hint: str = "LATENCY",
        num_streams: int = 1,
        memory_budget_bytes: int | None = None,
    ) -> None:
        super().__init__(
            model_path,
            precision=precision,
            threads=threads,
            memory_budget_bytes=memory_budget_bytes,
        )
        capability = _CAPABILITY[precision]
        if capability not in cpu_capabilities():
            raise BackendError(
                f"this CPU cannot run OpenVINO at {precision} (it offers "
                f"{', '.join(cpu_capabilities())}) — use --precision fp32"
            )
        self.performance_hint = performance_hint
        self.num_streams = num_streams
        self._config = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": performance_hint,
            "NUM_STREAMS": num_streams,
        }
        try:
            model = core().read_model(str(model_path))
            self._compile(model)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line C++ context
            raise BackendError(
                f"OpenVINO cannot load {model_path.name}: {_reason(exc)} — try "
                "--backend onnxruntime"
            ) from exc
        self._lock = threading.Lock()  # one infer request is not re-entrant

    def _compile(self, model: ov.Model) -> None:
        self.compiled = core().compile_model(model, "CPU", self._config)
        self.inputs = [_spec(p) for p in self.compiled.inputs]
        self.outputs = [_spec(p) for p in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        self._plan_memory()

    def _release(self) -> None:
        # The CPU plugin sizes an infer request's buffers for the largest shape it has run
        # and keeps them; a fresh request starts small (measured: 65,536 rows of the digits
        # CNN leave ~20 MB behind in the old one, ~0 in a new one).
        with self._lock:
            self._request = self.compiled.create_infer_request()

    def fix_input_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Reshape the model to SHAPES and recompile: OpenVINO's CPU plugin plans memory
        and picks kernels once for static shapes, where dynamic ones pay per call."""
        if not any(spec.is_dynamic for spec in self.inputs):
            return
        wanted = {s.name: shapes[s.name] for s in self.inputs if s.name in shapes}
        try:
            model = core().read_model(str(self.model_path))
            model.reshape({name: ov.PartialShape(list(dims)) for name, dims in wanted.items()})
            self._compile(model)
        except Exception as exc:
            text = ", ".join(f"{n}={list(d)}" for n, d in wanted.items())
            raise ShapeError(
                f"OpenVINO cannot run {self.model_path.name} at {text}: {_reason(exc)} — "
                "choose other --shape values"
            ) from exc

    def runtime_options(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "performance_hint": self.performance_hint,
            "num_streams": self.num_streams,
        }

    def _run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        try:
            with self._lock:
                # Synchronous infer: sharing the caller's input buffers avoids a copy per call,
                # but the request keeps what it shares until its next call, and a view keeps
                # its whole base alive: a batcher slice of a large request would hold the
                # request's body (+16 MiB after the largest binary one, issue 17).
                share = all(
                    _kept_bytes(a) <= max(2 * a.nbytes, SHARE_KEEPS_BYTES) for a in feeds.values()
                )
                result = self._request.infer(feeds, share_inputs=share)
                values = {spec.name: np.array(result[i]) for i, spec in enumerate(self.outputs)}
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise DataError(
                f"OpenVINO could not run the model: {(lines or ['?'])[0][:300]}"
            ) from exc
        if output_names:
            return {n: values[n] for n in output_names}
        return values
