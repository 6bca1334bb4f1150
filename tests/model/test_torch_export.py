"""from_torch and `edgeshift export torch`: real exports, checked against the module in ORT."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tests.helpers import assert_one_line_error
from typer.testing import CliRunner

from edgeshift.cli.main import app
from edgeshift.errors import BackendError, ModelError, ShapeError
from edgeshift.model import torch_export
from edgeshift.model.torch_export import from_torch, parse_input_spec

torch = pytest.importorskip("torch")
runner = CliRunner()


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TwoInTwoOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x, ids):
        return self.fc(x + self.emb(ids).mean(1)), ids.sum(1)


class FixedBatch(torch.nn.Module):
    def forward(self, x):
        return x.view(2, -1) * 2.0


class FrozenScalar(torch.nn.Module):
    def forward(self, x):
        # float() freezes the sum at trace time: right for the example batch, wrong at others
        return x * float(x.sum())


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _seeded(module):
    torch.manual_seed(0)
    return module


def test_tiny_module_round_trip_at_other_batch(tmp_path) -> None:
    module = _seeded(Tiny())
    path = from_torch(module, torch.randn(2, 6), tmp_path / "tiny.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    (got,) = _ort(path, {"input": x})
    want = module(torch.from_numpy(x)).detach().numpy()
    assert got.shape == want.shape == (5, 3)
    # fp32 on both sides, 6- and 16-term dot products: a few ulps
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_two_inputs_int64_two_outputs_numpy_examples(tmp_path) -> None:
    module = _seeded(TwoInTwoOut())
    x = np.ones((3, 4), dtype=np.float32)
    ids = np.array([[1, 2], [3, 4], [5, 9]], dtype=np.int64)
    path = from_torch(module, (x, ids), tmp_path / "two.onnx", output_names=["y", "total"])
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input_0", "input_1"]
    assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    y, total = _ort(path, {"input_0": x, "input_1": ids})
    np.testing.assert_array_equal(total, [3, 7, 14])
    want = module(torch.from_numpy(x), torch.from_numpy(ids))[0].detach().numpy()
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_static_batch_module(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not follow the batch"):
        from_torch(FixedBatch(), torch.randn(2, 4), tmp_path / "fixed.onnx")
    assert not (tmp_path / "fixed.onnx").exists()
    path = from_torch(FixedBatch(), torch.randn(2, 4), tmp_path / "fixed.onnx", dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 4]


def test_disagreeing_export_is_caught_and_removed(tmp_path) -> None:
    with pytest.raises(ModelError, match="disagrees with the module") as err:
        from_torch(FrozenScalar(), torch.ones(2, 3), tmp_path / "frozen.onnx")
    assert "tracer warned" in str(err.value)
    assert not (tmp_path / "frozen.onnx").exists()


def test_extra_dynamic_axes(tmp_path) -> None:
    path = from_torch(
        Tiny(), torch.randn(1, 6), tmp_path / "t.onnx", dynamic_axes={"input": {1: "feat"}}
    )
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "feat"]
    with pytest.raises(ModelError, match="no input or output"):
        from_torch(Tiny(), torch.randn(1, 6), tmp_path / "u.onnx", dynamic_axes={"nope": {1: "a"}})


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(ModelError, match="not a torch.nn.Module|expected a torch.nn.Module"):
        from_torch(lambda x: x, torch.randn(1, 6), tmp_path / "a.onnx")
    with pytest.raises(ModelError, match="fails on the example inputs"):
        from_torch(Tiny(), torch.randn(1, 5), tmp_path / "a.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        from_torch(Tiny(), torch.randn(1, 6), tmp_path)
    with pytest.raises(ModelError, match="2 input names for 1"):
        from_torch(Tiny(), torch.randn(1, 6), tmp_path / "a.onnx", input_names=["a", "b"])


def test_mismatch_tolerance() -> None:
    want = np.array([[10.0, -3.0, 0.0]], dtype=np.float32)
    assert torch_export._mismatch("y", want + np.float32(1e-5), want) is None  # rounding-level
    assert "max |ORT - torch|" in torch_export._mismatch("y", want + np.float32(0.05), want)
    assert "shape" in torch_export._mismatch("y", want[:, :2], want)
    ids = np.array([1, 2, 3])
    assert torch_export._mismatch("i", ids, ids) is None
    assert "differ" in torch_export._mismatch("i", ids + 1, ids)


def test_torch_missing_is_a_backend_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(
        BackendError, match=r"torch is not installed — pip install edgeshift\[torch\]"
    ):
        from_torch(object(), np.zeros((1, 2)), tmp_path / "x.onnx")
    result = runner.invoke(app, ["export", "torch", "m:f", str(tmp_path / "x.onnx"), "-i", "x=1x2"])
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "torch is not installed — pip install edgeshift[torch]" in result.stderr


def test_edgeshift_import_does_not_import_torch() -> None:
    code = (
        "import sys, edgeshift, edgeshift.zoo, edgeshift.model.torch_export, edgeshift.cli.main;"
        "edgeshift.zoo.list_models();"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_parse_input_spec() -> None:
    assert parse_input_spec("input=1x64") == torch_export.InputSpec("input", (1, 64), "float32")
    assert parse_input_spec("ids=2,128:int64") == torch_export.InputSpec("ids", (2, 128), "int64")
    for bad in ("input", "=1x2", "x=1y2", "x=0x2", "x=1x2:float8", "x="):
        with pytest.raises(ShapeError):
            parse_input_spec(bad)


# --- CLI -----------------------------------------------------------------------------------

MODULE_SOURCE = textwrap.dedent(
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 5)

        def forward(self, image, scale):
            h = torch.relu(self.conv(image)).flatten(1)
            return self.fc(h) * scale

    def make_net():
        torch.manual_seed(0)
        return Net()

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("weights missing")
    """
)


