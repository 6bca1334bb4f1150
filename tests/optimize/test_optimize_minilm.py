"""MiniLM (optional): the search's choice keeps cosine >= 0.99 when re-run independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeshift import zoo
from edgeshift.optimize import optimize
from edgeshift.optimize.search import evaluation_split
from edgeshift.runtime import open_backend

pytestmark = [pytest.mark.minilm, pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> zoo.ZooModel:
    entry = next(e for e in zoo.list_models() if e.name == "minilm-l6")
    if not entry.available:
        pytest.skip(f"minilm-l6 not available: {entry.reason}")
    return zoo.get("minilm-l6", tmp_path_factory.mktemp("minilm"))


def test_minilm_choice_keeps_cosine(minilm: zoo.ZooModel, tmp_path: Path) -> None:
    out = tmp_path / "art"
    result = optimize(
        minilm.model_path,
        minilm.data_path,
        recipes=["ort-int8-dynamic", "openvino-bf16"],
        quick=True,
        out=out,
    )
    assert result.manifest.metric.name == "cosine"  # auto: unit-norm sentence embeddings
    assert result.manifest.metric.max_drop == pytest.approx(0.01)
    data = dict(np.load(minilm.data_path))
    _, held = evaluation_split(len(data["input_ids"]), 0, quick=True)
    chosen, original = open_backend(out), open_backend(minilm.model_path)
    cosines = []
    for i in held:
        feed = {k: v[i : i + 1] for k, v in data.items() if k in {s.name for s in chosen.inputs}}
        a = next(iter(chosen.run(feed).values()))[0].astype(np.float64)
        b = next(iter(original.run(feed).values()))[0].astype(np.float64)
        cosines.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert float(np.mean(cosines)) >= 0.99
    assert float(np.mean(cosines)) == pytest.approx(result.manifest.accuracy.chosen, abs=1e-4)
