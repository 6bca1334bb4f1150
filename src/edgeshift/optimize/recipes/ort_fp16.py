"""ORT fp16: weights and activations in half precision, inputs and outputs kept fp32.

ORT's CPU provider computes most fp16 ops by converting to fp32 (or lacks kernels for them),
so without fp16 arithmetic in the CPU (AVX512-FP16, Arm FEAT_FP16) the variant is slower,
not faster: the recipe is skipped there, and tried (and measured) where the host has it.

The converted graph is opened and run once in a child process before the search opens it:
ONNX Runtime 1.32 crashes (SIGSEGV) optimizing some converted graphs at level "all" (the zoo's
CNN + BiLSTM recognizer, on a Zen 5 host with avx512_fp16), and a crash in the search's own
process would lose every other candidate. The probe costs one interpreter start.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.errors import OptimizeError
from edgeshift.optimize.host import has_fp16_arithmetic
from edgeshift.optimize.recipes import BuildContext, Recipe, Variant


class OrtFp16(Recipe):
    name = "ort-fp16"
    family = "ort_fp16"
    backend = "onnxruntime"
    precision = "fp16"

    def unavailable(self, ctx: BuildContext) -> str | None:
        if not has_fp16_arithmetic(ctx.host):
            return (
                "the CPU has no fp16 arithmetic (avx512_fp16 / Arm fp16): ORT fp16 would run slower"
            )
        return None

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = self.variant_path(ctx, exclude)
        model = onnx.load(str(ctx.source_path))
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
        onnx.save(half, str(out))
        variant = Variant(out, self.backend, "fp32", {"graph_optimization_level": "all"}, {})
        _probe(variant, ctx.calibration[0] if ctx.calibration else {}, ctx.workdir)
        variant.params = {"keep_io_types": True}
        return variant


# Opens the variant with open_backend, as the search will, and runs it on the saved feeds.
_PROBE = """
import json, sys, numpy as np
from edgeshift.runtime import open_backend
backend, precision, options = json.loads(sys.argv[2])
session = open_backend(sys.argv[1], backend, precision, 1, options)
feeds = dict(np.load(sys.argv[3])) if sys.argv[3] else {}
if feeds:
    session.run(feeds)
"""


def _probe(
    variant: Variant, feeds: dict[str, np.ndarray], workdir: Path, timeout_s: float = 300
) -> None:
    """Open and run VARIANT in a child process; a crash or error there is this recipe's
    failure."""
    how = json.dumps([variant.backend, variant.runtime_precision, variant.options])
    feeds_path = ""
    if feeds:
        feeds_path = str(workdir / "ort-fp16-probe.npz")
        first: dict[str, Any] = {k: v[:1] for k, v in feeds.items()}
        np.savez(feeds_path, **first)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(variant.model_path), how, feeds_path],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise OptimizeError(
            f"ort-fp16: onnxruntime did not open the fp16 model within {timeout_s:.0f} s; "
            "the other candidates are unaffected; leave ort-fp16 out with --recipes"
        ) from exc
    if done.returncode == 0:
        return
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        cause = f"crashed ({name}) opening the converted model at graph optimization level all"
    else:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
        cause = f"could not run the converted model ({last})"
    raise OptimizeError(
        f"ort-fp16: onnxruntime {cause}; the other candidates are unaffected; "
        "leave ort-fp16 out with --recipes"
    )
