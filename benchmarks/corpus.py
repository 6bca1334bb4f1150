"""The benchmark corpus: real trained models the project has never tuned for, in one list.

`benchmarks/optimize.py` and `benchmarks/estimate_accuracy.py` both run over it. Each case
materializes into a directory as ``model.onnx`` (+ ``eval.npz`` where it has data):

- the zoo's trained models (``edgeshift zoo list``): digits, the text-line recognizer (CNN +
  BiLSTM, CTC), the keyword-spotting CNN on espeak-ng speech, the segmentation net, the
  exporter-quirk cases, and MiniLM when its optional packages are installed;
- the four MLPerf Tiny int8 reference models (tf2onnx QDQ exports, vendored as test fixtures
  with their NOTICE), with seeded random int8 inputs of the model's own shape.

A case the zoo does not (yet) have, or whose optional packages are missing, is listed by
:func:`cases` with the reason it is unavailable, never silently dropped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeshift import zoo

ROOT = Path(__file__).resolve().parents[1]
MLPERF_DIR = ROOT / "tests" / "mcu" / "fixtures" / "mlperf_tiny"


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # conv | recurrent | transformer | mlp | int8 (already quantized)
    metric: str  # what optimize --metric scores it with ("auto" lets optimize choose)
    origin: str  # "zoo" or "mlperf"
    file: str = ""  # the fixture file for mlperf cases

    @property
    def float_model(self) -> bool:
        """The optimize goals are stated for float conv, recurrent and transformer models."""
        return self.family in ("conv", "recurrent", "transformer")


# Order: small to large, so a partial run still says something.
CORPUS: tuple[Case, ...] = (
    Case("digits-mlp", "mlp", "top1", "zoo"),
    Case("digits-cnn", "conv", "top1", "zoo"),
    Case("kws-cnn", "conv", "top1", "zoo"),
    Case("seg-unet", "conv", "top1", "zoo"),
    Case("textline-crnn", "recurrent", "sequence", "zoo"),
    Case("quirk-paddle", "conv", "auto", "zoo"),
    Case("quirk-nhwc", "conv", "auto", "zoo"),
    Case("minilm-l6", "transformer", "cosine", "zoo"),
    Case("mlperf-kws", "int8", "auto", "mlperf", "kws_ref_model.onnx"),
    Case("mlperf-vww", "int8", "auto", "mlperf", "vww_96_int8.onnx"),
    Case("mlperf-ic", "int8", "auto", "mlperf", "pretrainedResnet_quant.onnx"),
    Case("mlperf-ad", "int8", "auto", "mlperf", "ad01_int8.onnx"),
)


def unavailable(case: Case) -> str | None:
    """Why CASE cannot be materialized here, or None."""
    if case.origin == "mlperf":
        return None if (MLPERF_DIR / case.file).is_file() else f"missing {MLPERF_DIR / case.file}"
    entries = {e.name: e for e in zoo.list_models()}
    entry = entries.get(case.name)
    if entry is None:
        return "not in this version's zoo"
    return entry.reason or None


def cases(names: list[str] | None = None) -> list[tuple[Case, str | None]]:
    """(case, reason it is unavailable or None) for NAMES (default: the whole corpus)."""
    chosen = [c for c in CORPUS if names is None or c.name in names]
    unknown = set(names or ()) - {c.name for c in CORPUS}
    if unknown:
        raise SystemExit(f"unknown corpus case(s): {', '.join(sorted(unknown))}")
    return [(c, unavailable(c)) for c in chosen]


def _random_feeds(model_path: Path, count: int, seed: int) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in init:
            continue
        t = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
        shape = (count, *dims[1:])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            feeds[value.name] = rng.integers(info.min, info.max + 1, shape, dtype=dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def materialize(case: Case, dest: Path) -> tuple[Path, Path]:
    """Write CASE into DEST as model.onnx + eval.npz; returns both paths."""
    if case.origin == "zoo":
        m = zoo.get(case.name, dest)
        return m.model_path, m.data_path
    dest.mkdir(parents=True, exist_ok=True)
    model_path, data_path = dest / "model.onnx", dest / "eval.npz"
    shutil.copyfile(MLPERF_DIR / case.file, model_path)
    model_path.chmod(0o644)
    np.savez(data_path, **_random_feeds(model_path, count=64, seed=0))
    return model_path, data_path
