"""ORT fp32 with offline graph optimization: the graph ORT would build at load time, saved.

Saved at the "extended" level: "all" adds layout transforms tied to this CPU's kernels, which
ORT recommends against storing; they are applied again at load time ("all" stays the runtime
level). What it buys: less load time and the same graph on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

from edgeshift.optimize.recipes import BuildContext, Recipe, Variant


class OrtFloatOptimized(Recipe):
    name = "ort-fp32-opt"
    family = "ort_float"
    backend = "onnxruntime"
    precision = "fp32"

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        out = self.variant_path(ctx, exclude)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        ort.InferenceSession(str(ctx.source_path), so, providers=["CPUExecutionProvider"])
        return Variant(
            out,
            self.backend,
            "fp32",
            {"graph_optimization_level": "all"},
            {"offline_optimization_level": "extended"},
        )
