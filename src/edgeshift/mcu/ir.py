"""The integer IR that ``edgeshift compile`` lowers an int8 QDQ ONNX model into.

Pure data. Every activation is int8 with one scale and zero point (per tensor); weights are
int8 with per-output-channel scales already folded into each op's float32 ``multiplier``.
Spatial activations are stored NHWC with the batch (always 1) dropped, so a tensor's
``shape`` is ``(H, W, C)`` or, for vectors, ``(N,)``. Ops are listed in execution order.

The arithmetic of every op is ONNX Runtime's integer (QLinear*) kernels, as ORT runs a QDQ
model with its int8 groups kept int8 (``session.qdqisint8allowed=1``, ORT's default on Arm):

    acc  = sum((x - x_zp) * w) + bias                          int32, exact
    f    = float32(acc) * multiplier[c]                       one float32 multiply
    f    = min(max(f, act_min - y_zp), act_max - y_zp)        saturation (fused Relu/Clip too)
    y    = round_half_to_even(f) + y_zp                        int8

``reference.py`` executes this IR in numpy and is the golden model for the C kernels; the
tests hold it bit-exact against ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class QTensor:
    """An int8 activation: NHWC shape without the batch, and its quantization."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Conv2D:
    """Regular convolution (group 1). weights [Cout, KH, KW, Cin] int8 (OHWI)."""

    inp: str
    out: str
    weights: np.ndarray
    bias: np.ndarray  # int32 [Cout]
    multiplier: np.ndarray  # float32 [Cout]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    act_min: int = -128
    act_max: int = 127


@dataclass
class DepthwiseConv2D:
    """Depthwise convolution (group == Cin, one output channel per input channel).

    weights [KH, KW, C] int8."""

    inp: str
    out: str
    weights: np.ndarray
    bias: np.ndarray  # int32 [C]
    multiplier: np.ndarray  # float32 [C]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    act_min: int = -128
    act_max: int = 127


@dataclass
class FullyConnected:
    """Gemm / MatMul on a vector. weights [Cout, Cin] int8; the input is read flat in the
    order its tensor is stored (lowering permutes the weight columns for NHWC flattening)."""

    inp: str
    out: str
    weights: np.ndarray
    bias: np.ndarray  # int32 [Cout]
    multiplier: np.ndarray  # float32 [Cout] (a per-tensor scale is broadcast)
    act_min: int = -128
    act_max: int = 127


@dataclass
class Pool2D:
    """Average or max pooling over H and W (global pooling and ReduceMean are kernels as big as
    the input). Average pooling follows ORT's QLinearAveragePool; max pooling is an int8 max
    (input and output share scale and zero point)."""

    kind: str  # "avg" | "max"
    inp: str
    out: str
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = False


@dataclass
class Add:
    """Element-wise add of two int8 tensors of the same shape (ORT's QLinearAdd)."""

    a: str
    b: str
    out: str
    act_min: int = -128
    act_max: int = 127


@dataclass
class Softmax:
    """Softmax over the last axis (ORT's QLinearSoftmax: a 256-entry exp table)."""

    inp: str
    out: str


@dataclass
class Pad:
    """Constant padding of H and W with the input's zero point (a real 0)."""

    inp: str
    out: str
    pad: tuple[int, int, int, int]  # top, left, bottom, right


@dataclass
class Concat:
    """Concatenation along the channel (last) axis; inputs whose quantization differs from the
    output's are requantized as ORT's QLinearConcat does."""

    inputs: list[str]
    out: str


@dataclass
class Reshape:
    """A view: same bytes, new shape (Flatten, Reshape, Squeeze of a NHWC tensor whose stored
    order already equals the ONNX order). Lowering inserts no copy; the planner aliases it."""

    inp: str
    out: str


@dataclass
class Clamp:
    """A standalone Relu / Relu6 / Clip in the integer domain (when not fused into its
    producer): y = min(max(x, act_min), act_max), same quantization in and out."""

    inp: str
    out: str
    act_min: int = -128
    act_max: int = 127


Op = (
    Conv2D
    | DepthwiseConv2D
    | FullyConnected
    | Pool2D
    | Add
    | Softmax
    | Pad
    | Concat
    | Reshape
    | Clamp
)


def op_inputs(op: Op) -> list[str]:
    """The tensor names OP reads."""
    if isinstance(op, Add):
        return [op.a, op.b]
    if isinstance(op, Concat):
        return list(op.inputs)
    return [op.inp]


@dataclass
class McuGraph:
    """A lowered model: tensors by name, ops in execution order, graph inputs and outputs."""

    name: str
    tensors: dict[str, QTensor]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    # Where each graph input / output sits in the ONNX model, so a harness can map data:
    # the ONNX name, its ONNX shape (with batch), and the permutation from ONNX to stored order.
    io_onnx: dict[str, dict[str, object]] = field(default_factory=dict)
    # ONNX nodes ONNX Runtime runs in float32 instead of its integer kernels (a Conv whose
    # float output also feeds a Relu, a MaxPool between a Conv and its QuantizeLinear, as
    # ORT's x86 recipes write them). The C computes them exactly in integers, so its result
    # may differ from ORT's there by the float rounding: at most 1 LSB.
    float_groups: list[str] = field(default_factory=list)

    def macs(self) -> int:
        """Multiply-accumulates of one inference (conv, depthwise and fully connected)."""
        total = 0
        for op in self.ops:
            if isinstance(op, Conv2D):
                oh, ow, oc = self.tensors[op.out].shape
                total += oh * ow * oc * int(np.prod(op.weights.shape[1:]))
            elif isinstance(op, DepthwiseConv2D):
                oh, ow, oc = self.tensors[op.out].shape
                total += oh * ow * oc * op.weights.shape[0] * op.weights.shape[1]
            elif isinstance(op, FullyConnected):
                total += int(op.weights.size)
        return total

    def weight_bytes(self) -> int:
        """Bytes of int8 weights, int32 biases and float32 multipliers (what goes to flash)."""
        total = 0
        for op in self.ops:
            for arr in ("weights", "bias", "multiplier"):
                value = getattr(op, arr, None)
                if isinstance(value, np.ndarray):
                    total += int(value.nbytes)
        return total
