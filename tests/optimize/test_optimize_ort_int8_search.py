"""ORT static int8's search dimensions: calibration method (MinMax, Percentile, Entropy) and
per-channel weights, tried before any layer is kept in float, with the ranges of each method
computed once per search and the chosen settings recorded in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.optimize import optimize
from edgeshift.optimize import selection as selection_module
from edgeshift.optimize.evaluate import Timing
from edgeshift.optimize.host import detect_host
from edgeshift.optimize.recipes import BuildContext
from edgeshift.optimize.recipes import ort_static_int8 as static_module
from edgeshift.optimize.recipes.ort_static_int8 import OrtStaticInt8, drop_dead_nodes
from edgeshift.optimize.search import evaluation_split

SEQ, WIDTH = 64, 64  # 64 calibration samples: 262,144 input values
OUTLIER = 2000.0  # ~400x the largest ordinary input
OUTLIER_FEATURE = 7
BUDGET = 0.01  # cosine >= 0.99, the embedding budget


def outlier_model() -> onnx.ModelProto:
    """x [batch, SEQ, WIDTH] -> MatMul -> Relu -> MatMul. Every input is O(1) except for one
    element of one calibration sample (set by :func:`outlier_data`), in a feature the first
    MatMul ignores (a zero weight row), so in float it changes nothing downstream. MinMax must
    stretch the input's uint8 range to span it (a step of ~8: ordinary values round to 0);
    Percentile's 99.999th clips it away (one value in 262,144 is under the 0.0005% it cuts on
    each side)."""
    rng = np.random.default_rng(11)
    w1 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w1[OUTLIER_FEATURE] = 0.0
    w2 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, WIDTH])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def outlier_data(samples: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Gaussian inputs; one element of the first calibration sample (search seed 0, full mode)
    is OUTLIER. Returns the arrays and the calibration indices."""
    x = np.random.default_rng(5).standard_normal((samples, SEQ, WIDTH)).astype(np.float32)
    calibration, held_out = evaluation_split(samples, 0, quick=False)
    x[calibration[0], 3, OUTLIER_FEATURE] = OUTLIER
    assert np.abs(x[held_out]).max() < 10  # the held-out data never sees it
    return {"x": x}, calibration


def scaled_channels_model() -> onnx.ModelProto:
    """x -> MatMul(w) -> Mul(1/scale). Column j of w is scaled by s_j from 1e-3 to 1, and the
    Mul (float: not a quantized op) undoes it, so every output channel matters equally. One
    int8 step for the whole weight (per tensor) is ~s_max/127 and rounds the small columns to 0;
    a step per column keeps every column to ~1%."""
    rng = np.random.default_rng(12)
    scale = np.logspace(-3, 0, WIDTH).astype(np.float32)
    w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) * scale
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Mul", ["h", "inv"], ["y"], name="unscale"),
        ],
        "scaled_channels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, WIDTH])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(1.0 / scale, "inv")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _cosine_drop(got: np.ndarray, want: np.ndarray) -> float:
    """1 - mean cosine per sample, computed here independently of edgeshift's metrics."""
    a, b = got.reshape(len(got), -1), want.reshape(len(want), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, 1) / np.maximum(norms, 1e-30)  # an all-zero output scores 0
    return float(1.0 - cosine.mean())


def _context(tmp_path: Path, model: onnx.ModelProto, x: np.ndarray) -> BuildContext:
    path = tmp_path / "repaired.onnx"
    onnx.save(model, str(path))
    return BuildContext(
        source_path=path,
        repaired_path=path,
        repaired=model,
        workdir=tmp_path,
        calibration=[{"x": x[i : i + 1]} for i in range(len(x))],
        host=detect_host(),
        seed=0,
        quick=False,
        is_transformer=False,
    )


