"""OpenVINO int8 through NNCF's accuracy control (``nncf.quantize_with_accuracy_control``).

NNCF quantizes the ONNX graph (its ONNX backend supports accuracy control; the artifact stays
a QDQ ONNX model), scores the result with a validation function, and while the drop exceeds
``max_drop`` ranks the quantizer groups by how much each one costs and reverts them to float
one at a time. The validation function is the search's own: the same metric, the same
held-out batches, the same reference outputs, run on OpenVINO at the precision the artifact
will run at, so NNCF's "within max_drop" is the search's "within budget". ``max_drop`` is the
search's budget with ``DropType.ABSOLUTE`` (budgets are in the metric's unit); metrics where
lower is better are handed to NNCF negated, since NNCF takes higher as better.

This recipe is the anchor for edgeshift's own recovery (recovery.py), not a layer on top of
it: it restores layers itself, so the search does not run recovery on it again
(``quantized = False``). Both appear side by side in the candidate table.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeshift.optimize.recipes import BuildContext, HeldOut, Recipe, Variant, build_failure
from edgeshift.optimize.recipes.openvino_nncf_int8 import (
    QUANTIZED_OPS,
    dequantized_readers,
    unknown_ops,
)

# Each restore step is a rebuild and a full held-out validation on OpenVINO: bounded, so a
# model whose every layer is sensitive ends in minutes with NNCF's best, not in an hour.
MAX_RESTORED = {True: 4, False: 16}  # by ctx.quick
# NNCF ranks every quantizer group (about 50 on MiniLM) on this many held-out batches: each
# group costs a compile plus these inferences, so they are bounded.
RANKING_BATCHES = 16


class _Validator:
    """NNCF's validation_fn over the search's held-out batches on OpenVINO.

    NNCF calls it with the whole validation set, then (to rank layers) once per batch with
    the same model; the last compiled model is kept so that ranking compiles it once."""

    def __init__(self, held_out: HeldOut, workdir: Path, precision: str) -> None:
        self.held_out = held_out
        self.path = workdir / "nncf-ac-validate.onnx"
        self.precision = precision
        self._model: onnx.ModelProto | None = None
        self._backend: Any = None
        self.calls = 0

    def __call__(self, model: onnx.ModelProto, items: Iterable[int]) -> float:
        from edgeshift.runtime import open_backend

        if model is not self._model:
            self.close()
            onnx.save(model, str(self.path))
            self._backend = open_backend(
                self.path, "openvino", self.precision, self.held_out.threads
            )
            self._model = model
        indices = [int(i) for i in items]
        collected: dict[str, list[np.ndarray]] = {}
        for i in indices:
            for name, value in self._backend.run(self.held_out.feeds[i]).items():
                collected.setdefault(name, []).append(np.asarray(value))
        outputs = {k: np.concatenate(v, axis=0) for k, v in collected.items()}
        self.calls += 1
        score = self.held_out.score(outputs, indices)
        return score if self.held_out.higher_is_better else -score

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend, self._model = None, None


class OpenVINONNCFAccuracyControl(Recipe):
    name = "openvino-int8-ac"
    family = "openvino_nncf_ac"
    backend = "openvino"
    precision = "int8"
    quantized = False  # NNCF restores layers itself; see the module docstring
    # NNCF ranks every quantizer group with a compiled model of its own: minutes on MiniLM
    # (over 18 min of --quick on a loaded 2-core host), so only by --recipes / the benchmark.
    default = False
    op_types = QUANTIZED_OPS

    def unavailable(self, ctx: BuildContext) -> str | None:
        if "INT8" not in ctx.host.openvino_capabilities:
            return "OpenVINO's CPU plugin offers no INT8 here"
        if not self.quantizable_nodes(ctx):
            return "no Conv/MatMul/Gemm nodes to quantize"
        if ctx.held_out is None:
            return "needs the search's held-out data (run it through edgeshift optimize)"
        return None

    def build(self, ctx: BuildContext, exclude: Sequence[str] = ()) -> Variant:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        assert ctx.held_out is not None  # unavailable() said so otherwise
        nncf.set_log_level(logging.ERROR)
        out = self.variant_path(ctx, exclude)
        # The float ops at bf16 where the CPU has it, as the plain int8 recipe runs them.
        precision = "bf16" if "BF16" in ctx.host.openvino_capabilities else "fp32"
        validator = _Validator(ctx.held_out, ctx.workdir, precision)
        held = ctx.held_out
        max_restored = MAX_RESTORED[ctx.quick]
        model_type = nncf.ModelType.TRANSFORMER if ctx.is_transformer else None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
                quantized = nncf.quantize_with_accuracy_control(
                    ctx.repaired,
                    nncf.Dataset(ctx.calibration),
                    nncf.Dataset(list(range(len(held.feeds))), lambda i: held.feeds[i]),
                    validator,
                    max_drop=held.budget,
                    drop_type=nncf.DropType.ABSOLUTE,
                    subset_size=len(ctx.calibration),
                    model_type=model_type,
                    ignored_scope=(
                        nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None
                    ),
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        max_num_iterations=max_restored,
                        ranking_subset_size=min(len(held.feeds), RANKING_BATCHES),
                        # NNCF saves its fully quantized model here: what it reverted is the
                        # difference between that and the result.
                        intermediate_model_dir=str(ctx.workdir),
                    ),
                )
            onnx.save(quantized, str(out))
        except Exception as exc:  # NNCF's errors name its internals: say it in the user's terms
            raise build_failure(self, "NNCF", exc, ctx.repaired, unknown_ops(ctx.repaired)) from exc
        finally:
            validator.close()
        kept = set(dequantized_readers(out, ctx.repaired))
        first = ctx.workdir / "intermediate_model.onnx"
        reverted = [n for n in dequantized_readers(first, ctx.repaired) if n not in kept]
        params = {
            "tool": "nncf.quantize_with_accuracy_control",
            "model_type": "transformer" if model_type else "default",
            "max_drop": held.budget,
            "drop_type": "absolute",
            "max_restored_layers": max_restored,
            "validations": validator.calls,
            "subset_size": len(ctx.calibration),
            "float_ops_precision": precision,
            # The layers NNCF quantized and then reverted to float for accuracy.
            "restored_layers": reverted,
        }
        return Variant(out, self.backend, precision, {}, params)
