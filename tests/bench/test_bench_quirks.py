"""bench on exporter quirks, on both runtimes, and shapes refused before any allocation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tests.model import quirk_models as q

from edgeshift.bench import bench
from edgeshift.errors import ShapeError
from edgeshift.runtime import open_backend

BACKENDS = ("onnxruntime", "openvino")


def _bench(path: Path, backend: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return bench(path, backend=backend, iterations=2, warmup=1, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_dims_and_constant_weights(tmp_path: Path, backend: str) -> None:
    path = q.save(q.negative_dims_mlp(), tmp_path, "paddle")
    result = _bench(path, backend, batch=3)
    assert result.input_shapes == {"x": (3, 8)}
    runtime = open_backend(path, backend)
    assert runtime.inputs[0].shape == (None, 8)  # dynamic, not "fixed at -1"
    nodes = onnx.load(str(path)).graph.node
    w, b = (numpy_helper.to_array(n.attribute[0].t) for n in nodes[:2])
    x = np.ones((3, 8), np.float32)
    # float32 sums of 8 products: 1e-5 covers either runtime's summation order.
    expected = np.maximum(x @ w + b, 0)
    np.testing.assert_allclose(runtime.run({"x": x})["y"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symbolic_dim_shape_on_every_backend(tmp_path: Path, backend: str) -> None:
    path = q.save(q.symbolic_seq_model(), tmp_path, "block")
    result = _bench(path, backend, shapes={"seq": (17,)})
    assert result.input_shapes == {"x": (1, 17, 8)}
    assert result.assumed == []


def test_openvino_reshapes_to_the_measured_shape(tmp_path: Path) -> None:
    path = q.save(q.symbolic_seq_model(), tmp_path, "block")
    runtime = open_backend(path, "openvino")
    assert runtime.inputs[0].shape == (None, None, 8)
    runtime.fix_input_shapes({"x": (2, 17, 8)})
    assert runtime.inputs[0].shape == (2, 17, 8)
    out = runtime.run({"x": np.zeros((2, 17, 8), np.float32)})["y"]
    np.testing.assert_allclose(out, np.full((2, 17, 8), 1 / 8), rtol=1e-6)  # softmax of 0s


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_past_the_position_table_refused(tmp_path: Path, backend: str) -> None:
    path = q.save(q.position_table_model(), tmp_path, "emb")
    with pytest.raises(ShapeError, match=rf"seq=40 .*at most {q.POSITIONS}"):
        _bench(path, backend, shapes={"seq": (40,)})
    assert _bench(path, backend, shapes={"seq": (q.POSITIONS,)}).iterations == 2


def test_huge_dim_refused_without_allocating(tmp_path: Path) -> None:
    # 2**40 int64 ids are 8 TiB: refused from the specs, before synthesize_inputs runs.
    path = q.save(q.position_table_model(), tmp_path, "emb")
    with pytest.raises(ShapeError, match=r"seq=1099511627776 is too large: the inputs alone"):
        _bench(path, "onnxruntime", shapes={"seq": (2**40,)})


@pytest.mark.parametrize("opset", [9, 21])
@pytest.mark.parametrize("backend", BACKENDS)
def test_oldest_and_newest_opset(tmp_path: Path, opset: int, backend: str) -> None:
    path = q.save(q.small_cnn(opset), tmp_path, f"cnn{opset}")
    result = _bench(path, backend)
    assert result.input_shapes == {"x": (1, 3, 8, 8)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_nhwc_with_transposes(tmp_path: Path, backend: str) -> None:
    path = q.save(q.nhwc_conv_model(), tmp_path, "nhwc")
    assert _bench(path, backend, batch=2).input_shapes == {"x": (2, 8, 8, 3)}
    out = open_backend(path, backend).run({"x": np.ones((1, 8, 8, 3), np.float32)})["y"]
    # Interior pixels see the full 3x3x3 window of ones at weight 0.1.
    assert out.shape == (1, 8, 8, 4)
    np.testing.assert_allclose(out[0, 4, 4], np.full(4, 2.7), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_outputs(tmp_path: Path, backend: str) -> None:
    path = q.save(q.two_outputs_model(), tmp_path, "heads")
    assert _bench(path, backend, batch=2).input_shapes == {"x": (2, 6)}
    runtime = open_backend(path, backend)
    assert [o.name for o in runtime.outputs] == ["logits", "probs"]
    out = runtime.run({"x": np.ones((2, 6), np.float32)})
    np.testing.assert_allclose(out["logits"], np.full((2, 3), 6.0), rtol=1e-6)
    np.testing.assert_allclose(out["probs"], np.full((2, 3), 1 / 3), rtol=1e-6)