@pytest.fixture
def calibrations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calibration methods run, one entry per real calibration pass."""
    calls: list[str] = []
    real = static_module._compute_ranges

    def counted(model_path, op_types, method, feeds):  # type: ignore[no-untyped-def]
        calls.append(method)
        return real(model_path, op_types, method, feeds)

    monkeypatch.setattr(static_module, "_compute_ranges", counted)
    return calls


def test_outlier_breaks_minmax_and_histogram_methods_keep_it(
    tmp_path: Path, calibrations: list[str]
) -> None:
    arrays, calibration = outlier_data()
    x = arrays["x"]
    held_out = np.delete(x, calibration, axis=0)[:64]
    ctx = _context(tmp_path, outlier_model(), x[calibration])
    want = _run(ctx.repaired_path, held_out)
    drops = {}
    for method in ("MinMax", "Percentile", "Entropy"):
        variant = OrtStaticInt8(method).build(ctx)
        assert variant.params["calibration"] == method
        drops[method] = _cosine_drop(_run(variant.model_path, held_out), want)
    # MinMax's input step (~2000/255) rounds the ordinary inputs (|x| < 5) to 0 or one step.
    assert drops["MinMax"] > 0.1, drops
    assert drops["Percentile"] <= BUDGET, drops
    # Entropy (512 bins, 128 quantized) clips to no less than a quarter of the largest value
    # (~500 here): a heavy-tail method, no cure for a 400x outlier. It must not be worse.
    assert drops["Entropy"] <= drops["MinMax"] + 1e-3, drops
    assert calibrations == ["MinMax", "Percentile", "Entropy"]


def test_calibration_runs_once_per_method(tmp_path: Path, calibrations: list[str]) -> None:
    arrays, calibration = outlier_data(64)
    ctx = _context(tmp_path, outlier_model(), arrays["x"][calibration])
    default = OrtStaticInt8()
    default.build(ctx)
    default.build(ctx, exclude=["mm1"])  # a recovery rebuild: graph rewrite only
    alternatives = default.alternatives(ctx)
    for alternative in alternatives:
        alternative.build(ctx)
        alternative.build(ctx, exclude=["mm2"])
    settings = [(a.calibration, a.per_channel) for a in alternatives]  # type: ignore[attr-defined]
    assert settings == [("Percentile", True), ("Entropy", True), ("MinMax", False)]
    assert calibrations == ["MinMax", "Percentile", "Entropy"]
    # Every build of a method reads that method's one ranges file.
    assert len({a.variant_path(ctx, ()) for a in [default, *alternatives]}) == 4


def test_quick_search_tries_no_alternatives(tmp_path: Path) -> None:
    arrays, calibration = outlier_data(64)
    ctx = _context(tmp_path, outlier_model(), arrays["x"][calibration])
    ctx.quick = True
    assert OrtStaticInt8().alternatives(ctx) == []
    assert OrtStaticInt8("Percentile").alternatives(ctx) == []  # no alternatives of alternatives


def test_per_channel_beats_per_tensor_on_channels_of_different_scale(tmp_path: Path) -> None:
    x = np.random.default_rng(6).standard_normal((80, SEQ, WIDTH)).astype(np.float32)
    ctx = _context(tmp_path, scaled_channels_model(), x[:16])
    want = _run(ctx.repaired_path, x[16:])
    per_channel = OrtStaticInt8().build(ctx)
    per_tensor = OrtStaticInt8("MinMax", per_channel=False).build(ctx)
    assert (per_channel.params["per_channel"], per_tensor.params["per_channel"]) == (True, False)
    drop_channel = _cosine_drop(_run(per_channel.model_path, x[16:]), want)
    drop_tensor = _cosine_drop(_run(per_tensor.model_path, x[16:]), want)
    # Per tensor, the ~40 columns under 1/255 of the largest are rounded to (almost) nothing.
    assert drop_tensor > 0.1, drop_tensor
    assert drop_channel <= BUDGET, drop_channel


def test_search_carries_the_setting_that_meets_the_budget_into_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibrations: list[str]
) -> None:
    arrays, _ = outlier_data()
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), str(model))
    data = tmp_path / "outlier.npz"
    np.savez(data, **arrays)

    def int8_faster(backends, feeds, iterations, warmup, rounds):  # type: ignore[no-untyped-def]
        # The clock is not under test: the original (first) is slowest, so int8 is chosen.
        return [Timing(ms, ms, ms, 1e3 / ms, 1) for ms in [2.0] + [1.0] * (len(backends) - 1)]

    monkeypatch.setattr(selection_module, "measure_side_by_side", int8_faster)
    out = tmp_path / "art"
    result = optimize(
        model,
        data,
        metric="cosine",
        max_drop=BUDGET,
        recipes=["ort-int8-static"],
        recovery=False,
        out=out,
        bench_seconds=0.01,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "ort_static_int8"
    params = manifest["recipe_params"]
    assert params["calibration"] == "Percentile"  # the cheapest setting that meets it
    assert params["per_channel"] is True and params["calibration_seconds"] >= 0
    tried = params["settings_tried"]
    assert [t["params"]["calibration"] for t in tried] == ["MinMax", "Percentile"]
    assert tried[0]["drop"] > BUDGET >= tried[1]["drop"]
    assert result.chosen.drop is not None and result.chosen.drop <= BUDGET
    assert manifest["float_nodes"] == []
    assert calibrations == ["MinMax", "Percentile"]  # Entropy was not needed
    # Re-evaluated independently on the held-out split the search scored.
    _, held = evaluation_split(len(arrays["x"]), 0, quick=False)
    x = arrays["x"][held]
    assert _cosine_drop(_run(out / "model.onnx", x), _run(model, x)) <= BUDGET


def test_dead_nodes_are_dropped_and_live_ones_kept() -> None:
    # mm's output feeds a Q/DQ pair nobody reads any more (its consumer was rewired to the
    # float tensor) and a float Add: the pair and its scale go, the rest stays.
    inits = [
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.eye(2, dtype=np.float32), "w"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("QuantizeLinear", ["m", "s"], ["mq"], name="q"),
        helper.make_node("DequantizeLinear", ["mq", "s"], ["mdq"], name="dq"),
        helper.make_node("Add", ["m", "x"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pruned, removed = drop_dead_nodes(model)
    assert removed == 2
    assert [n.name for n in pruned.graph.node] == ["mm", "add"]
    assert [i.name for i in pruned.graph.initializer] == ["w"]


def small_cnn() -> onnx.ModelProto:
    """Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm, as a keyword spotter is."""
    rng = np.random.default_rng(13)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5, "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32) * 0.3, "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_kernels(path: Path, tmp_path: Path) -> list[str]:
    """The op types ORT really runs: the graph after its own optimization (QDQ fusion)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}-ort.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_cnn_chain_keeps_every_conv_int8(tmp_path: Path) -> None:
    x = np.random.default_rng(7).standard_normal((48, 1, 16, 16)).astype(np.float32)
    ctx = _context(tmp_path, small_cnn(), x[:16])
    plain = OrtStaticInt8().build(ctx)
    chain_recipe = OrtStaticInt8(cnn_chain=True)
    assert chain_recipe.unavailable(ctx) is None
    chain = chain_recipe.build(ctx)
    assert chain.params["cnn_chain"] is True and "MaxPool" in chain.params["op_types"]
    assert chain.model_path != plain.model_path
    # Conv→Relu read the float conv output in the plain build, so conv1 had no integer kernel
    # (DQ→Conv→float); in the chain build both convs are QLinearConv.
    assert _ort_kernels(plain.model_path, tmp_path).count("QLinearConv") < 2
    assert _ort_kernels(chain.model_path, tmp_path).count("QLinearConv") == 2
    want = _run(ctx.repaired_path, x[16:])
    got = _run(chain.model_path, x[16:])
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9  # int8 keeps the decisions
    # No chain to keep without convolutions, nor in a transformer.
    (tmp_path / "mlp").mkdir()
    mlp = _context(tmp_path / "mlp", outlier_model(), np.zeros((2, SEQ, WIDTH), np.float32))
    assert "no Conv" in (chain_recipe.unavailable(mlp) or "")
    ctx.is_transformer = True
    assert "transformer" in (chain_recipe.unavailable(ctx) or "")


