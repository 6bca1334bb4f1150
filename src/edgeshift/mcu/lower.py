"""Lower an int8 QDQ ONNX model to the integer IR (``ir.py``). Pure: no runtime is called.

Every int8 value of the ONNX graph (a QuantizeLinear output, an int8 graph input, or a
layout op on either) is a *view* of one IR tensor: the tensor's name plus how its ONNX
layout maps onto the stored one (NCHW or NHWC for images, a flat order for vectors).
A float node between DequantizeLinear inputs and one QuantizeLinear output is a *pending*
op; the QuantizeLinear closes it, because only then is the output scale known. Relu, Clip
and a bias Add between the node and its QuantizeLinear fold into the pending op, as ORT's
QDQ fusion folds them into QLinearConv / QGemm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeshift.errors import ModelError
from edgeshift.mcu import ir

INT8_MIN, INT8_MAX = -128, 127

# Nearest supported op for the error message of an unsupported one.
_ALTERNATIVES = {
    "LeakyRelu": "Relu or Clip",
    "PRelu": "Relu or Clip",
    "Sigmoid": "Relu or Clip",
    "HardSigmoid": "Relu or Clip",
    "HardSwish": "Relu or Clip",
    "Tanh": "Relu or Clip",
    "Elu": "Relu",
    "Selu": "Relu",
    "Gelu": "Relu",
    "Mul": "Add",
    "Sub": "Add",
    "Div": "Add",
    "MatMulInteger": "a QDQ MatMul",
    "ConvTranspose": "Conv with a Resize-free upsampling, or Conv",
    "LpPool": "AveragePool or MaxPool",
    "GlobalMaxPool": "MaxPool with a kernel as big as the input",
    "ReduceMax": "MaxPool",
    "ReduceSum": "ReduceMean over H,W",
    "LogSoftmax": "Softmax",
    "Split": "Concat's inverse is not supported; use separate convolutions",
    "BatchNormalization": "a Conv with the batch norm folded in (onnx simplifiers do this)",
}


@dataclass
class _View:
    """How an ONNX value reads an IR tensor. kind: 'nchw' | 'nhwc' (ONNX rank 4, stored
    (H, W, C)) or 'vec' (ONNX [1, N], stored (N,)); order[i] is the ONNX flat index of stored
    element i (None: identity)."""

    tensor: str
    kind: str
    onnx_shape: tuple[int, ...]
    order: np.ndarray | None = None


@dataclass
class _Pending:
    """A float node waiting for the QuantizeLinear that fixes its output quantization."""

    node: onnx.NodeProto
    kind: str
    inputs: list[_View]
    onnx_shape: tuple[int, ...]
    bias: np.ndarray | None = None
    clip_lo: float = -np.inf
    clip_hi: float = np.inf
    extra: dict[str, Any] = field(default_factory=dict)


def _fail(node: onnx.NodeProto, why: str) -> ModelError:
    return ModelError(f"node '{node.name or node.output[0]}' ({node.op_type}): {why}")


class _Lowerer:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        self.graph = model.graph
        self.name = name
        self.inits = {t.name: t for t in self.graph.initializer}
        self.tensors: dict[str, ir.QTensor] = {}
        self.ops: list[ir.Op] = []
        self.views: dict[str, _View] = {}  # ONNX int8 value -> view
        self.float_views: dict[str, tuple[_View, float, int]] = {}  # DQ output -> view, s, zp
        self.pending: dict[str, _Pending] = {}
        self.weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # DQ output -> q, scale
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.io_onnx: dict[str, dict[str, object]] = {}
        self.float_inputs: dict[str, tuple[int, ...]] = {}
        self.uint8_nodes: list[str] = []  # Q/DQ nodes with uint8 zero points
        self.dropped: set[str] = set()  # outputs of unread QuantizeLinears
        self.float_groups: list[str] = []  # see ir.McuGraph.float_groups
        self.consumers: dict[str, int] = {}
        self.dq_source: dict[str, str] = {}  # DQ output -> its int8 input
        for node in self.graph.node:
            for i in node.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1

    # ---- helpers -------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return None

    def add_tensor(self, name: str, shape: tuple[int, ...], scale: float, zp: int) -> str:
        self.tensors[name] = ir.QTensor(name, tuple(int(d) for d in shape), float(scale), zp)
        return name

    def qparams(self, node: onnx.NodeProto) -> tuple[float, int]:
        scale = self.const(node.input[1])
        zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1:
            raise _fail(node, "activation scale must be one constant; re-quantize per tensor")
        if zp is not None and zp.dtype == np.uint8:
            # ORT's x86 recipes quantize activations to uint8. q_u8 - 128 is the same value as
            # an int8 with zero point zp - 128: (q - zp) and every integer kernel are unchanged.
            self.uint8_nodes.append(node.name or node.output[0])
            return float(scale.reshape(())), int(zp.reshape(())) - 128
        if zp is not None and zp.dtype != np.int8:
            raise _fail(
                node,
                f"activations are {zp.dtype}: edgeshift compile needs int8 or uint8 activations; "
                "quantize with activation_type=QInt8",
            )
        return float(scale.reshape(())), int(zp.reshape(())) if zp is not None else 0

    def _int8_only(self, node: onnx.NodeProto, what: str) -> None:
        """ORT computes these in float32 from the raw uint8 values: shifted to int8 the same
        math rounds differently, so uint8 models with them are refused, not approximated."""
        if self.uint8_nodes:
            raise _fail(
                node,
                f"{what} on uint8 activations is not bit-exact in int8: quantize the float model "
                "with int8 activations (edgeshift compile MODEL --data CALIB.npz)",
            )

    # ---- graph inputs ----------------------------------------------------------------------
    def graph_inputs(self) -> None:
        for value in self.graph.input:
            if value.name in self.inits:
                continue
            ttype = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
            shape = (1, *dims[1:]) if dims else ()
            if any(d is None or d <= 0 for d in shape[1:]):
                raise ModelError(
                    f"input '{value.name}' has a dynamic dim {dims}: fix every dim but the "
                    "batch (onnxruntime.tools.make_dynamic_shape_fixed)"
                )
            fixed = tuple(int(d or 1) for d in shape)
            if ttype.elem_type == onnx.TensorProto.INT8:
                view = _view_for_onnx(value.name, fixed)
                if len(fixed) == 4 and self._feeds_nhwc(value.name):
                    view = _View(value.name, "nhwc", fixed)
                self.views[value.name] = view
                self.inputs.append(value.name)
                self.io_onnx[value.name] = _io_entry(value.name, view)
                # The scale is known at its first DequantizeLinear (op_DequantizeLinear).
                self.tensors[value.name] = ir.QTensor(value.name, _stored(view), 0.0, 0)
            elif ttype.elem_type == onnx.TensorProto.FLOAT:
                self.float_inputs[value.name] = fixed
            else:
                raise ModelError(
                    f"input '{value.name}' has element type "
                    f"{onnx.TensorProto.DataType.Name(ttype.elem_type)}: use int8 (quantize with "
                    "activation_type=QInt8), or a float input followed by QuantizeLinear"
                )

    def _feeds_nhwc(self, name: str) -> bool:
        """tf2onnx keeps TensorFlow's NHWC input and converts with a Transpose or Reshape."""
        for node in self.graph.node:
            if name in node.input:
                perm = list(_attrs(node).get("perm", []))
                return node.op_type == "Reshape" or perm == [0, 3, 1, 2]
        return False

    # ---- node dispatch ---------------------------------------------------------------------
    def run(self) -> ir.McuGraph:
        self.graph_inputs()
        for node in self.graph.node:
            handler = getattr(self, f"op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx") or handler is None:
                alt = _ALTERNATIVES.get(node.op_type, "Conv, Gemm/MatMul, Add, pooling, Softmax")
                raise ModelError(
                    f"node '{node.name or node.output[0]}' is {node.op_type}: not supported by "
                    f"edgeshift compile; use {alt}"
                )
            handler(node)
        self.graph_outputs()
        return ir.McuGraph(
            self.name, self.tensors, self.ops, self.inputs, self.outputs, self.io_onnx,
            sorted(set(self.float_groups)),
        )  # fmt: skip

    def graph_outputs(self) -> None:
        for value in self.graph.output:
            if value.name in self.views:
                view = self.views[value.name]
            elif value.name in self.float_views and value.name in self.dq_source:
                view = self.float_views[value.name][0]
                entry = _io_entry(self.dq_source[value.name], view)
                self.outputs.append(view.tensor)
                self.io_onnx[view.tensor] = {**entry, "float_name": value.name}
                continue
            else:
                raise ModelError(
                    f"output '{value.name}' is not an int8 tensor: end the model with "
                    "QuantizeLinear (or QuantizeLinear + DequantizeLinear)"
                )
            if view.order is not None:
                raise ModelError(f"output '{value.name}' needs a runtime transpose: unsupported")
            self.outputs.append(view.tensor)
            self.io_onnx[view.tensor] = _io_entry(value.name, view)

    # ---- quantization boundaries ---------------------------------------------------------
    def op_DequantizeLinear(self, node: onnx.NodeProto) -> None:
        src = node.input[0]
        if src in self.inits:
            q = self.const(src)
            w_scale = self.const(node.input[1])
            w_zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            assert q is not None
            if w_scale is None:
                raise _fail(node, "weight scale is not a constant")
            if w_zp is not None and np.any(w_zp != 0):
                raise _fail(
                    node, "weight zero point is not 0: quantize weights symmetric (WeightSymmetric)"
                )
            if q.dtype not in (np.int8, np.int32):
                raise _fail(node, f"weights are {q.dtype}: use int8 weights and int32 bias")
            self.weights[node.output[0]] = (q, w_scale.astype(np.float32))
            return
        if src in self.dropped:
            return  # the unread twin of a dropped quantization (see op_QuantizeLinear)
        if src not in self.views:
            raise _fail(node, "reads a value that is not int8 activation data")
        scale, zp = self.qparams(node)
        view = self.views[src]
        qt = self.tensors[view.tensor]
        if qt.scale == 0.0:
            self.tensors[view.tensor] = ir.QTensor(qt.name, qt.shape, scale, zp)
        elif (qt.scale, qt.zero_point) != (scale, zp):
            raise _fail(node, "dequantizes with other parameters than its QuantizeLinear")
        self.float_views[node.output[0]] = (view, scale, zp)
        self.dq_source[node.output[0]] = src

    def op_QuantizeLinear(self, node: onnx.NodeProto) -> None:
        src, out = node.input[0], node.output[0]
        scale, zp = self.qparams(node)
        if src in self.float_inputs:
            shape = self.float_inputs[src]
            view = _view_for_onnx(out, shape)
            self.views[out] = view
            self.add_tensor(out, _stored(view), scale, zp)
            self.inputs.append(out)
            self.io_onnx[out] = {**_io_entry(out, view), "float_name": src}
            return
        if src in self.float_views:  # DQ -> layout ops -> Q: the same bytes if params agree
            view, s, z = self.float_views[src]
            if (np.float32(s), z) != (np.float32(scale), zp):
                raise _fail(node, "requantizes without an op in between: unsupported")
            self.views[out] = view
            return
        if src not in self.pending:
            raise _fail(node, "quantizes a value edgeshift cannot trace to int8 inputs")
        if self.consumers.get(src, 0) > 1 and self._unread(out):
            # ORT's x86 recipes quantize a Conv's output *and* feed the float output to a Relu
            # that is quantized after it; nothing reads the first quantization. It is dropped and
            # the Relu fuses into the Conv (ORT itself runs such a group in float32).
            self.consumers[src] -= 1
            self.dropped.add(out)
            self.float_groups.append(self.pending[src].node.name or src)
            return
        self.close(self.pending.pop(src), out, scale, zp)

    def _unread(self, q_out: str) -> bool:
        """Whether Q_OUT is read by nothing but DequantizeLinears that nothing reads."""
        readers = [n for n in self.graph.node if q_out in n.input]
        outputs = {o.name for o in self.graph.output}
        return q_out not in outputs and all(
            n.op_type == "DequantizeLinear"
            and self.consumers.get(n.output[0], 0) == 0
            and n.output[0] not in outputs
            for n in readers
        )

    # ---- layout ops (views, no data movement) ---------------------------------------------
    def _layout(self, node: onnx.NodeProto, fn) -> None:
        src, out = node.input[0], node.output[0]
        self._settle(src)
        if src in self.views:
            self.views[out] = fn(self.views[src])
        elif src in self.float_views:
            view, s, z = self.float_views[src]
            self.float_views[out] = (fn(view), s, z)
        else:
            raise _fail(node, "layout op on a value that is not int8 data")

    def op_Transpose(self, node: onnx.NodeProto) -> None:
        perm = list(_attrs(node).get("perm", []))

        def fn(v: _View) -> _View:
            if v.kind == "nhwc" and perm == [0, 3, 1, 2]:
                n, h, w, c = v.onnx_shape
                return _View(v.tensor, "nchw", (n, c, h, w))
            if v.kind == "nchw" and perm == [0, 2, 3, 1]:
                n, c, h, w = v.onnx_shape
                return _View(v.tensor, "nhwc", (n, h, w, c))
            raise _fail(node, f"transpose {perm} is not a layout change: unsupported")

        self._layout(node, fn)

    def _reshape_to(self, node: onnx.NodeProto, target: list[int]) -> None:
        def fn(v: _View) -> _View:
            size = int(np.prod(v.onnx_shape))
            shape = [1 if i == 0 and d in (-1, 0) else d for i, d in enumerate(target)]
            if -1 in shape:
                shape[shape.index(-1)] = size // -int(np.prod(shape))
            shape[0] = 1
            if int(np.prod(shape)) != size:
                raise _fail(node, f"reshape to {target} does not keep the size {size}")
            order = _flat_order(v)
            if len(shape) == 2:
                if order is not None and np.array_equal(order, np.arange(size)):
                    order = None
                return self._alias(node, v, _View(node.output[0], "vec", tuple(shape), order))
            if len(shape) == 4:
                new = _View(node.output[0], "nchw", tuple(shape))
                want = _flat_order(new)
                have = order if order is not None else np.arange(size)
                if want is None or np.array_equal(want, have):
                    return self._alias(node, v, new)
            raise _fail(node, f"reshape to {target} moves data: only flattening is supported")

        self._layout(node, fn)

    def _alias(self, node: onnx.NodeProto, v: _View, new: _View) -> _View:
        """A new IR tensor over the same bytes (the IR's Reshape is a view)."""
        if _stored(new) == self.tensors[v.tensor].shape:
            return _View(v.tensor, new.kind, new.onnx_shape, new.order)
        src = self.tensors[v.tensor]
        name = self.add_tensor(node.output[0], _stored(new), src.scale, src.zero_point)
        self.ops.append(ir.Reshape(v.tensor, name))
        return _View(name, new.kind, new.onnx_shape, new.order)

    def op_Reshape(self, node: onnx.NodeProto) -> None:
        target = self.const(node.input[1])
        if target is None:
            raise _fail(node, "reshape target is not a constant: fold shapes (onnxsim)")
        self._reshape_to(node, [int(d) for d in target])

    def op_Flatten(self, node: onnx.NodeProto) -> None:
        if int(_attrs(node).get("axis", 1)) != 1:
            raise _fail(node, "Flatten axis must be 1")
        self._reshape_to(node, [1, -1])

    def op_Squeeze(self, node: onnx.NodeProto) -> None:
        self._reshape_to(node, [1, -1])

    # ---- compute ops (pending until their QuantizeLinear) -----------------------------------
    def _settle(self, name: str) -> None:
        """Quantize a pending float value early when only order-preserving ops (MaxPool,
        Flatten, Reshape) lie between it and its QuantizeLinear, as ORT's x86 recipes leave
        them: quantization is monotone, so max-then-quantize equals quantize-then-max, and
        a layout op moves bytes, not values."""
        if name not in self.pending or self.consumers.get(name, 0) != 1:
            return
        value, q = name, None
        for _ in range(16):
            readers = [n for n in self.graph.node if value in n.input]
            if len(readers) != 1:
                return
            if readers[0].op_type == "QuantizeLinear":
                q = readers[0]
                break
            if readers[0].op_type not in ("MaxPool", "Flatten", "Reshape", "Squeeze"):
                return
            value = readers[0].output[0]
        if q is None:
            return
        scale, zp = self.qparams(q)
        self.float_groups.append(self.pending[name].node.name or name)
        tensor = f"{name}_settled"
        self.close(self.pending.pop(name), tensor, scale, zp)
        self.float_views[name] = (self.views[tensor], scale, zp)
        self.dq_source[name] = tensor

    def _act(self, name: str, node: onnx.NodeProto) -> _View:
        if name not in self.float_views and node.op_type == "MaxPool":
            self._settle(name)
        if name not in self.float_views:
            raise _fail(node, f"input '{name}' is not a DequantizeLinear of int8 data")
        return self.float_views[name][0]

    def _pend(self, node: onnx.NodeProto, kind: str, inputs: list[_View], shape, **extra) -> None:
        self.pending[node.output[0]] = _Pending(node, kind, inputs, tuple(shape), extra=extra)

    def op_Conv(self, node: onnx.NodeProto) -> None:
        x = self._act(node.input[0], node)
        if x.kind != "nchw":
            raise _fail(node, "input is not an NCHW image")
        if node.input[1] not in self.weights:
            raise _fail(node, "weights are not a DequantizeLinear of an int8 constant")
        w, w_scale = self.weights[node.input[1]]
        a = _attrs(node)
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise _fail(node, "auto_pad SAME is not supported: export explicit pads")
        if w.ndim != 4:
            raise _fail(node, "only 2-D convolution is supported")
        _, cin, h, wd = x.onnx_shape
        cout, cin_g, kh, kw = w.shape
        group = int(a.get("group", 1))
        stride = tuple(int(s) for s in a.get("strides", [1, 1]))
        dil = tuple(int(d) for d in a.get("dilations", [1, 1]))
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        oh = (h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (wd + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
        bias = self._bias(node, 2, cout)
        if group == 1:
            weights = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
            kind = "conv"
        elif group == cin == cout and cin_g == 1:
            weights = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))
            kind = "dw"
        else:
            raise _fail(
                node, f"group={group} with {cin}->{cout} channels: use group 1 or depthwise"
            )
        self._pend(
            node,
            kind,
            [x],
            (1, cout, oh, ow),
            weights=weights,
            w_scale=w_scale,
            stride=stride,
            dil=dil,
            pad=(pads[0], pads[1], pads[2], pads[3]),
        )
        self.pending[node.output[0]].bias = bias

    def _bias(self, node: onnx.NodeProto, idx: int, cout: int) -> np.ndarray:
        if len(node.input) <= idx or not node.input[idx]:
            return np.zeros(cout, np.int32)
        name = node.input[idx]
        if name not in self.weights or self.weights[name][0].dtype != np.int32:
            raise _fail(node, "bias is not a DequantizeLinear of an int32 constant")
        return self.weights[name][0].reshape(-1).astype(np.int32)

    def _fc(self, node: onnx.NodeProto, w_kn: np.ndarray, w_scale: np.ndarray) -> None:
        x = self._act(node.input[0], node)
        if len(x.onnx_shape) != 2:
            raise _fail(node, "input must be a [1, K] vector; add a Flatten")
        nout = w_kn.shape[1]
        weights = np.ascontiguousarray(w_kn.T)
        if x.order is not None:  # stored order differs from ONNX flat order: permute columns
            weights = np.ascontiguousarray(weights[:, x.order])
        self._pend(node, "fc", [x], (1, nout), weights=weights, w_scale=w_scale)

    def op_MatMul(self, node: onnx.NodeProto) -> None:
        if node.input[1] not in self.weights:
            raise _fail(node, "B is not a DequantizeLinear of an int8 constant")
        w, s = self.weights[node.input[1]]
        self._fc(node, w, s)

    def op_Gemm(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0 or a.get("transA"):
            raise _fail(node, "Gemm with alpha/beta != 1 or transA: unsupported")
        if node.input[1] not in self.weights:
            raise _fail(node, "B is not a DequantizeLinear of an int8 constant")
        w, s = self.weights[node.input[1]]
        self._fc(node, w.T if a.get("transB") else w, s)
        self.pending[node.output[0]].bias = self._bias(
            node, 2, w.shape[0 if a.get("transB") else 1]
        )

    def op_Add(self, node: onnx.NodeProto) -> None:
        a, b = node.input[0], node.input[1]
        if a in self.pending and b in self.weights:  # MatMul + bias: one QGemm in ORT
            p = self.pending.pop(a)
            p.bias = self.weights[b][0].reshape(-1).astype(np.int32)
            self.pending[node.output[0]] = p
            return
        self._int8_only(node, "Add")
        va, vb = self._act(a, node), self._act(b, node)
        same_order = _same_order(va.order, vb.order)
        if va.onnx_shape != vb.onnx_shape or va.kind != vb.kind or not same_order:
            raise _fail(node, "inputs differ in shape or layout: broadcasting is not supported")
        self._pend(node, "add", [va, vb], va.onnx_shape)

    def _clip(self, node: onnx.NodeProto, lo: float, hi: float) -> None:
        src = node.input[0]
        if src in self.pending and self.consumers.get(src) == 1:
            p = self.pending.pop(src)
            p.clip_lo, p.clip_hi = max(p.clip_lo, lo), min(p.clip_hi, hi)
            self.pending[node.output[0]] = p
            return
        x = self._act(src, node)
        self._pend(node, "clamp", [x], x.onnx_shape, lo=lo, hi=hi)

    def op_Relu(self, node: onnx.NodeProto) -> None:
        self._clip(node, 0.0, np.inf)

    def op_Clip(self, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        lo = a.get("min", -np.inf)
        hi = a.get("max", np.inf)
        for idx in (1, 2):
            if len(node.input) > idx and node.input[idx]:
                c = self.const(node.input[idx])
                if c is None:
                    raise _fail(node, "Clip bounds must be constants")
                if idx == 1:
                    lo = float(c)
                else:
                    hi = float(c)
        self._clip(node, float(lo), float(hi))

    def _pool(self, node: onnx.NodeProto, kind: str, kernel, stride, pads, include_pad) -> None:
        x = self._act(node.input[0], node)
        if x.kind != "nchw":
            raise _fail(node, "input is not an NCHW image")
        _, c, h, w = x.onnx_shape
        oh = (h + pads[0] + pads[2] - kernel[0]) // stride[0] + 1
        ow = (w + pads[1] + pads[3] - kernel[1]) // stride[1] + 1
        self._pend(
            node,
            kind,
            [x],
            (1, c, oh, ow),
            kernel=tuple(kernel),
            stride=tuple(stride),
            pad=tuple(pads),
            include_pad=bool(include_pad),
        )

    def _pool_attrs(self, node: onnx.NodeProto):
        a = _attrs(node)
        if int(a.get("ceil_mode", 0)) or a.get("auto_pad", b"NOTSET") != b"NOTSET":
            raise _fail(node, "ceil_mode / auto_pad pooling is not supported: use explicit pads")
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise _fail(node, "dilated pooling is not supported")
        kernel = [int(k) for k in a["kernel_shape"]]
        if len(kernel) != 2:
            raise _fail(node, "only 2-D pooling is supported")
        stride = [int(s) for s in a.get("strides", [1, 1])]
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        return kernel, stride, pads, int(a.get("count_include_pad", 0))

    def op_AveragePool(self, node: onnx.NodeProto) -> None:
        kernel, stride, pads, include_pad = self._pool_attrs(node)
        x = self._act(node.input[0], node)
        if tuple(kernel) != tuple(x.onnx_shape[2:]) or any(pads):
            self._int8_only(node, "a windowed AveragePool")
        self._pool(node, "avg", kernel, stride, pads, include_pad)

    def op_MaxPool(self, node: onnx.NodeProto) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise _fail(node, "MaxPool indices output is not supported")
        self._pool(node, "max", *self._pool_attrs(node))

    def op_GlobalAveragePool(self, node: onnx.NodeProto) -> None:
        x = self._act(node.input[0], node)
        self._pool(node, "avg", x.onnx_shape[2:], [1, 1], [0, 0, 0, 0], 0)

    def op_ReduceMean(self, node: onnx.NodeProto) -> None:
        x = self._act(node.input[0], node)
        a = _attrs(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            axes = self.const(node.input[1])
        if x.kind != "nchw" or axes is None or sorted(int(i) % 4 for i in axes) != [2, 3]:
            raise _fail(node, "ReduceMean is supported over H,W of an NCHW image only")
        self._pool(node, "avg", x.onnx_shape[2:], [1, 1], [0, 0, 0, 0], 0)
        if not int(a.get("keepdims", 1)):
            self.pending[node.output[0]].onnx_shape = (1, x.onnx_shape[1])

    def op_Softmax(self, node: onnx.NodeProto) -> None:
        self._int8_only(node, "Softmax")
        x = self._act(node.input[0], node)
        axis = int(_attrs(node).get("axis", -1))
        if x.kind != "vec" or axis not in (-1, 1) or x.order is not None:
            raise _fail(node, "Softmax is supported over the last axis of a [1, N] vector only")
        self._pend(node, "softmax", [x], x.onnx_shape)

    def op_Pad(self, node: onnx.NodeProto) -> None:
        x = self._act(node.input[0], node)
        a = _attrs(node)
        if a.get("mode", b"constant") != b"constant":
            raise _fail(node, "only constant padding is supported")
        pads = self.const(node.input[1]) if len(node.input) > 1 else a.get("pads")
        value = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if value is not None and float(value.reshape(-1)[0]) != 0.0:
            raise _fail(node, "padding value must be 0")
        if pads is None or x.kind != "nchw" or len(pads) != 8:
            raise _fail(node, "Pad needs constant pads on an NCHW image")
        p = [int(v) for v in pads]
        if p[0] or p[1] or p[4] or p[5] or min(p) < 0:
            raise _fail(node, "only non-negative padding of H and W is supported")
        _, c, h, w = x.onnx_shape
        shape = (1, c, h + p[2] + p[6], w + p[3] + p[7])
        self._pend(node, "pad", [x], shape, pad=(p[2], p[3], p[6], p[7]))

    def op_Concat(self, node: onnx.NodeProto) -> None:
        self._int8_only(node, "Concat")
        xs = [self._act(i, node) for i in node.input]
        axis = int(_attrs(node).get("axis", 1))
        if any(v.kind != "nchw" for v in xs) or axis not in (1, -3):
            raise _fail(node, "Concat is supported along the channels of NCHW images only")
        h, w = xs[0].onnx_shape[2:]
        if any(v.onnx_shape[2:] != (h, w) for v in xs):
            raise _fail(node, "Concat inputs differ in H or W")
        c = sum(v.onnx_shape[1] for v in xs)
        self._pend(node, "concat", xs, (1, c, h, w))

    # ---- closing a pending op at its QuantizeLinear ---------------------------------------
    def close(self, p: _Pending, out: str, scale: float, zp: int) -> None:
        view = _view_for_onnx(out, p.onnx_shape)
        self.views[out] = view
        self.add_tensor(out, _stored(view), scale, zp)
        act_min, act_max = _act_range(p.clip_lo, p.clip_hi, scale, zp)
        ins = [v.tensor for v in p.inputs]
        e = p.extra
        if p.kind in ("conv", "dw", "fc"):
            x_scale = np.float32(self.tensors[ins[0]].scale)
            # ORT: output_scale = x_scale * w_scale[c] / y_scale, float32, in this order.
            w_scale = np.broadcast_to(
                np.asarray(e["w_scale"], np.float32).reshape(-1),
                (np.asarray(e["weights"]).shape[0 if p.kind != "dw" else 2],),
            )
            mult = (x_scale * w_scale) / np.float32(scale)
            bias = p.bias if p.bias is not None else np.zeros(len(mult), np.int32)
            common: dict[str, Any] = dict(
                bias=bias.astype(np.int32), multiplier=mult.astype(np.float32)
            )
            common |= dict(act_min=act_min, act_max=act_max)
            if p.kind in ("conv", "dw"):
                cls = ir.Conv2D if p.kind == "conv" else ir.DepthwiseConv2D
                self.ops.append(
                    cls(ins[0], out, e["weights"], stride=e["stride"], pad=e["pad"],
                        dilation=e["dil"], **common)
                )  # fmt: skip
            else:
                self.ops.append(ir.FullyConnected(ins[0], out, e["weights"], **common))
            return
        if p.bias is not None:
            raise _fail(p.node, "a bias Add after an op that is not Conv/MatMul is not supported")
        if p.kind == "add":
            self.ops.append(ir.Add(ins[0], ins[1], out, act_min=act_min, act_max=act_max))
            return
        if p.kind == "concat":
            if (act_min, act_max) != (INT8_MIN, INT8_MAX):
                raise _fail(p.node, "Relu/Clip after Concat is not supported")
            self.ops.append(ir.Concat(ins, out))
            return
        if p.kind == "softmax":
            self.ops.append(ir.Softmax(ins[0], out))
        elif p.kind == "avg":
            self.ops.append(
                ir.Pool2D(
                    "avg",
                    ins[0],
                    out,
                    e["kernel"],
                    e["stride"],
                    _pads(e["pad"]),
                    e["include_pad"],
                )
            )
        else:
            src = self.tensors[ins[0]]
            if (np.float32(src.scale), src.zero_point) != (np.float32(scale), zp):
                raise _fail(p.node, "output quantization differs from the input's: unsupported")
            if p.kind == "max":
                self.ops.append(
                    ir.Pool2D(
                        "max",
                        ins[0],
                        out,
                        e["kernel"],
                        e["stride"],
                        _pads(e["pad"]),
                    )
                )
            elif p.kind == "pad":
                self.ops.append(ir.Pad(ins[0], out, e["pad"]))
            elif p.kind == "clamp":
                lo, hi = _act_range(float(e["lo"]), float(e["hi"]), scale, zp)
                self.ops.append(ir.Clamp(ins[0], out, max(lo, act_min), min(hi, act_max)))
                return
        if (act_min, act_max) != (INT8_MIN, INT8_MAX):
            if p.kind in ("max", "pad"):
                clamped = self.add_tensor(out + "_clamped", self.tensors[out].shape, scale, zp)
                op = self.ops.pop()
                op.out = clamped
                self.ops += [op, ir.Clamp(clamped, out, act_min, act_max)]
            else:
                raise _fail(p.node, "Relu/Clip after this op is not supported; remove it")


def _same_order(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _pads(p: object) -> tuple[int, int, int, int]:
    t = tuple(int(v) for v in p)  # type: ignore[attr-defined]
    return (t[0], t[1], t[2], t[3])


def _act_range(lo: float, hi: float, scale: float, zp: int) -> tuple[int, int]:
    """Relu/Clip bounds in the output's integer domain: Q(clip(v)) = clamp(Q(v), Q(lo), Q(hi))
    because rounding is monotonic."""
    qlo = INT8_MIN if lo == -np.inf else int(np.rint(np.float32(lo) / np.float32(scale))) + zp
    qhi = INT8_MAX if hi == np.inf else int(np.rint(np.float32(hi) / np.float32(scale))) + zp
    return max(INT8_MIN, min(INT8_MAX, qlo)), max(INT8_MIN, min(INT8_MAX, qhi))


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _view_for_onnx(name: str, shape: tuple[int, ...]) -> _View:
    if len(shape) == 4:
        return _View(name, "nchw", tuple(shape))
    if len(shape) == 2:
        return _View(name, "vec", tuple(shape))
    if len(shape) == 3:  # [1, H, W] or [1, T, C]: stored as is, channels last
        return _View(name, "nhwc", (shape[0], shape[1], 1, shape[2]))
    raise ModelError(f"tensor '{name}' has rank {len(shape)}: edgeshift compile needs rank 2 or 4")


def _stored(v: _View) -> tuple[int, ...]:
    if v.kind == "vec":
        return (int(np.prod(v.onnx_shape[1:])),)
    if v.kind == "nchw":
        _, c, h, w = v.onnx_shape
        return (h, w, c)
    _, h, w, c = v.onnx_shape
    return (h, w, c)


def _flat_order(v: _View) -> np.ndarray | None:
    """ONNX flat index of each stored element (None when they coincide)."""
    if v.kind == "vec":
        return v.order
    if v.kind == "nhwc":
        return None
    _, c, h, w = v.onnx_shape
    idx = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
    return None if c == 1 or h * w == 1 else idx


def _io_entry(onnx_name: str, v: _View) -> dict[str, object]:
    perm = [0, 2, 3, 1] if v.kind == "nchw" else list(range(len(v.onnx_shape)))
    return {"onnx_name": onnx_name, "onnx_shape": list(v.onnx_shape), "perm": perm}


def lower(model: onnx.ModelProto | str | Path, name: str | None = None) -> ir.McuGraph:
    """Lower an int8 QDQ ONNX model (tf2onnx NHWC graphs, or ORT's static quantizer output
    with float I/O) to the integer IR. Raises ``ModelError`` naming the node and the fix."""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises several types for a bad file
            raise ModelError(f"{path}: not a readable ONNX model ({exc})") from exc
        name = name or path.stem
    graph = _Lowerer(model, name or model.graph.name or "model").run()
    _check(graph)
    return graph


def _check(graph: ir.McuGraph) -> None:
    for op in graph.ops:
        for t in [*ir.op_inputs(op), op.out]:
            if t not in graph.tensors:
                raise ModelError(f"internal: tensor '{t}' missing after lowering")
