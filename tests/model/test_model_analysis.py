"""analyze(): parameters, weights in Constant nodes, activation memory, subgraphs, external
data and dynamic shapes — each figure checked against a hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeshift.errors import ModelError, ShapeError
from edgeshift.model import shape_infer
from edgeshift.model.analysis import analyze
from edgeshift.model.load import load_model
from edgeshift.model.shapes import DEFAULT_DYNAMIC_DIM

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name: str, shape: list[int | str] | None, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _mlp(batch: int | str = "N") -> onnx.ModelProto:
    w1 = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4), "w1")
    b1 = numpy_helper.from_array(np.ones(4, np.float32), "b1")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["y"]),
    ]
    return _model(nodes, [_vi("x", [batch, 8])], [_vi("y", [batch, 4])], [w1, b1])


# --- parameters and weights --------------------------------------------------------------


def test_constant_node_weights_count_but_scalars_and_shapes_are_not_parameters() -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w_value")
    scale = numpy_helper.from_array(np.array(2.0, np.float32), "scale_value")
    shape = numpy_helper.from_array(np.array([2, 8], np.int64), "shape_value")
    nodes = [
        helper.make_node("Constant", [], ["w"], value=w),  # 16 params, 64 B
        helper.make_node("Constant", [], ["scale"], value=scale),  # scalar: 0 params, 4 B
        helper.make_node("Constant", [], ["shape"], value=shape),  # int64 shape: 0 params, 16 B
        helper.make_node("Constant", [], ["bias"], value_floats=[1.0, 2.0, 3.0, 4.0]),  # 4, 16 B
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "bias"], ["hb"]),
        helper.make_node("Mul", ["hb", "scale"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    a = analyze(_model(nodes, [_vi("x", [4, 4])], [_vi("y", [2, 8])]))
    assert a.params == 16 + 4
    assert a.weight_bytes == 64 + 4 + 16 + 16
    assert a.constant_node_weight_bytes == a.weight_bytes
    matmul = next(n for n in a.nodes if n.op_type == "MatMul")
    assert matmul.macs == 4 * 4 * 4
    assert matmul.weight_bytes == 64 and matmul.input_bytes == 64
    # Constant outputs are weights: not activations, and the Constant node writes nothing.
    assert all(n.output_bytes == 0 for n in a.nodes if n.op_type == "Constant")
    assert a.naive_activation_bytes == 4 * 64 + 64  # x, h, hb, m, y (16 floats each)


def test_initializer_params_and_node_totals() -> None:
    a = analyze(_mlp(), batch=3)
    assert a.params == 32 + 4
    assert a.weight_bytes == 36 * 4
    assert a.macs == 3 * 8 * 4
    assert a.flops == 2 * 96 + 12 + 12  # MatMul, then Add and Relu: one FLOP per element
    assert a.macs == sum(n.macs for n in a.nodes) == sum(a.macs_by_op.values())
    assert a.flops == sum(a.flops_by_op.values())
    assert a.op_histogram == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert a.uncounted == []


# --- activation memory -------------------------------------------------------------------


def _branchy() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Relu", ["x"], ["a"]),  # [1,100]
        helper.make_node("Concat", ["x", "x"], ["b"], axis=1),  # [1,200]
        helper.make_node("ReduceMean", ["b"], ["c"], axes=[1], keepdims=1),  # [1,1]
        helper.make_node("Mul", ["a", "c"], ["d"]),  # [1,100]
    ]


def test_peak_activation_memory_of_a_branchy_graph() -> None:
    # Sizes: x 400 B, a 400 B, b 800 B, c 4 B, d 400 B. Lifetimes (step of producer → last
    # consumer): x 0→1, a 0→3, b 1→2, c 2→3, d 3→3 (graph output).
    #   step 0 (Relu):       x + a         =  800
    #   step 1 (Concat):     x + a + b     = 1600  ← peak
    #   step 2 (ReduceMean): a + b + c     = 1204
    #   step 3 (Mul):        a + c + d     =  804
    # Naive: 400 + 400 + 800 + 4 + 400 = 2004.
    a = analyze(_model(_branchy(), [_vi("x", [1, 100])], [_vi("d", [1, 100])]))
    assert a.peak_activation_bytes == 1600
    assert a.naive_activation_bytes == 2004


def test_misordered_graph_is_analysed_in_topological_order() -> None:
    # Stored backwards (ONNX forbids it, some tools write it): analysed in the order the
    # producers allow, with shapes still inferred and the same peak.
    model = _model(_branchy()[::-1], [_vi("x", [1, 100])], [_vi("d", [1, 100])])
    a = analyze(model)
    pos = {n.op_type: i for i, n in enumerate(a.nodes)}
    assert pos["Concat"] < pos["ReduceMean"] < pos["Mul"] and pos["Relu"] < pos["Mul"]
    assert all(n.counted for n in a.nodes)
    assert a.peak_activation_bytes == 1600


def test_graph_outputs_stay_alive_to_the_end() -> None:
    # a is an output produced first: it stays alive while b and c are computed.
    # x 40 B (0→0), a 40 B (0→2), b 40 B (1→2), c 40 B (2→2): step 2 holds a + b + c = 120.
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["b"]),
        helper.make_node("Abs", ["b"], ["c"]),
    ]
    a = analyze(_model(nodes, [_vi("x", [10])], [_vi("a", [10]), _vi("c", [10])]))
    assert a.peak_activation_bytes == 120
    # Without a being an output it would be freed after step 1: peak 80.
    b = analyze(_model(nodes, [_vi("x", [10])], [_vi("c", [10])]))
    assert b.peak_activation_bytes == 80


# --- subgraphs ---------------------------------------------------------------------------


def _branch(name: str, op: str) -> onnx.GraphProto:
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), f"{name}_w")
    nodes = [
        helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_h"]),  # x from outer scope
        helper.make_node(op, [f"{name}_h"], [f"{name}_y"]),
    ]
    return helper.make_graph(nodes, name, [], [_vi(f"{name}_y", [1, 4])], [w])


def test_if_subgraph_ops_in_histogram_and_reported_as_uncounted() -> None:
    node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        then_branch=_branch("then", "Relu"),
        else_branch=_branch("else", "Tanh"),
    )
    model = _model(
        [node], [_vi("cond", [], TensorProto.BOOL), _vi("x", [1, 8])], [_vi("y", [1, 4])]
    )
    a = analyze(model)
    assert a.op_histogram == {"If": 1, "MatMul": 2, "Relu": 1, "Tanh": 1}
    assert a.subgraph_nodes == 4
    assert a.params == 2 * 32  # both branches' weights are in the file
    assert a.macs == 0  # the branch taken depends on the data
    assert not a.nodes[0].counted
    note = next(n for n in a.uncounted if n.startswith("If"))
    assert "4 ops of its subgraphs" in note and "not counted" in note
    # x is read inside the branches: it must stay alive through the If (1 + 32 + 16 bytes).
    assert a.peak_activation_bytes == 1 + 32 + 16


def test_loop_subgraph_is_reported() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
        ],
        "body",
        [_vi("i", [], I64), _vi("cond_in", [], TensorProto.BOOL), _vi("v_in", [3])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", [3])],
    )
    node = helper.make_node("Loop", ["trip", "", "v0"], ["v"], body=body)
    a = analyze(_model([node], [_vi("trip", [], I64), _vi("v0", [3])], [_vi("v", [3])]))
    assert a.op_histogram == {"Loop": 1, "Identity": 1, "Add": 1}
    assert any(n.startswith("Loop") and "trip count" in n for n in a.uncounted)


# --- inputs: external data, dynamic shapes, several inputs -------------------------------


def test_external_data_model_is_analysed_from_its_path(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="mlp.weights", size_threshold=0)  # fmt: skip
    assert (tmp_path / "mlp.weights").stat().st_size == 36 * 4
    assert path.stat().st_size < 36 * 4 + 200  # the weights really live outside
    from_path = analyze(path, batch=2)
    in_memory = analyze(model, batch=2)
    assert from_path.params == in_memory.params == 36
    assert from_path.weight_bytes == 144
    assert from_path.macs == in_memory.macs == 2 * 8 * 4
    # A proto whose external data was not loaded still has dims: the figures hold.
    bare = onnx.load(str(path), load_external_data=False)
    assert analyze(bare, batch=2).weight_bytes == 144
    assert analyze(load_model(path), batch=2).macs == 64


def _encoder() -> onnx.ModelProto:
    # ids [batch, seq] int64 → embedding Gather → ·mask → MatMul to 8 features.
    table = numpy_helper.from_array(np.zeros((50, 16), np.float32), "table")
    w = numpy_helper.from_array(np.zeros((16, 8), np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),  # [batch, seq, 16]
        helper.make_node("Unsqueeze", ["mask", "axes"], ["m3"]),  # [batch, seq, 1]
        helper.make_node("Mul", ["emb", "m3"], ["masked"]),
        helper.make_node("MatMul", ["masked", "w"], ["y"]),  # [batch, seq, 8]
    ]
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    return _model(
        nodes,
        [_vi("ids", ["batch", "seq"], I64), _vi("mask", ["batch", "seq"])],
        [_vi("y", ["batch", "seq", 8])],
        [table, w, axes],
    )


def test_dynamic_shapes_with_overrides() -> None:
    a = analyze(_encoder(), shapes={"seq": (10,)}, batch=3)
    assert a.input_shapes == {"ids": (3, 10), "mask": (3, 10)}
    assert a.assumed == []
    assert a.macs == 3 * 10 * 16 * 8
    assert a.flops == 2 * a.macs + 3 * 10 * 16  # + the Mul
    assert a.params == 50 * 16 + 16 * 8  # the int64 axes vector is no parameter
    assert a.output_shapes == {"y": (3, 10, 8)}
    gather = a.nodes[0]
    assert gather.input_bytes == 3 * 10 * 8  # the int64 ids; the table is a weight
    assert gather.weight_bytes == 50 * 16 * 4


def test_dynamic_shapes_default_to_batch_1_and_the_default_dim() -> None:
    a = analyze(_encoder())
    assert a.input_shapes == {"ids": (1, DEFAULT_DYNAMIC_DIM), "mask": (1, DEFAULT_DYNAMIC_DIM)}
    assert a.macs == DEFAULT_DYNAMIC_DIM * 16 * 8
    assert any("ids[1] (seq)" in note for note in a.assumed)
    # The whole input shape can be given by input name too.
    b = analyze(_encoder(), shapes={"ids": (2, 5), "mask": (2, 5)})
    assert b.macs == 2 * 5 * 16 * 8


def test_bad_shape_overrides_raise_shape_error() -> None:
    with pytest.raises(ShapeError, match="did you mean 'seq'"):
        analyze(_encoder(), shapes={"sequ": (10,)})
    with pytest.raises(ShapeError, match="rank"):
        analyze(_encoder(), shapes={"ids": (1, 2, 3)})


def test_truncated_file_raises_model_error(tmp_path: Path) -> None:
    data = _mlp().SerializeToString()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        analyze(path)


def test_metadata() -> None:
    model = _mlp()
    model.producer_name, model.producer_version = "pytorch", "2.13.0"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    a = analyze(model)
    assert a.producer == "pytorch 2.13.0"
    assert a.opset == 17 and a.opsets == {"ai.onnx": 17, "com.microsoft": 1}
    assert [s.name for s in a.inputs] == ["x"] and a.inputs[0].shape == ("N", 8)
    assert a.outputs[0].dtype == "float32"


def test_nodes_computed_from_constants_are_folded() -> None:
    # QDQ weights: DequantizeLinear(int8 w, scale, zero point) → MatMul. Runtimes fold the
    # DequantizeLinear at load time: it costs no FLOPs and its float output is a weight.
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    a = analyze(_model(nodes, [_vi("x", [2, 4])], [_vi("y", [2, 4])], [w, scale, zero]))
    assert a.params == 16  # the int8 weight; scale and zero point are scalars
    assert a.weight_bytes == 16 + 4 + 1
    dq, matmul = a.nodes
    assert dq.folded and dq.flops == 0 and dq.output_bytes == 0
    assert matmul.weight_bytes == 16 * 4  # reads the folded float weight
    assert matmul.input_bytes == 2 * 4 * 4
    assert a.flops == 2 * 2 * 4 * 4
    # Activations: x and y (32 B each); the dequantized weight is not one.
    assert (a.peak_activation_bytes, a.naive_activation_bytes) == (64, 64)
    assert any(note.startswith("DequantizeLinear ×1") for note in a.uncounted)


def test_shapes_computed_from_shape_ops_are_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    # BERT-style position ids: Slice(positions, 0, Unsqueeze(Shape(x)[1])) — onnx's own
    # inference cannot see through the computed Slice end; folding the shape values can
    # (without help from the ORT fallback, switched off here).
    monkeypatch.setattr(shape_infer, "_ort_symbolic", lambda skel: None)
    positions = numpy_helper.from_array(np.arange(64, dtype=np.int64).reshape(1, 64), "positions")
    table = numpy_helper.from_array(np.zeros((64, 4), np.float32), "table")
    w = numpy_helper.from_array(np.zeros((4, 8), np.float32), "w")
    consts = {
        "one": np.array(1, np.int64),
        "zero1": np.array([0], np.int64),
        "axis0": np.array([0], np.int64),
        "axis1": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"]),
        helper.make_node("Unsqueeze", ["seq", "axis0"], ["end"]),
        helper.make_node("Slice", ["positions", "zero1", "end", "axis1"], ["pos"]),
        helper.make_node("Gather", ["table", "pos"], ["pe"]),  # [1, seq, 4]
        helper.make_node("Add", ["x", "pe"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    inits = [positions, table, w, *(numpy_helper.from_array(v, k) for k, v in consts.items())]
    model = _model(nodes, [_vi("x", ["batch", "seq", 4])], [_vi("y", ["batch", "seq", 8])], inits)
    a = analyze(model, shapes={"seq": (10,)}, batch=2)
    assert a.uncounted == []  # every tensor's shape known, the sliced positions included
    assert a.macs == 2 * 10 * 4 * 8
    gather_pe = next(n for n in a.nodes if n.op_type == "Gather" and n.weight_bytes == 64 * 16)
    assert gather_pe.output_bytes == 1 * 10 * 4 * 4  # pe is [1, seq, 4]
    assert a.output_shapes == {"y": (2, 10, 8)}


def test_exporter_value_info_fills_shapes_after_a_custom_op() -> None:
    # Nothing can infer through acme.Frob; the graph output's declared [N, 4], with N
    # resolved from the input, still lets the Relu after it be costed.
    nodes = [
        helper.make_node("Frob", ["x"], ["h"], domain="acme"),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])])
    model.opset_import.append(helper.make_opsetid("acme", 1))
    a = analyze(model, batch=3)
    frob, relu = a.nodes
    assert not frob.counted and relu.counted
    assert relu.flops == 12
    assert a.output_shapes == {"y": (3, 4)}
    assert any("1 activation tensor of unknown shape (h)" in n for n in a.uncounted)


def test_torch_expand_pattern_is_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch writes x.expand(-1, n, -1) as Expand(x, Where(Equal(s, -1), ones, s)) with s
    # built from Shape/Gather/Concat; onnx inference alone leaves the Expand unknown.
    monkeypatch.setattr(shape_infer, "_ort_symbolic", lambda skel: None)
    consts = {
        "minus1": np.array([-1], np.int64),
        "idx1": np.array(1, np.int64),
        "axis0": np.array([0], np.int64),
        "ones": np.array([1, 1, 1], np.int64),
    }
    w = numpy_helper.from_array(np.zeros((4, 5), np.float32), "w")
    nodes = [
        helper.make_node("Shape", ["seq"], ["s_shape"]),
        helper.make_node("Gather", ["s_shape", "idx1"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
        helper.make_node("Concat", ["minus1", "n1", "minus1"], ["target"], axis=0),
        helper.make_node("Equal", ["target", "minus1"], ["is_keep"]),
        helper.make_node("Where", ["is_keep", "ones", "target"], ["expand_to"]),
        helper.make_node("Expand", ["x", "expand_to"], ["xe"]),  # [B, n, 4]
        helper.make_node("MatMul", ["xe", "w"], ["y"]),
    ]
    inits = [w, *(numpy_helper.from_array(v, k) for k, v in consts.items())]
    model = _model(nodes, [_vi("x", ["B", 1, 4]), _vi("seq", ["B", "T"])], [_vi("y", None)], inits)
    a = analyze(model, shapes={"T": (7,)}, batch=3)
    assert a.uncounted == []
    assert a.macs == 3 * 7 * 4 * 5
    assert a.output_shapes == {"y": (3, 7, 5)}


def test_ort_symbolic_inference_covers_contrib_ops() -> None:
    # onnx knows no shapes for com.microsoft ops; ORT's symbolic inference does, so the
    # MatMul after a BiasGelu is still costed.
    nodes = [
        helper.make_node("BiasGelu", ["x", "bias"], ["h"], domain="com.microsoft"),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
        numpy_helper.from_array(np.zeros((4, 3), np.float32), "w"),
    ]
    model = _model(nodes, [_vi("x", [2, 4])], [_vi("y", None)], inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    a = analyze(model)
    assert a.uncounted == []
    assert [n.flops for n in a.nodes] == [8, 2 * 2 * 4 * 3]


def test_model_local_functions_are_inlined_and_costed() -> None:
    dense = helper.make_function(
        "acme.fn",
        "Dense",
        ["x", "w"],
        ["y"],
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    call = helper.make_node("Dense", ["x", "w"], ["y"], domain="acme.fn")
    w = numpy_helper.from_array(np.zeros((4, 3), np.float32), "w")
    model = _model([call], [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], [w])
    model.opset_import.append(helper.make_opsetid("acme.fn", 1))
    model.functions.append(dense)
    a = analyze(model, batch=2)
    assert a.uncounted == []
    assert a.op_histogram == {"MatMul": 1, "Relu": 1}
    assert a.macs == 2 * 4 * 3
    assert a.flops == 2 * 24 + 6