def test_dynamic_int8_quantizes_lstm_weights(tmp_path: Path) -> None:
    # ORT's static QDQ quantizer leaves LSTM float; its dynamic one has DynamicQuantizeLSTM.
    from edgeshift.optimize.recipes.ort_dynamic_int8 import OrtDynamicInt8

    hidden, features, steps = 32, 16, 20
    rng = np.random.default_rng(14)
    w = (rng.standard_normal((1, 4 * hidden, features)) * 0.2).astype(np.float32)
    r = (rng.standard_normal((1, 4 * hidden, hidden)) * 0.2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm", hidden_size=hidden)],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, "batch", hidden])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(r, "r")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((steps, 8, features)).astype(np.float32)
    ctx = _context(tmp_path, model, x[:, :1])
    variant = OrtDynamicInt8().build(ctx)
    assert "LSTM" in variant.params["op_types"]
    ops = [n.op_type for n in onnx.load(str(variant.model_path)).graph.node]
    assert ops == ["DynamicQuantizeLSTM"]
    want = _run(ctx.repaired_path, x)
    got = _run(variant.model_path, x)
    # int8 weights (step ~1/127 of each gate's largest weight) and int8 inputs through 20
    # steps of gates squashed into (-1, 1): 0.011 measured; 0.03 leaves room for other CPUs'
    # kernels, and is still far below the hidden state's spread (~0.3).
    assert got.shape == want.shape
    error = float(np.abs(got - want).max())
    assert 0 < error < 0.03, error


def test_float_consumer_of_a_folded_relu_still_sees_the_relu(tmp_path: Path) -> None:
    # Conv -> Relu -> ConvTranspose (a U-Net's up path). The quantizer folds the Relu into the
    # Q after the Conv and names the Conv's output after the Relu's; ConvTranspose stays float
    # and must keep reading the clamped tensor, not the Conv's raw (negative) output.
    rng = np.random.default_rng(15)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5, "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32) * 0.3, "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "w2"], ["y"], name="up", strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 24, 24])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((40, 1, 12, 12)).astype(np.float32)
    ctx = _context(tmp_path, model, x[:16])
    variant = OrtStaticInt8(cnn_chain=True).build(ctx)
    quantized = onnx.load(str(variant.model_path))
    assert "Relu" not in [n.op_type for n in quantized.graph.node]  # folded: the premise
    up = next(n for n in quantized.graph.node if n.op_type == "ConvTranspose")
    assert up.input[0].endswith("DequantizeLinear_Output")
    # uint8 rounding only; reading the raw Conv output instead gave a cosine drop of 0.37.
    assert _cosine_drop(_run(variant.model_path, x[16:]), _run(ctx.repaired_path, x[16:])) < 1e-3


