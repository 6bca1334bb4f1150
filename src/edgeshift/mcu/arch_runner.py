"""``edgeshift verify --arch cortex-m4|cortex-m7|cortex-m55``: the artifact compiled to C, run
under qemu-system-arm, its outputs handed back to verify like any other architecture's.

An int8 QDQ model (or artifact) is compiled as ``edgeshift compile`` does and fed the same
inputs as the reference side: float inputs are quantized with the compiled input's scale and
zero point (as the model's own QuantizeLinear does) and float outputs are dequantized. A float
model is refused: the MCU runs int8 only, and quantizing it here would verify another model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from edgeshift.errors import EdgeshiftError

_FLOAT_MODEL = (
    "runs int8 models only: verify an int8 artifact (optimize's int8 recipes), or quantize "
    "this float model with `edgeshift compile MODEL --target {core} --data CALIB.npz`"
)


class CortexMRunner:
    """One Cortex-M core under QEMU (system emulation): compile, build, run each job."""

    emulated = True
    backends: tuple[str, ...] = ("onnxruntime", "openvino")  # the ONNX graph is what compiles

    def __init__(self, core: str) -> None:
        self.arch = core

    def unavailable(self) -> str | None:
        return None  # a missing toolchain is an error with its apt-get line, raised by run()

    def run(self, jobs: Sequence[object], jobdir: Path) -> list[object]:
        from edgeshift.mcu.runner import check_toolchain
        from edgeshift.verify.runners import JobResult

        check_toolchain(need_qemu=True)
        results: list[object] = []
        for job in jobs:
            try:
                outputs, seconds = self._run_one(job, jobdir)
                results.append(JobResult(job.id, outputs, None, seconds))  # type: ignore[attr-defined]
            except EdgeshiftError as exc:
                results.append(JobResult(job.id, None, str(exc)))  # type: ignore[attr-defined]
        return results

    def _run_one(self, job: object, jobdir: Path) -> tuple[dict[str, np.ndarray], float]:
        from edgeshift.mcu.compile import compile_model
        from edgeshift.mcu.reference import from_stored, to_stored
        from edgeshift.mcu.verify_run import run_compiled
        from edgeshift.model.load import resolve_model_path

        model_path, _ = resolve_model_path(job.model)  # type: ignore[attr-defined]
        proto = onnx.load(str(model_path), load_external_data=False)
        if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
            raise EdgeshiftError(_FLOAT_MODEL.format(core=self.arch))
        out = jobdir / f"{job.id}-{self.arch}"  # type: ignore[attr-defined]
        graph = compile_model(model_path, self.arch, out=out, force=True).graph
        assert graph is not None
        with np.load(job.inputs) as data:  # type: ignore[attr-defined]
            arrays = {k: data[k] for k in data.files}
        onnx_in = []
        for name in graph.inputs:
            t, io = graph.tensors[name], graph.io_onnx.get(name, {})
            x = np.asarray(arrays[str(io.get("float_name") or io.get("onnx_name", name))])
            if x.dtype.kind == "f":
                x = np.clip(np.rint(x / np.float32(t.scale)) + t.zero_point, -128, 127)
            onnx_in.append(x.astype(np.int8))
        start = time.perf_counter()
        _, stored_out, _ = run_compiled(
            out, graph, self.arch, to_stored(graph, onnx_in), timeout_s=600.0,
            progress=lambda _m: None,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        outputs = {}
        for name, y in zip(graph.outputs, from_stored(graph, stored_out), strict=True):
            t, io = graph.tensors[name], graph.io_onnx.get(name, {})
            if io.get("float_name"):
                deq = (y.astype(np.float32) - np.float32(t.zero_point)) * np.float32(t.scale)
                outputs[str(io["float_name"])] = deq.astype(np.float32)
            else:
                outputs[str(io.get("onnx_name", name))] = y
        return outputs, seconds
