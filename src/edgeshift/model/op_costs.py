"""MACs and FLOPs of one ONNX node from its input/output shapes: one rule per op family.

Conventions (also in docs/inspect.md):
- a MAC is one multiply-accumulate; MAC ops (Conv, Gemm, MatMul, RNNs) have FLOPs = 2·MACs
  (the bias add is not counted: it is < 1/(2·K) of the work);
- element-wise ops cost one FLOP per output element, whatever their transcendental cost;
- pure data movement (Reshape, Transpose, Gather, Concat, Cast, …) costs 0 FLOPs;
- a rule returns a reason string instead of numbers when it cannot count the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorInfo:
    """Element type (onnx TensorProto enum) and concrete shape (None while unknown)."""

    elem_type: int
    shape: Shape | None

    @property
    def numel(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        n = self.numel
        return None if n is None else tensor_bytes(self.elem_type, n)


_T = onnx.TensorProto
# Storage bits per element; sub-byte types are packed; a string activation counts as one
# 8-byte pointer per element (string weights are measured by their content instead).
_BITS: dict[int, int] = {
    _T.FLOAT: 32, _T.UINT8: 8, _T.INT8: 8, _T.UINT16: 16, _T.INT16: 16, _T.INT32: 32,
    _T.INT64: 64, _T.STRING: 64, _T.BOOL: 8, _T.FLOAT16: 16, _T.DOUBLE: 64, _T.UINT32: 32,
    _T.UINT64: 64, _T.COMPLEX64: 64, _T.COMPLEX128: 128, _T.BFLOAT16: 16,
    _T.FLOAT8E4M3FN: 8, _T.FLOAT8E4M3FNUZ: 8, _T.FLOAT8E5M2: 8, _T.FLOAT8E5M2FNUZ: 8,
    _T.UINT4: 4, _T.INT4: 4, _T.FLOAT4E2M1: 4,
}  # fmt: skip


def tensor_bytes(elem_type: int, numel: int) -> int:
    """Bytes to store NUMEL elements of ELEM_TYPE (sub-byte types packed, rounded up)."""
    bits = _BITS.get(elem_type, 32)
    return (numel * bits + 7) // 8


@dataclass(frozen=True)
class Cost:
    macs: int = 0
    flops: int = 0
    reason: str | None = None  # set when the node could not be counted

    @property
    def counted(self) -> bool:
        return self.reason is None


Infos = Sequence[TensorInfo | None]
Rule = Callable[[onnx.NodeProto, Infos, Infos], Cost]


class _Unknown(Exception):
    """A shape a rule needs is not known."""


def _shape(infos: Infos, index: int) -> Shape:
    info = infos[index] if index < len(infos) else None
    if info is None or info.shape is None:
        raise _Unknown
    return info.shape


def _numel(infos: Infos, index: int) -> int:
    return math.prod(_shape(infos, index))


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    value = _attr(node, name, default)
    return int(value) if isinstance(value, int) else default


def _mac(macs: int) -> Cost:
    return Cost(macs=macs, flops=2 * macs)


# --- MAC ops -------------------------------------------------------------------------------


def _conv(x: int, w: int) -> Rule:
    def rule(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
        # Conv: MACs = |Y| · (C/groups) · Πk — each output element is one dot product over
        # the weight's [C/groups, k1, k2, …] slice (stride/pads/dilations enter through |Y|).
        w_shape = _shape(ins, w)
        return _mac(_numel(outs, 0) * math.prod(w_shape[1:]))

    return rule


def _conv_transpose(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    # ConvTranspose: MACs = |X| · (M/groups) · Πk — each input element scatters into that
    # many outputs (W is [C, M/groups, k1, …]).
    w_shape = _shape(ins, 1)
    return _mac(_numel(ins, 0) * math.prod(w_shape[1:]))


def _gemm(a_index: int, b_index: int) -> Rule:
    def rule(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
        # Gemm: MACs = M·K·N with A = [M,K] (or [K,M] when transA), B = [K,N] (or [N,K]).
        a, b = _shape(ins, a_index), _shape(ins, b_index)
        if len(a) != 2 or len(b) != 2:
            return Cost(reason="Gemm inputs are not 2-D")
        m, k = (a[1], a[0]) if _int_attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _int_attr(node, "transB", 0) else b[1]
        return _mac(m * k * n)

    return rule


def _matmul_macs(a: Shape, b: Shape, trans_a: bool = False, trans_b: bool = False) -> int:
    # numpy matmul: 1-D operands get a unit axis; batch axes broadcast.
    if len(a) == 1:
        a = (1, a[0])
    if len(b) == 1:
        b = (b[0], 1)
    if trans_a:
        a = (*a[:-2], a[-1], a[-2])
    if trans_b:
        b = (*b[:-2], b[-1], b[-2])
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def _matmul(a: int, b: int) -> Rule:
    def rule(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
        # MatMul: MACs = Πbatch · M·K·N over the broadcast batch axes (covers attention
        # QKᵀ [B,h,S,d]×[B,h,d,S] and AV [B,h,S,S]×[B,h,S,d]).
        trans_a = bool(_int_attr(node, "transA", 0))
        trans_b = bool(_int_attr(node, "transB", 0))
        try:
            return _mac(_matmul_macs(_shape(ins, a), _shape(ins, b), trans_a, trans_b))
        except ValueError:
            return Cost(reason="MatMul operands do not broadcast")

    return rule


def _einsum(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    # Einsum with ≥2 operands: MACs = (operands−1) · Π(size of every distinct index), the
    # naive contraction; with one operand (transpose / reduce): one FLOP per input element.
    equation = _attr(node, "equation", b"")
    text = equation.decode() if isinstance(equation, bytes) else str(equation)
    lhs = text.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if len(terms) != len(node.input):
        return Cost(reason=f"Einsum equation {text!r} does not match its inputs")
    if len(terms) == 1:
        return Cost(flops=_numel(ins, 0))
    sizes: dict[str, int] = {}
    for i, term in enumerate(terms):
        shape = _shape(ins, i)
        letters = term.replace("...", "")
        n_ellipsis = len(shape) - len(letters)
        if "..." in term:
            head, tail = term.split("...")
            # Ellipsis axes are right-aligned across operands, so name them by distance
            # from the end of the ellipsis.
            symbols = [*head, *(f"…{n_ellipsis - j}" for j in range(n_ellipsis)), *tail]
        elif n_ellipsis != 0:
            return Cost(reason=f"Einsum term {term!r} does not match rank {len(shape)}")
        else:
            symbols = list(term)
        for symbol, dim in zip(symbols, shape, strict=True):
            sizes[symbol] = max(sizes.get(symbol, 1), dim)
    return _mac((len(terms) - 1) * math.prod(sizes.values()))


def _matmul_nbits(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    # MatMulNBits (int4/int8 block-quantized weights, ORT contrib): MACs = Π(A[:-1])·K·N,
    # K and N from its attributes (B is stored packed).
    a = _shape(ins, 0)
    k, n = _int_attr(node, "K", 0), _int_attr(node, "N", 0)
    if not k or not n:
        return Cost(reason="MatMulNBits without K/N attributes")
    return _mac(math.prod(a[:-1]) * k * n)


def _sdpa(batch: int, heads: int, q_seq: int, kv_seq: int, qk_dim: int, v_dim: int) -> Cost:
    # Scaled dot-product attention: QKᵀ is B·h·S_q·S_kv·d_qk MACs, AV B·h·S_q·S_kv·d_v;
    # the softmax over the scores adds 5 FLOPs per score.
    scores = batch * heads * q_seq * kv_seq
    macs = scores * (qk_dim + v_dim)
    return Cost(macs=macs, flops=2 * macs + 5 * scores)


def _attention(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    if node.domain == "com.microsoft":
        # Contrib Attention: input [B,S,D_in] × packed QKV weights [D_in, q+k+v] then SDPA
        # (past key/value not included).
        x, w = _shape(ins, 0), _shape(ins, 1)
        sizes = _attr(node, "qkv_hidden_sizes")
        q_size, _, v_size = (
            [int(d) for d in sizes] if isinstance(sizes, list) and sizes else [w[1] // 3] * 3
        )
        heads = _int_attr(node, "num_heads", 1)
        batch, seq = x[0], x[1]
        sdpa = _sdpa(batch, heads, seq, seq, q_size // heads, v_size // heads)
        projection = batch * seq * x[2] * w[1]
        return Cost(macs=projection + sdpa.macs, flops=2 * projection + sdpa.flops)
    # ONNX Attention (opset 23): Q/K/V 4-D [B, heads, S, d] or 3-D [B, S, heads·d].
    q, k, v = _shape(ins, 0), _shape(ins, 1), _shape(ins, 2)
    past = _shape(ins, 4)[-2] if len(node.input) > 4 and node.input[4] else 0
    if len(q) == 4:
        return _sdpa(q[0], q[1], q[2], k[2] + past, q[3], v[3])
    q_heads = _int_attr(node, "q_num_heads", 0)
    kv_heads = _int_attr(node, "kv_num_heads", 0)
    if not q_heads or not kv_heads:
        return Cost(reason="3-D Attention without q_num_heads/kv_num_heads")
    return _sdpa(q[0], q_heads, q[1], k[1] + past, q[2] // q_heads, v[2] // kv_heads)


def _multi_head_attention(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    # Contrib MultiHeadAttention on projected query [B,S,D], key [B,L,D], value [B,L,D_v].
    q, k, v = _shape(ins, 0), _shape(ins, 1), _shape(ins, 2)
    if len(q) != 3 or len(k) != 3 or len(v) != 3:
        return Cost(reason="MultiHeadAttention with packed or 4-D key/value")
    heads = _int_attr(node, "num_heads", 1)
    return _sdpa(q[0], heads, q[1], k[1], q[2] // heads, v[2] // heads)


def _recurrent(gates: int, eltwise_per_unit: int) -> Rule:
    def rule(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
        # RNN family, per direction, step and batch row: MACs = gates·H·(I + H) for W·x and
        # R·h; plus eltwise_per_unit·H FLOPs of gate math (see _RECURRENT below).
        x, w = _shape(ins, 0), _shape(ins, 1)
        seq, batch = (x[1], x[0]) if _int_attr(node, "layout", 0) else (x[0], x[1])
        directions, input_size = w[0], w[2]
        hidden = _int_attr(node, "hidden_size", 0) or w[1] // gates
        steps = directions * seq * batch
        macs = steps * gates * hidden * (input_size + hidden)
        return Cost(macs=macs, flops=2 * macs + steps * eltwise_per_unit * hidden)

    return rule


# --- FLOP-only ops -------------------------------------------------------------------------


def _per_output(flops_per_element: int) -> Rule:
    def rule(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
        return Cost(flops=flops_per_element * _numel(outs, 0))

    return rule


def _per_input(flops_per_element: int) -> Rule:
    def rule(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
        return Cost(flops=flops_per_element * _numel(ins, 0))

    return rule


def _variadic(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    # Sum/Max/Min/Mean of n inputs: n−1 FLOPs per output element (Mean: + 1 divide).
    n = len([name for name in node.input if name])
    extra = 1 if node.op_type == "Mean" else 0
    return Cost(flops=(max(n - 1, 1) + extra) * _numel(outs, 0))


def _window_pool(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    # MaxPool/AveragePool/LpPool: one compare or add per window element: |Y| · Πkernel.
    kernel = _attr(node, "kernel_shape")
    if not isinstance(kernel, list) or not kernel:
        return Cost(reason="pool without kernel_shape")
    return Cost(flops=_numel(outs, 0) * math.prod(int(k) for k in kernel))


def _zero(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    return Cost()


def _control_flow(node: onnx.NodeProto, ins: Infos, outs: Infos) -> Cost:
    return Cost(reason="control flow: subgraph cost depends on data")


def _ops(names: str) -> tuple[str, ...]:
    return tuple(names.split())


_ELEMENTWISE = _ops(
    "Add Sub Mul Div Pow Mod Sqrt Reciprocal Neg Abs Exp Log Relu LeakyRelu PRelu Elu Selu "
    "Celu Sigmoid HardSigmoid HardSwish Swish Tanh Erf Gelu FastGelu BiasGelu QuickGelu "
    "Softplus Softsign Mish Clip Floor Ceil Round Sign Sin Cos Tan Asin Acos Atan Sinh Cosh "
    "Asinh Acosh Atanh Where Equal Greater GreaterOrEqual Less LessOrEqual And Or Xor Not "
    "IsNaN IsInf BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot ThresholdedRelu Shrink "
    "BiasAdd Resize Upsample"
)

# Data movement, shape plumbing and casts: no arithmetic.
_DATA_MOVEMENT = _ops(
    "Reshape Flatten Squeeze Unsqueeze Transpose Concat Split Slice Gather GatherElements "
    "GatherND Scatter ScatterND ScatterElements Pad Tile Expand Identity Shape Size Constant "
    "ConstantOfShape Cast CastLike DepthToSpace SpaceToDepth Dropout NonZero Range OneHot "
    "EyeLike Trilu ReverseSequence Compress"
)

# Per-element FLOPs of the RNN gate math per hidden unit and step:
# LSTM 13 = 4 (Wx+Rh+b) + 4 gate activations + 3 (c = f⊙c + i⊙g) + 2 (h = o⊙tanh c);
# GRU 11 = 3 (Wx+Rh+b) + 3 activations + 1 (r⊙…) + 4 (h = (1−z)⊙n + z⊙h);
# RNN 2 = 1 (Wx+Rh+b) + 1 activation.
_RECURRENT = {"LSTM": (4, 13), "GRU": (3, 11), "RNN": (1, 2)}

RULES: dict[str, Rule] = {
    "Conv": _conv(0, 1),
    "FusedConv": _conv(0, 1),
    "ConvInteger": _conv(0, 1),
    "QLinearConv": _conv(0, 3),
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm(0, 1),
    "FusedGemm": _gemm(0, 1),
    "QGemm": _gemm(0, 3),
    "MatMul": _matmul(0, 1),
    "FusedMatMul": _matmul(0, 1),
    "MatMulInteger": _matmul(0, 1),
    "DynamicQuantizeMatMul": _matmul(0, 1),
    "MatMulIntegerToFloat": _matmul(0, 1),
    "MatMulNBits": _matmul_nbits,
    "Attention": _attention,
    "MultiHeadAttention": _multi_head_attention,
    "QLinearMatMul": _matmul(0, 3),
    "Einsum": _einsum,
    **{op: _recurrent(g, e) for op, (g, e) in _RECURRENT.items()},
    # Pools: windowed ones per output·kernel; global ones one FLOP per input element.
    "MaxPool": _window_pool,
    "AveragePool": _window_pool,
    "LpPool": _window_pool,
    "GlobalAveragePool": _per_input(1),
    "GlobalMaxPool": _per_input(1),
    "GlobalLpPool": _per_input(1),
    # BatchNormalization (inference) folds to y = a·x + b: 2 FLOPs per element.
    "BatchNormalization": _per_output(2),
    # Layer/Instance/Group norm: mean, x−μ, square, sum, ·1/σ, ·γ, +β = 7 per element.
    "LayerNormalization": _per_output(7),
    "InstanceNormalization": _per_output(7),
    "GroupNormalization": _per_output(7),
    "MeanVarianceNormalization": _per_output(7),
    "SkipLayerNormalization": _per_output(8),  # + the skip add
    # RMS norm: square, sum, ·1/rms, ·γ = 4 per element.
    "RMSNormalization": _per_output(4),
    "SimplifiedLayerNormalization": _per_output(4),
    # Lp normalization: |x|^p, sum, divide = 3 per element.
    "LpNormalization": _per_output(3),
    # Softmax / LogSoftmax: max, x−max, exp, sum, divide (or log-subtract) = 5 per element.
    "Softmax": _per_output(5),
    "LogSoftmax": _per_output(5),
    "Hardmax": _per_input(1),
    # Reductions, arg-reductions, scans and top-k: one FLOP per input element read.
    **{
        op: _per_input(1)
        for op in _ops(
            "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 "
            "ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax ArgMin CumSum TopK"
        )
    },
    # (De)quantization: scale and zero point = 2 FLOPs per element.
    "QuantizeLinear": _per_output(2),
    "DequantizeLinear": _per_output(2),
    "DynamicQuantizeLinear": _per_input(4),  # min, max, scale, round
    # QLinear element-wise ops: the op itself, requantization not counted separately.
    **{
        op: _per_output(1)
        for op in ("QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu")
    },
    "QLinearGlobalAveragePool": _per_input(1),
    "QLinearAveragePool": _window_pool,
    "Sum": _variadic,
    "Max": _variadic,
    "Min": _variadic,
    "Mean": _variadic,
    **{op: _per_output(1) for op in _ELEMENTWISE},
    **{op: _zero for op in _DATA_MOVEMENT},
    "If": _control_flow,
    "Loop": _control_flow,
    "Scan": _control_flow,
}


# Rules apply to standard ops and to ORT's contrib ops (FusedConv, …); a custom domain's
# "Conv" may mean anything.
_COSTED_DOMAINS = ("", "ai.onnx", "com.microsoft")


def node_cost(node: onnx.NodeProto, inputs: Infos, outputs: Infos) -> Cost:
    """MACs/FLOPs of NODE given its inputs' and outputs' infos (None where not known)."""
    rule = RULES.get(node.op_type) if node.domain in _COSTED_DOMAINS else None
    if rule is None:
        domain = node.domain or "ai.onnx"
        return Cost(reason=f"no cost model for {domain} {node.op_type}")
    try:
        return rule(node, inputs, outputs)
    except _Unknown:
        return Cost(reason="shape unknown after shape inference")
    except (IndexError, ValueError, ZeroDivisionError) as exc:
        # A malformed node (wrong rank, missing weight) is reported, never fatal.
        return Cost(reason=f"unexpected operand shapes ({exc})")
