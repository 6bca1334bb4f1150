"""Exporter quirks through the analysis (what inspect and estimate report), and shapes the
model cannot run refused as one ShapeError naming the dim and the limit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from tests.model import quirk_models as q

from edgeshift.errors import ShapeError
from edgeshift.model.analysis import analyze
from edgeshift.model.shapes import graph_io, parse_shape_overrides, resolve_input_shapes

# Conv 3->4, 3x3, on 8x8: 4*8*8 outputs x 27 MACs each.
CNN_MACS = 4 * 8 * 8 * 3 * 3 * 3


def test_negative_dim_is_dynamic_not_fixed() -> None:
    inputs, outputs = graph_io(q.negative_dims_mlp())
    assert inputs[0].shape == (None, 8) and inputs[0].is_dynamic
    assert outputs[0].shape == (None, 4)
    resolved = resolve_input_shapes(inputs, parse_shape_overrides(["x=4x8"]))
    assert resolved.shapes == {"x": (4, 8)}


def test_negative_dims_with_constant_weights_analysed_at_any_batch() -> None:
    a = analyze(q.negative_dims_mlp(), batch=4)
    assert a.input_shapes == {"x": (4, 8)}
    assert a.macs == 4 * 8 * 4  # MatMul [4, 8] x [8, 4]
    assert a.params == 8 * 4 + 4  # weights and bias, both in Constant nodes
    assert a.constant_node_weight_bytes == (8 * 4 + 4) * 4
    assert a.output_shapes == {"y": (4, 4)}
    assert a.opset == 11


@pytest.mark.parametrize("opset", [9, 21])
def test_oldest_and_newest_opset(opset: int) -> None:
    a = analyze(q.small_cnn(opset))
    assert a.opset == opset
    assert a.macs == CNN_MACS
    assert not [u for u in a.uncounted if "Conv" in u]


def test_nhwc_graph_with_transposes() -> None:
    a = analyze(q.nhwc_conv_model(), batch=2)
    assert a.input_shapes == {"x": (2, 8, 8, 3)}
    assert a.macs == 2 * CNN_MACS
    assert a.output_shapes == {"y": (2, 8, 8, 4)}


def test_several_outputs_all_shaped() -> None:
    a = analyze(q.two_outputs_model(), batch=5)
    assert a.output_shapes == {"logits": (5, 3), "probs": (5, 3)}


def test_position_table_within_its_rows() -> None:
    a = analyze(q.position_table_model(), {"seq": (q.POSITIONS,)})
    assert a.output_shapes == {"emb": (1, q.POSITIONS, q.HIDDEN)}


def test_position_table_past_its_rows_names_dim_and_limit() -> None:
    with pytest.raises(ShapeError) as err:
        analyze(q.position_table_model(), {"seq": (q.POSITIONS + 4,)})
    message = str(err.value)
    assert "seq=20" in message and f"at most {q.POSITIONS}" in message
    assert "\n" not in message


def test_fixed_reshape_names_the_only_fitting_value() -> None:
    assert analyze(q.fixed_reshape_model(), {"seq": (8,)}).output_shapes == {"y": (1, 32)}
    with pytest.raises(ShapeError, match=r"seq=10 .*Reshape.*exactly 8"):
        analyze(q.fixed_reshape_model(), {"seq": (10,)})


def test_huge_dim_refused_before_anything_is_built() -> None:
    # 2**40 tokens: the Range of positions alone would be 8 TiB if it were folded.
    with pytest.raises(ShapeError, match=r"seq=1099511627776 is too large: the inputs alone"):
        analyze(q.position_table_model(), {"seq": (2**40,)})


def test_activations_beyond_available_memory() -> None:
    # At seq 16 the inputs take 128 B but the embeddings and tables ~2 KiB: a 1 KiB machine
    # holds the one and not the other.
    with pytest.raises(ShapeError, match=r"seq=16 is too large: the weights and activations"):
        analyze(q.position_table_model(), {"seq": (16,)}, available_bytes=1024)


def test_broadcast_clash_names_the_other_extent() -> None:
    # A [batch, seq, 8] input added to a fixed [1, 12, 8] table: seq must be 12.
    table = numpy_helper.from_array(np.zeros((1, 12, 8), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "table"], ["y"])],
        "add_table",
        [helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 8])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    assert analyze(model, {"seq": (12,)}).macs == 0  # Add has no MACs; it must not raise
    with pytest.raises(ShapeError, match=r"seq=30 .*\[1, 30, 8\] with \[1, 12, 8\].*up to 12"):
        analyze(model, {"seq": (30,)})
