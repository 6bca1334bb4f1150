"""The exporter-quirk zoo models (real trained weights, written as Paddle2ONNX and tf2onnx write
them) through every verb of the real CLI, and their accuracy on both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from tests.helpers import cli_json, invoke_cli
from tests.targets.conftest import synthetic_calibration

from edgeshift import zoo
from edgeshift.runtime import open_backend
from edgeshift.targets.host import detect_host, save_calibration

QUIRKS = ["quirk-paddle", "quirk-nhwc"]
INPUT = {"quirk-paddle": "x", "quirk-nhwc": "input_1"}
OUTPUT = {"quirk-paddle": "save_infer_model/scale_0.tmp_0", "quirk-nhwc": "dense/Softmax:0"}
BATCH_DIMS = {"quirk-paddle": (None, None), "quirk-nhwc": ("unk__64", "unk__65")}
STATIC_DIMS = {"quirk-paddle": [1, 32, 32], "quirk-nhwc": [32, 32, 1]}  # after the dynamic batch
CLASSES = 62
# MACs at batch 1, by hand: 3x3 convs 1->32 @32x32, 32->64 @16x16, 64->96 @8x8, 96->128 @4x4
# (each conv keeps its size, a 2x2 max-pool follows), then 512 -> 62.
CONV_MACS = (
    32 * 32 * 32 * 9 * 1 + 16 * 16 * 64 * 9 * 32 + 8 * 8 * 96 * 9 * 64 + 4 * 4 * 128 * 9 * 96
)
MATMUL_MACS = 512 * CLASSES


@pytest.fixture(scope="module", params=QUIRKS)
def quirk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> zoo.ZooModel:
    return zoo.get(request.param, tmp_path_factory.mktemp(request.param))


def _metadata(model: zoo.ZooModel) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(model.model_path)).metadata_props}


def test_listed_as_shipped_classifiers() -> None:
    by_name = {e.name: e for e in zoo.list_models()}
    for name in QUIRKS:
        assert by_name[name].available and by_name[name].task == "classification"


def test_the_files_carry_their_exporters_quirks(quirk: zoo.ZooModel) -> None:
    proto = onnx.load(str(quirk.model_path))
    onnx.checker.check_model(proto)
    graph = proto.graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == (INPUT[quirk.name], OUTPUT[quirk.name])
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == STATIC_DIMS[quirk.name]
    ops = [n.op_type for n in graph.node]
    opset = {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"]
    if quirk.name == "quirk-paddle":
        assert opset == 11 and proto.ir_version == 6
        assert dims[0].HasField("dim_value") and dims[0].dim_value == -1
        assert out.type.tensor_type.shape.dim[0].dim_value == -1
        assert len(graph.initializer) == 0
        assert ops.count("Constant") >= 4 * 5 + 2  # conv + 4 BatchNorm tensors per block, fc
        assert ops.count("BatchNormalization") == 4  # left unfolded
        assert {"Shape", "Slice", "Concat", "Reshape"} <= set(ops)  # paddle.flatten(x, 1)
    else:
        assert opset == 13
        assert dims[0].dim_param.startswith("unk__")
        first, *_ = graph.node
        assert first.op_type == "Transpose" and list(first.attribute[0].ints) == [0, 3, 1, 2]
        assert "BatchNormalization" not in ops  # folded, as tf2onnx does
        back = ops.index("Reshape") - 1
        assert ops[back] == "Transpose" and list(graph.node[back].attribute[0].ints) == [0, 2, 3, 1]


def test_eval_data_is_keyed_by_the_input_in_its_layout(quirk: zoo.ZooModel) -> None:
    data = np.load(quirk.data_path)
    assert sorted(data.files) == sorted([INPUT[quirk.name], "labels"])
    x, y = data[INPUT[quirk.name]], data["labels"]
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert list(x.shape[1:]) == STATIC_DIMS[quirk.name] and len(x) == len(y)
    assert x.min() >= 0.0 and x.max() <= 1.0  # pixel / 255
    assert np.bincount(y, minlength=CLASSES).min() >= 1  # every class is there


def test_inspect_shows_the_batch_dynamic_and_counts_the_convs(quirk: zoo.ZooModel) -> None:
    doc = cli_json("inspect", quirk.model_path, "--json")
    # dynamic: -1 reads as an unnamed dim (null), tf2onnx's unk__N keeps its name
    batch_in, batch_out = BATCH_DIMS[quirk.name]
    assert doc["inputs"][0]["shape"] == [batch_in, *STATIC_DIMS[quirk.name]]
    assert doc["outputs"][0]["shape"] == [batch_out, CLASSES]
    assert doc["input_shapes"] == {INPUT[quirk.name]: [1, *STATIC_DIMS[quirk.name]]}
    assert doc["macs_by_op"]["Conv"] == CONV_MACS
    assert doc["macs_by_op"]["MatMul"] == MATMUL_MACS
    text = invoke_cli("inspect", quirk.model_path, "--batch", "4")
    assert text.exit_code == 0, text.output + text.stderr
    assert "-1" not in text.stdout  # the -1 dims read as dynamic ("?"), never as a size


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_bench_on_both_runtimes_with_the_eval_data(quirk: zoo.ZooModel, backend: str) -> None:
    doc = cli_json(
        "bench", quirk.model_path, "--data", quirk.data_path, "--backend", backend,
        "-n", "5", "--warmup", "1", "--json",
    )  # fmt: skip
    assert doc["backend"] == backend
    assert doc["input_shapes"] == {INPUT[quirk.name]: [1, *STATIC_DIMS[quirk.name]]}


@pytest.mark.slow
def test_estimate_on_the_host(
    quirk: zoo.ZooModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIFT_CACHE_DIR", str(tmp_path / "cache"))
    save_calibration(synthetic_calibration(), detect_host())  # no measuring in tests
    doc = cli_json("estimate", quirk.model_path, "--target", "host", "-p", "fp32", "--json")
    assert doc["fits"] is True and doc["latency_ms"] > 0
    assert {r["op_class"] for r in doc["breakdown"]} >= {"conv"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_accuracy_as_reported_on_both_runtimes(quirk: zoo.ZooModel, backend: str) -> None:
    data = np.load(quirk.data_path)
    x, y = data[INPUT[quirk.name]], data["labels"]
    runtime = open_backend(quirk.model_path, backend=backend, precision="fp32", threads=1)
    probs = runtime.run({INPUT[quirk.name]: x})[OUTPUT[quirk.name]]
    assert probs.shape == (len(y), CLASSES)
    # softmax outputs: rows sum to 1 up to fp32 rounding of 62 terms
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((probs.argmax(axis=1) == y).mean())
    meta = _metadata(quirk)
    assert accuracy == pytest.approx(float(meta["test_accuracy"]), abs=1e-6)  # stored to 6 places
    assert int(meta["test_samples"]) == len(y) and accuracy > 0.8
    # the labels are real: shuffled, they give chance-level accuracy (1/62)
    shuffled = np.random.default_rng(0).permutation(y)
    assert float((probs.argmax(axis=1) == shuffled).mean()) < 0.1


@pytest.mark.slow
def test_both_files_compute_the_same_model(tmp_path: Path) -> None:
    paddle, nhwc = (zoo.get(name, tmp_path / name) for name in QUIRKS)
    x = np.load(paddle.data_path)["x"][:64]
    a = open_backend(paddle.model_path, threads=1).run({"x": x})[OUTPUT["quirk-paddle"]]
    b = open_backend(nhwc.model_path, threads=1).run({"input_1": x.transpose(0, 2, 3, 1)})
    # unfolded vs folded BatchNorm and NCHW vs NHWC flatten: fp32 rounding only
    np.testing.assert_allclose(b[OUTPUT["quirk-nhwc"]], a, atol=1e-5)


@pytest.mark.slow
def test_optimize_quick_writes_an_artifact_within_budget(
    quirk: zoo.ZooModel, tmp_path: Path
) -> None:
    out = tmp_path / "art"
    doc = cli_json("optimize", quirk.model_path, "--data", quirk.data_path, "--quick", "--json",
              "--out", out)  # fmt: skip
    assert doc["metric"]["name"] == "top1"
    assert (out / "manifest.json").is_file() and (out / "model.onnx").is_file()
    assert doc["budget_met"] is True, doc["message"]
    assert doc["accuracy"]["drop"] <= doc["metric"]["max_drop"]  # top1 points, default 1
    assert doc["accuracy"]["labels"] == "labels"
    assert doc["artifact"] == str(out)
    bench = cli_json("bench", out, "-n", "3", "--json")
    assert bench["input_shapes"] == {INPUT[quirk.name]: [1, *STATIC_DIMS[quirk.name]]}


@pytest.mark.slow
def test_serve_metadata_and_infer_with_the_exporters_names(quirk: zoo.ZooModel) -> None:
    th = pytest.importorskip("tritonclient.http")
    from edgeshift.serve import ServerSettings, ServerThread
    from edgeshift.serve.security import AuthSettings

    x = np.load(quirk.data_path)[INPUT[quirk.name]][:4]
    settings = ServerSettings(
        [quirk.model_path], port=0, access_log=False, auth=AuthSettings(repository_api=True)
    )
    with ServerThread(settings) as server:
        client = th.InferenceServerClient(server.url)
        meta = client.get_model_metadata("model")
        assert meta["inputs"] == [
            {"name": INPUT[quirk.name], "datatype": "FP32", "shape": [-1, *STATIC_DIMS[quirk.name]]}
        ]
        assert meta["outputs"][0]["name"] == OUTPUT[quirk.name]
        assert meta["outputs"][0]["shape"] == [-1, CLASSES]
        inp = th.InferInput(INPUT[quirk.name], list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        probs = client.infer("model", [inp]).as_numpy(OUTPUT[quirk.name])
        client.close()
    want = open_backend(quirk.model_path, threads=1).run({INPUT[quirk.name]: x})
    np.testing.assert_allclose(probs, want[OUTPUT[quirk.name]], rtol=1e-6, atol=1e-7)


def test_build_script_writes_both_styles_of_the_same_network() -> None:
    """scripts/build_quirks.py's two graph writers on an untrained net with non-trivial
    BatchNorm statistics: both files compute what torch computes (no training needed)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("PIL")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_quirks", Path(__file__).resolve().parents[2] / "scripts" / "build_quirks.py"
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    torch.manual_seed(0)
    net = build.GlyphNet()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    paddle = build.ort_probs(build.paddle_graph(net), {"x": x})
    nhwc = build.ort_probs(build.nhwc_graph(net), {"input_1": x.transpose(0, 2, 3, 1).copy()})
    # probabilities in [0, 1]; fp32 summation order and the BatchNorm fold only
    np.testing.assert_allclose(paddle, want, atol=1e-5)
    np.testing.assert_allclose(nhwc, want, atol=1e-5)
