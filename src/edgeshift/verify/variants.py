"""Artifacts of chosen recipes, built without the speed contest (for verifying each variant).

``optimize`` keeps only the fastest variant; to prove that every variant a recipe can build
(fp32, int8, bf16) computes the same on Arm as on x86, :func:`build_variant_artifacts` builds
each named recipe's variant as its own artifact directory, with the manifest fields that
running and verifying it read (backend, precision, runtime options, metric and budget).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

import edgeshift
from edgeshift.model.load import load_model, sha256_file
from edgeshift.model.repair import repair_for_quantization
from edgeshift.model.shapes import graph_io
from edgeshift.optimize.data import load_eval_data
from edgeshift.optimize.host import detect_host
from edgeshift.optimize.manifest import MANIFEST_NAME
from edgeshift.optimize.metrics import resolve_metric
from edgeshift.optimize.recipes import BuildContext, all_recipes
from edgeshift.optimize.search import evaluation_split
from edgeshift.runtime import open_backend


def build_variant_artifacts(
    model: str | Path,
    data: str | Path,
    out_dir: str | Path,
    recipes: Sequence[str],
    *,
    seed: int = 0,
) -> dict[str, Path | str]:
    """One artifact dir per recipe name under OUT_DIR; a recipe that cannot build here maps
    to its one-line reason instead of a path."""
    loaded = load_model(model)
    inputs, outputs = graph_io(loaded.proto)
    dataset = load_eval_data(data, inputs)
    calib_idx, eval_idx = evaluation_split(dataset.samples, seed, quick=True)
    held_out = dataset.take(eval_idx)
    reference_backend = open_backend(loaded.path, "onnxruntime", "fp32", 1)
    reference = {
        k: v for k, v in reference_backend.run(held_out.inputs).items()
    }  # one batch: the held-out split is small
    metric = resolve_metric("auto", reference, outputs[0].name, held_out.labels)
    original = metric.score(reference, reference, held_out.labels)
    budget = metric.default_max_drop(reference, held_out.labels, original)
    by_name = {r.name: r for r in all_recipes()}
    built: dict[str, Path | str] = {}
    with tempfile.TemporaryDirectory(prefix="edgeshift-variants-") as tmp:
        workdir = Path(tmp)
        repaired = repair_for_quantization(loaded.proto)
        repaired_path = workdir / "repaired.onnx"
        onnx.save(repaired.model, str(repaired_path))
        ctx = BuildContext(
            source_path=loaded.path,
            repaired_path=repaired_path,
            repaired=repaired.model,
            workdir=workdir,
            calibration=list(dataset.take(calib_idx).batches(1)),
            host=detect_host(),
            seed=seed,
            quick=True,
            is_transformer=False,
        )
        for name in recipes:
            recipe = by_name[name]
            reason = recipe.unavailable(ctx)
            if reason:
                built[name] = reason
                continue
            variant = recipe.build(ctx)
            directory = Path(out_dir) / name
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(variant.model_path, directory / "model.onnx")
            manifest = {
                "edgeshift_version": edgeshift.__version__,
                "model_file": "model.onnx",
                "backend": variant.backend,
                "precision": recipe.precision,
                "runtime_options": {"precision": variant.runtime_precision, **variant.options},
                "recipe": recipe.family,
                "recipe_params": {"candidate": name, **variant.params},
                "source_sha256": sha256_file(loaded.path),
                "artifact_sha256": sha256_file(directory / "model.onnx"),
                "metric": {"name": metric.name, "output": metric.output, "max_drop": budget},
            }
            (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            built[name] = directory
    return built
