"""`edgeshift optimize` from the command line: table, JSON, the artifact with bench/inspect,
and every bad input as one line on stderr with a non-zero exit and no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from tests.helpers import assert_one_line_error
from typer.testing import CliRunner

from edgeshift import zoo
from edgeshift.cli.main import app

pytestmark = pytest.mark.slow


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["optimize", *map(str, args)])


def test_table_and_artifact_usable_by_bench_and_inspect(
    digits_mlp: zoo.ZooModel, tmp_path: Path
) -> None:
    out = tmp_path / "art"
    result = _invoke(
        digits_mlp.model_path,
        "--data",
        digits_mlp.data_path,
        "--quick",
        "--out",
        out,
        "--recipes",
        "ort-int8-dynamic,ort-fp32-opt",
    )
    assert result.exit_code == 0, result.output + result.stderr
    for word in ("original", "ort-int8-dynamic", "ort-fp32-opt", "chosen", "top1"):
        assert word in result.stdout
    assert (out / "manifest.json").is_file() and (out / "model.onnx").is_file()
    bench = CliRunner().invoke(app, ["bench", str(out), "--iterations", "3", "--json"])
    assert bench.exit_code == 0, bench.output + bench.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(bench.stdout)["backend"] == manifest["backend"]
    inspect = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert inspect.exit_code == 0, inspect.output + inspect.stderr


def _quick_json(digits_mlp: zoo.ZooModel, out: Path, *args: str | Path) -> dict[str, Any]:
    """`optimize --quick --json` on the digits MLP; the parsed JSON document."""
    result = _invoke(
        digits_mlp.model_path,
        "--data",
        digits_mlp.data_path,
        "--quick",
        "--json",
        "--out",
        out,
        *args,
    )
    assert result.exit_code == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_json_output(digits_mlp: zoo.ZooModel, tmp_path: Path) -> None:
    doc = _quick_json(
        digits_mlp, tmp_path / "art", "--backends", "onnxruntime", "--recipes", "ort-int8-dynamic"
    )
    assert doc["metric"]["name"] == "top1"
    assert doc["accuracy"]["labels"] == "labels"
    assert {c["name"] for c in doc["candidates"]} == {"original", "ort-int8-dynamic"}
    assert doc["artifact"] == str(tmp_path / "art")


def test_budget_not_met(hot_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = hot_cnn
    args = [model, "--data", data, "--quick", "--recipes", "ort-int8-dynamic-conv", "--no-recovery"]
    kept = _invoke(*args, "--out", tmp_path / "a")
    assert kept.exit_code == 0, kept.stderr
    assert "no candidate met the budget" in kept.stdout
    required = _invoke(*args, "--out", tmp_path / "b", "--require")
    assert required.exit_code == 3
    assert_one_line_error(required, "no candidate met the budget", "--max-drop")
    assert (tmp_path / "b" / "model.onnx").is_file()  # the original is still kept


@pytest.fixture
def npz(tmp_path: Path):
    def write(**arrays: np.ndarray) -> Path:
        path = tmp_path / "data.npz"
        np.savez(path, **arrays)
        return path

    return write


@pytest.mark.parametrize(
    ("arrays", "extra", "fragments"),
    [
        ({"pixels": np.zeros((20, 64), np.float32)}, [], ["no array", "input"]),
        ({"input": np.zeros((20, 64), np.float64)}, [], ["float64", "float32"]),
        ({"input": np.zeros((20, 63), np.float32)}, [], ["axis 1 must be 64"]),
        ({"input": np.zeros((3, 64), np.float32)}, [], ["3 sample", "at least 4"]),
        ({"input": np.zeros((20, 64), np.float32)}, ["--metric", "f1"], ["unknown metric 'f1'"]),
        (
            {"input": np.zeros((20, 64), np.float32)},
            ["--metric", "edgeshift_missing_mod:f"],
            ["does not import"],
        ),
        ({"input": np.zeros((20, 64), np.float32)}, ["--labels", "y"], ["no array 'y'"]),
        (
            {"input": np.zeros((20, 64), np.float32)},
            ["--objective", "fast"],
            ["unknown --objective"],
        ),
        ({"input": np.zeros((20, 64), np.float32)}, ["--recipes", "magic"], ["unknown recipe"]),
    ],
)
def test_bad_input(
    digits_mlp: zoo.ZooModel,
    npz,
    tmp_path: Path,
    arrays: dict,
    extra: list[str],
    fragments: list[str],
) -> None:
    name = _input_name(digits_mlp.model_path)
    arrays = {(name if k == "input" else k): v for k, v in arrays.items()}
    fragments = [f.replace("input", name) if f == "input" else f for f in fragments]
    result = _invoke(
        digits_mlp.model_path, "--data", npz(**arrays), "--quick", "--out", tmp_path / "o", *extra
    )
    assert_one_line_error(result, *fragments)


def test_missing_model(tmp_path: Path, npz) -> None:
    result = _invoke(tmp_path / "nope.onnx", "--data", npz(x=np.zeros((4, 1), np.float32)))
    assert_one_line_error(result, "model not found")


def _input_name(model: Path) -> str:
    from edgeshift.model import graph_io, load_model

    return graph_io(load_model(model).proto)[0][0].name


def test_user_metric_end_to_end(digits_mlp: zoo.ZooModel, tmp_path: Path) -> None:
    metric = tmp_path / "agree.py"
    metric.write_text(
        "import numpy as np\n"
        "def agreement(outputs, reference, labels):\n"
        "    got = next(iter(outputs.values())).argmax(1)\n"
        "    return float((got == labels).mean())\n"
        "agreement.max_drop = 0.05\n"
    )
    doc = _quick_json(
        digits_mlp,
        tmp_path / "art",
        "--recipes",
        "ort-int8-dynamic",
        "--metric",
        f"{metric}:agreement",
    )
    assert doc["metric"]["name"] == f"{metric}:agreement"
    assert doc["metric"]["max_drop"] == 0.05
    assert 0.9 < doc["accuracy"]["original"] <= 1.0  # a fraction, as the function returns


def test_default_out_is_named_after_the_model(tmp_path: Path) -> None:
    from edgeshift.cli.optimize import default_out_dir

    assert default_out_dir(tmp_path / "resnet18.onnx") == Path("resnet18-optimized")
    (tmp_path / "minilm").mkdir()
    assert default_out_dir(tmp_path / "minilm" / "model.onnx") == Path("minilm-optimized")


def test_existing_artifact_kept_without_force(
    digits_mlp: zoo.ZooModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeshift.cli.optimize import default_out_dir

    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / default_out_dir(digits_mlp.model_path)
    earlier.mkdir()
    (earlier / "manifest.json").write_text("{}")
    args = (digits_mlp.model_path, "--data", digits_mlp.data_path, "--quick")
    refused = _invoke(*args, "--recipes", "ort-fp32-opt")
    assert_one_line_error(refused, str(earlier.name), "--force")
    assert (earlier / "manifest.json").read_text() == "{}"  # refused before the search
    forced = _invoke(*args, "--recipes", "ort-fp32-opt", "--force")
    assert forced.exit_code == 0, forced.output + forced.stderr
    assert json.loads((earlier / "manifest.json").read_text())["backend"]


def test_negative_dims_and_constant_weights_optimize(tmp_path: Path) -> None:
    from tests.model import quirk_models as q

    path = q.save(q.negative_dims_mlp(), tmp_path, "paddle")
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32))
    out = tmp_path / "art"
    recipes = "ort-fp32-opt,ort-int8-dynamic,openvino-fp32"
    result = _invoke(path, "--data", data, "--quick", "--out", out, "--recipes", recipes)
    assert result.exit_code == 0, result.output + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    failed = [c for c in manifest["candidates"] if c["status"] == "failed"]
    assert failed == [], failed
