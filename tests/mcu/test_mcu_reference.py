"""The numpy golden model against ONNX Runtime (session.qdqisint8allowed=1), bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeshift.mcu.lower import lower
from edgeshift.mcu.quantize import quantize_for_mcu
from edgeshift.mcu.reference import (
    from_stored,
    int8_core,
    ort_reference,
    ort_session,
    run_reference,
    to_stored,
)

FIXTURES = Path(__file__).parent / "fixtures" / "mlperf_tiny"
ZOO = Path(__file__).parents[2] / "src" / "edgeshift" / "zoo"
MLPERF = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]


@pytest.fixture(scope="module")
def zoo_quantized() -> dict[str, onnx.ModelProto]:
    out = {}
    for name in ("digits-cnn", "digits-mlp"):
        data = np.load(ZOO / "data" / f"{name}.npz")
        model = onnx.load(str(ZOO / "models" / f"{name}.onnx"))
        out[name] = quantize_for_mcu(model, {"input": data["input"][:64]})
    return out


def _model(name: str, zoo: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    return zoo[name] if name in zoo else onnx.load(str(FIXTURES / f"{name}.onnx"))


def _mismatches(model: onnx.ModelProto, n: int, seed: int) -> tuple[int, int]:
    """Samples (of N random int8 inputs) where golden and ORT differ, and the outputs' spread."""
    graph = lower(model)
    rng = np.random.default_rng(seed)
    xs = [
        rng.integers(-128, 128, size=(n, *graph.io_onnx[i]["onnx_shape"][1:]), dtype=np.int8)  # type: ignore[index]
        for i in graph.inputs
    ]
    golden = from_stored(graph, run_reference(graph, to_stored(graph, xs)))
    ort = ort_reference(model, xs, session=ort_session(model, threads=2))
    bad = 0
    for g, o in zip(golden, ort, strict=True):
        assert g.dtype == o.dtype == np.int8 and g.shape == o.shape
        bad += int(np.any(g != o, axis=tuple(range(1, g.ndim))).sum())
    return bad, len(np.unique(golden[0]))


@pytest.mark.parametrize("name", [*MLPERF, "digits-cnn", "digits-mlp"])
def test_golden_equals_ort_on_200_random_inputs(name: str, zoo_quantized) -> None:  # type: ignore[no-untyped-def]
    bad, distinct = _mismatches(_model(name, zoo_quantized), 200, seed=1)
    assert bad == 0
    assert distinct > 1  # the outputs vary, so equality says something


@pytest.mark.slow
@pytest.mark.parametrize("name", [*MLPERF, "digits-cnn", "digits-mlp"])
def test_golden_equals_ort_on_1000_random_inputs(name: str, zoo_quantized) -> None:  # type: ignore[no-untyped-def]
    bad, _ = _mismatches(_model(name, zoo_quantized), 1000, seed=2)
    assert bad == 0


def test_a_wrong_multiplier_is_caught() -> None:
    """The comparison is sharp: one LSB of error in one multiplier shows up against ORT."""
    model = onnx.load(str(FIXTURES / "ad01_int8.onnx"))
    graph = lower(model)
    op = graph.ops[0]
    op.multiplier = np.nextafter(op.multiplier, np.float32(np.inf)) * np.float32(1.01)  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(50, 640), dtype=np.int8)
    golden = from_stored(graph, run_reference(graph, to_stored(graph, [x])))[0]
    assert (golden != ort_reference(model, [x])[0]).any()


def test_layout_round_trip_nchw() -> None:
    model = onnx.load(str(ZOO / "models" / "digits-cnn.onnx"))
    data = np.load(ZOO / "data" / "digits-cnn.npz")["input"][:16]
    graph = lower(quantize_for_mcu(model, {"input": data}))
    x = np.arange(2 * 64, dtype=np.int64).reshape(2, 1, 8, 8).astype(np.int8)
    stored = to_stored(graph, [x])[0]
    assert stored.shape == (2, 8, 8, 1)
    assert stored[1, 2, 3, 0] == x[1, 0, 2, 3]


def test_int8_core_cuts_float_io(zoo_quantized) -> None:  # type: ignore[no-untyped-def]
    core = int8_core(zoo_quantized["digits-mlp"])
    assert [i.type.tensor_type.elem_type for i in core.graph.input] == [onnx.TensorProto.INT8]
    assert [o.type.tensor_type.elem_type for o in core.graph.output] == [onnx.TensorProto.INT8]
    graph = lower(zoo_quantized["digits-mlp"])
    assert graph.io_onnx[graph.inputs[0]]["onnx_name"] == core.graph.input[0].name
    assert graph.io_onnx[graph.outputs[0]]["onnx_name"] == core.graph.output[0].name


def test_single_sample_in_stored_shape() -> None:
    graph = lower(str(FIXTURES / "kws_ref_model.onnx"))
    x = np.zeros((49, 10, 1), np.int8)
    (y,) = run_reference(graph, [x])
    assert y.shape == (12,) and y.dtype == np.int8