def test_settings_tried_survive_recovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two layers whose weights hold a huge row: no calibration method or weight granularity
    # helps (every setting misses), so recovery keeps those two in float. The manifest still
    # says which settings were tried and which one recovery started from.
    from test_optimize_sensitivity import BROKEN, two_broken_chain
    from test_optimize_sensitivity import WIDTH as CHAIN_WIDTH

    model = tmp_path / "chain.onnx"
    onnx.save(two_broken_chain(), str(model))
    data = tmp_path / "chain.npz"
    x = np.random.default_rng(3).standard_normal((96, CHAIN_WIDTH)).astype(np.float32)
    np.savez(data, x=x)

    def int8_faster(backends, feeds, iterations, warmup, rounds):  # type: ignore[no-untyped-def]
        return [Timing(ms, ms, ms, 1e3 / ms, 1) for ms in [2.0] + [1.0] * (len(backends) - 1)]

    monkeypatch.setattr(selection_module, "measure_side_by_side", int8_faster)
    result = optimize(
        model, data, metric="cosine", max_drop=BUDGET, recipes=["ort-int8-static"], seed=0
    )
    record = next(c for c in result.candidates if c.name == "ort-int8-static")
    assert record.status == "chosen", record.reason
    # Both broken layers are float (which others join depends on the setting recovery got).
    assert set(BROKEN) <= set(record.float_nodes)
    assert record.drop is not None and record.drop <= BUDGET
    tried = record.params["settings_tried"]
    assert [(t["params"]["calibration"], t["params"]["per_channel"]) for t in tried] == [
        ("MinMax", True),
        ("Percentile", True),
        ("Entropy", True),
        ("MinMax", False),
    ]
    assert all(t["drop"] > BUDGET for t in tried)
    best = min(tried, key=lambda t: t["drop"])["params"]
    assert (record.params["calibration"], record.params["per_channel"]) == (
        best["calibration"],
        best["per_channel"],
    )
    assert record.params["recovery"]["builds"] > 0
