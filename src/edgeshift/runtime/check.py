"""Will a runtime open and run this model? The check ``estimate``, ``compare`` and ``plan``
make before any figure, so a model that ``bench`` and ``serve`` would refuse is never
estimated."""

from __future__ import annotations

from typing import Any

from edgeshift.model.load import LoadedModel


def check_runs(
    model: LoadedModel, runtime: str, name: str = "model", analysis: Any | None = None
) -> None:
    """Raise ModelError unless RUNTIME opens MODEL, as ``bench`` and ``serve`` open it, and
    (given its ANALYSIS) runs it once on synthesized inputs at the analysed shapes.

    A runtime this machine lacks (TensorRT, TFLite Micro, ...) is stood in for by ONNX
    Runtime: a graph it refuses (unknown op domain, unsupported opset, inconsistent weights)
    runs nowhere."""
    import psutil

    from edgeshift.bench.inputs import index_ranges, synthesize_inputs
    from edgeshift.errors import EdgeshiftError, ModelError
    from edgeshift.runtime import BACKENDS, open_backend

    local = runtime if runtime in BACKENDS else "onnxruntime"
    # Some graphs load and fail only when run (a weight whose shape contradicts its input);
    # one run is cheap unless the activations would crowd this machine's memory.
    runnable = analysis is not None and (
        analysis.peak_activation_bytes + analysis.weight_bytes
        < psutil.virtual_memory().available // 4
    )
    try:
        backend = open_backend(model, local, "fp32", threads=1)
        try:
            if runnable and analysis is not None:
                shapes = {s.name: tuple(analysis.input_shapes[s.name]) for s in backend.inputs}
                backend.run(synthesize_inputs(backend.inputs, shapes, 0, index_ranges(model.proto)))
        finally:
            backend.close()
    except EdgeshiftError as exc:
        reason = str(exc).split(" — ")[0]  # its own hint would follow ours
    except Exception as exc:  # a runtime refusing a graph raises its own exception types
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    else:
        return
    stand_in = "" if local == runtime else f" (standing in for {runtime})"
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    raise ModelError(
        f"{name} cannot run on {local}{stand_in}, so it is not estimated: {reason} — fix or "
        "re-export the model (`edgeshift inspect` shows which runtimes load it)"
    )
