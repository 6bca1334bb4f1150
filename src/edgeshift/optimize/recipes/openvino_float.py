"""OpenVINO at f32, bf16 or f16 inference precision on the unchanged model.

The model file is the user's own; what differs is OpenVINO's INFERENCE_PRECISION_HINT, stored
in the manifest's runtime options so that running the artifact applies it again. A precision
the CPU plugin does not offer (OPTIMIZATION_CAPABILITIES) is skipped, not failed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from edgeshift.optimize.recipes import BuildContext, Recipe, Variant

_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}


class OpenVINOFloat(Recipe):
    family = "openvino_float"
    backend = "openvino"

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.name = f"openvino-{precision}"

    def unavailable(self, ctx: BuildContext) -> str | None:
        caps = ctx.host.openvino_capabilities
        if not caps:
            return "OpenVINO's CPU plugin is not available here"
        if _CAPABILITY[self.precision] not in caps:
            return f"not supported on this CPU (OpenVINO offers {', '.join(caps)})"
        return None

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        out = self.variant_path(ctx, exclude)
        shutil.copyfile(ctx.source_path, out)
        params = {"inference_precision_hint": self.precision}
        return Variant(out, self.backend, self.precision, {}, params)
