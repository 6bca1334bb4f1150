"""Lowering: the IR of real models, and one-line errors for what edgeshift cannot compile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.errors import ModelError
from edgeshift.mcu import ir
from edgeshift.mcu.lower import lower

FIXTURES = Path(__file__).parent / "fixtures" / "mlperf_tiny"


def test_kws_lowers_to_ds_cnn() -> None:
    g = lower(FIXTURES / "kws_ref_model.onnx")
    kinds = [type(op).__name__ for op in g.ops]
    assert kinds.count("Conv2D") == 5 and kinds.count("DepthwiseConv2D") == 4
    assert kinds[-4:] == ["Pool2D", "Reshape", "FullyConnected", "Softmax"]
    assert g.tensors[g.inputs[0]].shape == (49, 10, 1)
    assert g.tensors[g.outputs[0]].shape == (12,)
    first = g.ops[0]
    assert isinstance(first, ir.Conv2D)
    assert first.weights.shape == (64, 10, 4, 1) and first.stride == (2, 2)
    assert first.pad == (4, 1, 5, 1) and g.tensors[first.out].shape == (25, 5, 64)
    assert first.act_min == -128  # Relu into a zero point of -128 needs no clamp
    # DS-CNN's published size: 2.66 M MACs per inference
    assert g.macs() == 2_656_768


def test_multiplier_is_orts_float32_product() -> None:
    model = onnx.load(str(FIXTURES / "ad01_int8.onnx"))
    g = lower(model)
    op = g.ops[0]
    assert isinstance(op, ir.FullyConnected)
    x, y = g.tensors[op.inp], g.tensors[op.out]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w_scale = inits["scale__91"]
    want = (np.float32(x.scale) * w_scale) / np.float32(y.scale)
    assert op.multiplier.dtype == np.float32
    np.testing.assert_array_equal(op.multiplier, np.broadcast_to(want, op.multiplier.shape))


def _qdq_model(act: str = "Relu", w_zp: int = 0, act_type: int = TensorProto.INT8,
               batch: object = 1) -> onnx.ModelProto:  # fmt: skip
    """int8 x -> DQ -> Conv(1x1) -> ACT -> Q -> y"""
    zdt = np.int8 if act_type == TensorProto.INT8 else np.uint8
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, zdt), "z"),
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.int8), "w"),
        numpy_helper.from_array(np.array([0.01, 0.02], np.float32), "ws"),
        numpy_helper.from_array(np.array([w_zp, 0], np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], name="dqx"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0, name="dqw"),
        helper.make_node("Conv", ["xf", "wf"], ["c"], name="conv0"),
        helper.make_node(act, ["c"], ["a"], name="act0"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["y"], name="qy"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", act_type, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("y", act_type, [batch, 2, 4, 4])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_qdq_conv_with_fused_relu() -> None:
    g = lower(_qdq_model())
    (op,) = g.ops
    assert isinstance(op, ir.Conv2D) and op.act_min == 0 and op.act_max == 127
    assert g.tensors["x"].shape == (4, 4, 3) and g.io_onnx["x"]["perm"] == [0, 2, 3, 1]


@pytest.mark.parametrize(
    "model,words",
    [
        (_qdq_model(act="LeakyRelu"), ["'act0'", "LeakyRelu", "use Relu or Clip"]),
        (_qdq_model(w_zp=3), ["'dqw'", "zero point", "symmetric"]),
        (_qdq_model(act_type=TensorProto.UINT8), ["UINT8", "activation_type=QInt8"]),
        (_qdq_model(batch=1), []),
    ],
)
def test_errors_are_one_line_and_name_the_fix(model: onnx.ModelProto, words: list[str]) -> None:
    if not words:
        lower(model)  # the control case lowers
        return
    with pytest.raises(ModelError) as err:
        lower(model)
    msg = str(err.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg


def test_dynamic_dims_are_refused_in_one_line() -> None:
    model = _qdq_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(ModelError, match="dynamic dim") as err:
        lower(model)
    assert "\n" not in str(err.value)


def test_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="bad.onnx"):
        lower(bad)


def _uint8_add_model() -> onnx.ModelProto:
    """float x -> Q(uint8) -> DQ -> Add(., .) -> Q(uint8) -> DQ -> float y"""
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dqx"),
        helper.make_node("Add", ["xf", "xf"], ["a"], name="add0"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"], name="qa"),
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["y"], name="dqa"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_uint8_activations_shift_to_int8_but_float_kernels_are_refused() -> None:
    # A uint8 Conv model lowers (q - 128 with zero point - 128 is the same value) ...
    model = _qdq_model()
    for init in model.graph.initializer:
        if init.name == "z":
            init.CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), "z"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.INT8
    g = lower(model)
    assert g.tensors["y"].zero_point == 0
    # ... but ORT's uint8 Add runs float math on the raw uint8 values: refused in one line.
    with pytest.raises(ModelError) as err:
        lower(_uint8_add_model())
    assert "'add0'" in str(err.value) and "uint8" in str(err.value) and "--data" in str(err.value)