@pytest.fixture
def models_module(tmp_path, monkeypatch) -> str:
    name = f"es_cli_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_cli_export_json_and_outputs_match(models_module, tmp_path) -> None:
    out = tmp_path / "net.onnx"
    result = runner.invoke(
        app,
        ["export", "torch", f"{models_module}:make_net", str(out), "--input", "image=2x1x8x8",
         "--input", "scale=2x1", "--output", "logits", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(out) and report["verified"] is True
    assert report["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]},
        {"name": "scale", "dtype": "float32", "shape": ["batch", 1]},
    ]
    assert report["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}]
    module = sys.modules[models_module].make_net().eval()
    rng = np.random.default_rng(3)
    image = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    scale = rng.standard_normal((3, 1)).astype(np.float32)
    (got,) = _ort(out, {"image": image, "scale": scale})
    want = module(torch.from_numpy(image), torch.from_numpy(scale)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # 256-term dot products


def test_cli_export_text(models_module, tmp_path) -> None:
    out = tmp_path / "net.onnx"
    args = ["export", "torch", f"{models_module}:make_net", str(out), "-i", "image=1x1x8x8"]
    result = runner.invoke(app, [*args, "-i", "scale=1x1"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime matches PyTorch" in result.stdout and "[batch, 1, 8, 8]" in result.stdout


@pytest.mark.parametrize(
    ("factory", "fragments"),
    [
        ("{m}", ["write MODULE:FACTORY"]),
        ("{m}:", ["write MODULE:FACTORY"]),
        ("no_such_module_xyz:make", ["cannot import 'no_such_module_xyz'"]),
        ("{m}:make_nte", ["no callable 'make_nte'", "did you mean", "make_net"]),
        ("{m}:not_a_module", ["returned a int, not a torch.nn.Module"]),
        ("{m}:broken", ["RuntimeError: weights missing"]),
    ],
)
def test_cli_bad_factory(models_module, tmp_path, factory, fragments) -> None:
    out = tmp_path / "x.onnx"
    spec = factory.format(m=models_module)
    result = runner.invoke(app, ["export", "torch", spec, str(out), "-i", "image=1x1x8x8"])
    assert_one_line_error(result, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([], "give one --input"),
        (["-i", "image=1x1x8"], "fails on the example inputs"),
        (["-i", "image=1by8"], "bad --input"),
        (["-i", "image=1x1x8x8:complex"], "unknown dtype"),
    ],
)
def test_cli_bad_inputs(models_module, tmp_path, inputs, fragment) -> None:
    args = ["export", "torch", f"{models_module}:make_net", str(tmp_path / "x.onnx"), *inputs]
    assert_one_line_error(runner.invoke(app, args), fragment)
